//! What the SQL backends share: the statements their dialects agree on (written with `$N`
//! parameters, which PostgreSQL, sqlx's SQLite driver and rusqlite all read), the few that differ
//! as [`Dialect`] constants, and the store traits implemented once for every [`SqlBackend`] on top
//! of them. A backend implements only what it does its own way: its writer, its transactions and
//! its caches.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use msnp24_proto::AccountName;
use sqlx::{Database, Encode, Pool, Type};

use super::rows::{self, Columns};
use super::{
    list_bits, Account, AccountStore, AckRecord, AdminStore, Contact, ContactRelation,
    ContactStore, ContactUpdate, ConversationStore, ConversationSummary, DirectOutcome,
    MessageStore, NewMessage, PendingRequest, ProfileUpdate, RecentPosition, Setting, SettingScope,
    SpamReport, StorageError, StorageResult, StoredMessage, ThreadChange, ThreadRecord,
    ThreadStore,
};

/// One statement parameter.
#[derive(Debug, Clone)]
pub enum Param<'a> {
    /// Text.
    Text(&'a str),
    /// Text or NULL.
    OptText(Option<&'a str>),
    /// An integer.
    Int(i64),
    /// An integer or NULL.
    OptInt(Option<i64>),
    /// Bytes.
    Bytes(&'a [u8]),
    /// A list of texts, for the dialect's own "is one of" (`json_each` or `= ANY`).
    List(Vec<&'a str>),
}

/// A boxed future of a statement's result.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'a>>;

/// What one SQL dialect says its own way, and how it runs a statement on its pool.
pub trait Dialect: Database<Row: Columns> {
    /// Creates an account: `$1` name, `$2` password hash, `$3` legacy hash, `$4` now; returns it.
    const CREATE_ACCOUNT: &'static str;
    /// Accounts whose e-mail is one of the list `$1`.
    const ACCOUNTS_BY_EMAIL: &'static str;
    /// `name`, `mine`, `theirs` of the accounts in the list `$2`, seen from owner `$1`.
    const CONTACT_RELATIONS: &'static str;
    /// `id`, `name`, `value` of account `$1`'s conversations in the list `$2`, in order.
    const PROPERTIES_OF: &'static str;
    /// The greater of two values.
    const GREATEST: &'static str;

    /// Binds a list parameter the way this dialect's "is one of" reads it.
    fn bind_list<'q>(
        query: sqlx::query::Query<'q, Self, <Self as Database>::Arguments<'q>>,
        list: Vec<&'q str>,
    ) -> sqlx::query::Query<'q, Self, <Self as Database>::Arguments<'q>>;
    /// Every row of a statement.
    fn fetch_all<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
        params: Vec<Param<'a>>,
    ) -> Pending<'a, Vec<Self::Row>>;
    /// The first row of a statement, if any.
    fn fetch_optional<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
        params: Vec<Param<'a>>,
    ) -> Pending<'a, Option<Self::Row>>;
    /// Runs a statement; returns the rows it changed.
    fn execute<'a>(pool: &'a Pool<Self>, sql: &'a str, params: Vec<Param<'a>>) -> Pending<'a, u64>;
    /// Runs one statement once per parameter set, all in one transaction.
    fn execute_each<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
        sets: Vec<Vec<Param<'a>>>,
    ) -> Pending<'a, ()>;
}

/// A statement with its parameters bound: what the dialects' [`Dialect`] runners execute.
pub fn query<'a, DB>(
    sql: &'a str,
    params: Vec<Param<'a>>,
) -> sqlx::query::Query<'a, DB, <DB as Database>::Arguments<'a>>
where
    DB: Dialect,
    &'a str: Encode<'a, DB> + Type<DB>,
    Option<&'a str>: Encode<'a, DB> + Type<DB>,
    &'a [u8]: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
    Option<i64>: Encode<'a, DB> + Type<DB>,
{
    let mut query = sqlx::query::<DB>(sql);
    for param in params {
        query = match param {
            Param::Text(v) => query.bind(v),
            Param::OptText(v) => query.bind(v),
            Param::Int(v) => query.bind(v),
            Param::OptInt(v) => query.bind(v),
            Param::Bytes(v) => query.bind(v),
            Param::List(v) => DB::bind_list(query, v),
        };
    }
    query
}

