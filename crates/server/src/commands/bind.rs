//! `BND CON\MSGR` (§2.3): register this connection as one endpoint of the account.

use msnp24_proto::xml::bind::{Msgr, MsgrResponse};
use msnp24_proto::{Epid, ErrorCode, Frame, Payload};

use super::{bad_xml, Flow, Outcome, Refusal};
use crate::routing::{EndpointHandle, EndpointInfo, KickReason, Origin};
use crate::session::{Bound, Phase, Session};

/// Binds the endpoint; an older connection with the same epid is sent `OUT` and closed.
pub async fn bnd(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let account = match &s.phase {
        Phase::Authenticated(a) => a.clone(),
        Phase::Bound(_) => {
            return Err(Refusal::new(
                ErrorCode::AlreadyBound,
                "This connection already has a feature set",
            ))
        }
        _ => return Err(Refusal::new(ErrorCode::AuthFailed, "not authenticated")),
    };
    let msgr = Msgr::parse(&payload.body).map_err(bad_xml)?;
    let epid = Epid::parse(&msgr.epid)
        .map_err(|_| Refusal::new(ErrorCode::InvalidParameter, "invalid epid"))?;
    // Only 1 and 2 exist; anything newer gets the richest feature set we have.
    let ver = msgr.ver.clamp(1, 2);
    let client = msgr.client.unwrap_or_default();
    let handle = EndpointHandle {
        conn_id: s.conn_id,
        tx: s.tx.clone(),
        kick: s.kick.clone(),
        info: EndpointInfo {
            epid: epid.clone(),
            ver,
            client_name: client.name,
            client_ver: client.ver,
            messaging: false,
            presence: false,
            origin: Some(Origin {
                transport: s.transport,
                peer: s.peer,
                since_ms: crate::state::now_ms(),
            }),
        },
        max_payload: s.state.config.max_payload,
    };
    let bound = Bound { account, epid, ver };
    // Before the router knows the endpoint, so its presence entry exists when notifications start.
    s.state
        .presence
        .bound(&bound.account, &bound.epid, s.conn_id)
        .await;
    if let Some(old) = s.state.router.bind(bound.addr(), handle).await {
        tracing::info!(
            conn = s.conn_id,
            replaced = old.conn_id,
            "same epid bound again; ending the older connection"
        );
        old.kick.send_replace(Some(KickReason::OtherLocation));
    }
    tracing::info!(conn = s.conn_id, account = %bound.account, epid = %bound.epid, ver, "endpoint bound");
    crate::stats::gauge_add(crate::stats::ENDPOINTS_BOUND, 1.0);
    s.phase = Phase::Bound(bound);
    // §0.8: a nonce only when challenges are on; the endpoint must answer it before using MSGR.
    let nonce = s
        .state
        .config
        .challenges
        .enabled
        .then(super::challenge::new_nonce);
    s.challenge_nonce = nonce.clone();
    let response = MsgrResponse { ver, nonce };
    out.push(s.reply(frame, response.to_xml(), true));
    Ok(Flow::Continue)
}
