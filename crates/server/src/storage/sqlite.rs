//! The embedded default: one SQLite file in WAL mode with full synchronous commits, so that a
//! message acknowledged to its sender survives a crash.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use msnp24_proto::AccountName;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::{
    list_bits, Account, AckRecord, Contact, ContactRelation, ContactUpdate, ConversationSummary,
    DirectOutcome, NewMessage, PendingRequest, ProfileUpdate, RecentPosition, Setting,
    SettingScope, SpamReport, Storage, StorageError, StorageResult, StoredMessage, ThreadChange,
    ThreadMember, ThreadRecord,
};

/// Most writes committed by one transaction; a larger queue waits for the next one.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer before callers are held back.
const WRITE_QUEUE: usize = 4096;

/// SQLite-backed [`Storage`].
#[derive(Clone)]
pub struct SqliteStorage {
    pool: SqlitePool,
    writer: mpsc::Sender<Write>,
    threads: Arc<Mutex<HashMap<String, CachedThread>>>,
}

/// A thread's record as last read, with what tells whether it is still current: every change
/// made through [`Storage::apply_thread_change`] moves `version`, and a member removed with its
/// account (by this process or by the admin tool in another) lowers the count; a member added
/// raises the highest `seq`.
struct CachedThread {
    members: i64,
    max_seq: i64,
    record: ThreadRecord,
}

/// Threads whose members are kept in memory; past this the cache starts again empty.
const CACHED_THREADS: usize = 4096;

/// The thread's row and the validators of [`CachedThread`], in one query.
const THREAD_STATE: &str = "SELECT t.id, t.creator, t.topic, t.version,
        (SELECT COUNT(*) FROM thread_members m WHERE m.thread = t.id) AS members,
        (SELECT COALESCE(MAX(seq), 0) FROM thread_members m WHERE m.thread = t.id) AS max_seq
    FROM threads t WHERE t.id = ? AND t.closed = 0";

