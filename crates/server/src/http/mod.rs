//! The HTTP listener: `POST /login` and `GET /healthz`.

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

pub mod login;

/// The HTTP routes.
pub fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/login", post(login::login))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}
