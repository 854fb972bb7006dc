//! The SQLite writer: one thread that owns its connection and commits whole batches of writes,
//! each in one transaction with one fsync, answering each caller only after the commit.

use std::path::Path;
use std::time::Duration;

use msnp24_proto::AccountName;
use rusqlite::OptionalExtension;
use tokio::sync::{mpsc, oneshot};

use crate::storage::rows;
use crate::storage::sql::{
    DELETE_THREAD_MEMBER, INSERT_ACK, STORED_RETRY, UPSERT_THREAD, UPSERT_THREAD_MEMBER,
};
use crate::storage::{
    list_bits, AckRecord, DirectOutcome, NewMessage, StorageError, StorageResult, StoredMessage,
    ThreadChange,
};

/// Most writes committed by one transaction; a larger queue waits for the next one.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer before callers are held back.
pub(super) const WRITE_QUEUE: usize = 4096;

/// A write for the group-commit writer, with where to send its outcome once its batch committed.
pub(super) enum Write {
    Message(NewMessage, oneshot::Sender<StorageResult<StoredMessage>>),
    /// A one-to-one message, stored only if its recipient exists and neither party blocks the
    /// other: checked by the writer in the batch's transaction, so no read crosses threads first.
    Direct(
        NewMessage,
        DirectParties,
        oneshot::Sender<StorageResult<DirectOutcome>>,
    ),
    Ack(AckRecord, oneshot::Sender<StorageResult<()>>),
    Thread(
        Box<ThreadChange>,
        oneshot::Sender<StorageResult<Vec<StoredMessage>>>,
    ),
    /// Finish what is queued, then stop.
    Stop(oneshot::Sender<()>),
}

/// The sender and the recipient of a [`Write::Direct`].
pub(super) struct DirectParties {
    pub(super) sender: AccountName,
    pub(super) recipient: AccountName,
}

/// What a write did inside its batch: answered only after the batch's commit.
enum Outcome {
    /// A direct message refused by its checks: nothing written.
    Refused(DirectOutcome),
    /// A new message under this id.
    Stored(i64),
    /// A retry of a message already stored: its first copy.
    Duplicate(Box<StoredMessage>),
    /// An acknowledgement recorded.
    Acked,
    /// A thread change applied, with its activity messages as stored.
    Thread(Vec<StoredMessage>),
}

/// Sends a write its outcome, or `failure` instead when its batch did not commit.
fn answer(w: Write, outcome: StorageResult<Outcome>, failure: Option<&str>) {
    let outcome = match failure {
        Some(msg) => Err(StorageError::NotCommitted(msg.to_string())),
        None => outcome,
    };
    match w {
        Write::Message(message, tx) => {
            let _ = tx.send(outcome.and_then(|o| match o {
                Outcome::Stored(message_id) => Ok(StoredMessage {
                    message_id,
                    message,
                    duplicate: false,
                }),
                Outcome::Duplicate(first) => Ok(*first),
                Outcome::Acked | Outcome::Refused(_) | Outcome::Thread(_) => {
                    Err(StorageError::Corrupt("a message answered as an ack".into()))
                }
            }));
        }
        Write::Direct(message, _, tx) => {
            let _ = tx.send(outcome.and_then(|o| match o {
                Outcome::Stored(message_id) => Ok(DirectOutcome::Stored(Box::new(StoredMessage {
                    message_id,
                    message,
                    duplicate: false,
                }))),
                Outcome::Duplicate(first) => Ok(DirectOutcome::Stored(first)),
                Outcome::Refused(refused) => Ok(refused),
                Outcome::Acked | Outcome::Thread(_) => {
                    Err(StorageError::Corrupt("a message answered as an ack".into()))
                }
            }));
        }
        Write::Thread(_, tx) => {
            let _ = tx.send(outcome.and_then(|o| match o {
                Outcome::Thread(stored) => Ok(stored),
                _ => Err(StorageError::Corrupt(
                    "a thread change answered as another write".into(),
                )),
            }));
        }
        Write::Ack(_, tx) => {
            let _ = tx.send(outcome.map(|_| ()));
        }
        Write::Stop(tx) => {
            let _ = tx.send(());
        }
    }
}

pub(super) fn writer_gone() -> StorageError {
    StorageError::NotCommitted("storage is closed".into())
}

/// Opens the writer's own connection to the file (after the pool created and migrated it), with
/// the same durability settings: WAL, and an fsync on every commit.
pub(super) fn open_writer(path: &Path) -> StorageResult<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // Every statement the writer runs is prepared once and kept.
    conn.set_prepared_statement_cache_capacity(16);
    Ok(conn)
}