/// A write for the group-commit writer, with where to send its outcome once its batch committed.
enum Write {
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
struct DirectParties {
    sender: AccountName,
    recipient: AccountName,
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

fn writer_gone() -> StorageError {
    StorageError::NotCommitted("storage is closed".into())
}

/// Opens the writer's own connection to the file (after the pool created and migrated it), with
/// the same durability settings: WAL, and an fsync on every commit.
fn open_writer(path: &Path) -> StorageResult<rusqlite::Connection> {
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
fn run_writer(conn: rusqlite::Connection, mut rx: mpsc::Receiver<Write>) {
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
    use rusqlite::OptionalExtension;
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
            .prepare_cached(
                "SELECT * FROM messages WHERE conversation = ? AND sender = ? AND client_message_id = ?",
            )?
            .query_row(
                rusqlite::params![message.conversation, message.sender, cmid],
                stored_message_from_row,
            )
            .optional()?,
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
    tx.prepare_cached(
        "INSERT INTO threads (id, creator, topic, version, closed) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET topic = ?3, version = ?4, closed = ?5",
    )?
    .execute(rusqlite::params![
        t.id,
        t.creator,
        t.topic,
        t.version,
        t.members.is_empty()
    ])?;
    for gone in &change.left {
        tx.prepare_cached("DELETE FROM thread_members WHERE thread = ? AND account = ?")?
            .execute(rusqlite::params![t.id, gone.as_str()])?;
    }
    let mut member = tx.prepare_cached(
        "INSERT INTO thread_members (thread, account, role, joined_ms, seq)
         VALUES (?1, ?2, ?3, ?4, (SELECT COALESCE(MAX(seq), 0) + 1 FROM thread_members WHERE thread = ?1))
         ON CONFLICT (thread, account) DO UPDATE SET role = excluded.role",
    )?;
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

/// A `messages` row read by the writer.
fn stored_message_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        message_id: row.get("message_id")?,
        duplicate: false,
        message: NewMessage {
            conversation: row.get("conversation")?,
            sender: row.get("sender")?,
            sender_epid: row.get("sender_epid")?,
            recipient: row.get("recipient")?,
            client_message_id: row.get("client_message_id")?,
            message_type: row.get("message_type")?,
            headers: row.get("headers")?,
            content: row.get("content")?,
            arrival_ms: row.get("arrival_ms")?,
            participants: Vec::new(),
        },
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> StorageResult<String> {
    serde_json::to_string(value).map_err(|e| StorageError::Corrupt(format!("JSON parameter: {e}")))
}

fn insert_ack(tx: &rusqlite::Connection, ack: &AckRecord) -> StorageResult<()> {
    let (conversation, message_id) = match &ack.message {
        Some((c, m)) => (Some(c), Some(*m)),
        None => (None, None),
    };
    tx.prepare_cached(
        "INSERT INTO message_acks (account, epid, ack_id, conversation, message_id, acked_ms) VALUES (?, ?, ?, ?, ?, ?)",
    )?
    .execute(rusqlite::params![
        ack.account.as_str(),
        ack.epid,
        ack.ack_id,
        conversation,
        message_id,
        ack.acked_ms,
    ])?;
    Ok(())
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Writes a consistent copy of the database at `db` to `dest` (which must not exist) while a
/// server may be using it, with `VACUUM INTO`: one read transaction sees one committed state, and
/// in WAL mode it never blocks the server's writes. (SQLite's online backup API copies in steps and
/// starts over whenever another connection writes in between, so under a steady stream of
/// messages a stepped backup may never finish; in one step it is no better than this.)
pub async fn backup_into(db: &Path, dest: &Path) -> StorageResult<()> {
    let dest = dest
        .to_str()
        .ok_or_else(|| StorageError::Corrupt("backup path is not UTF-8".into()))?;
    let options = SqliteConnectOptions::from_str("sqlite:")?
        .filename(db)
        .read_only(true)
        .busy_timeout(Duration::from_secs(10));
    let mut conn = sqlx::ConnectOptions::connect(&options).await?;
    sqlx::query("VACUUM INTO ?")
        .bind(dest)
        .execute(&mut conn)
        .await?;
    sqlx::Connection::close(conn).await?;
    Ok(())
}

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
            // An embedded file does not go stale the way a network connection does, and the
            // check is one more round trip to the connection's thread on every query.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let conn = open_writer(path)?;
        let (writer, rx) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run_writer(conn, rx))
            .map_err(|e| StorageError::NotCommitted(format!("cannot start the writer: {e}")))?;
        Ok(SqliteStorage {
            pool,
            writer,
            threads: Arc::default(),
        })
    }

    /// Commits every queued write, stops the writer and closes the pool.
    pub async fn close(&self) {
        // The pool closes first, so that the writer's checkpoint is the last connection's.
        self.pool.close().await;
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Write::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// SQLite's own consistency check: empty when the file is sound, else what is wrong.
    pub async fn integrity_check(&self) -> StorageResult<Vec<String>> {
        let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    /// The thread cache; a panic elsewhere while it was held leaves nothing half-written in it
    /// (each change is one insert or clear), so a poisoned lock is still usable.
    fn thread_cache(&self) -> MutexGuard<'_, HashMap<String, CachedThread>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn submit(&self, write: Write) -> StorageResult<()> {
        self.writer.send(write).await.map_err(|_| writer_gone())
    }

    async fn properties(
        &self,
        account: &AccountName,
        id: &str,
    ) -> StorageResult<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT name, value FROM conversation_properties WHERE account = ? AND id = ? ORDER BY position",
        )
        .bind(account.as_str())
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("value")?)))
            .collect()
    }

    /// Completes conversation rows (joined with their last message) with their properties.
    async fn summaries(
        &self,
        account: &AccountName,
        rows: &[SqliteRow],
    ) -> StorageResult<Vec<ConversationSummary>> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("c_id")?;
            let history_from: i64 = row.try_get("c_history_from")?;
            let left_at: Option<i64> = row.try_get("c_left_at")?;
            let has_message: Option<i64> = row.try_get("message_id")?;
            // A thread the account left shows no message (§6: an empty `<messages/>`).
            let last_message = match has_message {
                Some(mid) if mid >= history_from && left_at.is_none() => {
                    Some(message_from_row(row)?)
                }
                _ => None,
            };
            out.push(ConversationSummary {
                properties: self.properties(account, &id).await?,
                key: row.try_get("c_conversation")?,
                version: row.try_get("c_version")?,
                history_from,
                left_at,
                last_message,
                id,
            });
        }
        Ok(out)
    }
}