/// What a SQL backend does its own way; [`AccountStore`] and the other store traits are built on
/// it and on the shared statements here.
#[async_trait]
pub trait SqlBackend: Send + Sync + 'static {
    /// The backend's dialect.
    type Db: Dialect;
    /// The pool that serves reads (and the writes made without the backend's writer).
    fn pool(&self) -> &Pool<Self::Db>;
    /// Deletes an account and its own view of conversations, acks and memberships, in one
    /// transaction (the statements are [`REMOVE_ACCOUNT`]).
    async fn delete_account(&self, name: &AccountName) -> StorageResult<bool>;
    /// See [`ContactStore::update_contacts`].
    async fn write_contacts(&self, updates: &[ContactUpdate]) -> StorageResult<Vec<(u32, u32)>>;
    /// See [`MessageStore::store_message`].
    async fn write_message(&self, message: NewMessage) -> StorageResult<StoredMessage>;
    /// See [`MessageStore::store_direct_message`].
    async fn write_direct_message(
        &self,
        message: NewMessage,
        sender: &AccountName,
        recipient: &AccountName,
    ) -> StorageResult<DirectOutcome>;
    /// See [`MessageStore::record_ack`].
    async fn write_ack(&self, ack: AckRecord) -> StorageResult<()>;
    /// Writes what [`ConversationStore::set_conversation_properties`] changes.
    async fn write_properties(
        &self,
        account: &AccountName,
        id: &str,
        key: &str,
        properties: &[(String, String)],
        now_ms: i64,
    ) -> StorageResult<()>;
    /// See [`ThreadStore::thread`].
    async fn read_thread(&self, id: &str) -> StorageResult<Option<ThreadRecord>>;
    /// See [`ThreadStore::apply_thread_change`].
    async fn write_thread_change(&self, change: ThreadChange) -> StorageResult<Vec<StoredMessage>>;
    /// See [`AdminStore::close`].
    async fn shut_down(&self);
}

/// Whether a failure is a unique constraint's.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// A unique constraint's failure as `Conflict`, any other as itself.
pub fn conflict_or(e: sqlx::Error) -> StorageError {
    if is_unique_violation(&e) {
        StorageError::Conflict
    } else {
        e.into()
    }
}

/// Account `$1`'s own rows, deleted with it; the other parties keep the messages.
pub const REMOVE_ACCOUNT: [&str; 5] = [
    "DELETE FROM accounts WHERE name = $1",
    "DELETE FROM conversations WHERE account = $1",
    "DELETE FROM conversation_properties WHERE account = $1",
    "DELETE FROM message_acks WHERE account = $1",
    "DELETE FROM thread_members WHERE account = $1",
];

/// Merges one property (`$3` = `$4`) into account `$1`'s conversation `$2`, keeping the order in
/// which properties were first set.
pub const UPSERT_PROPERTY: &str = "INSERT INTO conversation_properties (account, id, name, value, position)
     VALUES ($1, $2, $3, $4, (SELECT COALESCE(MAX(position), 0) + 1 FROM conversation_properties WHERE account = $1 AND id = $2))
     ON CONFLICT (account, id, name) DO UPDATE SET value = excluded.value";

/// Records an acknowledgement.
pub const INSERT_ACK: &str =
    "INSERT INTO message_acks (account, epid, ack_id, conversation, message_id, acked_ms)
     VALUES ($1, $2, $3, $4, $5, $6)";

