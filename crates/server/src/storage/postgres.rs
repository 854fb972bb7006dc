//! PostgreSQL storage, for several server processes (cluster nodes) sharing one database.
//!
//! Every read-modify-write is safe across processes: message ids are allocated by updating a
//! per-conversation head row (its lock orders the writers of one conversation), other changes run
//! in transactions that lock the rows they read, and a transaction that deadlocks or fails to
//! serialize is retried. Messages are committed in batches (group commit), like SQLite's writer.
//! Semantics match [`super::sqlite::SqliteStorage`] call for call.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use msnp24_proto::AccountName;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Row};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{
    list_bits, Account, AckRecord, Contact, ContactRelation, ContactUpdate, ConversationSummary,
    NewMessage, PendingRequest, ProfileUpdate, RecentPosition, Setting, SettingScope, SpamReport,
    Storage, StorageError, StorageResult, StoredMessage, ThreadChange, ThreadMember, ThreadRecord,
};

/// Connections per process: enough for the concurrent message writes of one node to share
/// PostgreSQL's group commit, few enough that several nodes fit under its default limit of 100.
const MAX_CONNECTIONS: u32 = 16;
/// Attempts of a transaction that deadlocked or failed to serialize before giving up.
const MAX_ATTEMPTS: u32 = 5;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Transactions committing message batches at once, per process.
const WRITERS: u32 = 4;
/// Most messages committed by one transaction.
const MAX_BATCH: usize = 256;
/// Messages waiting for a writer before callers are held back.
const WRITE_QUEUE: usize = 4096;

/// PostgreSQL-backed [`Storage`].
#[derive(Clone)]
pub struct PostgresStorage {
    pool: PgPool,
    writer: mpsc::Sender<Write>,
}

/// A message for the batching writer, or the request to stop it.
enum Write {
    Message(
        Box<NewMessage>,
        oneshot::Sender<StorageResult<StoredMessage>>,
    ),
    /// Finish the batches in flight, refuse what is queued, then answer.
    Stop(oneshot::Sender<()>),
}

fn writer_gone() -> StorageError {
    StorageError::NotCommitted("storage is closed".into())
}

/// Group commit, as the SQLite writer does it: whatever is queued when a writer is free goes into
/// one transaction, so one WAL flush makes many messages durable. Up to [`WRITERS`] batches commit
/// at once; while they do, new messages queue up, so batches grow with the load and a lone
/// message goes out at once.
async fn run_writer(pool: PgPool, mut rx: mpsc::Receiver<Write>) {
    let permits = Arc::new(Semaphore::new(WRITERS as usize));
    let mut stop = None;
    while stop.is_none() {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let Some(first) = rx.recv().await else { break };
        let mut batch = Vec::new();
        for w in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match w {
                Write::Message(m, reply) => batch.push((*m, reply)),
                Write::Stop(reply) => {
                    stop = Some(reply);
                    break;
                }
            }
            if batch.len() == MAX_BATCH {
                break;
            }
        }
        if !batch.is_empty() {
            let pool = pool.clone();
            tokio::spawn(async move {
                commit_batch(&pool, batch).await;
                drop(permit);
            });
        }
    }
    // Wait for every batch in flight, then refuse what came after the stop.
    let _all = permits.acquire_many(WRITERS).await;
    rx.close();
    while let Ok(w) = rx.try_recv() {
        match w {
            Write::Message(_, reply) => {
                let _ = reply.send(Err(writer_gone()));
            }
            Write::Stop(reply) => {
                let _ = reply.send(());
            }
        }
    }
    if let Some(reply) = stop {
        let _ = reply.send(());
    }
}

type Batch = Vec<(NewMessage, oneshot::Sender<StorageResult<StoredMessage>>)>;

