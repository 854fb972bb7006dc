//! Starting and stopping the whole server: storage, router, the three listeners, and a graceful
//! shutdown that tells every client `OUT` and waits for connections to finish.

use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::certs;
use crate::cluster::Coordination;
use crate::config::Config;
use crate::state::AppState;
use crate::storage::{PostgresStorage, SqliteStorage, Storage};
use crate::tokens::TokenSigner;
use crate::transport::{self, tls};

/// A running server.
pub struct Server {
    /// Where plaintext MSNP listens.
    pub tcp_addr: SocketAddr,
    /// Where MSNP over TLS listens, if enabled.
    pub tls_addr: Option<SocketAddr>,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// Where HTTPS listens, if enabled.
    pub https_addr: Option<SocketAddr>,
    /// Where Prometheus metrics are served, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// PEM file of the TLS certificate in use.
    pub tls_cert_path: Option<std::path::PathBuf>,
    /// PEM file of the local CA clients must trust (absent with an operator's certificate).
    pub ca_cert_path: Option<std::path::PathBuf>,
    state: Arc<AppState>,
    gateway: Arc<crate::http::gateway::Gateway>,
    storage: Arc<dyn Storage>,
    shutdown: watch::Sender<bool>,
    done_rx: mpsc::Receiver<()>,
    tasks: Vec<JoinHandle<()>>,
}

/// Opens the configured database (the data directory's SQLite file by default), creating
/// directory and schema as needed.
pub async fn open_storage(config: &Config) -> anyhow::Result<Arc<dyn Storage>> {
    // Certificates live in the data directory whichever database holds the rest.
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", config.data_dir.display()))?;
    restrict_data_dir(&config.data_dir)?;
    let postgres = config.postgres_url()?;
    crate::stats::set_backend(postgres.is_some());
    if let Some(url) = postgres {
        let storage = PostgresStorage::open(url)
            .await
            .map_err(|e| anyhow::anyhow!("opening PostgreSQL storage: {e}"))?;
        return Ok(Arc::new(storage));
    }
    let path = config.database_path();
    // SQLite gives its -wal and -shm files the database file's mode: create it private.
    if !path.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    }
    let storage = SqliteStorage::open(&path)
        .await
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    Ok(Arc::new(storage))
}

/// Makes the data directory readable by the server's user only: the directory and every
/// directory in it 0700, every file 0600 (the database and its -wal and -shm, the token secret,
/// TLS keys). Run at start, and again once certificates are made.
pub fn restrict_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| anyhow::anyhow!("restricting {}: {e}", p.display()))
    };
    set(dir, 0o700)?;
    let entries =
        std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            restrict_data_dir(&path)?;
        } else if kind.is_file() || kind.is_socket() {
            set(&path, 0o600)?;
        }
    }
    Ok(())
}

/// The token signer: its key lives in the database when that is shared (PostgreSQL), so that
/// every node accepts every other's tokens, and in the data directory otherwise.
pub async fn open_tokens(config: &Config, storage: &dyn Storage) -> anyhow::Result<TokenSigner> {
    if config.postgres_url()?.is_some() {
        TokenSigner::shared(storage).await
    } else {
        TokenSigner::load_or_create(&config.data_dir)
    }
}

/// Closes, as vanished connections, the endpoints of dead nodes this node claimed: their presence
/// lingers for the keep-alive, then goes offline for watchers.
async fn close_orphans(
    mut orphans: mpsc::Receiver<crate::cluster::Orphans>,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let batch = tokio::select! {
            _ = transport::stopped(&mut shutdown) => return,
            batch = orphans.recv() => batch,
        };
        let Some(batch) = batch else { return };
        for (addr, conn_id) in batch {
            state
                .presence
                .closed(&addr.account, &addr.epid, conn_id, true)
                .await;
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))
}

/// Binds the data directory's control socket, unless another server already answers on it
/// (nodes sharing a data directory: the first keeps it). Failing to bind only loses the socket.
async fn control_listener(dir: &std::path::Path) -> Option<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = crate::control::socket_path(dir);
    if tokio::net::UnixStream::connect(&path).await.is_ok() {
        tracing::warn!(path = %path.display(), "another server answers on this data directory's control socket; not taking it over");
        return None;
    }
    // Left behind by a server that did not stop cleanly.
    let _ = std::fs::remove_file(&path);
    match tokio::net::UnixListener::bind(&path) {
        Ok(l) => {
            if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot restrict the control socket");
            }
            Some(l)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no control socket: password changes and removals will not end live sessions at once");
            None
        }
    }
}

/// Serves one HTTP(S) listener with the server's limits.
async fn serve_http(
    listener: TcpListener,
    config: crate::http::listener::Listener,
    state: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
    done: transport::DoneGuard,
) {
    crate::http::listener::serve(
        listener,
        config,
        &state.http_connections,
        &state.descriptors,
        shutdown,
        done,
    )
    .await
}

