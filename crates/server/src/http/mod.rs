//! The HTTP and HTTPS listeners: `POST /login`, `GET /healthz`, the compatibility services, the
//! gateway and the web messenger at `/`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

pub mod compat;
pub mod gateway;
pub mod listener;
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
        .layer(axum::middleware::map_response(html_headers))
}

/// Framing and content rules for every HTML page (the login page, the web messenger): no page
/// may be framed by another site (clickjacking the sign-in form), and scripts, styles and
/// requests come from this origin only.
pub const HTML_CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; object-src 'none'; \
     base-uri 'none'; frame-ancestors 'none'";

/// Adds `X-Frame-Options` and `Content-Security-Policy` to HTML responses that lack them.
async fn html_headers(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::header::{HeaderValue, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_FRAME_OPTIONS};
    let html = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/html"));
    if html {
        let h = response.headers_mut();
        h.entry(X_FRAME_OPTIONS)
            .or_insert(HeaderValue::from_static("DENY"));
        h.entry(CONTENT_SECURITY_POLICY)
            .or_insert(HeaderValue::from_static(HTML_CSP));
    }
    response
}

/// The client's address, for throttling (`ConnectInfo<PeerAddr>`; set by [`listener`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}
