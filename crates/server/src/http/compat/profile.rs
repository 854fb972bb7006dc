//! Profiles (§10): the caller's own, and any account's public one.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use msnp24_proto::AccountName;

use super::skype_account;
use crate::state::AppState;
use crate::storage::Account;

/// First word of the display name, and the rest.
fn split_name(account: &Account) -> (Option<String>, Option<String>) {
    match account.display_name.as_deref().map(str::trim) {
        Some(d) if !d.is_empty() => match d.split_once(char::is_whitespace) {
            Some((first, last)) => (Some(first.to_string()), Some(last.trim().to_string())),
            None => (Some(d.to_string()), None),
        },
        _ => (None, None),
    }
}

/// The profile fields shared by both endpoints.
pub fn profile_json(account: &Account) -> serde_json::Value {
    let (first, last) = split_name(account);
    serde_json::json!({
        "username": account.name.as_str(),
        "firstname": first,
        "lastname": last,
        "displayname": account.display_name,
        "mood": account.mood,
    })
}

/// `GET /users/self/profile`.
pub async fn own(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match skype_account(&state, &headers).await {
        Ok(account) => Json(profile_json(&account)).into_response(),
        Err(r) => r,
    }
}

/// `GET /users/<name>/profile/public`: always an object (`{}` for unknown names).
pub async fn public(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = skype_account(&state, &headers).await {
        return r;
    }
    let found = match AccountName::parse(name.strip_prefix("8:").unwrap_or(&name)) {
        Ok(n) => state.storage.account(&n).await.ok().flatten(),
        Err(_) => None,
    };
    Json(found.map_or_else(|| serde_json::json!({}), |a| profile_json(&a))).into_response()
}