/// A stored retry: the message `$1`'s sender `$2` sent with client message id `$3`.
pub const STORED_RETRY: &str =
    "SELECT * FROM messages WHERE conversation = $1 AND sender = $2 AND client_message_id = $3";

/// Creates or updates a thread's row: `$1` id, `$2` creator, `$3` topic, `$4` version, `$5` closed.
pub const UPSERT_THREAD: &str =
    "INSERT INTO threads (id, creator, topic, version, closed) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (id) DO UPDATE SET topic = $3, version = $4, closed = $5";

/// Removes member `$2` from thread `$1`.
pub const DELETE_THREAD_MEMBER: &str =
    "DELETE FROM thread_members WHERE thread = $1 AND account = $2";

/// Adds member `$2` (role `$3`, joined `$4`) to thread `$1` after the others, or sets its role.
pub const UPSERT_THREAD_MEMBER: &str = "INSERT INTO thread_members (thread, account, role, joined_ms, seq)
     VALUES ($1, $2, $3, $4, (SELECT COALESCE(MAX(seq), 0) + 1 FROM thread_members WHERE thread = $1))
     ON CONFLICT (thread, account) DO UPDATE SET role = excluded.role";

/// Thread `$1`'s members, longest-standing first.
pub const THREAD_MEMBERS: &str =
    "SELECT account, role, joined_ms FROM thread_members WHERE thread = $1 ORDER BY seq";

/// Conversation rows with their last message (message columns NULL when there is none).
pub const SUMMARY_SELECT: &str =
    "SELECT c.id AS c_id, c.conversation AS c_conversation, c.version AS c_version,
        c.history_from AS c_history_from, c.left_at AS c_left_at, m.*
    FROM conversations c
    LEFT JOIN messages m ON m.conversation = c.conversation AND m.message_id = c.last_message_id";

/// Rows `w` (watcher → target) and `t` (target → watcher) that let presence flow from target to
/// watcher; `$1`, `$2`, `$3` are the forward, allow and block bits.
macro_rules! presence_flows {
    ($select:literal, $account:literal) => {
        concat!(
            "SELECT ", $select, " AS name FROM contacts w ",
            "JOIN contacts t ON t.owner = w.contact AND t.contact = w.owner WHERE ", $account,
            " = $4 AND (w.bits & $1) != 0 AND (t.bits & $2) != 0 AND (w.bits & $3) = 0 AND (t.bits & $3) = 0",
            " ORDER BY name"
        )
    };
}

/// The three bits of a presence flow, then the account.
fn flow_params(account: &AccountName) -> Vec<Param<'_>> {
    vec![
        Param::Int(list_bits::FORWARD.into()),
        Param::Int(list_bits::ALLOW.into()),
        Param::Int(list_bits::BLOCK.into()),
        Param::Text(account.as_str()),
    ]
}

/// Completes [`SUMMARY_SELECT`] rows with their properties (one query for all of them).
async fn summaries<DB: Dialect>(
    pool: &Pool<DB>,
    account: &AccountName,
    rows: &[DB::Row],
) -> StorageResult<Vec<ConversationSummary>> {
    let ids = rows
        .iter()
        .map(rows::summary_id)
        .collect::<StorageResult<Vec<_>>>()?;
    let mut properties: std::collections::HashMap<String, Vec<(String, String)>> =
        std::collections::HashMap::new();
    if !ids.is_empty() {
        let list = ids.iter().map(String::as_str).collect();
        let params = vec![Param::Text(account.as_str()), Param::List(list)];
        for r in DB::fetch_all(pool, DB::PROPERTIES_OF, params).await? {
            properties
                .entry(r.text("id")?)
                .or_default()
                .push((r.text("name")?, r.text("value")?));
        }
    }
    rows.iter()
        .zip(ids)
        .map(|(row, id)| rows::summary(row, properties.remove(&id).unwrap_or_default()))
        .collect()
}

