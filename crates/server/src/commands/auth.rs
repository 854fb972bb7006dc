//! `ATH CON\USER` (§2.2): accept one of our login tokens wherever the client put its credential.

use msnp24_proto::xml::auth::{AuthResponse, AuthUser};
use msnp24_proto::{ErrorCode, Frame, Payload};

use super::{bad_xml, internal, Flow, Outcome, Refusal};
use crate::session::{Phase, Session};
use crate::state::TokenRefusal;
use crate::tokens::TokenKind;

/// Authenticates the connection (or refreshes the credentials of an authenticated one).
pub async fn ath(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let user = AuthUser::parse(&payload.body).map_err(bad_xml)?;
    // The first credential that is one of our live login tokens wins (§2.2). A web ticket on a
    // gateway request that asked to use its cookie stands for the cookie's token (§11).
    let mut credentials = user.credentials();
    if let (Some(_), Some(cookie)) = (&user.web_compact_ticket, &s.cookie_token) {
        credentials.insert(0, cookie.clone());
    }
    let mut account = None;
    for credential in credentials {
        match s
            .state
            .verify_account_token(TokenKind::Login, &credential)
            .await
        {
            Ok(a) => {
                account = Some(a);
                break;
            }
            Err(TokenRefusal::Internal) => return Err(internal("token check failed")),
            Err(_) => {}
        }
    }
    let account =
        account.ok_or_else(|| Refusal::new(ErrorCode::AuthFailed, "Authentication failed"))?;
    match &s.phase {
        Phase::New | Phase::Connected => {
            tracing::info!(conn = s.conn_id, peer = %s.peer, account = %account.name, "authenticated");
            s.phase = Phase::Authenticated(account.name);
        }
        _ if s.account() == Some(&account.name) => {
            tracing::debug!(conn = s.conn_id, "credentials refreshed");
        }
        _ => {
            return Err(Refusal::new(
                ErrorCode::AuthFailed,
                "token names another account than this connection's",
            ))
        }
    }
    let response = AuthResponse {
        new_thread_allowed: true,
        p2p_migration_allowed: false,
    };
    out.push(s.reply(frame, response.to_xml(), false));
    Ok(Flow::Continue)
}
