//! PostgreSQL storage, for several server processes (cluster nodes) sharing one database.
//!
//! Every read-modify-write is safe across processes: message ids are allocated by updating a
//! per-conversation head row (its lock orders the writers of one conversation), other changes run
//! in transactions that lock the rows they read, and a transaction that deadlocks or fails to
//! serialize is retried. Messages are committed in batches (group commit), like SQLite's writer.
//! Semantics match [`super::sqlite::SqliteStorage`] call for call.

mod writer;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use msnp24_proto::AccountName;
use sqlx::postgres::{PgArguments, PgPool, PgPoolOptions, PgRow};
use sqlx::Postgres;
use tokio::sync::{mpsc, oneshot};

use super::rows::{self, stored_bits};
use super::sql::{
    self, Dialect, Param, Pending, SqlBackend, DELETE_THREAD_MEMBER, INSERT_ACK, REMOVE_ACCOUNT,
    THREAD_MEMBERS, UPSERT_PROPERTY, UPSERT_THREAD, UPSERT_THREAD_MEMBER,
};
use super::{
    list_bits, AckRecord, ContactUpdate, DirectOutcome, NewMessage, StorageError, StorageResult,
    StoredMessage, ThreadChange, ThreadRecord,
};
use writer::{insert_message, run_writer, writer_gone, Write, WRITE_QUEUE};

/// Connections per process: enough for the concurrent message writes of one node to share
/// PostgreSQL's group commit, few enough that several nodes fit under its default limit of 100.
const MAX_CONNECTIONS: u32 = 16;
/// Attempts of a transaction that deadlocked or failed to serialize before giving up.
const MAX_ATTEMPTS: u32 = 5;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// PostgreSQL-backed [`super::Storage`].
#[derive(Clone)]
pub struct PostgresStorage {
    pool: PgPool,
    writer: mpsc::Sender<Write>,
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
        let mut deleted = 0;
        for (i, statement) in REMOVE_ACCOUNT.iter().enumerate() {
            let done = sqlx::query(statement)
                .bind(name.as_str())
                .execute(&mut *tx)
                .await?;
            if i == 0 {
                deleted = done.rows_affected();
            }
        }
        tx.commit().await?;
        Ok(deleted == 1)
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
            sqlx::query(UPSERT_PROPERTY)
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
        sqlx::query(UPSERT_THREAD)
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
            sqlx::query(DELETE_THREAD_MEMBER)
                .bind(&t.id)
                .bind(gone.as_str())
                .execute(&mut *tx)
                .await?;
        }
        for m in &t.members {
            sqlx::query(UPSERT_THREAD_MEMBER)
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
}

/// Deadlocks and serialization failures: the transaction had no effect and may simply be rerun.
fn is_transient(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40001" | "40P01")))
}

impl Dialect for Postgres {
    const CREATE_ACCOUNT: &'static str =
        "INSERT INTO accounts (name, password_hash, legacy_hash, created_at) \
         VALUES ($1, $2, $3, $4) RETURNING *";
    const ACCOUNTS_BY_EMAIL: &'static str = "SELECT * FROM accounts WHERE email = ANY($1)";
    const CONTACT_RELATIONS: &'static str = "SELECT a.name AS name, \
            (SELECT bits FROM contacts WHERE owner = $1 AND contact = a.name) AS mine, \
            (SELECT bits FROM contacts WHERE owner = a.name AND contact = $1) AS theirs \
         FROM accounts a WHERE a.name = ANY($2)";
    const PROPERTIES_OF: &'static str = "SELECT id, name, value FROM conversation_properties \
         WHERE account = $1 AND id = ANY($2) ORDER BY id, position";
    const GREATEST: &'static str = "GREATEST";

