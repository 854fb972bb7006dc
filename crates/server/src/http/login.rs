//! `POST /login` (§10): user name and password in, a signed expiring token out.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use msnp24_proto::AccountName;
use serde::{Deserialize, Serialize};

use crate::accounts::{verify_password, DUMMY_HASH};
use crate::state::{now_secs, AppState};
use crate::tokens::{Claims, TokenKind};

/// The request body.
#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    /// Account name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// The success body.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoginResponse {
    /// The login token to put in `ATH`.
    pub token: String,
    /// Expiry, unix seconds.
    pub expires_at: i64,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": code, "message": message})),
    )
        .into_response()
}

/// Handles `POST /login`.
pub async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            tracing::info!(%peer, error = %e, "malformed login request");
            return error(StatusCode::BAD_REQUEST, "bad_request", &e.body_text());
        }
    };
    let key = req.username.to_ascii_lowercase();
    if let Some(wait) = state.throttle.locked(&key, peer.ip()) {
        tracing::info!(%peer, account = %key, "login throttled");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("Retry-After", wait.to_string())],
            Json(serde_json::json!({"error": "too_many_attempts", "message": "too many failed logins; try again later", "retry_after": wait})),
        )
            .into_response();
    }
    let account = match AccountName::parse(&req.username) {
        Ok(name) => match state.storage.account(&name).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "login lookup failed");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                );
            }
        },
        Err(_) => None,
    };
    // Unknown accounts are checked against a dummy hash so both failures take as long.
    let hash = account
        .as_ref()
        .map_or_else(|| DUMMY_HASH.to_string(), |a| a.password_hash.clone());
    let ok = verify_password(req.password, hash).await;
    let Some(account) = account.filter(|_| ok) else {
        state.throttle.failed(&key, peer.ip());
        tracing::info!(%peer, account = %key, "login failed");
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "unknown user or wrong password",
        );
    };
    state.throttle.succeeded(&key);
    let expires_at = now_secs() + state.config.token_ttl_secs as i64;
    let token = state.tokens.issue(
        TokenKind::Login,
        &Claims {
            account: account.name.clone(),
            generation: account.generation,
            expires_at,
            epid: None,
        },
    );
    tracing::info!(%peer, account = %account.name, "login token issued");
    Json(LoginResponse { token, expires_at }).into_response()
}
