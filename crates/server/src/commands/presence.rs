//! `PUT MSGR\PRESENCE` (§4.3), `GET MSGR\PRESENCE` (§4.4) and `GET MSGR\IMONLINE` (§8): parse,
//! hand to the presence service, reply.

use msnp24_proto::mri::Network;
use msnp24_proto::xml::endpoint::{ImOnlineEndpoint, ImOnlineResponse};
use msnp24_proto::xml::presence_doc::UserDoc;
use msnp24_proto::xml::presence_query::{PresenceQuery, PresenceResponse};
use msnp24_proto::xml::XmlError;
use msnp24_proto::{AccountName, ErrorCode, FormattedMessageRef, Frame, Mri, Payload};

use super::{bad_xml, internal, Flow, Outcome, Refusal};
use crate::contacts::presence_flows;
use crate::presence::View;
use crate::session::{Bound, Session};

fn bound(s: &Session) -> Result<Bound, Refusal> {
    s.bound()
        .cloned()
        .ok_or_else(|| Refusal::new(ErrorCode::AuthFailed, "not bound"))
}

/// The `<user>` document of a publication: inside a formatted message (§3), or bare.
fn publication(frame: &Frame, payload: &Payload) -> Result<Option<UserDoc>, Refusal> {
    // Borrowed: only the body is read, so no header line is copied.
    let body = match FormattedMessageRef::parse_payload(&frame.payload) {
        Ok((_, m)) => m.body,
        Err(_) if payload.body.trim_ascii_start().starts_with(b"<") => &payload.body[..],
        Err(e) => {
            return Err(Refusal::new(
                ErrorCode::Syntax,
                format!("bad publication: {e}"),
            ))
        }
    };
    match UserDoc::parse(body) {
        Ok(doc) => Ok(Some(doc)),
        // Well-formed but about something else (another `Uri`): acknowledged, nothing to merge.
        Err(XmlError::UnexpectedRoot { .. }) => Ok(None),
        Err(e) => Err(bad_xml(e)),
    }
}

/// `PUT MSGR\PRESENCE`: merge and notify.
pub async fn put(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let b = bound(s)?;
    match publication(frame, payload)? {
        Some(doc) => {
            let delivered = s.state.presence.publish(&b.account, &b.epid, doc).await;
            tracing::debug!(conn = s.conn_id, delivered, "presence published");
        }
        None => tracing::info!(
            conn = s.conn_id,
            "publication without a <user> document ignored"
        ),
    }
    out.push(s.reply(frame, Vec::new(), false));
    Ok(Flow::Continue)
}

/// Room left in a reply for its first line's headers (a fresh registration token and friends).
const REPLY_HEADROOM: usize = 1024;

/// `GET MSGR\PRESENCE`: one `<from>`/`<user>` pair per contact asked (each contact once, in the
/// order first asked); a document only where presence would flow to the caller (or for the
/// caller itself). The reply fits the frame limit: past it, documents are written `<user/>`, and
/// once not even that fits the listing ends.
pub async fn get(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let b = bound(s)?;
    let query = PresenceQuery::parse(&payload.body).map_err(bad_xml)?;
    let mut asked: Vec<(String, Option<AccountName>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for contact in &query.contacts {
        let Ok(mri) = Mri::parse(contact) else {
            continue;
        };
        // Addresses of other networks are never written back to a client (§0.7).
        if !matches!(
            mri.network,
            Network::Skype | Network::Live | Network::Thread
        ) {
            continue;
        }
        let from = mri.without_epid().to_string();
        if !seen.insert(from.clone()) {
            continue;
        }
        let target = match mri.network {
            Network::Skype => AccountName::parse(&mri.id).ok(),
            _ => None,
        };
        asked.push((from, target));
    }
    let others: Vec<AccountName> = asked
        .iter()
        .filter_map(|(_, t)| t.clone().filter(|t| *t != b.account))
        .collect();
    let relations = s
        .state
        .storage
        .contact_relations(&b.account, &others)
        .await
        .map_err(internal)?;
    // Asking is watching for a moment: the target's allow decides, not our forward.
    let visible: Vec<AccountName> = relations
        .into_iter()
        .filter(|r| presence_flows(r.mine | crate::storage::list_bits::FORWARD, r.theirs))
        .map(|r| r.name)
        .collect();
    let mut docs = s.state.presence.documents(&visible, View::Others).await;
    if asked.iter().any(|(_, t)| t.as_ref() == Some(&b.account)) {
        if let Some(own) = s.state.presence.document(&b.account, View::Own).await {
            docs.insert(b.account.clone(), own);
        }
    }
    let budget = s.state.config.max_payload.saturating_sub(REPLY_HEADROOM);
    let mut used = PresenceResponse::empty_len();
    let mut response = PresenceResponse::default();
    let mut trimmed = 0usize;
    for (from, target) in asked {
        let doc = target
            .and_then(|t| docs.get(&t).cloned())
            .unwrap_or_default();
        let len = PresenceResponse::entry_len(&from, &doc);
        if used + len <= budget {
            used += len;
            response.entries.push((from, doc));
            continue;
        }
        let empty = UserDoc::default();
        let len = PresenceResponse::entry_len(&from, &empty);
        trimmed += 1;
        if used + len > budget {
            break;
        }
        used += len;
        response.entries.push((from, empty));
    }
    if trimmed > 0 {
        tracing::warn!(
            conn = s.conn_id,
            account = %b.account,
            asked = query.contacts.len(),
            answered = response.entries.len(),
            trimmed,
            "presence query answer trimmed to the frame limit"
        );
    }
    out.push(s.reply(frame, response.to_xml(), false));
    Ok(Flow::Continue)
}

/// `GET MSGR\IMONLINE`: the caller's own bound endpoints.
pub async fn imonline(s: &mut Session, frame: &Frame, out: &mut Vec<Frame>) -> Outcome {
    let b = bound(s)?;
    let endpoints = s.state.router.endpoints(&b.account).await;
    let response = ImOnlineResponse {
        endpoints: endpoints
            .into_iter()
            .map(|e| ImOnlineEndpoint {
                epid: e.epid.to_string(),
                name: e.client_name,
                ver: e.client_ver,
            })
            .collect(),
    };
    out.push(s.reply(frame, response.to_xml(), false));
    Ok(Flow::Continue)
}
