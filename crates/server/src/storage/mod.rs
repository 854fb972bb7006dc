//! Durable state behind small traits, one per concern, so that handlers never know which database
//! they talk to. SQLite is the embedded default; PostgreSQL serves several nodes sharing one
//! database. [`Storage`] is the sum of the concerns, for callers that hold the whole store.
//!
//! The two SQL backends share everything their dialects agree on ([`sql`]: statements and the
//! reads built on them; [`rows`]: one mapping from columns to records) and implement only what
//! they do their own way (their writers, transactions and caches) in their own directories.

use async_trait::async_trait;
use msnp24_proto::AccountName;

pub mod postgres;
mod records;
mod rows;
pub(crate) mod sql;
pub mod sqlite;

pub use postgres::PostgresStorage;
pub use records::*;
pub use sqlite::SqliteStorage;

/// Storage failures; `Conflict` is the only one callers are expected to handle.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A unique value (such as an account name) is already taken.
    #[error("already exists")]
    Conflict,
    /// The database failed; the operation had no effect.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The SQLite writer's own connection failed; the operation had no effect.
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    /// Migrations could not be applied.
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be read back.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The write was not committed (its batch failed, or storage is closing).
    #[error("not committed: {0}")]
    NotCommitted(String),
}

impl From<sqlx::Error> for StorageError {
    /// Every database failure passes here, so this is where it is counted.
    fn from(e: sqlx::Error) -> StorageError {
        crate::stats::database_error();
        StorageError::Database(e)
    }
}

impl From<rusqlite::Error> for StorageError {
    /// The SQLite writer's failures are counted with the others.
    fn from(e: rusqlite::Error) -> StorageError {
        crate::stats::database_error();
        StorageError::Sqlite(e)
    }
}

/// Result alias for storage calls.
pub type StorageResult<T> = Result<T, StorageError>;

/// The conversation key of a one-to-one exchange: both addresses in sorted order.
pub fn conversation_key(a: &str, b: &str) -> String {
    if a <= b {
        format!("{a}|{b}")
    } else {
        format!("{b}|{a}")
    }
}

/// Accounts: who exists, their credentials and profile.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Creates an account with both password hashes; `Conflict` if the name is taken.
    async fn create_account(
        &self,
        name: &AccountName,
        password_hash: &str,
        legacy_hash: &str,
    ) -> StorageResult<Account>;
    /// Looks an account up by name.
    async fn account(&self, name: &AccountName) -> StorageResult<Option<Account>>;
    /// Every account, by name.
    async fn list_accounts(&self) -> StorageResult<Vec<Account>>;
    /// Looks an account up by its e-mail alias (lower case).
    async fn account_by_email(&self, email: &str) -> StorageResult<Option<Account>>;
    /// The accounts whose e-mail alias is one of `emails` (any case), in one query, in any order.
    async fn accounts_by_email(&self, emails: &[String]) -> StorageResult<Vec<Account>>;
    /// Replaces both password hashes and bumps the generation (revoking earlier tokens); false if
    /// there is no such account.
    async fn set_password(
        &self,
        name: &AccountName,
        password_hash: &str,
        legacy_hash: &str,
    ) -> StorageResult<bool>;
    /// Changes profile fields; `Conflict` if the e-mail alias belongs to another account, false if
    /// there is no such account.
    async fn update_profile(
        &self,
        name: &AccountName,
        update: &ProfileUpdate,
    ) -> StorageResult<bool>;
    /// Deletes an account; false if there was none.
    async fn remove_account(&self, name: &AccountName) -> StorageResult<bool>;
}

/// Contact lists, blocks, requests and the presence flows they allow.
#[async_trait]
pub trait ContactStore: Send + Sync + 'static {
    /// An account's contact list, by contact name.
    async fn contacts(&self, owner: &AccountName) -> StorageResult<Vec<Contact>>;
    /// The rows between `owner` and each of `others` that is an account; other names are left
    /// out, so this also tells which names exist.
    async fn contact_relations(
        &self,
        owner: &AccountName,
        others: &[AccountName],
    ) -> StorageResult<Vec<ContactRelation>>;
    /// Applies every update in one transaction; returns each row's bits before and after, in order.
    async fn update_contacts(&self, updates: &[ContactUpdate]) -> StorageResult<Vec<(u32, u32)>>;
    /// Accounts that may see `account`'s presence: they forward it, it allows them, and neither
    /// blocks the other.
    async fn presence_watchers(&self, account: &AccountName) -> StorageResult<Vec<AccountName>>;
    /// Accounts whose presence `account` may see (the other direction of
    /// [`ContactStore::presence_watchers`]).
    async fn presence_visible(&self, account: &AccountName) -> StorageResult<Vec<AccountName>>;
    /// Keeps the greeting of `sender`'s contact request to `owner`, replacing an earlier one.
    async fn set_request_greeting(
        &self,
        owner: &AccountName,
        sender: &AccountName,
        greeting: &str,
    ) -> StorageResult<()>;
    /// The contact requests `owner` has not answered, oldest first.
    async fn pending_requests(&self, owner: &AccountName) -> StorageResult<Vec<PendingRequest>>;
    /// Whether either account blocks the other (messaging uses this to drop messages silently).
    async fn is_blocked(&self, a: &AccountName, b: &AccountName) -> StorageResult<bool>;
}