/// Conversation rows with their last message (message columns NULL when there is none).
const SUMMARY_SELECT: &str =
    "SELECT c.id AS c_id, c.conversation AS c_conversation, c.version AS c_version,
        c.history_from AS c_history_from, c.left_at AS c_left_at, m.*
    FROM conversations c
    LEFT JOIN messages m ON m.conversation = c.conversation AND m.message_id = c.last_message_id";

fn account_from_row(row: &sqlx::sqlite::SqliteRow) -> StorageResult<Account> {
    let name: String = row.try_get("name")?;
    Ok(Account {
        id: row.try_get("id")?,
        name: AccountName::parse(&name)
            .map_err(|e| StorageError::Corrupt(format!("account name {name:?}: {e}")))?,
        password_hash: row.try_get("password_hash")?,
        generation: row.try_get("generation")?,
        created_at: row.try_get("created_at")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        mood: row.try_get("mood")?,
        legacy_hash: row.try_get("legacy_hash")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn message_from_row(row: &SqliteRow) -> StorageResult<StoredMessage> {
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
            participants: Vec::new(),
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
        legacy_hash: &str,
    ) -> StorageResult<Account> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let row = sqlx::query(
            "INSERT INTO accounts (name, password_hash, legacy_hash, created_at) VALUES (?, ?, ?, ?) RETURNING *",
        )
        .bind(name.as_str())
        .bind(password_hash)
        .bind(legacy_hash)
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

    async fn account_by_email(&self, email: &str) -> StorageResult<Option<Account>> {
        let row = sqlx::query("SELECT * FROM accounts WHERE email = ?")
            .bind(email.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn accounts_by_email(&self, emails: &[String]) -> StorageResult<Vec<Account>> {
        if emails.is_empty() {
            return Ok(Vec::new());
        }
        let lower: Vec<String> = emails.iter().map(|e| e.to_ascii_lowercase()).collect();
        let rows =
            sqlx::query("SELECT * FROM accounts WHERE email IN (SELECT value FROM json_each(?))")
                .bind(to_json(&lower)?)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(account_from_row).collect()
    }

    async fn set_password(
        &self,
        name: &AccountName,
        password_hash: &str,
        legacy_hash: &str,
    ) -> StorageResult<bool> {
        let done = sqlx::query(
            "UPDATE accounts SET password_hash = ?, legacy_hash = ?, generation = generation + 1 WHERE name = ?",
        )
        .bind(password_hash)
        .bind(legacy_hash)
        .bind(name.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn update_profile(
        &self,
        name: &AccountName,
        update: &ProfileUpdate,
    ) -> StorageResult<bool> {
        // Empty strings clear a field; NULL parameters keep it.
        let clear = |v: &Option<String>| v.as_ref().map(|s| s.trim().to_string());
        let done = sqlx::query(
            "UPDATE accounts SET \
               email = CASE WHEN ?1 IS NULL THEN email WHEN ?1 = '' THEN NULL ELSE ?1 END, \
               display_name = CASE WHEN ?2 IS NULL THEN display_name WHEN ?2 = '' THEN NULL ELSE ?2 END, \
               mood = CASE WHEN ?3 IS NULL THEN mood WHEN ?3 = '' THEN NULL ELSE ?3 END \
             WHERE name = ?4",
        )
        .bind(clear(&update.email).map(|e| e.to_ascii_lowercase()))
        .bind(clear(&update.display_name))
        .bind(clear(&update.mood))
        .bind(name.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StorageError::Conflict
            } else {
                e.into()
            }
        })?;
        Ok(done.rows_affected() == 1)
    }

    async fn remove_account(&self, name: &AccountName) -> StorageResult<bool> {
        // The other parties keep the messages; the account's own view of them goes with it, and so
        // do its thread memberships (a name taken again must not inherit them). A thread left
        // without an admin gets one at its next change; one left empty is no longer found.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query("DELETE FROM accounts WHERE name = ?")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        for table in [
            "conversations",
            "conversation_properties",
            "message_acks",
            "thread_members",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE account = ?"))
                .bind(name.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn store_message(&self, message: NewMessage) -> StorageResult<StoredMessage> {
        let (tx, rx) = oneshot::channel();
        self.submit(Write::Message(message, tx)).await?;
        rx.await.map_err(|_| writer_gone())?
    }

    async fn store_direct_message(
        &self,
        message: NewMessage,
        sender: &AccountName,
        recipient: &AccountName,
    ) -> StorageResult<DirectOutcome> {
        let (tx, rx) = oneshot::channel();
        let parties = DirectParties {
            sender: sender.clone(),
            recipient: recipient.clone(),
        };
        self.submit(Write::Direct(message, parties, tx)).await?;
        rx.await.map_err(|_| writer_gone())?
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
        if others.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for the whole batch: a client lists hundreds of names per command.
        let names: Vec<&str> = others.iter().map(AccountName::as_str).collect();
        let rows = sqlx::query(
            "SELECT a.name, \
                    (SELECT bits FROM contacts WHERE owner = ?1 AND contact = a.name), \
                    (SELECT bits FROM contacts WHERE owner = a.name AND contact = ?1) \
             FROM accounts a WHERE a.name IN (SELECT value FROM json_each(?2))",
        )
        .bind(owner.as_str())
        .bind(to_json(&names)?)
        .fetch_all(&self.pool)
        .await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get(0)?;
            let mine = stored_bits(row.try_get::<Option<i64>, _>(1)?.unwrap_or(0))?;
            let theirs = stored_bits(row.try_get::<Option<i64>, _>(2)?.unwrap_or(0))?;
            found.insert(name, (mine, theirs));
        }
        Ok(super::relations_in_order(others, &found))
    }

    async fn update_contacts(&self, updates: &[ContactUpdate]) -> StorageResult<Vec<(u32, u32)>> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // IMMEDIATE: the rows are read then written, and a deferred transaction could fail on
        // the lock upgrade while the message writer commits.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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

    async fn record_ack(&self, ack: AckRecord) -> StorageResult<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(Write::Ack(ack, tx)).await?;
        rx.await.map_err(|_| writer_gone())?
    }

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
            "{SUMMARY_SELECT} WHERE c.account = ?1 AND c.version >= ?2
               AND (c.version < ?3 OR (c.version = ?3 AND ?4 <> '' AND c.id < ?4))
             ORDER BY c.version DESC, c.id DESC LIMIT ?5"
        );
        let rows = sqlx::query(&sql)
            .bind(account.as_str())
            .bind(start_ms)
            .bind(after_version)
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        self.summaries(account, &rows).await
    }

    async fn conversation(
        &self,
        account: &AccountName,
        id: &str,
    ) -> StorageResult<Option<ConversationSummary>> {
        let sql = format!("{SUMMARY_SELECT} WHERE c.account = ? AND c.id = ?");
        let rows = sqlx::query(&sql)
            .bind(account.as_str())
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(self.summaries(account, &rows).await?.into_iter().next())
    }

    async fn history(
        &self,
        account: &AccountName,
        id: &str,
        start_ms: i64,
        before: Option<i64>,
        limit: u32,
    ) -> StorageResult<Vec<StoredMessage>> {
        let rows = sqlx::query(
            "SELECT m.* FROM conversations c JOIN messages m ON m.conversation = c.conversation
             WHERE c.account = ? AND c.id = ? AND m.message_id >= MAX(c.history_from, ?) AND m.message_id < ?
               AND m.message_id <= COALESCE(c.left_at, 9223372036854775807)
             ORDER BY m.message_id DESC LIMIT ?",
        )
        .bind(account.as_str())
        .bind(id)
        .bind(start_ms)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(message_from_row).collect()
    }

    async fn set_conversation_properties(
        &self,
        account: &AccountName,
        id: &str,
        key: &str,
        properties: &[(String, String)],
        now_ms: i64,
    ) -> StorageResult<ConversationSummary> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO conversations (account, id, conversation, version, history_from)
             VALUES (?1, ?2, ?3, ?4, COALESCE((SELECT created_at * 1000 FROM accounts WHERE name = ?1), 0))
             ON CONFLICT (account, id) DO UPDATE SET version = MAX(version + 1, excluded.version)",
        )
        .bind(account.as_str())
        .bind(id)
        .bind(key)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        for (name, value) in properties {
            sqlx::query(
                "INSERT INTO conversation_properties (account, id, name, value, position)
                 VALUES (?1, ?2, ?3, ?4, (SELECT COALESCE(MAX(position), 0) + 1 FROM conversation_properties WHERE account = ?1 AND id = ?2))
                 ON CONFLICT (account, id, name) DO UPDATE SET value = excluded.value",
            )
            .bind(account.as_str())
            .bind(id)
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.conversation(account, id)
            .await?
            .ok_or_else(|| StorageError::Corrupt(format!("conversation {id} vanished")))
    }

    async fn put_setting(&self, setting: Setting) -> StorageResult<()> {
        match &setting.scope {
            SettingScope::Endpoint(epid) => {
                sqlx::query(
                    "INSERT INTO endpoint_settings (account, epid, kind, value, updated_at) VALUES (?, ?, ?, ?, ?) \
                     ON CONFLICT (account, epid, kind) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )
                .bind(&setting.account)
                .bind(epid)
                .bind(&setting.kind)
                .bind(&setting.value)
                .bind(setting.updated_at)
                .execute(&self.pool)
                .await?;
            }
            SettingScope::Account => {
                sqlx::query(
                    "INSERT INTO account_settings (account, kind, value, updated_at) VALUES (?, ?, ?, ?) \
                     ON CONFLICT (account, kind) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )
                .bind(&setting.account)
                .bind(&setting.kind)
                .bind(&setting.value)
                .bind(setting.updated_at)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    async fn settings(&self) -> StorageResult<Vec<Setting>> {
        let rows = sqlx::query(
            "SELECT account, epid, kind, value, updated_at FROM endpoint_settings \
             UNION ALL SELECT account, NULL, kind, value, updated_at FROM account_settings \
             ORDER BY 1, 2, 3",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let epid: Option<String> = row.try_get(1)?;
                Ok(Setting {
                    account: row.try_get(0)?,
                    scope: epid.map_or(SettingScope::Account, SettingScope::Endpoint),
                    kind: row.try_get(2)?,
                    value: row.try_get(3)?,
                    updated_at: row.try_get(4)?,
                })
            })
            .collect()
    }

    async fn add_spam_reports(&self, reports: &[SpamReport]) -> StorageResult<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for r in reports {
            sqlx::query(
                "INSERT INTO spam_reports (reporter, reporter_epid, reported, reported_at) VALUES (?, ?, ?, ?)",
            )
            .bind(&r.reporter)
            .bind(&r.reporter_epid)
            .bind(&r.reported)
            .bind(r.reported_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn spam_reports(&self) -> StorageResult<Vec<SpamReport>> {
        let rows = sqlx::query(
            "SELECT reporter, reporter_epid, reported, reported_at FROM spam_reports ORDER BY reported_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SpamReport {
                    reporter: row.try_get("reporter")?,
                    reporter_epid: row.try_get("reporter_epid")?,
                    reported: row.try_get("reported")?,
                    reported_at: row.try_get("reported_at")?,
                })
            })
            .collect()
    }

    async fn set_request_greeting(
        &self,
        owner: &AccountName,
        sender: &AccountName,
        greeting: &str,
    ) -> StorageResult<()> {
        sqlx::query(
            "INSERT INTO request_greetings (owner, sender, greeting) VALUES (?, ?, ?) \
             ON CONFLICT (owner, sender) DO UPDATE SET greeting = excluded.greeting",
        )
        .bind(owner.as_str())
        .bind(sender.as_str())
        .bind(greeting)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn pending_requests(&self, owner: &AccountName) -> StorageResult<Vec<PendingRequest>> {
        let rows = sqlx::query(
            "SELECT c.contact, c.updated_at, COALESCE(g.greeting, '') AS greeting FROM contacts c \
             LEFT JOIN request_greetings g ON g.owner = c.owner AND g.sender = c.contact \
             WHERE c.owner = ? AND (c.bits & ?) != 0 ORDER BY c.updated_at, c.contact",
        )
        .bind(owner.as_str())
        .bind(i64::from(list_bits::PENDING))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PendingRequest {
                    sender: stored_name(&r.try_get::<String, _>(0)?)?,
                    at: r.try_get(1)?,
                    greeting: r.try_get(2)?,
                })
            })
            .collect()
    }

    async fn thread(&self, id: &str) -> StorageResult<Option<ThreadRecord>> {
        // A thread's message is sent to every member, so its members are read for each message;
        // from the cache that is one row instead of hundreds.
        let Some(row) = sqlx::query(THREAD_STATE)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let (version, members, max_seq): (i64, i64, i64) = (
            row.try_get("version")?,
            row.try_get("members")?,
            row.try_get("max_seq")?,
        );
        if members == 0 {
            return Ok(None);
        }
        if let Some(c) = self.thread_cache().get(id) {
            if (c.record.version, c.members, c.max_seq) == (version, members, max_seq) {
                return Ok(Some(c.record.clone()));
            }
        }
        // Read again in one snapshot, so that the record and its validators agree.
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(THREAD_STATE)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT account, role, joined_ms FROM thread_members WHERE thread = ? ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let members = rows
            .iter()
            .map(|r| {
                Ok(ThreadMember {
                    account: stored_name(&r.try_get::<String, _>(0)?)?,
                    role: r.try_get(1)?,
                    joined_ms: r.try_get(2)?,
                })
            })
            .collect::<StorageResult<Vec<_>>>()?;
        if members.is_empty() {
            return Ok(None);
        }
        let record = ThreadRecord {
            id: row.try_get("id")?,
            creator: row.try_get("creator")?,
            topic: row.try_get("topic")?,
            version: row.try_get("version")?,
            members,
        };
        let mut cache = self.thread_cache();
        if cache.len() >= CACHED_THREADS {
            cache.clear();
        }
        cache.insert(
            id.to_string(),
            CachedThread {
                members: row.try_get("members")?,
                max_seq: row.try_get("max_seq")?,
                record: record.clone(),
            },
        );
        Ok(Some(record))
    }

    async fn apply_thread_change(&self, change: ThreadChange) -> StorageResult<Vec<StoredMessage>> {
        let (tx, rx) = oneshot::channel();
        self.submit(Write::Thread(Box::new(change), tx)).await?;
        rx.await.map_err(|_| writer_gone())?
    }

    async fn get_or_create_secret(&self, name: &str, candidate: &[u8]) -> StorageResult<Vec<u8>> {
        sqlx::query(
            "INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .execute(&self.pool)
        .await?;
        let value: Vec<u8> = sqlx::query_scalar("SELECT value FROM secrets WHERE name = ?")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(value)
    }

    async fn close(&self) {
        SqliteStorage::close(self).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Participant;

    async fn storage_with(names: &[&str]) -> (tempfile::TempDir, SqliteStorage, Vec<AccountName>) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(&dir.path().join("db.sqlite3"))
            .await
            .unwrap();
        let mut out = Vec::new();
        for n in names {
            let name = AccountName::parse(n).unwrap();
            s.create_account(&name, "x", "y").await.unwrap();
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

    fn note(conversation: &str, from: &AccountName, cmid: Option<&str>, at: i64) -> NewMessage {
        NewMessage {
            conversation: conversation.to_string(),
            participants: vec![Participant {
                account: from.clone(),
                conversation_id: conversation.to_string(),
            }],
            sender: format!("8:{from}"),
            sender_epid: "{b958d334-651e-82fe-a2a1-3dfbb7f5cc08}".into(),
            recipient: conversation.to_string(),
            client_message_id: cmid.map(str::to_string),
            message_type: "Text".into(),
            headers: "Messaging: 2.0\r\n".into(),
            content: b"hi".to_vec(),
            arrival_ms: at,
        }
    }

    #[tokio::test]
    async fn batched_writes_keep_ids_retries_and_failures_apart() {
        let (_dir, s, n) = storage_with(&["alice"]).await;
        let a = &n[0];
        // Later than the account's creation, where its history starts.
        const T: i64 = 4_000_000_000_000;
        // Ids stay strictly increasing within a conversation even for one arrival time.
        let first = s.store_message(note("c1", a, Some("1"), T)).await.unwrap();
        let second = s.store_message(note("c1", a, Some("2"), T)).await.unwrap();
        assert_eq!((first.message_id, second.message_id), (T, T + 1));
        // A conversation whose ids are used up refuses its next message; a write failing in a
        // batch must not take the other writes of that batch down with it.
        s.store_message(note("full", a, None, i64::MAX))
            .await
            .unwrap();
        let (retry, full, other) = tokio::join!(
            s.store_message(note("c1", a, Some("1"), T + 5)),
            s.store_message(note("full", a, None, 5)),
            s.store_message(note("c2", a, Some("1"), T + 9)),
        );
        let retry = retry.unwrap();
        assert!(retry.duplicate);
        assert_eq!(retry.message_id, T);
        assert!(full.is_err());
        let other = other.unwrap();
        assert!(!other.duplicate);
        assert_eq!(other.message_id, T + 9);
        assert_eq!(s.conversation_messages("c1").await.unwrap().len(), 2);
        // A retry leaves the conversation rows as the first copy left them.
        let row = s.conversation(a, "c1").await.unwrap().unwrap();
        assert_eq!(row.version, T + 1);
        assert_eq!(s.conversation_messages("full").await.unwrap().len(), 1);
        let row = s.conversation(a, "c2").await.unwrap().unwrap();
        assert_eq!(
            (row.version, row.last_message.map(|m| m.message_id)),
            (T + 9, Some(T + 9))
        );
    }

    #[tokio::test]
    async fn thread_members_read_from_cache_follow_every_change() {
        let (dir, s, n) = storage_with(&["alice", "bob", "carol"]).await;
        let member = |a: &AccountName, at: i64| ThreadMember {
            account: a.clone(),
            role: "user".into(),
            joined_ms: at,
        };
        let id = "19:00000000000000000000000000000001@thread.skype";
        let mut thread = ThreadRecord {
            id: id.into(),
            creator: "8:alice".into(),
            topic: String::new(),
            version: 1,
            members: vec![member(&n[0], 1), member(&n[1], 1)],
        };
        let change = |t: &ThreadRecord| ThreadChange {
            thread: t.clone(),
            joined: Vec::new(),
            left: Vec::new(),
            activity: Vec::new(),
        };
        s.apply_thread_change(change(&thread)).await.unwrap();
        assert_eq!(s.thread(id).await.unwrap().as_ref(), Some(&thread));
        assert_eq!(s.thread(id).await.unwrap().as_ref(), Some(&thread));
        thread.version = 2;
        thread.topic = "t".into();
        thread.members.push(member(&n[2], 2));
        s.apply_thread_change(change(&thread)).await.unwrap();
        assert_eq!(s.thread(id).await.unwrap().as_ref(), Some(&thread));
        // The admin tool removes an account from another process: no version moves.
        let other = SqliteStorage::open(&dir.path().join("db.sqlite3"))
            .await
            .unwrap();
        assert!(other.remove_account(&n[1]).await.unwrap());
        other.close().await;
        thread.members.remove(1);
        assert_eq!(s.thread(id).await.unwrap().as_ref(), Some(&thread));
        thread.version = 3;
        thread.members.clear();
        s.apply_thread_change(change(&thread)).await.unwrap();
        assert_eq!(s.thread(id).await.unwrap(), None);
    }
}
