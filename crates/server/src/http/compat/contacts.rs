//! The contacts service (§10): the caller's contact list, requests with greetings, accept, decline,
//! block, unblock and remove — acting on the same lists as `PUT`/`DEL MSGR\CONTACTS`, with the same
//! notifications to online endpoints.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use msnp24_proto::AccountName;
use serde::Deserialize;

use super::profile::name_parts;
use super::{skype_account, status_error};
use crate::commands::messaging::iso_time;
use crate::contacts::{self, ListOp};
use crate::state::AppState;
use crate::storage::list_bits::{ALLOW, BLOCK, FORWARD, PENDING};
use crate::storage::Account;

/// Greetings longer than this are cut (clients of the time limited them far below).
const MAX_GREETING_CHARS: usize = 1000;

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "contacts service failed");
    status_error(StatusCode::SERVICE_UNAVAILABLE, 50300, "try again later")
}

/// The contact named in a path: an account name, optionally `8:`-prefixed.
async fn named(state: &AppState, raw: &str) -> Result<AccountName, Response> {
    let not_found = || status_error(StatusCode::NOT_FOUND, 40400, "no such user");
    let name =
        AccountName::parse(raw.strip_prefix("8:").unwrap_or(raw)).map_err(|_| not_found())?;
    match state.storage.account(&name).await {
        Ok(Some(a)) => Ok(a.name),
        Ok(None) => Err(not_found()),
        Err(e) => Err(unavailable(e)),
    }
}

/// A contact's `profile`; its `name` (`first`, `surname`: the contacts service's own keys) comes
/// from the same split as the profile service's `firstname`/`lastname`.
fn profile(account: Option<&Account>) -> serde_json::Value {
    let (first, surname) = name_parts(account.and_then(|a| a.display_name.as_deref()));
    serde_json::json!({
        "name": {"first": first, "surname": surname},
        "mood": account.and_then(|a| a.mood.clone()),
    })
}

/// `GET /contacts/v2/users/<name>/contacts`: the caller's list (`<name>` must be the caller or
/// `self`). Rows that are only an unanswered request are not contacts yet.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let me = match skype_account(&state, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let asked = name
        .strip_prefix("8:")
        .unwrap_or(&name)
        .to_ascii_lowercase();
    if asked != "self" && asked != me.name.as_str() {
        return status_error(StatusCode::FORBIDDEN, 40300, "only your own contacts");
    }
    let rows = match state.storage.contacts(&me.name).await {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    let names: Vec<AccountName> = rows
        .iter()
        .filter(|c| c.bits & (FORWARD | ALLOW | BLOCK) != 0)
        .map(|c| c.name.clone())
        .collect();
    let relations = match state.storage.contact_relations(&me.name, &names).await {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    let mut out = Vec::with_capacity(relations.len());
    for rel in &relations {
        let account = match state.storage.account(&rel.name).await {
            Ok(a) => a,
            Err(e) => return unavailable(e),
        };
        out.push(serde_json::json!({
            "mri": rel.name.mri().to_string(),
            "display_name": account.as_ref().and_then(|a| a.display_name.clone()).unwrap_or_else(|| rel.name.to_string()),
            // Authorized: they accepted us (their allow), as Skype showed it.
            "authorized": rel.mine & FORWARD != 0 && rel.theirs & ALLOW != 0,
            "blocked": rel.mine & BLOCK != 0,
            "profile": profile(account.as_ref()),
        }));
    }
    Json(serde_json::json!({"contacts": out})).into_response()
}

/// The form of a contact request.
#[derive(Debug, Deserialize)]
pub struct RequestForm {
    /// The greeting shown to the recipient.
    pub greeting: Option<String>,
}

/// The caller and the contact a path names (not the caller itself).
async fn caller_and_contact(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
) -> Result<(Account, AccountName), Response> {
    let me = skype_account(state, headers).await?;
    let other = named(state, name).await?;
    if other == me.name {
        return Err(status_error(StatusCode::BAD_REQUEST, 40000, "that is you"));
    }
    Ok((me, other))
}

/// Applies one list change of the caller to the contact `name`, exactly as `PUT`/`DEL
/// MSGR\CONTACTS` would (same rules, same notifications).
async fn change(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
    op: ListOp,
    bits: u32,
) -> Response {
    match caller_and_contact(state, headers, name).await {
        Ok((me, other)) => apply(state, &me, other, op, bits).await,
        Err(r) => r,
    }
}

async fn apply(
    state: &AppState,
    me: &Account,
    other: AccountName,
    op: ListOp,
    bits: u32,
) -> Response {
    match contacts::apply(state, &me.name, op, vec![(other, bits)]).await {
        Ok(_) => Json(serde_json::json!({"status": {"code": 20000, "text": "OK"}})).into_response(),
        Err(e) => unavailable(e),
    }
}

/// `PUT /users/self/contacts/auth-request/<name>` (form `greeting`): adds them, which asks them.
pub async fn request(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    form: Result<Form<RequestForm>, FormRejection>,
) -> Response {
    let (me, other) = match caller_and_contact(&state, &headers, &name).await {
        Ok(pair) => pair,
        Err(r) => return r,
    };
    let greeting: String = form
        .ok()
        .and_then(|Form(f)| f.greeting)
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .take(MAX_GREETING_CHARS)
        .collect();
    // The greeting goes in first so the request is never listed without it.
    if let Err(e) = state
        .storage
        .set_request_greeting(&other, &me.name, &greeting)
        .await
    {
        return unavailable(e);
    }
    apply(&state, &me, other, ListOp::Put, FORWARD | ALLOW).await
}

/// `PUT /users/self/contacts/auth-request/<name>/accept`.
pub async fn accept(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    change(&state, &headers, &name, ListOp::Put, FORWARD | ALLOW).await
}

/// `PUT /users/self/contacts/auth-request/<name>/decline`.
pub async fn decline(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    change(&state, &headers, &name, ListOp::Del, PENDING).await
}

/// `GET /users/self/contacts/auth-request`: unanswered requests, oldest first.
pub async fn requests(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let me = match skype_account(&state, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    match state.storage.pending_requests(&me.name).await {
        Ok(list) => Json(
            list.iter()
                .map(|r| {
                    serde_json::json!({
                        "sender": r.sender.as_str(),
                        "greeting": r.greeting,
                        "event_time": iso_time(r.at.saturating_mul(1000)),
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => unavailable(e),
    }
}

/// `PUT /users/self/contacts/<name>/block`.
pub async fn block(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    change(&state, &headers, &name, ListOp::Put, BLOCK).await
}

/// `PUT /users/self/contacts/<name>/unblock`.
pub async fn unblock(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    change(&state, &headers, &name, ListOp::Del, BLOCK).await
}

/// `DELETE /users/self/contacts/<name>`: no longer watching or allowing them.
pub async fn remove(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    change(&state, &headers, &name, ListOp::Del, FORWARD | ALLOW).await
}