impl Server {
    /// Opens storage and binds every listener; returns once all are accepting.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        // First, so that nothing counted while starting is lost.
        let metrics = match config.metrics_listen {
            Some(addr) => Some((crate::stats::install()?, crate::stats::bind(addr).await?)),
            None => None,
        };
        let storage = open_storage(&config).await?;
        let tokens = open_tokens(&config, storage.as_ref()).await?;
        let tls_material = if config.tls_listen.is_some() || config.https_listen.is_some() {
            Some(certs::load_or_generate(&config)?)
        } else {
            None
        };
        let Coordination {
            router,
            presence,
            locks,
            orphans,
            node_id,
        } = Coordination::from_config(&config).await?;
        let state = Arc::new(AppState::new(
            config.clone(),
            storage.clone(),
            router,
            presence,
            locks,
            tokens,
        ));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        let mut tasks = Vec::new();

        let tcp = bind(config.listen, "MSNP").await?;
        let tcp_addr = tcp.local_addr()?;
        tasks.push(tokio::spawn(transport::accept_tcp(
            tcp,
            state.clone(),
            shutdown_rx.clone(),
            done_tx.clone(),
            None,
        )));

        let mut tls_addr = None;
        if let (Some(addr), Some(material)) = (config.tls_listen, &tls_material) {
            let listener = bind(addr, "MSNP over TLS").await?;
            tls_addr = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(transport::accept_tcp(
                listener,
                state.clone(),
                shutdown_rx.clone(),
                done_tx.clone(),
                Some(tls::acceptor(material)?),
            )));
        }

        tasks.push(tokio::spawn(
            state.presence.clone().run_timers(shutdown_rx.clone()),
        ));
        if let Some(orphans) = orphans {
            tasks.push(tokio::spawn(close_orphans(
                orphans,
                state.clone(),
                shutdown_rx.clone(),
            )));
        }

        let gateway =
            crate::http::gateway::Gateway::new(state.clone(), shutdown_rx.clone(), done_tx.clone());
        let http = bind(config.http_listen, "HTTP").await?;
        let http_addr = http.local_addr()?;
        let listener = crate::http::listener::Listener {
            label: "http",
            app: crate::http::routes(state.clone(), gateway.clone()),
            tls: None,
            timeouts: config.http_timeouts(),
        };
        tasks.push(tokio::spawn(serve_http(
            http,
            listener,
            state.clone(),
            shutdown_rx.clone(),
            done_tx.clone(),
        )));

        let mut https_addr = None;
        if let (Some(addr), Some(material)) = (config.https_listen, &tls_material) {
            let https = bind(addr, "HTTPS").await?;
            https_addr = Some(https.local_addr()?);
            let listener = crate::http::listener::Listener {
                label: "https",
                app: crate::http::routes(state.clone(), gateway.clone()),
                tls: Some(tls::acceptor(material)?),
                timeouts: config.http_timeouts(),
            };
            tasks.push(tokio::spawn(serve_http(
                https,
                listener,
                state.clone(),
                shutdown_rx.clone(),
                done_tx.clone(),
            )));
        }
        let mut metrics_addr = None;
        if let Some((handle, listener)) = metrics {
            metrics_addr = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(crate::stats::serve(
                listener,
                handle,
                state.clone(),
                shutdown_rx.clone(),
                done_tx.clone(),
            )));
        }
        drop(done_tx);
        // Certificates were made after the directory was first restricted.
        restrict_data_dir(&config.data_dir)?;
        if let Some(listener) = control_listener(&config.data_dir).await {
            tasks.push(tokio::spawn(crate::control::serve(
                listener,
                crate::control::socket_path(&config.data_dir),
                state.clone(),
                shutdown_rx.clone(),
            )));
        }

        tracing::info!(
            msnp = %tcp_addr,
            msnp_tls = %tls_addr.map_or("off".to_string(), |a| a.to_string()),
            http = %http_addr,
            https = %https_addr.map_or("off".to_string(), |a| a.to_string()),
            metrics = %metrics_addr.map_or("off".to_string(), |a| a.to_string()),
            data_dir = %config.data_dir.display(),
            cluster_node = %node_id.as_deref().unwrap_or("none (alone)"),
            "msnp24 listening"
        );
        Ok(Server {
            tcp_addr,
            tls_addr,
            http_addr,
            https_addr,
            metrics_addr,
            ca_cert_path: tls_material.as_ref().and_then(|m| m.ca_path.clone()),
            tls_cert_path: tls_material.map(|m| m.cert_path),
            state,
            gateway,
            storage,
            shutdown,
            done_rx,
            tasks,
        })
    }

    /// The shared state (for tools and tests that inspect the server).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The HTTP gateway's sessions (for tests that check its bounds).
    pub fn gateway(&self) -> &Arc<crate::http::gateway::Gateway> {
        &self.gateway
    }

    /// Stops accepting, sends `OUT` to every client, waits for connections to end (at most 10 s)
    /// and closes storage.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        self.shutdown.send_replace(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.done_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not end within 10 s");
        }
        self.state.router.leave().await;
        self.storage.close().await;
        tracing::info!("stopped");
    }
}
