//! Skypetokens (§10): traded for an access token, or for a Skype-name client's legacy password
//! digest. They authorise the profile and contacts services.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;

use super::status_error;
use crate::accounts::{authenticate, LoginError, Secret};
use crate::http::PeerAddr;
use crate::state::{AppState, TokenRefusal};
use crate::storage::Account;
use crate::tokens::TokenKind;

/// A skypetoken lives as long as the access token it is traded for (`token_ttl_secs`), so an
/// operator shortens both at once and a client's refresh path runs when it should.
fn issued(state: &AppState, account: &Account) -> Response {
    let ttl = state.config.token_ttl_secs;
    let (token, _) = state.issue(TokenKind::Skype, account, ttl);
    Json(serde_json::json!({"skypetoken": token, "expiresIn": ttl})).into_response()
}

/// The fields of `POST /rps/skypetoken`.
#[derive(Debug, Deserialize)]
pub struct AccessTokenForm {
    /// The access token from the login redirect (optionally `t=`-prefixed).
    pub access_token: Option<String>,
}

/// `POST /rps/skypetoken`.
pub async fn from_access_token(
    State(state): State<Arc<AppState>>,
    form: Result<Form<AccessTokenForm>, FormRejection>,
) -> Response {
    let Some(token) = form
        .ok()
        .and_then(|Form(f)| f.access_token)
        .filter(|t| !t.is_empty())
    else {
        return status_error(StatusCode::BAD_REQUEST, 40000, "access_token is missing");
    };
    let token = token.strip_prefix("t=").unwrap_or(&token);
    let token = token.split('&').next().unwrap_or(token);
    match state.verify_account_token(TokenKind::Login, token).await {
        Ok(account) => issued(&state, &account),
        Err(TokenRefusal::Internal) => {
            status_error(StatusCode::SERVICE_UNAVAILABLE, 50300, "try again later")
        }
        Err(e) => status_error(
            StatusCode::UNAUTHORIZED,
            40120,
            &format!("Authentication failed: {e}"),
        ),
    }
}

/// The fields of `POST /login/skypetoken`.
#[derive(Debug, Deserialize)]
pub struct PasswordHashForm {
    /// Skype name.
    pub username: Option<String>,
    /// base64(MD5(username + "\nskyper\n" + password)).
    #[serde(rename = "passwordHash")]
    pub password_hash: Option<String>,
}

/// `POST /login/skypetoken` (Skype-name clients).
pub async fn from_password_hash(
    State(state): State<Arc<AppState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    form: Result<Form<PasswordHashForm>, FormRejection>,
) -> Response {
    let Some((username, digest)) = form
        .ok()
        .and_then(|Form(f)| Some((f.username?, f.password_hash?)))
        .filter(|(u, d)| !u.is_empty() && !d.is_empty())
    else {
        return status_error(
            StatusCode::BAD_REQUEST,
            40000,
            "username and passwordHash are required",
        );
    };
    match authenticate(&state, &username, Secret::LegacyDigest(&digest), peer.ip()).await {
        Ok(account) => issued(&state, &account),
        Err(e @ LoginError::Throttled(_)) => {
            status_error(StatusCode::TOO_MANY_REQUESTS, 42900, &e.to_string())
        }
        Err(LoginError::Invalid) => status_error(
            StatusCode::UNAUTHORIZED,
            40120,
            "Authentication failed. Bad username or password.",
        ),
        Err(LoginError::Internal) => {
            status_error(StatusCode::SERVICE_UNAVAILABLE, 50300, "try again later")
        }
    }
}
