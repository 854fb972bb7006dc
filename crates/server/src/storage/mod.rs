//! Durable state behind one small trait, so that handlers never know which database they talk to.
//! SQLite is the embedded default; a PostgreSQL implementation can sit beside it.

use async_trait::async_trait;
use msnp24_proto::AccountName;

pub mod sqlite;

pub use sqlite::SqliteStorage;

/// Storage failures; `Conflict` is the only one callers are expected to handle.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A unique value (such as an account name) is already taken.
    #[error("already exists")]
    Conflict,
    /// The database failed; the operation had no effect.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be read back.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// Result alias for storage calls.
pub type StorageResult<T> = Result<T, StorageError>;

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Database id.
    pub id: i64,
    /// The account's (Skype) name.
    pub name: AccountName,
    /// PHC-format argon2 hash of the password.
    pub password_hash: String,
    /// Bumped whenever earlier tokens must stop working (password change).
    pub generation: i64,
    /// Creation time, unix seconds.
    pub created_at: i64,
}

/// A message to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Conversation key (see [`conversation_key`]).
    pub conversation: String,
    /// Sender's address, `8:name`.
    pub sender: String,
    /// Sender's endpoint id.
    pub sender_epid: String,
    /// Recipient address as the sender wrote it (normalised).
    pub recipient: String,
    /// The client's `Client-Message-ID`, used to store retries once.
    pub client_message_id: Option<String>,
    /// `Message-Type`.
    pub message_type: String,
    /// Every Messaging header in order, as `Name: value` lines.
    pub headers: String,
    /// The body.
    pub content: Vec<u8>,
    /// Arrival time, unix ms.
    pub arrival_ms: i64,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The server's `Message-ID` (arrival ms, unique within the conversation).
    pub message_id: i64,
    /// The stored fields.
    pub message: NewMessage,
    /// True when this was a retry of an already stored message.
    pub duplicate: bool,
}

/// The conversation key of a one-to-one exchange: both addresses in sorted order.
pub fn conversation_key(a: &str, b: &str) -> String {
    if a <= b {
        format!("{a}|{b}")
    } else {
        format!("{b}|{a}")
    }
}

/// Where a stored setting applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingScope {
    /// One endpoint of an account (`PARTNERS`, `OPTIONS`).
    Endpoint(String),
    /// The whole account (`NETWORKS`).
    Account,
}

/// A setting a client stored with `PUT MSGR\PARTNERS`, `\OPTIONS` or `\NETWORKS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The account's address, `8:name`.
    pub account: String,
    /// The endpoint, or the whole account.
    pub scope: SettingScope,
    /// `partners`, `options` or `networks`.
    pub kind: String,
    /// The body as the server re-wrote it (canonical XML).
    pub value: String,
    /// Last change, unix seconds.
    pub updated_at: i64,
}

/// One reported alias of a `PUT MSGR\REPORTSPAM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpamReport {
    /// Who reported, `8:name`.
    pub reporter: String,
    /// From which endpoint.
    pub reporter_epid: String,
    /// The alias reported, as the client wrote it.
    pub reported: String,
    /// When, unix seconds.
    pub reported_at: i64,
}

/// Everything the server keeps on disk.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Creates an account; `Conflict` if the name is taken.
    async fn create_account(
        &self,
        name: &AccountName,
        password_hash: &str,
    ) -> StorageResult<Account>;
    /// Looks an account up by name.
    async fn account(&self, name: &AccountName) -> StorageResult<Option<Account>>;
    /// Every account, by name.
    async fn list_accounts(&self) -> StorageResult<Vec<Account>>;
    /// Replaces the password hash and bumps the generation; false if there is no such account.
    async fn set_password(&self, name: &AccountName, password_hash: &str) -> StorageResult<bool>;
    /// Deletes an account; false if there was none.
    async fn remove_account(&self, name: &AccountName) -> StorageResult<bool>;
    /// Stores a message durably (a retry with the same client message id returns the first copy).
    async fn store_message(&self, message: NewMessage) -> StorageResult<StoredMessage>;
    /// Messages of a conversation, oldest first (for tests and history).
    async fn conversation_messages(&self, conversation: &str) -> StorageResult<Vec<StoredMessage>>;
    /// Stores (replacing) one setting.
    async fn put_setting(&self, setting: Setting) -> StorageResult<()>;
    /// Every stored setting, by account, endpoint and kind.
    async fn settings(&self) -> StorageResult<Vec<Setting>>;
    /// Stores the aliases of one spam report in one transaction.
    async fn add_spam_reports(&self, reports: &[SpamReport]) -> StorageResult<()>;
    /// Every spam report, oldest first.
    async fn spam_reports(&self) -> StorageResult<Vec<SpamReport>>;
}
