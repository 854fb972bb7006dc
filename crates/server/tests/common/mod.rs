//! Shared test harness: a real server on 127.0.0.1 (random ports, temporary data directory, real
//! SQLite file) and clients that speak to it over TCP with the project's client library.

#![allow(dead_code)]

use std::time::Duration;

use msnp24_client::Client;
use msnp24_proto::{AccountName, Frame};
use msnp24_server::{accounts, Config, Server};

pub const WAIT: Duration = Duration::from_secs(5);
pub const PASSWORD: &str = "correct horse";

pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub fn test_config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_listen: Some("127.0.0.1:0".parse().unwrap()),
        https_listen: Some("127.0.0.1:0".parse().unwrap()),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> TestServer {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        edit(&mut config);
        let server = Server::start(config.clone()).await.unwrap();
        TestServer {
            server: Some(server),
            dir,
            config,
        }
    }

    /// A server on a fresh PostgreSQL database (see [`fresh_postgres_db`]).
    pub async fn start_postgres() -> TestServer {
        let url = fresh_postgres_db().await;
        Self::start_with(|c| c.storage = Some(url)).await
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.server().http_addr)
    }

    pub async fn add_user(&self, name: &str) {
        let storage = self.server().state().storage.clone();
        accounts::create(
            storage.as_ref(),
            &AccountName::parse(name).unwrap(),
            PASSWORD,
        )
        .await
        .unwrap();
    }

    pub async fn token(&self, name: &str) -> String {
        msnp24_client::http_login(&self.http(), name, PASSWORD)
            .await
            .unwrap()
            .token
    }

    pub async fn connect(&self) -> Client {
        Client::connect_tcp(self.server().tcp_addr).await.unwrap()
    }

    /// A client that has logged in over HTTP, run the handshake and subscribed to messaging.
    pub async fn signed_in(&self, name: &str) -> Client {
        let token = self.token(name).await;
        let mut c = self.connect().await;
        c.login(name, &token, &msnp24_client::new_epid())
            .await
            .unwrap();
        c
    }

    /// Stops the server and starts a new one on the same data directory (new ports).
    pub async fn restart(&mut self) {
        self.server.take().unwrap().shutdown().await;
        self.server = Some(Server::start(self.config.clone()).await.unwrap());
    }
}

/// Makes `a` and `b` mutual contacts (watch and allow both ways) directly in storage.
pub async fn friends(t: &TestServer, a: &str, b: &str) {
    use msnp24_server::storage::list_bits::{ALLOW, FORWARD};
    use msnp24_server::storage::ContactUpdate;
    let both = FORWARD | ALLOW;
    let updates = [
        ContactUpdate {
            owner: AccountName::parse(a).unwrap(),
            contact: AccountName::parse(b).unwrap(),
            set: both,
            clear: 0,
        },
        ContactUpdate {
            owner: AccountName::parse(b).unwrap(),
            contact: AccountName::parse(a).unwrap(),
            set: both,
            clear: 0,
        },
    ];
    t.server()
        .state()
        .storage
        .update_contacts(&updates)
        .await
        .unwrap();
}

/// The first line of a frame, as the wire shows it.
pub fn first_line(f: &Frame) -> String {
    format!("{} {} {} {}", f.cmd, f.trid, f.target, f.payload.len())
}

/// Asserts that no frame a client received broke a §0 rule.
pub fn assert_conformant(c: &Client) {
    let v = c.violations();
    assert!(v.is_empty(), "frames broke §0: {v:#?}");
}

/// Creates accounts `{prefix}0000`… directly in storage with one password hash for all (argon2 a
/// thousand times would dominate a test).
pub async fn make_accounts(t: &TestServer, prefix: &str, n: usize) -> Vec<AccountName> {
    let state = t.server().state().clone();
    let hash = accounts::hash_password(PASSWORD.to_string()).await.unwrap();
    let names: Vec<AccountName> = (0..n)
        .map(|i| AccountName::parse(&format!("{prefix}{i:04}")).unwrap())
        .collect();
    for nm in &names {
        state
            .storage
            .create_account(nm, &hash, &hash)
            .await
            .unwrap();
    }
    names
}

/// Signs each account in (handshake and subscriptions) with a login token issued directly, 50
/// connections at a time.
pub async fn sign_in_many(t: &TestServer, names: &[AccountName]) -> Vec<Client> {
    use msnp24_server::tokens::{Claims, TokenKind};
    let state = t.server().state().clone();
    let addr = t.server().tcp_addr;
    let mut clients = Vec::with_capacity(names.len());
    for chunk in names.chunks(50) {
        let mut set = tokio::task::JoinSet::new();
        for nm in chunk {
            let token = state.tokens.issue(
                TokenKind::Login,
                &Claims {
                    account: nm.clone(),
                    generation: 1,
                    expires_at: msnp24_server::state::now_secs() + 3600,
                    epid: None,
                },
            );
            let account = nm.as_str().to_string();
            set.spawn(async move {
                let mut c = Client::connect_tcp(addr).await.unwrap();
                c.login(&account, &token, &msnp24_client::new_epid())
                    .await
                    .unwrap();
                c
            });
        }
        while let Some(c) = set.join_next().await {
            clients.push(c.unwrap());
        }
    }
    clients
}

/// The PostgreSQL server tests may use (a superuser URL), from `MSNP24_TEST_POSTGRES`.
fn test_postgres() -> String {
    std::env::var("MSNP24_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "MSNP24_TEST_POSTGRES is not set: run the tests with scripts/test, which starts \
             PostgreSQL and Redis on loopback (or set it to a postgres:// URL of a superuser)"
        )
    })
}

/// Creates a uniquely named, empty database on the test PostgreSQL server and returns its URL.
pub async fn fresh_postgres_db() -> String {
    use sqlx::Connection;
    let base = test_postgres();
    let name = format!("msnp24_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("connecting to MSNP24_TEST_POSTGRES ({base}): {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
    let _ = conn.close().await;
    database_url(&base, &name)
}

/// `base` with its database name replaced by `name` (the query string kept).
fn database_url(base: &str, name: &str) -> String {
    let (url, query) = match base.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (base, None),
    };
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let path_start = url[authority_start..]
        .find('/')
        .map_or(url.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &url[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The Redis server tests may use, from `MSNP24_TEST_REDIS`.
pub fn redis_url() -> String {
    std::env::var("MSNP24_TEST_REDIS").unwrap_or_else(|_| {
        panic!(
            "MSNP24_TEST_REDIS is not set: run the tests with scripts/test, which starts \
             PostgreSQL and Redis on loopback (or set it to a redis:// URL)"
        )
    })
}
