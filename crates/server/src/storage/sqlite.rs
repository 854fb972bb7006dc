//! The embedded default: one SQLite file in WAL mode with full synchronous commits, so that a
//! message acknowledged to its sender survives a crash.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use msnp24_proto::AccountName;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    Account, NewMessage, Setting, SettingScope, SpamReport, Storage, StorageError, StorageResult,
    StoredMessage,
};

/// SQLite-backed [`Storage`].
#[derive(Clone)]
pub struct SqliteStorage {
    pool: SqlitePool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

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
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStorage { pool })
    }

    /// Folds the write-ahead log into the database file, then closes the pool, so the file alone
    /// holds every committed write (committed data is durable either way; this only tidies up).
    pub async fn close(&self) {
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint at close failed; the log is kept");
        }
        self.pool.close().await;
    }

    /// SQLite's own consistency check: empty when the file is sound, else what is wrong.
    pub async fn integrity_check(&self) -> StorageResult<Vec<String>> {
        let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }
}

fn account_from_row(row: &sqlx::sqlite::SqliteRow) -> StorageResult<Account> {
    let name: String = row.try_get("name")?;
    Ok(Account {
        id: row.try_get("id")?,
        name: AccountName::parse(&name)
            .map_err(|e| StorageError::Corrupt(format!("account name {name:?}: {e}")))?,
        password_hash: row.try_get("password_hash")?,
        generation: row.try_get("generation")?,
        created_at: row.try_get("created_at")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn message_from_row(row: &sqlx::sqlite::SqliteRow) -> StorageResult<StoredMessage> {
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
        },
    })
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn create_account(
        &self,
        name: &AccountName,
        password_hash: &str,
    ) -> StorageResult<Account> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let row = sqlx::query(
            "INSERT INTO accounts (name, password_hash, created_at) VALUES (?, ?, ?) RETURNING *",
        )
        .bind(name.as_str())
        .bind(password_hash)
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

    async fn set_password(&self, name: &AccountName, password_hash: &str) -> StorageResult<bool> {
        let done = sqlx::query(
            "UPDATE accounts SET password_hash = ?, generation = generation + 1 WHERE name = ?",
        )
        .bind(password_hash)
        .bind(name.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn remove_account(&self, name: &AccountName) -> StorageResult<bool> {
        let done = sqlx::query("DELETE FROM accounts WHERE name = ?")
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn store_message(&self, message: NewMessage) -> StorageResult<StoredMessage> {
        // IMMEDIATE takes the write lock before the first read: a deferred transaction that read
        // and then wrote failed with SQLITE_BUSY_SNAPSHOT (code 517, not retried by busy_timeout)
        // whenever two endpoints sent at once, and the sender got a 500.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(cmid) = &message.client_message_id {
            let existing = sqlx::query(
                "SELECT * FROM messages WHERE conversation = ? AND sender = ? AND client_message_id = ?",
            )
            .bind(&message.conversation)
            .bind(&message.sender)
            .bind(cmid)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                let mut stored = message_from_row(&row)?;
                stored.duplicate = true;
                return Ok(stored);
            }
        }
        // Message ids are arrival times in ms, made strictly increasing within a conversation so
        // that two messages in the same millisecond still get distinct ids.
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(message_id) FROM messages WHERE conversation = ?")
                .bind(&message.conversation)
                .fetch_one(&mut *tx)
                .await?;
        let message_id = last.map_or(message.arrival_ms, |l| {
            l.saturating_add(1).max(message.arrival_ms)
        });
        sqlx::query(
            "INSERT INTO messages (conversation, message_id, sender, sender_epid, recipient, client_message_id, message_type, headers, content, arrival_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&message.conversation)
        .bind(message_id)
        .bind(&message.sender)
        .bind(&message.sender_epid)
        .bind(&message.recipient)
        .bind(&message.client_message_id)
        .bind(&message.message_type)
        .bind(&message.headers)
        .bind(&message.content)
        .bind(message.arrival_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(StoredMessage {
            message_id,
            message,
            duplicate: false,
        })
    }

    async fn conversation_messages(&self, conversation: &str) -> StorageResult<Vec<StoredMessage>> {
        let rows = sqlx::query("SELECT * FROM messages WHERE conversation = ? ORDER BY message_id")
            .bind(conversation)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(message_from_row).collect()
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
}
