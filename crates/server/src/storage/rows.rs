//! One mapping from stored columns to records, for every backend: each backend's row type
//! (sqlx's SQLite and PostgreSQL rows, rusqlite's rows on the SQLite writer) only says how to read
//! one column as a plain value, and the records are built here from those values.

use std::collections::HashMap;

use msnp24_proto::AccountName;

use super::{
    list_bits, Account, Contact, ContactRelation, ConversationSummary, NewMessage, PendingRequest,
    Setting, SettingScope, SpamReport, StorageError, StorageResult, StoredMessage, ThreadMember,
    ThreadRecord,
};

/// Reads one column of a row, by name, as a plain value.
pub trait Columns {
    /// A `TEXT` column.
    fn text(&self, col: &str) -> StorageResult<String>;
    /// A `TEXT` column that may be NULL.
    fn opt_text(&self, col: &str) -> StorageResult<Option<String>>;
    /// An integer column.
    fn int(&self, col: &str) -> StorageResult<i64>;
    /// An integer column that may be NULL.
    fn opt_int(&self, col: &str) -> StorageResult<Option<i64>>;
    /// A `BLOB` / `BYTEA` column.
    fn blob(&self, col: &str) -> StorageResult<Vec<u8>>;
}

/// sqlx rows decode every plain value the same way, whichever database they came from.
macro_rules! sqlx_columns {
    ($($row:ty),*) => {$(
        impl Columns for $row {
            fn text(&self, col: &str) -> StorageResult<String> {
                Ok(sqlx::Row::try_get(self, col)?)
            }
            fn opt_text(&self, col: &str) -> StorageResult<Option<String>> {
                Ok(sqlx::Row::try_get(self, col)?)
            }
            fn int(&self, col: &str) -> StorageResult<i64> {
                Ok(sqlx::Row::try_get(self, col)?)
            }
            fn opt_int(&self, col: &str) -> StorageResult<Option<i64>> {
                Ok(sqlx::Row::try_get(self, col)?)
            }
            fn blob(&self, col: &str) -> StorageResult<Vec<u8>> {
                Ok(sqlx::Row::try_get(self, col)?)
            }
        }
    )*};
}

sqlx_columns!(sqlx::sqlite::SqliteRow, sqlx::postgres::PgRow);

impl Columns for rusqlite::Row<'_> {
    fn text(&self, col: &str) -> StorageResult<String> {
        Ok(self.get(col)?)
    }
    fn opt_text(&self, col: &str) -> StorageResult<Option<String>> {
        Ok(self.get(col)?)
    }
    fn int(&self, col: &str) -> StorageResult<i64> {
        Ok(self.get(col)?)
    }
    fn opt_int(&self, col: &str) -> StorageResult<Option<i64>> {
        Ok(self.get(col)?)
    }
    fn blob(&self, col: &str) -> StorageResult<Vec<u8>> {
        Ok(self.get(col)?)
    }
}

/// An account name read back from the database.
pub fn stored_name(name: &str) -> StorageResult<AccountName> {
    AccountName::parse(name)
        .map_err(|e| StorageError::Corrupt(format!("account name {name:?}: {e}")))
}

/// Contact-list bits read back from the database: only bits that exist.
pub fn stored_bits(bits: i64) -> StorageResult<u32> {
    u32::try_from(bits)
        .ok()
        .filter(|b| b & !list_bits::ALL == 0)
        .ok_or_else(|| StorageError::Corrupt(format!("contact bits {bits}")))
}

/// The account name in column `col`.
pub fn name(row: &impl Columns, col: &str) -> StorageResult<AccountName> {
    stored_name(&row.text(col)?)
}

/// An `accounts` row.
pub fn account(row: &impl Columns) -> StorageResult<Account> {
    Ok(Account {
        id: row.int("id")?,
        name: name(row, "name")?,
        password_hash: row.text("password_hash")?,
        generation: row.int("generation")?,
        created_at: row.int("created_at")?,
        email: row.opt_text("email")?,
        display_name: row.opt_text("display_name")?,
        mood: row.opt_text("mood")?,
        legacy_hash: row.opt_text("legacy_hash")?,
    })
}

