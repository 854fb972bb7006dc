//! PostgreSQL's group commit: message writes queue for a few writer transactions, each of which
//! commits whatever is queued when it is free.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::postgres::PgPool;
use sqlx::PgConnection;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::storage::rows;
use crate::storage::sql::STORED_RETRY;
use crate::storage::{NewMessage, StorageError, StorageResult, StoredMessage};

/// Transactions committing message batches at once, per process.
const WRITERS: u32 = 4;
/// Most messages committed by one transaction.
const MAX_BATCH: usize = 256;
/// Messages waiting for a writer before callers are held back.
pub(super) const WRITE_QUEUE: usize = 4096;

/// A message for the batching writer, or the request to stop it.
pub(super) enum Write {
    Message(
        Box<NewMessage>,
        oneshot::Sender<StorageResult<StoredMessage>>,
    ),
    /// Finish the batches in flight, refuse what is queued, then answer.
    Stop(oneshot::Sender<()>),
}

pub(super) fn writer_gone() -> StorageError {
    StorageError::NotCommitted("storage is closed".into())
}

/// Group commit, as the SQLite writer does it: whatever is queued when a writer is free goes into
/// one transaction, so one WAL flush makes many messages durable. Up to [`WRITERS`] batches commit
/// at once; while they do, new messages queue up, so batches grow with the load and a lone
/// message goes out at once.
pub(super) async fn run_writer(pool: PgPool, mut rx: mpsc::Receiver<Write>) {
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

pub(super) async fn insert_message(
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
    let row = sqlx::query(STORED_RETRY)
        .bind(&message.conversation)
        .bind(&message.sender)
        .bind(cmid)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StorageError::NotCommitted("duplicate message vanished".into()))?;
    let mut stored = rows::message(&row)?;
    stored.duplicate = true;
    Ok(stored)
}