/// The single writer, on a thread of its own that owns its connection: it sleeps until a write
/// arrives, takes every write already queued (up to [`MAX_BATCH`]) into one transaction, commits
/// it with one fsync, and only then answers each caller. While a batch commits, new writes queue
/// up without waking it, so the batch size follows the load without any added delay, and each
/// batch costs one wake-up instead of a hand-off per statement.
pub(super) fn run_writer(conn: rusqlite::Connection, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut stop: Option<oneshot::Sender<()>> = None;
    while stop.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let mut writes = Vec::with_capacity(batch.len());
        for w in batch.drain(..) {
            match w {
                Write::Stop(tx) => stop = Some(tx),
                w => writes.push(w),
            }
        }
        if !writes.is_empty() {
            commit_batch(&conn, writes);
        }
    }
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "WAL checkpoint at close failed; the log is kept");
    }
    drop(conn);
    if let Some(tx) = stop {
        // Writes queued after the stop request are refused rather than left waiting.
        rx.close();
        while let Ok(w) = rx.try_recv() {
            match w {
                Write::Message(_, tx) => {
                    let _ = tx.send(Err(writer_gone()));
                }
                Write::Direct(_, _, tx) => {
                    let _ = tx.send(Err(writer_gone()));
                }
                Write::Thread(_, tx) => {
                    let _ = tx.send(Err(writer_gone()));
                }
                Write::Ack(_, tx) => {
                    let _ = tx.send(Err(writer_gone()));
                }
                Write::Stop(tx) => {
                    let _ = tx.send(());
                }
            }
        }
        let _ = tx.send(());
    }
}

/// Why a batch did not get to its commit.
enum Unapplied {
    /// No transaction could be started.
    Begin(String),
    /// A write failed; the transaction was rolled back (only without savepoints).
    Write,
    /// A savepoint could not be undone or released: nothing may be committed.
    Savepoint,
}

fn commit_batch(conn: &rusqlite::Connection, writes: Vec<Write>) {
    let count = writes.len();
    let started = std::time::Instant::now();
    // Without a savepoint per write a batch costs two statements per message instead of four;
    // write failures are rare enough to pay for the batch twice when one happens.
    let mut result = apply_batch(conn, &writes, false);
    if matches!(result, Err(Unapplied::Write)) {
        tracing::warn!(count, "a write failed; retrying its batch write by write");
        result = apply_batch(conn, &writes, true);
    }
    let outcomes = match result {
        Ok(done) => done,
        Err(why) => {
            let msg = match why {
                Unapplied::Begin(msg) => msg,
                Unapplied::Write | Unapplied::Savepoint => "savepoint failed".to_string(),
            };
            tracing::error!(count, error = %msg, "write batch not applied");
            for w in writes {
                answer(w, Ok(Outcome::Acked), Some(&msg));
            }
            return;
        }
    };
    let failure = match conn.execute_batch("COMMIT") {
        Ok(()) => {
            tracing::trace!(count, "write batch committed");
            crate::stats::batch_committed(count, started.elapsed());
            None
        }
        Err(e) => {
            tracing::error!(error = %e, count, "write batch not committed");
            roll_back(conn);
            Some(e.to_string())
        }
    };
    for (w, outcome) in writes.into_iter().zip(outcomes) {
        answer(w, outcome, failure.as_deref());
    }
}

/// Applies every write in one open transaction and leaves it uncommitted, returning each write's
/// outcome. With `isolate`, each write runs in its own savepoint so that one failing write does
/// not take the others down; without, the first failure rolls everything back.
fn apply_batch(
    conn: &rusqlite::Connection,
    writes: &[Write],
    isolate: bool,
) -> Result<Vec<StorageResult<Outcome>>, Unapplied> {
    // IMMEDIATE takes the write lock up front, so a batch never fails half-way on a lock upgrade.
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| Unapplied::Begin(e.to_string()))?;
    let applied = apply_writes(conn, writes, isolate);
    if applied.is_err() {
        roll_back(conn);
    }
    applied
}

fn apply_writes(
    tx: &rusqlite::Connection,
    writes: &[Write],
    isolate: bool,
) -> Result<Vec<StorageResult<Outcome>>, Unapplied> {
    let mut outcomes = Vec::with_capacity(writes.len());
    for w in writes {
        if isolate && tx.execute_batch("SAVEPOINT w").is_err() {
            return Err(Unapplied::Savepoint);
        }
        let outcome = match w {
            Write::Message(m, _) => insert_message(tx, m),
            Write::Direct(m, parties, _) => match direct_refusal(tx, parties) {
                Ok(None) => insert_message(tx, m),
                Ok(Some(refused)) => Ok(Outcome::Refused(refused)),
                Err(e) => Err(e),
            },
            Write::Ack(a, _) => insert_ack(tx, a).map(|()| Outcome::Acked),
            Write::Thread(change, _) => write_thread_change(tx, change).map(Outcome::Thread),
            Write::Stop(_) => Ok(Outcome::Acked),
        };
        if !isolate {
            if outcome.is_err() {
                return Err(Unapplied::Write);
            }
        } else {
            let undone = outcome.is_ok() || tx.execute_batch("ROLLBACK TO w").is_ok();
            if !undone || tx.execute_batch("RELEASE w").is_err() {
                // A write that cannot be undone must not be committed half-way.
                return Err(Unapplied::Savepoint);
            }
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Ends the writer's open transaction without committing it, if one is open.
fn roll_back(conn: &rusqlite::Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "rolling back a write batch failed");
        }
    }
}