#[async_trait]
impl<B: SqlBackend> AccountStore for B {
    async fn create_account(
        &self,
        name: &AccountName,
        password_hash: &str,
        legacy_hash: &str,
    ) -> StorageResult<Account> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let params = vec![
            Param::Text(name.as_str()),
            Param::Text(password_hash),
            Param::Text(legacy_hash),
            Param::Int(now),
        ];
        let row = B::Db::fetch_optional(self.pool(), B::Db::CREATE_ACCOUNT, params)
            .await
            .map_err(conflict_or)?
            .ok_or_else(|| StorageError::Corrupt("the new account was not returned".into()))?;
        rows::account(&row)
    }

    async fn account(&self, name: &AccountName) -> StorageResult<Option<Account>> {
        let sql = "SELECT * FROM accounts WHERE name = $1";
        let row = B::Db::fetch_optional(self.pool(), sql, vec![Param::Text(name.as_str())]).await?;
        row.as_ref().map(rows::account).transpose()
    }

    async fn list_accounts(&self) -> StorageResult<Vec<Account>> {
        let sql = "SELECT * FROM accounts ORDER BY name";
        let rows = B::Db::fetch_all(self.pool(), sql, Vec::new()).await?;
        rows.iter().map(rows::account).collect()
    }

    async fn account_by_email(&self, email: &str) -> StorageResult<Option<Account>> {
        let email = email.to_ascii_lowercase();
        let sql = "SELECT * FROM accounts WHERE email = $1";
        let row = B::Db::fetch_optional(self.pool(), sql, vec![Param::Text(&email)]).await?;
        row.as_ref().map(rows::account).transpose()
    }

    async fn accounts_by_email(&self, emails: &[String]) -> StorageResult<Vec<Account>> {
        if emails.is_empty() {
            return Ok(Vec::new());
        }
        let lower: Vec<String> = emails.iter().map(|e| e.to_ascii_lowercase()).collect();
        let list = vec![Param::List(lower.iter().map(String::as_str).collect())];
        let rows = B::Db::fetch_all(self.pool(), B::Db::ACCOUNTS_BY_EMAIL, list).await?;
        rows.iter().map(rows::account).collect()
    }

    async fn set_password(
        &self,
        name: &AccountName,
        password_hash: &str,
        legacy_hash: &str,
    ) -> StorageResult<bool> {
        let sql = "UPDATE accounts SET password_hash = $1, legacy_hash = $2, generation = generation + 1 WHERE name = $3";
        let params = vec![
            Param::Text(password_hash),
            Param::Text(legacy_hash),
            Param::Text(name.as_str()),
        ];
        Ok(B::Db::execute(self.pool(), sql, params).await? == 1)
    }

    async fn update_profile(
        &self,
        name: &AccountName,
        update: &ProfileUpdate,
    ) -> StorageResult<bool> {
        // Empty strings clear a field; NULL parameters keep it.
        let clear = |v: &Option<String>| v.as_ref().map(|s| s.trim().to_string());
        let email = clear(&update.email).map(|e| e.to_ascii_lowercase());
        let (display_name, mood) = (clear(&update.display_name), clear(&update.mood));
        let sql = "UPDATE accounts SET \
               email = CASE WHEN CAST($1 AS TEXT) IS NULL THEN email WHEN $1 = '' THEN NULL ELSE $1 END, \
               display_name = CASE WHEN CAST($2 AS TEXT) IS NULL THEN display_name WHEN $2 = '' THEN NULL ELSE $2 END, \
               mood = CASE WHEN CAST($3 AS TEXT) IS NULL THEN mood WHEN $3 = '' THEN NULL ELSE $3 END \
             WHERE name = $4";
        let params = vec![
            Param::OptText(email.as_deref()),
            Param::OptText(display_name.as_deref()),
            Param::OptText(mood.as_deref()),
            Param::Text(name.as_str()),
        ];
        let done = B::Db::execute(self.pool(), sql, params)
            .await
            .map_err(conflict_or)?;
        Ok(done == 1)
    }

    async fn remove_account(&self, name: &AccountName) -> StorageResult<bool> {
        // The account's own view of conversations goes with it, and so do its thread memberships
        // (a name taken again must not inherit them). A thread left without an admin gets one at
        // its next change; one left empty is no longer found.
        self.delete_account(name).await
    }
}

