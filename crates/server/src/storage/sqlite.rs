//! The embedded default: one SQLite file in WAL mode with full synchronous commits, so that a
//! message acknowledged to its sender survives a crash.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use msnp24_proto::AccountName;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    list_bits, Account, Contact, ContactRelation, ContactUpdate, NewMessage, Storage, StorageError,
    StorageResult, StoredMessage,
};

/// SQLite-backed [`Storage`].
#[derive(Clone)]
pub struct SqliteStorage {
    pool: SqlitePool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStorage {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> StorageResult<SqliteStorage> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStorage { pool })
    }

    /// Closes the pool, waiting for running statements.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn account_from_row(row: &sqlx::sqlite::SqliteRow) -> StorageResult<Account> {
    let name: String = row.try_get("name")?;
    Ok(Account {
        id: row.try_get("id")?,
        name: AccountName::parse(&name)
            .map_err(|e| StorageError::Corrupt(format!("account name {name:?}: {e}")))?,
        password_hash: row.try_get("password_hash")?,
        generation: row.try_get("generation")?,
        created_at: row.try_get("created_at")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn message_from_row(row: &sqlx::sqlite::SqliteRow) -> StorageResult<StoredMessage> {
    Ok(StoredMessage {
        message_id: row.try_get("message_id")?,
        duplicate: false,
        message: NewMessage {
            conversation: row.try_get("conversation")?,
            sender: row.try_get("sender")?,
            sender_epid: row.try_get("sender_epid")?,
            recipient: row.try_get("recipient")?,
            client_message_id: row.try_get("client_message_id")?,
            message_type: row.try_get("message_type")?,
            headers: row.try_get("headers")?,
            content: row.try_get("content")?,
            arrival_ms: row.try_get("arrival_ms")?,
        },
    })
}

fn stored_name(name: &str) -> StorageResult<AccountName> {
    AccountName::parse(name)
        .map_err(|e| StorageError::Corrupt(format!("account name {name:?}: {e}")))
}

fn stored_bits(bits: i64) -> StorageResult<u32> {
    u32::try_from(bits)
        .ok()
        .filter(|b| b & !list_bits::ALL == 0)
        .ok_or_else(|| StorageError::Corrupt(format!("contact bits {bits}")))
}

fn names_from_rows(rows: &[sqlx::sqlite::SqliteRow]) -> StorageResult<Vec<AccountName>> {
    rows.iter()
        .map(|r| stored_name(&r.try_get::<String, _>(0)?))
        .collect()
}

/// Rows `w` (watcher → target) and `t` (target → watcher) that let presence flow from target to watcher.
const PRESENCE_FLOWS: &str =
    "(w.bits & ?1) != 0 AND (t.bits & ?2) != 0 AND (w.bits & ?3) = 0 AND (t.bits & ?3) = 0";

#[async_trait]
impl Storage for SqliteStorage {
    async fn create_account(
        &self,
        name: &AccountName,
        password_hash: &str,
    ) -> StorageResult<Account> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let row = sqlx::query(
            "INSERT INTO accounts (name, password_hash, created_at) VALUES (?, ?, ?) RETURNING *",
        )
        .bind(name.as_str())
        .bind(password_hash)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StorageError::Conflict
            } else {
                e.into()
            }
        })?;
        account_from_row(&row)
    }

    async fn account(&self, name: &AccountName) -> StorageResult<Option<Account>> {
        let row = sqlx::query("SELECT * FROM accounts WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn list_accounts(&self) -> StorageResult<Vec<Account>> {
        let rows = sqlx::query("SELECT * FROM accounts ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(account_from_row).collect()
    }

    async fn set_password(&self, name: &AccountName, password_hash: &str) -> StorageResult<bool> {
        let done = sqlx::query(
            "UPDATE accounts SET password_hash = ?, generation = generation + 1 WHERE name = ?",
        )
        .bind(password_hash)
        .bind(name.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn remove_account(&self, name: &AccountName) -> StorageResult<bool> {
        let done = sqlx::query("DELETE FROM accounts WHERE name = ?")
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn store_message(&self, message: NewMessage) -> StorageResult<StoredMessage> {
        let mut tx = self.pool.begin().await?;
        if let Some(cmid) = &message.client_message_id {
            let existing = sqlx::query(
                "SELECT * FROM messages WHERE conversation = ? AND sender = ? AND client_message_id = ?",
            )
            .bind(&message.conversation)
            .bind(&message.sender)
            .bind(cmid)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                let mut stored = message_from_row(&row)?;
                stored.duplicate = true;
                return Ok(stored);
            }
        }
        // Message ids are arrival times in ms, made strictly increasing within a conversation so
        // that two messages in the same millisecond still get distinct ids.
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(message_id) FROM messages WHERE conversation = ?")
                .bind(&message.conversation)
                .fetch_one(&mut *tx)
                .await?;
        let message_id = last.map_or(message.arrival_ms, |l| {
            l.saturating_add(1).max(message.arrival_ms)
        });
        sqlx::query(
            "INSERT INTO messages (conversation, message_id, sender, sender_epid, recipient, client_message_id, message_type, headers, content, arrival_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&message.conversation)
        .bind(message_id)
        .bind(&message.sender)
        .bind(&message.sender_epid)
        .bind(&message.recipient)
        .bind(&message.client_message_id)
        .bind(&message.message_type)
        .bind(&message.headers)
        .bind(&message.content)
        .bind(message.arrival_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(StoredMessage {
            message_id,
            message,
            duplicate: false,
        })
    }

    async fn conversation_messages(&self, conversation: &str) -> StorageResult<Vec<StoredMessage>> {
        let rows = sqlx::query("SELECT * FROM messages WHERE conversation = ? ORDER BY message_id")
            .bind(conversation)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(message_from_row).collect()
    }

    async fn contacts(&self, owner: &AccountName) -> StorageResult<Vec<Contact>> {
        let rows =
            sqlx::query("SELECT contact, bits FROM contacts WHERE owner = ? ORDER BY contact")
                .bind(owner.as_str())
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(Contact {
                    name: stored_name(&r.try_get::<String, _>(0)?)?,
                    bits: stored_bits(r.try_get(1)?)?,
                })
            })
            .collect()
    }

    async fn contact_relations(
        &self,
        owner: &AccountName,
        others: &[AccountName],
    ) -> StorageResult<Vec<ContactRelation>> {
        let mut conn = self.pool.acquire().await?;
        let mut out = Vec::with_capacity(others.len());
        for other in others {
            let row = sqlx::query(
                "SELECT (SELECT bits FROM contacts WHERE owner = ?1 AND contact = a.name), \
                        (SELECT bits FROM contacts WHERE owner = a.name AND contact = ?1) \
                 FROM accounts a WHERE a.name = ?2",
            )
            .bind(owner.as_str())
            .bind(other.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = row {
                out.push(ContactRelation {
                    name: other.clone(),
                    mine: stored_bits(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))?,
                    theirs: stored_bits(row.try_get::<Option<i64>, _>(1)?.unwrap_or(0))?,
                });
            }
        }
        Ok(out)
    }

    async fn update_contacts(&self, updates: &[ContactUpdate]) -> StorageResult<Vec<(u32, u32)>> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(updates.len());
        for u in updates {
            let old: Option<i64> =
                sqlx::query_scalar("SELECT bits FROM contacts WHERE owner = ? AND contact = ?")
                    .bind(u.owner.as_str())
                    .bind(u.contact.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            let old = stored_bits(old.unwrap_or(0))?;
            let new = (old | u.set) & !u.clear & list_bits::ALL;
            if new == old {
                out.push((old, new));
                continue;
            }
            if new == 0 {
                sqlx::query("DELETE FROM contacts WHERE owner = ? AND contact = ?")
                    .bind(u.owner.as_str())
                    .bind(u.contact.as_str())
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(
                    "INSERT INTO contacts (owner, contact, bits, updated_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (owner, contact) DO UPDATE SET bits = ?3, updated_at = ?4",
                )
                .bind(u.owner.as_str())
                .bind(u.contact.as_str())
                .bind(i64::from(new))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            out.push((old, new));
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn presence_watchers(&self, account: &AccountName) -> StorageResult<Vec<AccountName>> {
        let sql = format!(
            "SELECT w.owner FROM contacts w JOIN contacts t ON t.owner = w.contact AND t.contact = w.owner \
             WHERE w.contact = ?4 AND {PRESENCE_FLOWS}"
        );
        let rows = sqlx::query(&sql)
            .bind(list_bits::FORWARD)
            .bind(list_bits::ALLOW)
            .bind(list_bits::BLOCK)
            .bind(account.as_str())
            .fetch_all(&self.pool)
            .await?;
        names_from_rows(&rows)
    }

    async fn presence_visible(&self, account: &AccountName) -> StorageResult<Vec<AccountName>> {
        let sql = format!(
            "SELECT w.contact FROM contacts w JOIN contacts t ON t.owner = w.contact AND t.contact = w.owner \
             WHERE w.owner = ?4 AND {PRESENCE_FLOWS}"
        );
        let rows = sqlx::query(&sql)
            .bind(list_bits::FORWARD)
            .bind(list_bits::ALLOW)
            .bind(list_bits::BLOCK)
            .bind(account.as_str())
            .fetch_all(&self.pool)
            .await?;
        names_from_rows(&rows)
    }

    async fn is_blocked(&self, a: &AccountName, b: &AccountName) -> StorageResult<bool> {
        let blocked: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM contacts WHERE ((owner = ?1 AND contact = ?2) OR (owner = ?2 AND contact = ?1)) \
             AND (bits & ?3) != 0 LIMIT 1",
        )
        .bind(a.as_str())
        .bind(b.as_str())
        .bind(list_bits::BLOCK)
        .fetch_optional(&self.pool)
        .await?;
        Ok(blocked.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn storage_with(names: &[&str]) -> (tempfile::TempDir, SqliteStorage, Vec<AccountName>) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(&dir.path().join("db.sqlite3"))
            .await
            .unwrap();
        let mut out = Vec::new();
        for n in names {
            let name = AccountName::parse(n).unwrap();
            s.create_account(&name, "x").await.unwrap();
            out.push(name);
        }
        (dir, s, out)
    }

    fn update(owner: &AccountName, contact: &AccountName, set: u32, clear: u32) -> ContactUpdate {
        ContactUpdate {
            owner: owner.clone(),
            contact: contact.clone(),
            set,
            clear,
        }
    }

    #[tokio::test]
    async fn contact_rows_flow_and_block() {
        let (_dir, s, n) = storage_with(&["alice", "bob", "carol"]).await;
        let (a, b, c) = (&n[0], &n[1], &n[2]);
        let changes = s
            .update_contacts(&[update(a, b, 3, 0), update(b, a, 2, 0), update(a, c, 1, 0)])
            .await
            .unwrap();
        assert_eq!(changes, [(0, 3), (0, 2), (0, 1)]);
        assert_eq!(s.presence_watchers(b).await.unwrap(), vec![a.clone()]);
        assert_eq!(s.presence_visible(a).await.unwrap(), vec![b.clone()]);
        assert!(s.presence_watchers(a).await.unwrap().is_empty());
        let rel = s
            .contact_relations(
                a,
                &[b.clone(), AccountName::parse("nobody").unwrap(), c.clone()],
            )
            .await
            .unwrap();
        assert_eq!(rel.len(), 2);
        assert_eq!((rel[0].mine, rel[0].theirs), (3, 2));
        assert_eq!((rel[1].mine, rel[1].theirs), (1, 0));

        assert!(!s.is_blocked(a, b).await.unwrap());
        s.update_contacts(&[update(b, a, 4, 0)]).await.unwrap();
        assert!(s.is_blocked(a, b).await.unwrap() && s.is_blocked(b, a).await.unwrap());
        assert!(s.presence_watchers(b).await.unwrap().is_empty());

        // Clearing every bit deletes the row; removing an account removes its rows both ways.
        assert_eq!(
            s.update_contacts(&[update(a, c, 0, 15)]).await.unwrap(),
            [(1, 0)]
        );
        assert_eq!(s.contacts(a).await.unwrap().len(), 1);
        s.remove_account(b).await.unwrap();
        assert!(s.contacts(a).await.unwrap().is_empty());
    }
}
