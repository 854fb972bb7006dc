//! Starting and stopping the whole server: storage, router, the three listeners, and a graceful
//! shutdown that tells every client `OUT` and waits for connections to finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::certs;
use crate::cluster::Coordination;
use crate::config::Config;
use crate::http::PeerAddr;
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
    let postgres = config.postgres_url()?;
    crate::stats::set_backend(postgres.is_some());
    if let Some(url) = postgres {
        let storage = PostgresStorage::open(url)
            .await
            .map_err(|e| anyhow::anyhow!("opening PostgreSQL storage: {e}"))?;
        return Ok(Arc::new(storage));
    }
    let path = config.database_path();
    let storage = SqliteStorage::open(&path)
        .await
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    Ok(Arc::new(storage))
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
        let app = crate::http::routes(state.clone(), gateway.clone())
            .into_make_service_with_connect_info::<PeerAddr>();
        let mut stop = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let result = axum::serve(http, app)
                .with_graceful_shutdown(async move { transport::stopped(&mut stop).await })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "HTTP listener failed");
            }
        }));

        let mut https_addr = None;
        if let (Some(addr), Some(material)) = (config.https_listen, &tls_material) {
            let listener = bind(addr, "HTTPS").await?;
            https_addr = Some(listener.local_addr()?);
            let tls =
                tls::TlsListener::spawn(listener, tls::acceptor(material)?, shutdown_rx.clone())?;
            let app = crate::http::routes(state.clone(), gateway.clone())
                .into_make_service_with_connect_info::<PeerAddr>();
            let mut stop = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                let result = axum::serve(tls, app)
                    .with_graceful_shutdown(async move { transport::stopped(&mut stop).await })
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "HTTPS listener failed");
                }
            }));
        }
        let mut metrics_addr = None;
        if let Some((handle, listener)) = metrics {
            metrics_addr = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(crate::stats::serve(
                listener,
                handle,
                shutdown_rx.clone(),
            )));
        }
        drop(done_tx);

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
