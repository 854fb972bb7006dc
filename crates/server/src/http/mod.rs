//! The HTTP and HTTPS listeners: `POST /login`, `GET /healthz`, the compatibility services, the
//! gateway and the web messenger at `/`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::Router;
use tokio::net::TcpListener;

use crate::state::AppState;

pub mod compat;
pub mod gateway;
pub mod login;
pub mod web;

/// The HTTP routes; `gateway` is shared by every listener, so a session opened on one may be
/// continued on another.
pub fn routes(state: Arc<AppState>, gateway: Arc<gateway::Gateway>) -> Router {
    Router::new()
        .route("/login", post(login::login))
        .route("/healthz", get(healthz))
        .merge(compat::routes())
        .merge(web::routes())
        .with_state(state)
        .merge(gateway.routes())
}

/// The client's address, for throttling; the same type serves the HTTP and HTTPS listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, crate::transport::tls::TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, crate::transport::tls::TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}
