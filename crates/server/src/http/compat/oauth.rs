//! The Microsoft-account login a client of the time runs in an embedded browser: the authorize
//! page, the form post that redirects with tokens in the fragment, and refresh-token grants.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;

use super::request_host;
use crate::accounts::{authenticate, LoginError, Secret};
use crate::http::PeerAddr;
use crate::state::{AppState, TokenRefusal};
use crate::tokens::TokenKind;

/// Lifetime of refresh tokens: long, as Microsoft's were; revoked by a password change.
pub const REFRESH_TTL_SECS: u64 = 90 * 24 * 3600;

const COOKIE: &str = "MSPOK";

/// Escapes text for a single-quoted JavaScript string inside HTML.
fn js_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\x27"),
            '"' => out.push_str("\\x22"),
            '<' => out.push_str("\\x3c"),
            '>' => out.push_str("\\x3e"),
            '&' => out.push_str("\\x26"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn html_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn ppft(state: &AppState, cookie: &str) -> String {
    state.tokens.tag("ppft", cookie.as_bytes())
}

/// The login page, with the form's absolute post URL and the PPFT the post must return.
fn login_page(host: &str, query: &str, ppft: &str, error: Option<&str>) -> String {
    let url_post = format!("https://{host}/ppsecure/post.srf?{query}");
    let err = error
        .map(|e| format!("sErrTxt:'{}',", js_html(e)))
        .unwrap_or_default();
    format!(
        "<!DOCTYPE html><html><head><title>Sign in</title></head><body>\
<form name=\"f1\" method=\"POST\" action=\"{action}\">\
<input type=\"hidden\" name=\"PPFT\" value=\"{ppft_attr}\">\
<input type=\"email\" name=\"login\"><input type=\"password\" name=\"passwd\">\
<input type=\"submit\" value=\"Sign in\"></form>\
<script type=\"text/javascript\">var ServerData = {{{err}urlPost:'{url_js}',\
sFTTag:'<input type=\"hidden\" name=\"PPFT\" id=\"i0327\" value=\"{ppft_js}\"/>'}};</script>\
</body></html>",
        action = html_attr(&url_post),
        ppft_attr = html_attr(ppft),
        // Both are already restricted to URL-safe characters (host and query are filtered, the
        // PPFT is base64url); clients find `urlPost` by plain text search, so no escapes here.
        url_js = url_post,
        ppft_js = ppft,
    )
}

fn sanitize_query(q: Option<String>) -> String {
    // Echoed into the page: keep only what a URL query may hold.
    q.unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"' | '\'' | '\\' | '`'))
        .take(4096)
        .collect()
}

/// `GET /oauth20_authorize.srf`: sets `MSPOK` and serves the login page.
pub async fn authorize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let host = request_host(&headers);
    let query = sanitize_query(query);
    let cookie = uuid::Uuid::new_v4().simple().to_string();
    let page = login_page(&host, &query, &ppft(&state, &cookie), None);
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}={cookie}; Path=/; Secure; HttpOnly"),
        )],
        Html(page),
    )
        .into_response()
}

/// The fields of the login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    /// The anti-forgery value from the page.
    #[serde(rename = "PPFT")]
    pub ppft: Option<String>,
    /// User name or e-mail alias.
    pub login: Option<String>,
    /// Password.
    pub passwd: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AuthorizeQuery {
    scope: Option<String>,
}

