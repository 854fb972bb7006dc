//! The embedded default: one SQLite file in WAL mode with full synchronous commits, so that a
//! message acknowledged to its sender survives a crash.

mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use msnp24_proto::AccountName;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::rows::{self, stored_bits};
use super::sql::{
    self, Dialect, Param, Pending, SqlBackend, REMOVE_ACCOUNT, THREAD_MEMBERS, UPSERT_PROPERTY,
};
use super::{
    list_bits, AckRecord, ContactUpdate, DirectOutcome, NewMessage, StorageError, StorageResult,
    StoredMessage, ThreadChange, ThreadRecord,
};
use writer::{open_writer, run_writer, writer_gone, DirectParties, Write, WRITE_QUEUE};

/// SQLite-backed [`super::Storage`].
#[derive(Clone)]
pub struct SqliteStorage {
    pool: SqlitePool,
    writer: mpsc::Sender<Write>,
    threads: Arc<Mutex<HashMap<String, CachedThread>>>,
}

/// A thread's record as last read, with what tells whether it is still current: every change
/// made through [`crate::storage::ThreadStore::apply_thread_change`] moves `version`, and a member removed with its
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
    FROM threads t WHERE t.id = $1 AND t.closed = 0";

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
}

impl Dialect for Sqlite {
    const CREATE_ACCOUNT: &'static str =
        "INSERT INTO accounts (id, name, password_hash, legacy_hash, created_at) \
         VALUES ((SELECT last + 1 FROM account_ids), $1, $2, $3, $4) RETURNING *";
    const ACCOUNTS_BY_EMAIL: &'static str =
        "SELECT * FROM accounts WHERE email IN (SELECT value FROM json_each($1))";
    const CONTACT_RELATIONS: &'static str = "SELECT a.name AS name, \
            (SELECT bits FROM contacts WHERE owner = $1 AND contact = a.name) AS mine, \
            (SELECT bits FROM contacts WHERE owner = a.name AND contact = $1) AS theirs \
         FROM accounts a WHERE a.name IN (SELECT value FROM json_each($2))";
    const PROPERTIES_OF: &'static str = "SELECT id, name, value FROM conversation_properties \
         WHERE account = $1 AND id IN (SELECT value FROM json_each($2)) ORDER BY id, position";
    const GREATEST: &'static str = "MAX";

    /// SQLite has no arrays: the list travels as one JSON array for `json_each`.
    fn bind_list<'q>(
        query: sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
        list: Vec<&'q str>,
    ) -> sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>> {
        query.bind(serde_json::Value::from(list).to_string())
    }

    fn fetch_all<'a>(
        pool: &'a SqlitePool,
        sql: &'a str,
        params: Vec<Param<'a>>,
    ) -> Pending<'a, Vec<SqliteRow>> {
        Box::pin(sql::query(sql, params).fetch_all(pool))
    }

    fn fetch_optional<'a>(
        pool: &'a SqlitePool,
        sql: &'a str,
        params: Vec<Param<'a>>,
    ) -> Pending<'a, Option<SqliteRow>> {
        Box::pin(sql::query(sql, params).fetch_optional(pool))
    }

    fn execute<'a>(pool: &'a SqlitePool, sql: &'a str, params: Vec<Param<'a>>) -> Pending<'a, u64> {
        Box::pin(async move {
            let done = sql::query(sql, params).execute(pool).await?;
            Ok(done.rows_affected())
        })
    }

    fn execute_each<'a>(
        pool: &'a SqlitePool,
        sql: &'a str,
        sets: Vec<Vec<Param<'a>>>,
    ) -> Pending<'a, ()> {
        Box::pin(async move {
            // IMMEDIATE: a deferred transaction could fail on the lock upgrade while the message
            // writer commits.
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            for params in sets {
                sql::query(sql, params).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }
}

#[async_trait]
impl SqlBackend for SqliteStorage {
    type Db = Sqlite;

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn delete_account(&self, name: &AccountName) -> StorageResult<bool> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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

    async fn write_contacts(&self, updates: &[ContactUpdate]) -> StorageResult<Vec<(u32, u32)>> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // IMMEDIATE: the rows are read then written, and a deferred transaction could fail on
        // the lock upgrade while the message writer commits.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut out = Vec::with_capacity(updates.len());
        for u in updates {
            let old: Option<i64> =
                sqlx::query_scalar("SELECT bits FROM contacts WHERE owner = $1 AND contact = $2")
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
                sqlx::query("DELETE FROM contacts WHERE owner = $1 AND contact = $2")
                    .bind(u.owner.as_str())
                    .bind(u.contact.as_str())
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(
                    "INSERT INTO contacts (owner, contact, bits, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (owner, contact) DO UPDATE SET bits = $3, updated_at = $4",
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

    async fn write_message(&self, message: NewMessage) -> StorageResult<StoredMessage> {
        let (tx, rx) = oneshot::channel();
        self.submit(Write::Message(message, tx)).await?;
        rx.await.map_err(|_| writer_gone())?
    }

    async fn write_direct_message(
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

    async fn write_ack(&self, ack: AckRecord) -> StorageResult<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(Write::Ack(ack, tx)).await?;
        rx.await.map_err(|_| writer_gone())?
    }

    async fn write_properties(
        &self,
        account: &AccountName,
        id: &str,
        key: &str,
        properties: &[(String, String)],
        now_ms: i64,
    ) -> StorageResult<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO conversations (account, id, conversation, version, history_from)
             VALUES ($1, $2, $3, $4, COALESCE((SELECT created_at * 1000 FROM accounts WHERE name = $1), 0))
             ON CONFLICT (account, id) DO UPDATE SET version = MAX(version + 1, excluded.version)",
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

    async fn read_thread(&self, id: &str) -> StorageResult<Option<ThreadRecord>> {
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
        let rows = sqlx::query(THREAD_MEMBERS)
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let members = rows
            .iter()
            .map(rows::thread_member)
            .collect::<StorageResult<Vec<_>>>()?;
        if members.is_empty() {
            return Ok(None);
        }
        let record = rows::thread(&row, members)?;
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

    async fn write_thread_change(&self, change: ThreadChange) -> StorageResult<Vec<StoredMessage>> {
        let (tx, rx) = oneshot::channel();
        self.submit(Write::Thread(Box::new(change), tx)).await?;
        rx.await.map_err(|_| writer_gone())?
    }

    async fn shut_down(&self) {
        SqliteStorage::close(self).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::prelude::*;
    use crate::storage::{ContactUpdate, Participant, ThreadMember};

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