    fn bind_list<'q>(
        query: sqlx::query::Query<'q, Postgres, PgArguments>,
        list: Vec<&'q str>,
    ) -> sqlx::query::Query<'q, Postgres, PgArguments> {
        query.bind(list)
    }

    fn fetch_all<'a>(
        pool: &'a PgPool,
        sql: &'a str,
        params: Vec<Param<'a>>,
    ) -> Pending<'a, Vec<PgRow>> {
        Box::pin(sql::query(sql, params).fetch_all(pool))
    }

    fn fetch_optional<'a>(
        pool: &'a PgPool,
        sql: &'a str,
        params: Vec<Param<'a>>,
    ) -> Pending<'a, Option<PgRow>> {
        Box::pin(sql::query(sql, params).fetch_optional(pool))
    }

    fn execute<'a>(pool: &'a PgPool, sql: &'a str, params: Vec<Param<'a>>) -> Pending<'a, u64> {
        Box::pin(async move {
            let done = sql::query(sql, params).execute(pool).await?;
            Ok(done.rows_affected())
        })
    }

    fn execute_each<'a>(
        pool: &'a PgPool,
        sql: &'a str,
        sets: Vec<Vec<Param<'a>>>,
    ) -> Pending<'a, ()> {
        Box::pin(async move {
            let mut tx = pool.begin().await?;
            for params in sets {
                sql::query(sql, params).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }
}

#[async_trait]
impl SqlBackend for PostgresStorage {
    type Db = Postgres;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn delete_account(&self, name: &AccountName) -> StorageResult<bool> {
        self.retrying(|| self.remove_account_once(name)).await
    }

    async fn write_contacts(&self, updates: &[ContactUpdate]) -> StorageResult<Vec<(u32, u32)>> {
        self.retrying(|| self.update_contacts_once(updates)).await
    }

    async fn write_message(&self, message: NewMessage) -> StorageResult<StoredMessage> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Write::Message(Box::new(message), tx))
            .await
            .map_err(|_| writer_gone())?;
        rx.await.map_err(|_| writer_gone())?
    }

    async fn write_direct_message(
        &self,
        message: NewMessage,
        sender: &AccountName,
        recipient: &AccountName,
    ) -> StorageResult<DirectOutcome> {
        super::store_direct_after_reads(self, message, sender, recipient).await
    }

    async fn write_ack(&self, ack: AckRecord) -> StorageResult<()> {
        let (conversation, message_id) = match &ack.message {
            Some((c, m)) => (Some(c.as_str()), Some(*m)),
            None => (None, None),
        };
        let params = vec![
            Param::Text(ack.account.as_str()),
            Param::Text(&ack.epid),
            Param::Text(&ack.ack_id),
            Param::OptText(conversation),
            Param::OptInt(message_id),
            Param::Int(ack.acked_ms),
        ];
        Postgres::execute(&self.pool, INSERT_ACK, params).await?;
        Ok(())
    }

    async fn write_properties(
        &self,
        account: &AccountName,
        id: &str,
        key: &str,
        properties: &[(String, String)],
        now_ms: i64,
    ) -> StorageResult<()> {
        self.retrying(|| self.set_properties_once(account, id, key, properties, now_ms))
            .await
    }

    async fn read_thread(&self, id: &str) -> StorageResult<Option<ThreadRecord>> {
        let sql = "SELECT * FROM threads t WHERE t.id = $1 AND NOT t.closed
               AND EXISTS (SELECT 1 FROM thread_members m WHERE m.thread = t.id)";
        let Some(row) = Postgres::fetch_optional(&self.pool, sql, vec![Param::Text(id)]).await?
        else {
            return Ok(None);
        };
        let members = Postgres::fetch_all(&self.pool, THREAD_MEMBERS, vec![Param::Text(id)])
            .await?
            .iter()
            .map(rows::thread_member)
            .collect::<StorageResult<Vec<_>>>()?;
        Ok(Some(rows::thread(&row, members)?))
    }

    async fn write_thread_change(&self, change: ThreadChange) -> StorageResult<Vec<StoredMessage>> {
        self.retrying(|| self.apply_thread_change_once(change.clone()))
            .await
    }

    async fn shut_down(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Write::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.pool.close().await;
    }
}
