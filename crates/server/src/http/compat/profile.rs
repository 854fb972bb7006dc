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

/// First and last name as both services show them, derived from the display name alone (the
/// one place that splits it, so the profile and the contact list always agree): the first word,
/// and the rest with its inner spacing kept.
pub fn name_parts(display_name: Option<&str>) -> (Option<String>, Option<String>) {
    match display_name.map(str::trim) {
        Some(d) if !d.is_empty() => match d.split_once(char::is_whitespace) {
            Some((first, last)) => (Some(first.to_string()), Some(last.trim().to_string())),
            None => (Some(d.to_string()), None),
        },
        _ => (None, None),
    }
}

/// The profile fields shared by both endpoints.
pub fn profile_json(account: &Account) -> serde_json::Value {
    let (first, last) = name_parts(account.display_name.as_deref());
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

#[cfg(test)]
mod tests {
    use super::name_parts;

    #[test]
    fn names_split_at_the_first_space() {
        let parts = |d: Option<&str>| {
            let (f, l) = name_parts(d);
            (
                f.as_deref().map(str::to_owned),
                l.as_deref().map(str::to_owned),
            )
        };
        let s = |v: &str| Some(v.to_string());
        assert_eq!(parts(Some("Bob Builder")), (s("Bob"), s("Builder")));
        assert_eq!(
            parts(Some("  Ana María  de la Cruz ")),
            (s("Ana"), s("María  de la Cruz"))
        );
        assert_eq!(parts(Some("Bob")), (s("Bob"), None));
        assert_eq!(parts(Some("   ")), (None, None));
        assert_eq!(parts(None), (None, None));
    }
}