async fn commit_batch(pool: &PgPool, mut batch: Batch) {
    if batch.len() > 1 {
        // Conversation order is the lock order of every batch (stable: a conversation's messages
        // keep their order), so concurrent batches, on any node, never deadlock on head rows.
        batch.sort_by(|a, b| a.0.conversation.cmp(&b.0.conversation));
        let started = std::time::Instant::now();
        match try_batch(pool, &batch).await {
            Ok(stored) => {
                crate::stats::batch_committed(stored.len(), started.elapsed());
                for ((_, reply), result) in batch.into_iter().zip(stored) {
                    let _ = reply.send(Ok(result));
                }
                return;
            }
            Err(BatchFailure::Commit(e)) => {
                // The commit may have happened before the connection failed: storing again could
                // store twice, so the callers hear it was not committed, as with SQLite.
                tracing::error!(error = %e, count = batch.len(), "message batch not committed");
                let msg = e.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(StorageError::NotCommitted(msg.clone())));
                }
                return;
            }
            Err(BatchFailure::Statement(e)) => {
                // One bad message (or a conflict) must not fail the others: store each alone.
                tracing::warn!(error = %e, count = batch.len(), "message batch failed; storing one by one");
            }
        }
    }
    for (message, reply) in batch {
        let started = std::time::Instant::now();
        let result = match pool.acquire().await {
            Ok(mut conn) => insert_message(&mut conn, message).await,
            Err(e) => Err(e.into()),
        };
        if result.is_ok() {
            crate::stats::batch_committed(1, started.elapsed());
        }
        let _ = reply.send(result);
    }
}

/// Why a batch was not stored.
enum BatchFailure {
    /// A statement failed: nothing was stored.
    Statement(StorageError),
    /// The commit failed: the outcome is unknown.
    Commit(sqlx::Error),
}

/// The whole batch in one transaction; nothing is stored unless everything is.
async fn try_batch(pool: &PgPool, batch: &Batch) -> Result<Vec<StoredMessage>, BatchFailure> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| BatchFailure::Statement(e.into()))?;
    let mut stored = Vec::with_capacity(batch.len());
    for (message, _) in batch {
        let one = insert_message(&mut tx, message.clone()).await;
        stored.push(one.map_err(BatchFailure::Statement)?);
    }
    tx.commit().await.map_err(BatchFailure::Commit)?;
    Ok(stored)
}

impl PostgresStorage {
    /// Connects to `url` (`postgres://…`) and applies pending migrations (sqlx takes an advisory
    /// lock, so nodes starting together migrate once).
    pub async fn open(url: &str) -> StorageResult<PostgresStorage> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        let (writer, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(run_writer(pool.clone(), rx));
        Ok(PostgresStorage { pool, writer })
    }

