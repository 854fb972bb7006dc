//! `ATH CON\USER` (§2.2): accept one of our login tokens wherever the client put its credential.

use msnp24_proto::xml::auth::{AuthResponse, AuthUser};
use msnp24_proto::{ErrorCode, Frame, Payload};

use super::{bad_xml, internal, Flow, Outcome, Refusal};
use crate::session::{Phase, Session};
use crate::state::now_secs;
use crate::tokens::TokenKind;

/// Authenticates the connection (or refreshes the credentials of an authenticated one).
pub async fn ath(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let user = AuthUser::parse(&payload.body).map_err(bad_xml)?;
    let now = now_secs();
    let claims = user
        .credentials()
        .iter()
        .find_map(|c| s.state.tokens.verify(TokenKind::Login, c, now).ok())
        .ok_or_else(|| Refusal::new(ErrorCode::AuthFailed, "Authentication failed"))?;
    // A signature alone is not enough: the account must still exist under the same generation,
    // so a password change or removal revokes earlier tokens.
    let account = s
        .state
        .storage
        .account(&claims.account)
        .await
        .map_err(internal)?
        .filter(|a| a.generation == claims.generation)
        .ok_or_else(|| Refusal::new(ErrorCode::AuthFailed, "Authentication failed"))?;
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