/// `POST /ppsecure/post.srf`: checks the form and redirects with tokens in the fragment, or serves
/// the page again with `sErrTxt`.
pub async fn post_srf(
    State(state): State<Arc<AppState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let host = request_host(&headers);
    let query = sanitize_query(query);
    let cookie = super::cookie(&headers, COOKIE);
    let again = |status: StatusCode, reason: &str| {
        // A fresh cookie and PPFT so the user can simply try again.
        let cookie = uuid::Uuid::new_v4().simple().to_string();
        let page = login_page(&host, &query, &ppft(&state, &cookie), Some(reason));
        (
            status,
            [(
                header::SET_COOKIE,
                format!("{COOKIE}={cookie}; Path=/; Secure; HttpOnly"),
            )],
            Html(page),
        )
            .into_response()
    };
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            tracing::info!(%peer, error = %e, "malformed login form");
            return again(
                StatusCode::OK,
                "The request was not understood. Please try again.",
            );
        }
    };
    let (Some(login), Some(passwd), Some(sent_ppft)) = (form.login, form.passwd, form.ppft) else {
        return again(StatusCode::OK, "Enter your account name and password.");
    };
    let expected = cookie.as_deref().map(|c| ppft(&state, c));
    if expected.as_deref() != Some(sent_ppft.as_str()) {
        tracing::info!(%peer, "login form without a matching MSPOK cookie");
        return again(
            StatusCode::OK,
            "Your session has timed out. Please try again.",
        );
    }
    let account = match authenticate(&state, &login, Secret::Password(&passwd), peer.ip()).await {
        Ok(a) => a,
        Err(e @ LoginError::Throttled(_)) => {
            return again(StatusCode::TOO_MANY_REQUESTS, &e.to_string())
        }
        Err(LoginError::Invalid) => {
            return again(
                StatusCode::OK,
                "That account name or password is incorrect.",
            )
        }
        Err(LoginError::Internal) => {
            return again(StatusCode::SERVICE_UNAVAILABLE, "Please try again later.")
        }
    };
    let scope = serde_urlencoded::from_str::<AuthorizeQuery>(&query)
        .ok()
        .and_then(|q| q.scope)
        .unwrap_or_else(|| "service::skype.com::MBI_SSL".to_string());
    let ttl = state.config.token_ttl_secs;
    let (access, _) = state.issue(TokenKind::Login, &account, ttl);
    let (refresh, _) = state.issue(TokenKind::Refresh, &account, REFRESH_TTL_SECS);
    let fragment = serde_urlencoded::to_string([
        ("access_token", access.as_str()),
        ("token_type", "bearer"),
        ("expires_in", &ttl.to_string()),
        ("scope", &scope),
        ("refresh_token", &refresh),
        ("user_id", &user_id(account.id)),
    ])
    .unwrap_or_default();
    tracing::info!(%peer, account = %account.name, "compatibility login");
    (
        StatusCode::FOUND,
        [
            (
                header::LOCATION,
                format!("https://{host}/oauth20_desktop.srf#{fragment}"),
            ),
            // The gateway's `X-MSN-Auth: Use-Cookie` sign-in uses it (§11).
            (
                header::SET_COOKIE,
                crate::http::gateway::auth_cookie(&access),
            ),
        ],
    )
        .into_response()
}

/// The Microsoft-style user id: the account's id as 16 hex digits.
pub fn user_id(id: i64) -> String {
    format!("{id:016x}")
}

/// `GET /oauth20_desktop.srf`: where the login redirects; clients read the fragment from the URL.
pub async fn desktop() -> Html<&'static str> {
    Html("<!DOCTYPE html><html><head><title>Signed in</title></head><body></body></html>")
}

/// The fields of a token request.
#[derive(Debug, Deserialize)]
pub struct TokenForm {
    /// Must be `refresh_token`.
    pub grant_type: Option<String>,
    /// The refresh token.
    pub refresh_token: Option<String>,
    /// Requested scope, echoed back.
    pub scope: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// `POST /oauth20_token.srf`: trades a refresh token for a new access token and refresh token.
pub async fn token(
    State(state): State<Arc<AppState>>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request body is not a form",
        );
    };
    if form.grant_type.as_deref() != Some("refresh_token") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only refresh_token is supported",
        );
    }
    let Some(refresh) = form.refresh_token.filter(|t| !t.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is missing",
        );
    };
    let account = match state
        .verify_account_token(TokenKind::Refresh, &refresh)
        .await
    {
        Ok(a) => a,
        Err(TokenRefusal::Internal) => {
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again later",
            )
        }
        Err(e) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                &format!("the refresh token is not valid: {e}"),
            )
        }
    };
    let ttl = state.config.token_ttl_secs;
    let (access, _) = state.issue(TokenKind::Login, &account, ttl);
    let (refresh, _) = state.issue(TokenKind::Refresh, &account, REFRESH_TTL_SECS);
    Json(serde_json::json!({
        "access_token": access,
        "refresh_token": refresh,
        "expires_in": ttl,
        "token_type": "bearer",
        "scope": form.scope.unwrap_or_else(|| "service::skype.com::MBI_SSL".to_string()),
        "user_id": user_id(account.id),
    }))
    .into_response()
}