#[async_trait]
impl<B: SqlBackend> ContactStore for B {
    async fn contacts(&self, owner: &AccountName) -> StorageResult<Vec<Contact>> {
        let sql = "SELECT contact, bits FROM contacts WHERE owner = $1 ORDER BY contact";
        let rows = B::Db::fetch_all(self.pool(), sql, vec![Param::Text(owner.as_str())]).await?;
        rows.iter().map(rows::contact).collect()
    }

    async fn contact_relations(
        &self,
        owner: &AccountName,
        others: &[AccountName],
    ) -> StorageResult<Vec<ContactRelation>> {
        if others.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for the whole batch: a client lists hundreds of names per command.
        let names = others.iter().map(AccountName::as_str).collect();
        let params = vec![Param::Text(owner.as_str()), Param::List(names)];
        let rows = B::Db::fetch_all(self.pool(), B::Db::CONTACT_RELATIONS, params).await?;
        rows::relations_in_order(others, &rows)
    }

    async fn update_contacts(&self, updates: &[ContactUpdate]) -> StorageResult<Vec<(u32, u32)>> {
        self.write_contacts(updates).await
    }

    async fn presence_watchers(&self, account: &AccountName) -> StorageResult<Vec<AccountName>> {
        let sql = presence_flows!("w.owner", "w.contact");
        let rows = B::Db::fetch_all(self.pool(), sql, flow_params(account)).await?;
        rows.iter().map(|r| rows::name(r, "name")).collect()
    }

    async fn presence_visible(&self, account: &AccountName) -> StorageResult<Vec<AccountName>> {
        let sql = presence_flows!("w.contact", "w.owner");
        let rows = B::Db::fetch_all(self.pool(), sql, flow_params(account)).await?;
        rows.iter().map(|r| rows::name(r, "name")).collect()
    }

    async fn set_request_greeting(
        &self,
        owner: &AccountName,
        sender: &AccountName,
        greeting: &str,
    ) -> StorageResult<()> {
        let sql = "INSERT INTO request_greetings (owner, sender, greeting) VALUES ($1, $2, $3) \
             ON CONFLICT (owner, sender) DO UPDATE SET greeting = excluded.greeting";
        let params = vec![
            Param::Text(owner.as_str()),
            Param::Text(sender.as_str()),
            Param::Text(greeting),
        ];
        B::Db::execute(self.pool(), sql, params).await?;
        Ok(())
    }

    async fn pending_requests(&self, owner: &AccountName) -> StorageResult<Vec<PendingRequest>> {
        let sql = "SELECT c.contact AS sender, c.updated_at AS at, COALESCE(g.greeting, '') AS greeting \
             FROM contacts c LEFT JOIN request_greetings g ON g.owner = c.owner AND g.sender = c.contact \
             WHERE c.owner = $1 AND (c.bits & $2) != 0 ORDER BY c.updated_at, c.contact";
        let params = vec![
            Param::Text(owner.as_str()),
            Param::Int(list_bits::PENDING.into()),
        ];
        let rows = B::Db::fetch_all(self.pool(), sql, params).await?;
        rows.iter().map(rows::pending_request).collect()
    }

    async fn is_blocked(&self, a: &AccountName, b: &AccountName) -> StorageResult<bool> {
        let sql = "SELECT bits FROM contacts \
             WHERE ((owner = $1 AND contact = $2) OR (owner = $2 AND contact = $1)) \
             AND (bits & $3) != 0 LIMIT 1";
        let params = vec![
            Param::Text(a.as_str()),
            Param::Text(b.as_str()),
            Param::Int(list_bits::BLOCK.into()),
        ];
        Ok(B::Db::fetch_optional(self.pool(), sql, params)
            .await?
            .is_some())
    }
}