    /// Runs `attempt` again while it fails only because of a concurrent transaction.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> StorageResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StorageResult<T>>,
    {
        let mut tries = 1;
        loop {
            match attempt().await {
                Err(StorageError::Database(e)) if is_transient(&e) && tries < MAX_ATTEMPTS => {
                    tracing::debug!(error = %e, tries, "transaction conflict; retrying");
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(u64::from(tries) * 5)).await;
                }
                other => return other,
            }
        }
    }

    async fn update_contacts_once(
        &self,
        updates: &[ContactUpdate],
    ) -> StorageResult<Vec<(u32, u32)>> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut tx = self.pool.begin().await?;
        // Every row is locked first, in one global order, so that concurrent batches touching the
        // same rows in different orders queue instead of deadlocking.
        let rows: BTreeSet<(&str, &str)> = updates
            .iter()
            .map(|u| (u.owner.as_str(), u.contact.as_str()))
            .collect();
        let mut bits: HashMap<(&str, &str), u32> = HashMap::with_capacity(rows.len());
        for &(owner, contact) in &rows {
            // A placeholder row makes sure there is a row to lock: without it, two processes
            // adding the same row would both read "none" and the later write would lose the
            // earlier one's bits. Nobody else ever sees it with bits 0.
            sqlx::query(
                "INSERT INTO contacts (owner, contact, bits, updated_at) VALUES ($1, $2, 0, $3)
                 ON CONFLICT (owner, contact) DO NOTHING",
            )
            .bind(owner)
            .bind(contact)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let old: i64 = sqlx::query_scalar(
                "SELECT bits FROM contacts WHERE owner = $1 AND contact = $2 FOR UPDATE",
            )
            .bind(owner)
            .bind(contact)
            .fetch_one(&mut *tx)
            .await?;
            bits.insert((owner, contact), stored_bits(old)?);
        }
        // Applied in the order given; a row is written if any update changed it (its time too,
        // as SQLite does, even when a later update changed it back).
        let mut changed = HashSet::new();
        let mut out = Vec::with_capacity(updates.len());
        for u in updates {
            let key = (u.owner.as_str(), u.contact.as_str());
            let old = bits.get(&key).copied().unwrap_or(0);
            let new = (old | u.set) & !u.clear & list_bits::ALL;
            if new != old {
                changed.insert(key);
            }
            bits.insert(key, new);
            out.push((old, new));
        }
        for &(owner, contact) in &rows {
            let new = bits.get(&(owner, contact)).copied().unwrap_or(0);
            if new == 0 {
                sqlx::query("DELETE FROM contacts WHERE owner = $1 AND contact = $2")
                    .bind(owner)
                    .bind(contact)
                    .execute(&mut *tx)
                    .await?;
            } else if changed.contains(&(owner, contact)) {
                sqlx::query(
                    "UPDATE contacts SET bits = $3, updated_at = $4 WHERE owner = $1 AND contact = $2",
                )
                .bind(owner)
                .bind(contact)
                .bind(i64::from(new))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn remove_account_once(&self, name: &AccountName) -> StorageResult<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM accounts WHERE name = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        for table in [
            "conversations",
            "conversation_properties",
            "message_acks",
            "thread_members",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE account = $1"))
                .bind(name.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_properties_once(
        &self,
        account: &AccountName,
        id: &str,
        key: &str,
        properties: &[(String, String)],
        now_ms: i64,
    ) -> StorageResult<()> {
        let mut tx = self.pool.begin().await?;
        // The upsert locks the conversation row, which orders concurrent property writers and so
        // keeps `position` unique.
        sqlx::query(
            "INSERT INTO conversations (account, id, conversation, version, history_from)
             VALUES ($1, $2, $3, $4, COALESCE((SELECT created_at * 1000 FROM accounts WHERE name = $1), 0))
             ON CONFLICT (account, id) DO UPDATE
                 SET version = GREATEST(conversations.version + 1, EXCLUDED.version)",
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
                 VALUES ($1, $2, $3, $4, (SELECT COALESCE(MAX(position), 0) + 1 FROM conversation_properties WHERE account = $1 AND id = $2))
                 ON CONFLICT (account, id, name) DO UPDATE SET value = EXCLUDED.value",
            )
            .bind(account.as_str())
            .bind(id)
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn apply_thread_change_once(
        &self,
        change: ThreadChange,
    ) -> StorageResult<Vec<StoredMessage>> {
        let t = &change.thread;
        let mut tx = self.pool.begin().await?;
        // The thread row first, then the thread's message head: the same order as every other
        // writer of the thread, so concurrent changes and messages queue instead of deadlocking.
        sqlx::query(
            "INSERT INTO threads (id, creator, topic, version, closed) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET topic = $3, version = $4, closed = $5",
        )
        .bind(&t.id)
        .bind(&t.creator)
        .bind(&t.topic)
        .bind(t.version)
        .bind(t.members.is_empty())
        .execute(&mut *tx)
        .await?;
        for conversation in change
            .activity
            .iter()
            .map(|m| m.conversation.as_str())
            .collect::<BTreeSet<_>>()
        {
            sqlx::query(
                "INSERT INTO conversation_heads (conversation, last_message_id) VALUES ($1, 0)
                 ON CONFLICT (conversation) DO UPDATE SET last_message_id = conversation_heads.last_message_id",
            )
            .bind(conversation)
            .execute(&mut *tx)
            .await?;
        }
        for gone in &change.left {
            sqlx::query("DELETE FROM thread_members WHERE thread = $1 AND account = $2")
                .bind(&t.id)
                .bind(gone.as_str())
                .execute(&mut *tx)
                .await?;
        }
        for m in &t.members {
            sqlx::query(
                "INSERT INTO thread_members (thread, account, role, joined_ms, seq)
                 VALUES ($1, $2, $3, $4, (SELECT COALESCE(MAX(seq), 0) + 1 FROM thread_members WHERE thread = $1))
                 ON CONFLICT (thread, account) DO UPDATE SET role = EXCLUDED.role",
            )
            .bind(&t.id)
            .bind(m.account.as_str())
            .bind(&m.role)
            .bind(m.joined_ms)
            .execute(&mut *tx)
            .await?;
        }
        // A joining member's history of the thread starts now, even when it was a member before.
        for joined in &change.joined {
            let from = t
                .members
                .iter()
                .find(|m| &m.account == joined)
                .map_or(t.version, |m| m.joined_ms);
            sqlx::query(
                "INSERT INTO conversations (account, id, conversation, version, history_from, left_at)
                 VALUES ($1, $2, $2, $3, $3, NULL)
                 ON CONFLICT (account, id) DO UPDATE SET history_from = $3, left_at = NULL,
                     version = GREATEST(conversations.version, $3)",
            )
            .bind(joined.as_str())
            .bind(&t.id)
            .bind(from)
            .execute(&mut *tx)
            .await?;
        }
        let mut stored = Vec::with_capacity(change.activity.len());
        for message in change.activity.iter().cloned() {
            stored.push(insert_message(&mut tx, message).await?);
        }
        for gone in &change.left {
            let last_seen = stored
                .iter()
                .filter(|m| m.message.participants.iter().any(|p| &p.account == gone))
                .map(|m| m.message_id)
                .max()
                .unwrap_or(t.version);
            sqlx::query("UPDATE conversations SET left_at = $1 WHERE account = $2 AND id = $3")
                .bind(last_seen)
                .bind(gone.as_str())
                .bind(&t.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// Completes conversation rows (joined with their last message) with their properties.
    async fn summaries(
        &self,
        account: &AccountName,
        rows: &[PgRow],
    ) -> StorageResult<Vec<ConversationSummary>> {
        let ids = rows
            .iter()
            .map(|r| r.try_get::<String, _>("c_id"))
            .collect::<Result<Vec<_>, _>>()?;
        // One query for every listed conversation's properties rather than one per row.
        let mut properties: HashMap<String, Vec<(String, String)>> = HashMap::new();
        if !ids.is_empty() {
            let prop_rows = sqlx::query(
                "SELECT id, name, value FROM conversation_properties
                 WHERE account = $1 AND id = ANY($2) ORDER BY id, position",
            )
            .bind(account.as_str())
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?;
            for r in &prop_rows {
                properties
                    .entry(r.try_get("id")?)
                    .or_default()
                    .push((r.try_get("name")?, r.try_get("value")?));
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for (row, id) in rows.iter().zip(ids) {
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
                properties: properties.remove(&id).unwrap_or_default(),
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

/// Deadlocks and serialization failures: the transaction had no effect and may simply be rerun.
fn is_transient(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40001" | "40P01")))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn conflict_or(e: sqlx::Error) -> StorageError {
    if is_unique_violation(&e) {
        StorageError::Conflict
    } else {
        e.into()
    }
}

/// Stores one message in one statement: allocates its id from the conversation's head row (whose
/// lock orders concurrent writers, across processes too), inserts it unless the client message id
/// is already stored, and updates every participant's conversation row. A retry racing its first
/// copy may leave a gap in the ids; ids stay unique and increasing.
const INSERT_MESSAGE: &str = "
WITH dup AS (
    SELECT 1 FROM messages WHERE conversation = $1 AND sender = $2 AND client_message_id = $5
), head AS (
    INSERT INTO conversation_heads (conversation, last_message_id)
    SELECT $1, $9 WHERE NOT EXISTS (SELECT 1 FROM dup)
    ON CONFLICT (conversation) DO UPDATE
        SET last_message_id = GREATEST(conversation_heads.last_message_id + 1, EXCLUDED.last_message_id)
    RETURNING last_message_id
), ins AS (
    INSERT INTO messages (conversation, message_id, sender, sender_epid, recipient,
                          client_message_id, message_type, headers, content, arrival_ms)
    SELECT $1, head.last_message_id, $2, $3, $4, $5, $6, $7, $8, $9 FROM head
    ON CONFLICT (conversation, sender, client_message_id) WHERE client_message_id IS NOT NULL
        DO NOTHING
    RETURNING message_id
), conv AS (
    INSERT INTO conversations (account, id, conversation, version, last_message_id, history_from)
    SELECT p.account, p.id, $1, ins.message_id, ins.message_id,
           COALESCE((SELECT a.created_at * 1000 FROM accounts a WHERE a.name = p.account), 0)
    FROM ins, unnest($10::text[], $11::text[]) AS p(account, id)
    ON CONFLICT (account, id) DO UPDATE SET
        version = GREATEST(conversations.version, EXCLUDED.version),
        last_message_id = GREATEST(COALESCE(conversations.last_message_id, 0), EXCLUDED.last_message_id)
)
SELECT message_id FROM ins";

async fn insert_message(
    conn: &mut PgConnection,
    message: NewMessage,
) -> StorageResult<StoredMessage> {
    // One statement may update a row only once: a participant listed twice is listed once.
    let mut seen = HashSet::with_capacity(message.participants.len());
    let (accounts, ids): (Vec<&str>, Vec<&str>) = message
        .participants
        .iter()
        .map(|p| (p.account.as_str(), p.conversation_id.as_str()))
        .filter(|pair| seen.insert(*pair))
        .unzip();
    let inserted: Option<i64> = sqlx::query_scalar(INSERT_MESSAGE)
        .bind(&message.conversation)
        .bind(&message.sender)
        .bind(&message.sender_epid)
        .bind(&message.recipient)
        .bind(&message.client_message_id)
        .bind(&message.message_type)
        .bind(&message.headers)
        .bind(&message.content)
        .bind(message.arrival_ms)
        .bind(&accounts)
        .bind(&ids)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(message_id) = inserted {
        return Ok(StoredMessage {
            message_id,
            message,
            duplicate: false,
        });
    }
    let Some(cmid) = &message.client_message_id else {
        return Err(StorageError::NotCommitted(
            "message insert returned no row".into(),
        ));
    };
    let row = sqlx::query(
        "SELECT * FROM messages WHERE conversation = $1 AND sender = $2 AND client_message_id = $3",
    )
    .bind(&message.conversation)
    .bind(&message.sender)
    .bind(cmid)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StorageError::NotCommitted("duplicate message vanished".into()))?;
    let mut stored = message_from_row(&row)?;
    stored.duplicate = true;
    Ok(stored)
}

/// Conversation rows with their last message (message columns NULL when there is none).
const SUMMARY_SELECT: &str =
    "SELECT c.id AS c_id, c.conversation AS c_conversation, c.version AS c_version,
        c.history_from AS c_history_from, c.left_at AS c_left_at, m.*
    FROM conversations c
    LEFT JOIN messages m ON m.conversation = c.conversation AND m.message_id = c.last_message_id";

fn account_from_row(row: &PgRow) -> StorageResult<Account> {
    let name: String = row.try_get("name")?;
    Ok(Account {
        id: row.try_get("id")?,
        name: stored_name(&name)?,
        password_hash: row.try_get("password_hash")?,
        generation: row.try_get("generation")?,
        created_at: row.try_get("created_at")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        mood: row.try_get("mood")?,
        legacy_hash: row.try_get("legacy_hash")?,
    })
}

fn message_from_row(row: &PgRow) -> StorageResult<StoredMessage> {
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

fn names_from_rows(rows: &[PgRow]) -> StorageResult<Vec<AccountName>> {
    rows.iter()
        .map(|r| stored_name(&r.try_get::<String, _>(0)?))
        .collect()
}

/// Rows `w` (watcher → target) and `t` (target → watcher) that let presence flow from target to watcher.
const PRESENCE_FLOWS: &str =
    "(w.bits & $1) != 0 AND (t.bits & $2) != 0 AND (w.bits & $3) = 0 AND (t.bits & $3) = 0";

#[async_trait]
impl Storage for PostgresStorage {
    async fn create_account(
        &self,
        name: &AccountName,
        password_hash: &str,
        legacy_hash: &str,
    ) -> StorageResult<Account> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let row = sqlx::query(
            "INSERT INTO accounts (name, password_hash, legacy_hash, created_at) VALUES ($1, $2, $3, $4) RETURNING *",
        )
        .bind(name.as_str())
        .bind(password_hash)
        .bind(legacy_hash)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(conflict_or)?;
        account_from_row(&row)
    }

    async fn account(&self, name: &AccountName) -> StorageResult<Option<Account>> {
        let row = sqlx::query("SELECT * FROM accounts WHERE name = $1")
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
        let row = sqlx::query("SELECT * FROM accounts WHERE email = $1")
            .bind(email.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn accounts_by_email(&self, emails: &[String]) -> StorageResult<Vec<Account>> {
        let lower: Vec<String> = emails.iter().map(|e| e.to_ascii_lowercase()).collect();
        let rows = sqlx::query("SELECT * FROM accounts WHERE email = ANY($1)")
            .bind(&lower)
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
            "UPDATE accounts SET password_hash = $1, legacy_hash = $2, generation = generation + 1 WHERE name = $3",
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
               email = CASE WHEN $1::text IS NULL THEN email WHEN $1 = '' THEN NULL ELSE $1 END, \
               display_name = CASE WHEN $2::text IS NULL THEN display_name WHEN $2 = '' THEN NULL ELSE $2 END, \
               mood = CASE WHEN $3::text IS NULL THEN mood WHEN $3 = '' THEN NULL ELSE $3 END \
             WHERE name = $4",
        )
        .bind(clear(&update.email).map(|e| e.to_ascii_lowercase()))
        .bind(clear(&update.display_name))
        .bind(clear(&update.mood))
        .bind(name.as_str())
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(done.rows_affected() == 1)
    }

    async fn remove_account(&self, name: &AccountName) -> StorageResult<bool> {
        // As with SQLite: the other parties keep the messages; the account's own view of them,
        // its properties, acks and thread memberships go with it.
        self.retrying(|| self.remove_account_once(name)).await
    }

    async fn store_message(&self, message: NewMessage) -> StorageResult<StoredMessage> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Write::Message(Box::new(message), tx))
            .await
            .map_err(|_| writer_gone())?;
        rx.await.map_err(|_| writer_gone())?
    }

    async fn conversation_messages(&self, conversation: &str) -> StorageResult<Vec<StoredMessage>> {
        let rows =
            sqlx::query("SELECT * FROM messages WHERE conversation = $1 ORDER BY message_id")
                .bind(conversation)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(message_from_row).collect()
    }

    async fn contacts(&self, owner: &AccountName) -> StorageResult<Vec<Contact>> {
        let rows =
            sqlx::query("SELECT contact, bits FROM contacts WHERE owner = $1 ORDER BY contact")
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
        let names: Vec<&str> = others.iter().map(AccountName::as_str).collect();
        let rows = sqlx::query(
            "SELECT a.name, \
                    (SELECT bits FROM contacts WHERE owner = $1 AND contact = a.name), \
                    (SELECT bits FROM contacts WHERE owner = a.name AND contact = $1) \
             FROM accounts a WHERE a.name = ANY($2)",
        )
        .bind(owner.as_str())
        .bind(&names)
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
        self.retrying(|| self.update_contacts_once(updates)).await
    }

    async fn presence_watchers(&self, account: &AccountName) -> StorageResult<Vec<AccountName>> {
        let sql = format!(
            "SELECT w.owner FROM contacts w JOIN contacts t ON t.owner = w.contact AND t.contact = w.owner \
             WHERE w.contact = $4 AND {PRESENCE_FLOWS} ORDER BY w.owner"
        );
        let rows = sqlx::query(&sql)
            .bind(i64::from(list_bits::FORWARD))
            .bind(i64::from(list_bits::ALLOW))
            .bind(i64::from(list_bits::BLOCK))
            .bind(account.as_str())
            .fetch_all(&self.pool)
            .await?;
        names_from_rows(&rows)
    }

    async fn presence_visible(&self, account: &AccountName) -> StorageResult<Vec<AccountName>> {
        let sql = format!(
            "SELECT w.contact FROM contacts w JOIN contacts t ON t.owner = w.contact AND t.contact = w.owner \
             WHERE w.owner = $4 AND {PRESENCE_FLOWS} ORDER BY w.contact"
        );
        let rows = sqlx::query(&sql)
            .bind(i64::from(list_bits::FORWARD))
            .bind(i64::from(list_bits::ALLOW))
            .bind(i64::from(list_bits::BLOCK))
            .bind(account.as_str())
            .fetch_all(&self.pool)
            .await?;
        names_from_rows(&rows)
    }

    async fn set_request_greeting(
        &self,
        owner: &AccountName,
        sender: &AccountName,
        greeting: &str,
    ) -> StorageResult<()> {
        sqlx::query(
            "INSERT INTO request_greetings (owner, sender, greeting) VALUES ($1, $2, $3) \
             ON CONFLICT (owner, sender) DO UPDATE SET greeting = EXCLUDED.greeting",
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
             WHERE c.owner = $1 AND (c.bits & $2) != 0 ORDER BY c.updated_at, c.contact",
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

    async fn is_blocked(&self, a: &AccountName, b: &AccountName) -> StorageResult<bool> {
        let blocked: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM contacts WHERE ((owner = $1 AND contact = $2) OR (owner = $2 AND contact = $1)) \
             AND (bits & $3) != 0 LIMIT 1",
        )
        .bind(a.as_str())
        .bind(b.as_str())
        .bind(i64::from(list_bits::BLOCK))
        .fetch_optional(&self.pool)
        .await?;
        Ok(blocked.is_some())
    }

    async fn record_ack(&self, ack: AckRecord) -> StorageResult<()> {
        let (conversation, message_id) = match ack.message {
            Some((c, m)) => (Some(c), Some(m)),
            None => (None, None),
        };
        sqlx::query(
            "INSERT INTO message_acks (account, epid, ack_id, conversation, message_id, acked_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(ack.account.as_str())
        .bind(&ack.epid)
        .bind(&ack.ack_id)
        .bind(conversation)
        .bind(message_id)
        .bind(ack.acked_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
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
            "{SUMMARY_SELECT} WHERE c.account = $1 AND c.version >= $2
               AND (c.version < $3 OR (c.version = $3 AND $4 <> '' AND c.id < $4))
             ORDER BY c.version DESC, c.id DESC LIMIT $5"
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
        let sql = format!("{SUMMARY_SELECT} WHERE c.account = $1 AND c.id = $2");
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
             WHERE c.account = $1 AND c.id = $2 AND m.message_id >= GREATEST(c.history_from, $3)
               AND m.message_id < $4
               AND m.message_id <= COALESCE(c.left_at, 9223372036854775807)
             ORDER BY m.message_id DESC LIMIT $5",
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
        self.retrying(|| self.set_properties_once(account, id, key, properties, now_ms))
            .await?;
        self.conversation(account, id)
            .await?
            .ok_or_else(|| StorageError::Corrupt(format!("conversation {id} vanished")))
    }

    async fn put_setting(&self, setting: Setting) -> StorageResult<()> {
        match &setting.scope {
            SettingScope::Endpoint(epid) => {
                sqlx::query(
                    "INSERT INTO endpoint_settings (account, epid, kind, value, updated_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (account, epid, kind) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
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
                    "INSERT INTO account_settings (account, kind, value, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (account, kind) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
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
        // NULLS FIRST: SQLite sorts the account-wide settings (no endpoint) before the others.
        let rows = sqlx::query(
            "SELECT account, epid, kind, value, updated_at FROM endpoint_settings \
             UNION ALL SELECT account, NULL, kind, value, updated_at FROM account_settings \
             ORDER BY 1, 2 NULLS FIRST, 3",
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
        let mut tx = self.pool.begin().await?;
        for r in reports {
            sqlx::query(
                "INSERT INTO spam_reports (reporter, reporter_epid, reported, reported_at) VALUES ($1, $2, $3, $4)",
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

    async fn thread(&self, id: &str) -> StorageResult<Option<ThreadRecord>> {
        let Some(row) = sqlx::query(
            "SELECT * FROM threads t WHERE t.id = $1 AND NOT t.closed
               AND EXISTS (SELECT 1 FROM thread_members m WHERE m.thread = t.id)",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let members = sqlx::query(
            "SELECT account, role, joined_ms FROM thread_members WHERE thread = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(ThreadMember {
                account: stored_name(&r.try_get::<String, _>(0)?)?,
                role: r.try_get(1)?,
                joined_ms: r.try_get(2)?,
            })
        })
        .collect::<StorageResult<Vec<_>>>()?;
        Ok(Some(ThreadRecord {
            id: row.try_get("id")?,
            creator: row.try_get("creator")?,
            topic: row.try_get("topic")?,
            version: row.try_get("version")?,
            members,
        }))
    }

    async fn apply_thread_change(&self, change: ThreadChange) -> StorageResult<Vec<StoredMessage>> {
        self.retrying(|| self.apply_thread_change_once(change.clone()))
            .await
    }

    async fn get_or_create_secret(&self, name: &str, candidate: &[u8]) -> StorageResult<Vec<u8>> {
        // Two statements on purpose: after a concurrent insert wins, DO NOTHING returns no row,
        // and only a new statement's snapshot sees the winner's value.
        sqlx::query(
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .execute(&self.pool)
        .await?;
        let value: Vec<u8> = sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(value)
    }

    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Write::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.pool.close().await;
    }
}