/// A `messages` row (its participants are not stored with it).
pub fn message(row: &impl Columns) -> StorageResult<StoredMessage> {
    Ok(StoredMessage {
        message_id: row.int("message_id")?,
        duplicate: false,
        message: NewMessage {
            conversation: row.text("conversation")?,
            sender: row.text("sender")?,
            sender_epid: row.text("sender_epid")?,
            recipient: row.text("recipient")?,
            client_message_id: row.opt_text("client_message_id")?,
            message_type: row.text("message_type")?,
            headers: row.text("headers")?,
            content: row.blob("content")?,
            arrival_ms: row.int("arrival_ms")?,
            participants: Vec::new(),
        },
    })
}

/// A `contacts` row of the owner's list: `contact`, `bits`.
pub fn contact(row: &impl Columns) -> StorageResult<Contact> {
    Ok(Contact {
        name: name(row, "contact")?,
        bits: stored_bits(row.int("bits")?)?,
    })
}

/// The relations of those of `others` found in `rows` (`name`, `mine`, `theirs`, either bits
/// NULL when there is no row), in the order asked; both backends answer so.
pub fn relations_in_order<R: Columns>(
    others: &[AccountName],
    rows: &[R],
) -> StorageResult<Vec<ContactRelation>> {
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let mine = stored_bits(row.opt_int("mine")?.unwrap_or(0))?;
        let theirs = stored_bits(row.opt_int("theirs")?.unwrap_or(0))?;
        found.insert(row.text("name")?, (mine, theirs));
    }
    Ok(others
        .iter()
        .filter_map(|other| {
            found
                .get(other.as_str())
                .map(|&(mine, theirs)| ContactRelation {
                    name: other.clone(),
                    mine,
                    theirs,
                })
        })
        .collect())
}

/// A pending request: `sender`, `at`, `greeting`.
pub fn pending_request(row: &impl Columns) -> StorageResult<PendingRequest> {
    Ok(PendingRequest {
        sender: name(row, "sender")?,
        at: row.int("at")?,
        greeting: row.text("greeting")?,
    })
}

/// A `thread_members` row: `account`, `role`, `joined_ms`.
pub fn thread_member(row: &impl Columns) -> StorageResult<ThreadMember> {
    Ok(ThreadMember {
        account: name(row, "account")?,
        role: row.text("role")?,
        joined_ms: row.int("joined_ms")?,
    })
}

/// A `threads` row with its members.
pub fn thread(row: &impl Columns, members: Vec<ThreadMember>) -> StorageResult<ThreadRecord> {
    Ok(ThreadRecord {
        id: row.text("id")?,
        creator: row.text("creator")?,
        topic: row.text("topic")?,
        version: row.int("version")?,
        members,
    })
}

/// A setting: `account`, `epid` (NULL for the whole account), `kind`, `value`, `updated_at`.
pub fn setting(row: &impl Columns) -> StorageResult<Setting> {
    Ok(Setting {
        account: row.text("account")?,
        scope: row
            .opt_text("epid")?
            .map_or(SettingScope::Account, SettingScope::Endpoint),
        kind: row.text("kind")?,
        value: row.text("value")?,
        updated_at: row.int("updated_at")?,
    })
}

/// A `spam_reports` row.
pub fn spam_report(row: &impl Columns) -> StorageResult<SpamReport> {
    Ok(SpamReport {
        reporter: row.text("reporter")?,
        reporter_epid: row.text("reporter_epid")?,
        reported: row.text("reported")?,
        reported_at: row.int("reported_at")?,
    })
}

/// The conversation id of a row of [`super::sql::SUMMARY_SELECT`].
pub fn summary_id(row: &impl Columns) -> StorageResult<String> {
    row.text("c_id")
}

/// A row of [`super::sql::SUMMARY_SELECT`] (a conversation joined with its last message), with
/// the conversation's properties.
pub fn summary(
    row: &impl Columns,
    properties: Vec<(String, String)>,
) -> StorageResult<ConversationSummary> {
    let history_from = row.int("c_history_from")?;
    let left_at = row.opt_int("c_left_at")?;
    // A thread the account left shows no message (§6: an empty `<messages/>`).
    let last_message = match row.opt_int("message_id")? {
        Some(mid) if mid >= history_from && left_at.is_none() => Some(message(row)?),
        _ => None,
    };
    Ok(ConversationSummary {
        id: summary_id(row)?,
        key: row.text("c_conversation")?,
        version: row.int("c_version")?,
        history_from,
        left_at,
        properties,
        last_message,
    })
}
