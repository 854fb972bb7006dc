//! The records storage reads and writes, the same for every backend.

use msnp24_proto::AccountName;

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
    /// Conversation key (see [`super::conversation_key`]).
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

/// What became of a one-to-one message offered with [`super::MessageStore::store_direct_message`].
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
