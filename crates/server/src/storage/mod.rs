//! Durable state behind one small trait, so that handlers never know which database they talk to.
//! SQLite is the embedded default; PostgreSQL serves several nodes sharing one database.

use async_trait::async_trait;
use msnp24_proto::AccountName;

pub mod postgres;
pub mod sqlite;

pub use postgres::PostgresStorage;
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
    /// E-mail alias (lower case): the login form accepts it and `1:<email>` addresses the account.
    pub email: Option<String>,
    /// Display name served by the profile endpoints.
    pub display_name: Option<String>,
    /// Mood text served by the profile endpoints.
    pub mood: Option<String>,
    /// argon2 hash of the legacy Skype digest base64(MD5(name + "\nskyper\n" + password)).
    pub legacy_hash: Option<String>,
}

/// Profile fields to change; `None` leaves a field as it is, `Some("")` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileUpdate {
    /// New e-mail alias.
    pub email: Option<String>,
    /// New display name.
    pub display_name: Option<String>,
    /// New mood.
    pub mood: Option<String>,
}

/// An account taking part in a conversation, and the id under which it sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// The account.
    pub account: AccountName,
    /// The conversation as this account names it: the other party (`8:bob`) or the thread id.
    pub conversation_id: String,
}

/// A message to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Conversation key (see [`conversation_key`]).
    pub conversation: String,
    /// Whose history the message enters (their recent-conversations rows are updated with it).
    pub participants: Vec<Participant>,
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

/// What became of a one-to-one message offered with [`Storage::store_direct_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectOutcome {
    /// Stored (or a retry of a stored message: its first copy, marked `duplicate`).
    Stored(Box<StoredMessage>),
    /// The recipient is not an account; nothing was stored.
    UnknownRecipient,
    /// One of the two blocks the other; nothing was stored.
    Blocked,
}

/// The list bits of a contact-list row (§4.1). One place for these numbers: the wire, the domain
/// and the SQL all use these.
pub mod list_bits {
    /// I watch them (their presence reaches me).
    pub const FORWARD: u32 = 1;
    /// They may see me and write to me.
    pub const ALLOW: u32 = 2;
    /// Nothing flows either way.
    pub const BLOCK: u32 = 4;
    /// They asked to add me and I have not answered.
    pub const PENDING: u32 = 8;
    /// Every bit that exists.
    pub const ALL: u32 = FORWARD | ALLOW | BLOCK | PENDING;
}

/// One row of an account's contact list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The contact's account.
    pub name: AccountName,
    /// The owner's bits for it ([`list_bits`]).
    pub bits: u32,
}

/// The two rows between an owner and one other account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRelation {
    /// The other account.
    pub name: AccountName,
    /// The owner's bits for it (0 when it is not in the owner's list).
    pub mine: u32,
    /// Its bits for the owner (0 when the owner is not in its list).
    pub theirs: u32,
}

/// The relations of those of `others` found (by name: the owner's bits, then theirs), in the
/// order asked; both backends answer so.
pub(crate) fn relations_in_order(
    others: &[AccountName],
    found: &std::collections::HashMap<String, (u32, u32)>,
) -> Vec<ContactRelation> {
    others
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
        .collect()
}

/// A contact request the recipient has not answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRequest {
    /// Who asked.
    pub sender: AccountName,
    /// When the request arrived, unix seconds.
    pub at: i64,
    /// The greeting it carried (empty when it came over MSNP).
    pub greeting: String,
}

/// An atomic change to one row: `bits = (bits | set) & !clear`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactUpdate {
    /// The list's owner.
    pub owner: AccountName,
    /// The contact the row is about.
    pub contact: AccountName,
    /// Bits to set.
    pub set: u32,
    /// Bits to clear (applied after `set`).
    pub clear: u32,
}

/// One account's view of a conversation: what sync lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The id this account sees (`8:bob`, `19:…@thread.skype`).
    pub id: String,
    /// The conversation key of its messages.
    pub key: String,
    /// Time of the last change, ms.
    pub version: i64,
    /// Messages older than this (ms) are not this account's.
    pub history_from: i64,
    /// For a thread the account has left: the id of the message that removed it (ms).
    pub left_at: Option<i64>,
    /// Properties set with `PUT MSGR\CONVERSATION`, in the order first set.
    pub properties: Vec<(String, String)>,
    /// The newest message this account may see.
    pub last_message: Option<StoredMessage>,
}

