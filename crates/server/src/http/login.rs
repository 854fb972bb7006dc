//! `POST /login` (§10): user name (or e-mail alias) and password in, a signed expiring token out.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::PeerAddr;
use crate::accounts::{authenticate, LoginError, Secret};
use crate::state::AppState;
use crate::tokens::TokenKind;

/// The request body.
#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    /// Account name or e-mail alias.
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

/// A JSON error body `{"error": code, "message": text}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": code, "message": message})),
    )
        .into_response()
}

/// The answer to a failed password login, as JSON.
pub fn login_error(e: &LoginError) -> Response {
    match e {
        LoginError::Throttled(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("Retry-After", wait.to_string())],
            Json(serde_json::json!({"error": "too_many_attempts", "message": e.to_string(), "retry_after": wait})),
        )
            .into_response(),
        LoginError::Invalid => error(StatusCode::UNAUTHORIZED, "invalid_credentials", &e.to_string()),
        LoginError::Internal => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"),
    }
}

/// Handles `POST /login`.
pub async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            tracing::info!(%peer, error = %crate::text::log(&e.body_text()), "malformed login request");
            // A body over the limit is 413; every other unreadable body is the client's 400.
            return match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => {
                    error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &e.body_text())
                }
                _ => error(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
            };
        }
    };
    let account = match authenticate(
        &state,
        &req.username,
        Secret::Password(&req.password),
        peer.ip(),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => return login_error(&e),
    };
    let (token, expires_at) = state.issue(TokenKind::Login, &account, state.config.token_ttl_secs);
    tracing::info!(%peer, account = %account.name, "login token issued");
    // The gateway's `X-MSN-Auth: Use-Cookie` sign-in uses the cookie (§11).
    (
        [(header::SET_COOKIE, super::gateway::auth_cookie(&token))],
        Json(LoginResponse { token, expires_at }),
    )
        .into_response()
}
