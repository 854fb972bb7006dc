//! `PUT MSGR\PRESENCE` (§4.3), `GET MSGR\PRESENCE` (§4.4) and `GET MSGR\IMONLINE` (§8): parse,
//! hand to the presence service, reply.

use msnp24_proto::mri::Network;
use msnp24_proto::xml::endpoint::{ImOnlineEndpoint, ImOnlineResponse};
use msnp24_proto::xml::presence_doc::UserDoc;
use msnp24_proto::xml::presence_query::{PresenceQuery, PresenceResponse};
use msnp24_proto::xml::XmlError;
use msnp24_proto::{AccountName, ErrorCode, FormattedMessage, Frame, Mri, Payload};

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
    let body = match FormattedMessage::parse_payload(&frame.payload) {
        Ok((_, m)) => m.body,
        Err(_) if payload.body.trim_ascii_start().starts_with(b"<") => payload.body.clone(),
        Err(e) => {
            return Err(Refusal::new(
                ErrorCode::Syntax,
                format!("bad publication: {e}"),
            ))
        }
    };
    match UserDoc::parse(&body) {
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

/// `GET MSGR\PRESENCE`: one `<from>`/`<user>` pair per contact asked; a document only where
/// presence would flow to the caller (or for the caller itself).
pub async fn get(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let b = bound(s)?;
    let query = PresenceQuery::parse(&payload.body).map_err(bad_xml)?;
    let mut response = PresenceResponse::default();
    for asked in &query.contacts {
        let Ok(mri) = Mri::parse(asked) else {
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
        let target = match mri.network {
            Network::Skype => AccountName::parse(&mri.id).ok(),
            _ => None,
        };
        let doc = match target {
            Some(t) if t == b.account => s.state.presence.document(&t, View::Own).await,
            Some(t) => {
                let rel = s
                    .state
                    .storage
                    .contact_relations(&b.account, std::slice::from_ref(&t))
                    .await
                    .map_err(internal)?;
                // Asking is watching for a moment: the target's allow decides, not our forward.
                let visible = rel.first().is_some_and(|r| {
                    presence_flows(r.mine | crate::storage::list_bits::FORWARD, r.theirs)
                });
                match visible {
                    true => s.state.presence.document(&t, View::Others).await,
                    false => None,
                }
            }
            None => None,
        };
        response.entries.push((from, doc.unwrap_or_default()));
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