/// Where a page of recent conversations ended (the last one returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentPosition {
    /// Its version.
    pub version: i64,
    /// Its id (orders conversations with equal versions).
    pub id: String,
}

/// An endpoint's acknowledgement of a delivery (`ACK MSGR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRecord {
    /// The acknowledging account.
    pub account: AccountName,
    /// Its endpoint.
    pub epid: String,
    /// The `Ack-Id` it sent.
    pub ack_id: String,
    /// The conversation key and message id, when the `Ack-Id` is one this connection handed out.
    pub message: Option<(String, i64)>,
    /// When, unix ms.
    pub acked_ms: i64,
}

/// One member of a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadMember {
    /// The account.
    pub account: AccountName,
    /// `admin` or `user`.
    pub role: String,
    /// When it joined, ms.
    pub joined_ms: i64,
}

/// A group chat as stored: what `NFY MSGR\THREAD` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadRecord {
    /// `19:<32 hex>@thread.skype`.
    pub id: String,
    /// The creator's address, `8:name`.
    pub creator: String,
    /// The topic, empty when none was set.
    pub topic: String,
    /// Time of the last change, ms.
    pub version: i64,
    /// Members, longest-standing first (empty once the thread is closed).
    pub members: Vec<ThreadMember>,
}

/// One change of a thread, applied in one transaction: its new state, who joined and who left,
/// and the activity messages that record it (each with its own participants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadChange {
    /// The thread after the change; no members closes it.
    pub thread: ThreadRecord,
    /// Accounts that joined: their history of the thread starts now.
    pub joined: Vec<AccountName>,
    /// Accounts that left: their history ends with the last activity message they take part in.
    pub left: Vec<AccountName>,
    /// `ThreadActivity/*` messages, stored in order.
    pub activity: Vec<NewMessage>,
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
    /// Stores a message durably (a retry with the same client message id returns the first copy).
    async fn store_message(&self, message: NewMessage) -> StorageResult<StoredMessage>;
    /// Stores a one-to-one message from `sender` to `recipient` if the recipient is an account and
    /// neither blocks the other (the checks are skipped when they are the same account). A backend
    /// may make the checks where it makes the write, in the same step; this one reads first.
    async fn store_direct_message(
        &self,
        message: NewMessage,
        sender: &AccountName,
        recipient: &AccountName,
    ) -> StorageResult<DirectOutcome> {
        if sender != recipient {
            if self.account(recipient).await?.is_none() {
                return Ok(DirectOutcome::UnknownRecipient);
            }
            if self.is_blocked(sender, recipient).await? {
                return Ok(DirectOutcome::Blocked);
            }
        }
        Ok(DirectOutcome::Stored(Box::new(
            self.store_message(message).await?,
        )))
    }
    /// Messages of a conversation, oldest first (for tests and tools).
    async fn conversation_messages(&self, conversation: &str) -> StorageResult<Vec<StoredMessage>>;
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
    /// Accounts whose presence `account` may see (the other direction of [`Storage::presence_watchers`]).
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
    /// Records an endpoint's acknowledgement.
    async fn record_ack(&self, ack: AckRecord) -> StorageResult<()>;
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
    /// Stores (replacing) one setting.
    async fn put_setting(&self, setting: Setting) -> StorageResult<()>;
    /// Every stored setting, by account, endpoint and kind.
    async fn settings(&self) -> StorageResult<Vec<Setting>>;
    /// Stores the aliases of one spam report in one transaction.
    async fn add_spam_reports(&self, reports: &[SpamReport]) -> StorageResult<()>;
    /// Every spam report, oldest first.
    async fn spam_reports(&self) -> StorageResult<Vec<SpamReport>>;
    /// An open thread (one with members), if there is one with this id.
    async fn thread(&self, id: &str) -> StorageResult<Option<ThreadRecord>>;
    /// Applies a thread change, its membership and its activity messages in one transaction;
    /// returns the stored activity messages in order.
    async fn apply_thread_change(&self, change: ThreadChange) -> StorageResult<Vec<StoredMessage>>;
    /// The secret stored under `name`, storing `candidate` first when there is none; every caller
    /// (every node sharing the database) gets the first value stored.
    async fn get_or_create_secret(&self, name: &str, candidate: &[u8]) -> StorageResult<Vec<u8>>;
    /// Commits pending writes and closes the connections; nothing may be called afterwards.
    async fn close(&self);
}