/// The message path: durable writes the sender's reply waits for, and their acknowledgements.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores a message durably (a retry with the same client message id returns the first copy).
    async fn store_message(&self, message: NewMessage) -> StorageResult<StoredMessage>;
    /// Stores a one-to-one message from `sender` to `recipient` if the recipient is an account and
    /// neither blocks the other (the checks are skipped when they are the same account).
    async fn store_direct_message(
        &self,
        message: NewMessage,
        sender: &AccountName,
        recipient: &AccountName,
    ) -> StorageResult<DirectOutcome>;
    /// Messages of a conversation, oldest first (for tests and tools).
    async fn conversation_messages(&self, conversation: &str) -> StorageResult<Vec<StoredMessage>>;
    /// Records an endpoint's acknowledgement.
    async fn record_ack(&self, ack: AckRecord) -> StorageResult<()>;
}

/// Each account's view of its conversations: what sync and history list.
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// The account's conversations changed at or after `start_ms`, most recent first (by version,
    /// then id), strictly after `after` in that order, at most `limit`.
    async fn recent_conversations(
        &self,
        account: &AccountName,
        start_ms: i64,
        after: Option<&RecentPosition>,
        limit: u32,
    ) -> StorageResult<Vec<ConversationSummary>>;
    /// One conversation of the account, if it has it.
    async fn conversation(
        &self,
        account: &AccountName,
        id: &str,
    ) -> StorageResult<Option<ConversationSummary>>;
    /// The account's messages of conversation `id`, newest first: ids at or after `start_ms` (and
    /// the account's history start), below `before` if given, at most `limit`.
    async fn history(
        &self,
        account: &AccountName,
        id: &str,
        start_ms: i64,
        before: Option<i64>,
        limit: u32,
    ) -> StorageResult<Vec<StoredMessage>>;
    /// Merges `properties` into the account's conversation `id` (created with key `key` if new),
    /// sets its version to `now_ms` (kept increasing) and returns it.
    async fn set_conversation_properties(
        &self,
        account: &AccountName,
        id: &str,
        key: &str,
        properties: &[(String, String)],
        now_ms: i64,
    ) -> StorageResult<ConversationSummary>;
}

/// Group chats: their state, members and changes.
#[async_trait]
pub trait ThreadStore: Send + Sync + 'static {
    /// An open thread (one with members), if there is one with this id.
    async fn thread(&self, id: &str) -> StorageResult<Option<ThreadRecord>>;
    /// Applies a thread change, its membership and its activity messages in one transaction;
    /// returns the stored activity messages in order.
    async fn apply_thread_change(&self, change: ThreadChange) -> StorageResult<Vec<StoredMessage>>;
}

/// What the server keeps for itself and its operators: client settings, spam reports, shared
/// secrets, and the store's own lifecycle.
#[async_trait]
pub trait AdminStore: Send + Sync + 'static {
    /// Stores (replacing) one setting.
    async fn put_setting(&self, setting: Setting) -> StorageResult<()>;
    /// Every stored setting, by account, endpoint and kind.
    async fn settings(&self) -> StorageResult<Vec<Setting>>;
    /// Stores the aliases of one spam report in one transaction.
    async fn add_spam_reports(&self, reports: &[SpamReport]) -> StorageResult<()>;
    /// Every spam report, oldest first.
    async fn spam_reports(&self) -> StorageResult<Vec<SpamReport>>;
    /// The secret stored under `name`, storing `candidate` first when there is none; every caller
    /// (every node sharing the database) gets the first value stored.
    async fn get_or_create_secret(&self, name: &str, candidate: &[u8]) -> StorageResult<Vec<u8>>;
    /// Commits pending writes and closes the connections; nothing may be called afterwards.
    async fn close(&self);
}

/// Every store trait, for code that calls a concrete backend (trait objects of [`Storage`] need
/// no import).
pub mod prelude {
    pub use super::{
        AccountStore, AdminStore, ContactStore, ConversationStore, MessageStore, Storage,
        ThreadStore,
    };
}

/// Everything the server keeps on disk: the sum of the concerns, implemented by every type that
/// implements them all, so that a caller holding the whole store names one trait.
pub trait Storage:
    AccountStore + ContactStore + MessageStore + ConversationStore + ThreadStore + AdminStore
{
}

impl<T> Storage for T where
    T: AccountStore + ContactStore + MessageStore + ConversationStore + ThreadStore + AdminStore
{
}

/// [`MessageStore::store_direct_message`] for a backend that checks with reads before the write
/// (rather than in the write's own transaction).
pub(crate) async fn store_direct_after_reads<S>(
    store: &S,
    message: NewMessage,
    sender: &AccountName,
    recipient: &AccountName,
) -> StorageResult<DirectOutcome>
where
    S: AccountStore + ContactStore + MessageStore + ?Sized,
{
    if sender != recipient {
        if store.account(recipient).await?.is_none() {
            return Ok(DirectOutcome::UnknownRecipient);
        }
        if store.is_blocked(sender, recipient).await? {
            return Ok(DirectOutcome::Blocked);
        }
    }
    Ok(DirectOutcome::Stored(Box::new(
        store.store_message(message).await?,
    )))
}