#[async_trait]
impl<B: SqlBackend> MessageStore for B {
    async fn store_message(&self, message: NewMessage) -> StorageResult<StoredMessage> {
        self.write_message(message).await
    }

    async fn store_direct_message(
        &self,
        message: NewMessage,
        sender: &AccountName,
        recipient: &AccountName,
    ) -> StorageResult<DirectOutcome> {
        self.write_direct_message(message, sender, recipient).await
    }

    async fn conversation_messages(&self, conversation: &str) -> StorageResult<Vec<StoredMessage>> {
        let sql = "SELECT * FROM messages WHERE conversation = $1 ORDER BY message_id";
        let rows = B::Db::fetch_all(self.pool(), sql, vec![Param::Text(conversation)]).await?;
        rows.iter().map(rows::message).collect()
    }

    async fn record_ack(&self, ack: AckRecord) -> StorageResult<()> {
        self.write_ack(ack).await
    }
}

#[async_trait]
impl<B: SqlBackend> ConversationStore for B {
    async fn recent_conversations(
        &self,
        account: &AccountName,
        start_ms: i64,
        after: Option<&RecentPosition>,
        limit: u32,
    ) -> StorageResult<Vec<ConversationSummary>> {
        let (after_version, after_id) = match after {
            Some(p) => (p.version, p.id.as_str()),
            None => (i64::MAX, ""),
        };
        let sql = format!(
            "{SUMMARY_SELECT} WHERE c.account = $1 AND c.version >= $2
               AND (c.version < $3 OR (c.version = $3 AND $4 <> '' AND c.id < $4))
             ORDER BY c.version DESC, c.id DESC LIMIT $5"
        );
        let params = vec![
            Param::Text(account.as_str()),
            Param::Int(start_ms),
            Param::Int(after_version),
            Param::Text(after_id),
            Param::Int(limit.into()),
        ];
        let rows = B::Db::fetch_all(self.pool(), &sql, params).await?;
        summaries(self.pool(), account, &rows).await
    }

    async fn conversation(
        &self,
        account: &AccountName,
        id: &str,
    ) -> StorageResult<Option<ConversationSummary>> {
        let sql = format!("{SUMMARY_SELECT} WHERE c.account = $1 AND c.id = $2");
        let params = vec![Param::Text(account.as_str()), Param::Text(id)];
        let rows = B::Db::fetch_all(self.pool(), &sql, params).await?;
        Ok(summaries(self.pool(), account, &rows)
            .await?
            .into_iter()
            .next())
    }

    async fn history(
        &self,
        account: &AccountName,
        id: &str,
        start_ms: i64,
        before: Option<i64>,
        limit: u32,
    ) -> StorageResult<Vec<StoredMessage>> {
        let sql = format!(
            "SELECT m.* FROM conversations c JOIN messages m ON m.conversation = c.conversation
             WHERE c.account = $1 AND c.id = $2 AND m.message_id >= {}(c.history_from, $3)
               AND m.message_id < $4
               AND m.message_id <= COALESCE(c.left_at, 9223372036854775807)
             ORDER BY m.message_id DESC LIMIT $5",
            B::Db::GREATEST
        );
        let params = vec![
            Param::Text(account.as_str()),
            Param::Text(id),
            Param::Int(start_ms),
            Param::Int(before.unwrap_or(i64::MAX)),
            Param::Int(limit.into()),
        ];
        let rows = B::Db::fetch_all(self.pool(), &sql, params).await?;
        rows.iter().map(rows::message).collect()
    }

