//! The HTTPS services real MSNP24 clients called before opening the MSNP connection (§10): the
//! Microsoft-account login pages, token refresh, skypetokens, profiles and contacts. They issue and
//! accept the server's own tokens, so a client of the time works once its host names point here.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};

use crate::state::{AppState, TokenRefusal};
use crate::storage::Account;
use crate::tokens::TokenKind;

pub mod contacts;
pub mod oauth;
pub mod profile;
pub mod skypetoken;

/// The compatibility routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/oauth20_authorize.srf", get(oauth::authorize))
        .route("/ppsecure/post.srf", post(oauth::post_srf))
        .route("/oauth20_desktop.srf", get(oauth::desktop))
        .route("/oauth20_token.srf", post(oauth::token))
        .route("/rps/skypetoken", post(skypetoken::from_access_token))
        .route("/login/skypetoken", post(skypetoken::from_password_hash))
        .route("/users/self/profile", get(profile::own))
        .route("/users/{name}/profile/public", get(profile::public))
        .route("/contacts/v2/users/{name}/contacts", get(contacts::list))
        .route("/users/self/contacts/auth-request", get(contacts::requests))
        .route(
            "/users/self/contacts/auth-request/{name}",
            put(contacts::request),
        )
        .route(
            "/users/self/contacts/auth-request/{name}/accept",
            put(contacts::accept),
        )
        .route(
            "/users/self/contacts/auth-request/{name}/decline",
            put(contacts::decline),
        )
        .route("/users/self/contacts/{name}/block", put(contacts::block))
        .route(
            "/users/self/contacts/{name}/unblock",
            put(contacts::unblock),
        )
        .route("/users/self/contacts/{name}", delete(contacts::remove))
}

/// The value of the cookie `name` the request carried.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The host name the client used, safe to echo into a URL, HTML and JavaScript.
pub fn request_host(headers: &HeaderMap) -> String {
    headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        })
        .unwrap_or("localhost")
        .to_string()
}

/// A Skype-API style error: `{"status": {"code": N, "text": "…"}}`.
pub fn status_error(http: StatusCode, code: u32, text: &str) -> Response {
    (
        http,
        Json(serde_json::json!({"status": {"code": code, "text": text}})),
    )
        .into_response()
}

/// The account named by a valid `X-Skypetoken` header, or the 401 answer.
pub async fn skype_account(state: &AppState, headers: &HeaderMap) -> Result<Account, Response> {
    let Some(token) = headers.get("x-skypetoken").and_then(|v| v.to_str().ok()) else {
        return Err(status_error(
            StatusCode::UNAUTHORIZED,
            40100,
            "missing X-Skypetoken",
        ));
    };
    match state.verify_account_token(TokenKind::Skype, token).await {
        Ok(a) => Ok(a),
        Err(TokenRefusal::Internal) => Err(status_error(
            StatusCode::SERVICE_UNAVAILABLE,
            50300,
            "try again later",
        )),
        Err(e) => Err(status_error(
            StatusCode::UNAUTHORIZED,
            40100,
            &format!("invalid X-Skypetoken: {e}"),
        )),
    }
}