/// Inserts a message unless its client message id is already stored, computing its id.
///
/// Message ids are arrival times in ms, made strictly increasing within a conversation so that
/// two messages in the same millisecond still get distinct ids, and so that a new message always
/// sorts after every stored one (history pages never shift). The MIN keeps the + 1 from
/// overflowing into a float.
const INSERT_MESSAGE: &str =
    "INSERT INTO messages (conversation, message_id, sender, sender_epid, recipient, client_message_id, message_type, headers, content, arrival_ms)
     VALUES (?1, MAX(COALESCE(MIN((SELECT MAX(message_id) FROM messages WHERE conversation = ?1), 9223372036854775806) + 1, ?9), ?9),
             ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
     ON CONFLICT DO NOTHING RETURNING message_id";

/// What the conversation upserts do with a row that exists: versions and last ids only grow.
macro_rules! conversation_upsert {
    ($select:literal) => {
        concat!(
            "INSERT INTO conversations (account, id, conversation, version, last_message_id, history_from) ",
            $select,
            " ON CONFLICT (account, id) DO UPDATE SET
                 version = MAX(version, excluded.version),
                 last_message_id = MAX(COALESCE(last_message_id, 0), excluded.last_message_id)"
        )
    };
}

/// One participant's conversation row: (?1 account, ?2 the id it sees, ?3 key, ?4 message id).
/// A new row's history starts when the account was created, so a name that is removed and taken
/// again does not inherit the old account's conversations.
const UPSERT_CONVERSATION: &str = conversation_upsert!(
    "SELECT ?1, ?2, ?3, ?4, ?4, COALESCE((SELECT created_at * 1000 FROM accounts WHERE name = ?1), 0)"
);

/// A thread: every member names it by the same id (?2), so the members (?1) travel as a plain
/// JSON array of names, one statement for hundreds of rows. `WHERE true` keeps SQLite from
/// reading the upsert's ON as a join constraint.
const UPSERT_THREAD_CONVERSATIONS: &str = conversation_upsert!(
    "SELECT p.value, ?2, ?3, ?4, ?4,
            COALESCE((SELECT created_at * 1000 FROM accounts WHERE name = p.value), 0)
     FROM json_each(?1) AS p WHERE true"
);

/// Stores a message unless it is a retry, and updates its participants' conversation rows.
fn insert_message(tx: &rusqlite::Connection, message: &NewMessage) -> StorageResult<Outcome> {
    let inserted: Option<i64> = tx
        .prepare_cached(INSERT_MESSAGE)?
        .query_row(
            rusqlite::params![
                message.conversation,
                message.sender,
                message.sender_epid,
                message.recipient,
                message.client_message_id,
                message.message_type,
                message.headers,
                message.content,
                message.arrival_ms,
            ],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(message_id) = inserted {
        upsert_conversations(tx, message, message_id)?;
        return Ok(Outcome::Stored(message_id));
    }
    // Skipped on a conflict: the client message id is taken (a retry), or the id is.
    let existing = match &message.client_message_id {
        Some(cmid) => tx
            .prepare_cached(STORED_RETRY)?
            .query_row(
                rusqlite::params![message.conversation, message.sender, cmid],
                |row| Ok(rows::message(row)),
            )
            .optional()?
            .transpose()?,
        None => None,
    };
    let mut first = existing.ok_or_else(|| {
        StorageError::Corrupt(format!(
            "no free message id left in conversation {}",
            message.conversation
        ))
    })?;
    first.duplicate = true;
    Ok(Outcome::Duplicate(Box::new(first)))
}

/// Applies a thread change, its membership and its activity messages in the writer's
/// transaction; returns the stored activity messages in order.
fn write_thread_change(
    tx: &rusqlite::Connection,
    change: &ThreadChange,
) -> StorageResult<Vec<StoredMessage>> {
    let t = &change.thread;
    tx.prepare_cached(UPSERT_THREAD)?
        .execute(rusqlite::params![
            t.id,
            t.creator,
            t.topic,
            t.version,
            t.members.is_empty()
        ])?;
    for gone in &change.left {
        tx.prepare_cached(DELETE_THREAD_MEMBER)?
            .execute(rusqlite::params![t.id, gone.as_str()])?;
    }
    let mut member = tx.prepare_cached(UPSERT_THREAD_MEMBER)?;
    for m in &t.members {
        member.execute(rusqlite::params![
            t.id,
            m.account.as_str(),
            m.role,
            m.joined_ms
        ])?;
    }
    // A joining member's history of the thread starts now, even when it was a member before.
    for joined in &change.joined {
        let from = t
            .members
            .iter()
            .find(|m| &m.account == joined)
            .map_or(t.version, |m| m.joined_ms);
        tx.prepare_cached(
            "INSERT INTO conversations (account, id, conversation, version, history_from, left_at)
             VALUES (?1, ?2, ?2, ?3, ?3, NULL)
             ON CONFLICT (account, id) DO UPDATE SET history_from = ?3, left_at = NULL,
                 version = MAX(version, ?3)",
        )?
        .execute(rusqlite::params![joined.as_str(), t.id, from])?;
    }
    let mut stored = Vec::with_capacity(change.activity.len());
    for message in &change.activity {
        stored.push(match insert_message(tx, message)? {
            Outcome::Stored(message_id) => StoredMessage {
                message_id,
                message: message.clone(),
                duplicate: false,
            },
            Outcome::Duplicate(first) => *first,
            Outcome::Acked | Outcome::Refused(_) | Outcome::Thread(_) => {
                return Err(StorageError::Corrupt("a message stored as an ack".into()))
            }
        });
    }
    for gone in &change.left {
        let last_seen = stored
            .iter()
            .filter(|m| m.message.participants.iter().any(|p| &p.account == gone))
            .map(|m| m.message_id)
            .max()
            .unwrap_or(t.version);
        tx.prepare_cached("UPDATE conversations SET left_at = ? WHERE account = ? AND id = ?")?
            .execute(rusqlite::params![last_seen, gone.as_str(), t.id])?;
    }
    Ok(stored)
}

/// Why a direct message may not be stored, if it may not: its recipient is no account, or one
/// of the two blocks the other.
fn direct_refusal(
    tx: &rusqlite::Connection,
    parties: &DirectParties,
) -> StorageResult<Option<DirectOutcome>> {
    if parties.sender == parties.recipient {
        return Ok(None);
    }
    let (exists, blocked): (bool, bool) = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM accounts WHERE name = ?2),
                    EXISTS (SELECT 1 FROM contacts
                            WHERE ((owner = ?1 AND contact = ?2) OR (owner = ?2 AND contact = ?1))
                              AND (bits & ?3) != 0)",
        )?
        .query_row(
            rusqlite::params![
                parties.sender.as_str(),
                parties.recipient.as_str(),
                list_bits::BLOCK
            ],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
    Ok(if !exists {
        Some(DirectOutcome::UnknownRecipient)
    } else if blocked {
        Some(DirectOutcome::Blocked)
    } else {
        None
    })
}

/// Updates every participant's conversation row with a message just stored.
fn upsert_conversations(
    tx: &rusqlite::Connection,
    message: &NewMessage,
    message_id: i64,
) -> StorageResult<()> {
    let Some((first, rest)) = message.participants.split_first() else {
        return Ok(());
    };
    if !rest.is_empty()
        && rest
            .iter()
            .all(|p| p.conversation_id == first.conversation_id)
    {
        let accounts: Vec<&str> = message
            .participants
            .iter()
            .map(|p| p.account.as_str())
            .collect();
        tx.prepare_cached(UPSERT_THREAD_CONVERSATIONS)?
            .execute(rusqlite::params![
                to_json(&accounts)?,
                first.conversation_id,
                message.conversation,
                message_id,
            ])?;
        return Ok(());
    }
    let mut upsert = tx.prepare_cached(UPSERT_CONVERSATION)?;
    for p in &message.participants {
        upsert.execute(rusqlite::params![
            p.account.as_str(),
            p.conversation_id,
            message.conversation,
            message_id,
        ])?;
    }
    Ok(())
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> StorageResult<String> {
    serde_json::to_string(value).map_err(|e| StorageError::Corrupt(format!("JSON parameter: {e}")))
}

fn insert_ack(tx: &rusqlite::Connection, ack: &AckRecord) -> StorageResult<()> {
    let (conversation, message_id) = match &ack.message {
        Some((c, m)) => (Some(c), Some(*m)),
        None => (None, None),
    };
    tx.prepare_cached(INSERT_ACK)?.execute(rusqlite::params![
        ack.account.as_str(),
        ack.epid,
        ack.ack_id,
        conversation,
        message_id,
        ack.acked_ms,
    ])?;
    Ok(())
}