    async fn set_conversation_properties(
        &self,
        account: &AccountName,
        id: &str,
        key: &str,
        properties: &[(String, String)],
        now_ms: i64,
    ) -> StorageResult<ConversationSummary> {
        self.write_properties(account, id, key, properties, now_ms)
            .await?;
        self.conversation(account, id)
            .await?
            .ok_or_else(|| StorageError::Corrupt(format!("conversation {id} vanished")))
    }
}

#[async_trait]
impl<B: SqlBackend> ThreadStore for B {
    async fn thread(&self, id: &str) -> StorageResult<Option<ThreadRecord>> {
        self.read_thread(id).await
    }

    async fn apply_thread_change(&self, change: ThreadChange) -> StorageResult<Vec<StoredMessage>> {
        self.write_thread_change(change).await
    }
}

#[async_trait]
impl<B: SqlBackend> AdminStore for B {
    async fn put_setting(&self, setting: Setting) -> StorageResult<()> {
        let (sql, mut params) = match &setting.scope {
            SettingScope::Endpoint(epid) => (
                "INSERT INTO endpoint_settings (account, epid, kind, value, updated_at) VALUES ($1, $5, $2, $3, $4) \
                 ON CONFLICT (account, epid, kind) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                vec![Param::Text(epid)],
            ),
            SettingScope::Account => (
                "INSERT INTO account_settings (account, kind, value, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (account, kind) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                Vec::new(),
            ),
        };
        params.splice(
            0..0,
            [
                Param::Text(&setting.account),
                Param::Text(&setting.kind),
                Param::Text(&setting.value),
                Param::Int(setting.updated_at),
            ],
        );
        B::Db::execute(self.pool(), sql, params).await?;
        Ok(())
    }

    async fn settings(&self) -> StorageResult<Vec<Setting>> {
        // The account-wide settings (no endpoint) sort before the others.
        let sql = "SELECT account, epid, kind, value, updated_at FROM endpoint_settings \
             UNION ALL SELECT account, NULL, kind, value, updated_at FROM account_settings \
             ORDER BY 1, 2 NULLS FIRST, 3";
        let rows = B::Db::fetch_all(self.pool(), sql, Vec::new()).await?;
        rows.iter().map(rows::setting).collect()
    }

    async fn add_spam_reports(&self, reports: &[SpamReport]) -> StorageResult<()> {
        let sql = "INSERT INTO spam_reports (reporter, reporter_epid, reported, reported_at) VALUES ($1, $2, $3, $4)";
        let sets = reports
            .iter()
            .map(|r| {
                vec![
                    Param::Text(&r.reporter),
                    Param::Text(&r.reporter_epid),
                    Param::Text(&r.reported),
                    Param::Int(r.reported_at),
                ]
            })
            .collect();
        B::Db::execute_each(self.pool(), sql, sets).await?;
        Ok(())
    }

    async fn spam_reports(&self) -> StorageResult<Vec<SpamReport>> {
        let sql = "SELECT reporter, reporter_epid, reported, reported_at FROM spam_reports ORDER BY reported_at, id";
        let rows = B::Db::fetch_all(self.pool(), sql, Vec::new()).await?;
        rows.iter().map(rows::spam_report).collect()
    }

    async fn get_or_create_secret(&self, name: &str, candidate: &[u8]) -> StorageResult<Vec<u8>> {
        // Two statements on purpose: after a concurrent insert wins, DO NOTHING returns no row,
        // and only a new statement's snapshot sees the winner's value.
        let insert =
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
        let params = vec![Param::Text(name), Param::Bytes(candidate)];
        B::Db::execute(self.pool(), insert, params).await?;
        let select = "SELECT value FROM secrets WHERE name = $1";
        let row = B::Db::fetch_optional(self.pool(), select, vec![Param::Text(name)])
            .await?
            .ok_or_else(|| StorageError::Corrupt(format!("secret {name} vanished")))?;
        row.blob("value")
    }

    async fn close(&self) {
        self.shut_down().await;
    }
}
