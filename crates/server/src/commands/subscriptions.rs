//! `PUT MSGR\SUBSCRIPTIONS` (§4.2): what this endpoint receives from now on.

use msnp24_proto::xml::subscribe::Subscribe;
use msnp24_proto::{Frame, Payload};

use super::{bad_xml, internal, Flow, Outcome};
use crate::contacts;
use crate::session::Session;

/// Records the endpoint's subscriptions; a presence subscription is answered, after the reply,
/// with one `NFY MSGR\PUT` per visible online contact and the requests still waiting for an answer.
pub async fn put(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let sub = Subscribe::parse(&payload.body).map_err(bad_xml)?;
    let Some(bound) = s.bound().cloned() else {
        out.push(s.reply(frame, Vec::new(), false));
        return Ok(Flow::Continue);
    };
    let addr = bound.addr();
    if sub.messaging {
        s.state.router.set_messaging(&addr, s.conn_id).await;
    }
    let mut snapshot = Vec::new();
    if sub.presence {
        // Subscribed before the snapshot is taken, so a change racing with it is delivered after
        // the snapshot rather than lost.
        s.state.router.set_presence(&addr, s.conn_id).await;
        let visible = s
            .state
            .storage
            .presence_visible(&bound.account)
            .await
            .map_err(internal)?;
        snapshot = s
            .state
            .presence
            .snapshot(&bound.account, &bound.epid, &visible)
            .await;
        snapshot.extend(
            contacts::open_requests(&s.state, &bound.account)
                .await
                .map_err(internal)?,
        );
        tracing::debug!(
            conn = s.conn_id,
            frames = snapshot.len(),
            "presence snapshot"
        );
    }
    out.push(s.reply(frame, Vec::new(), false));
    out.append(&mut snapshot);
    Ok(Flow::Continue)
}
