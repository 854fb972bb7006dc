//! Keep-alives and sign-out: `PNG CON`, `OUT CON`, `PUT MSGR\ACTIVEENDPOINT` (§4.5, §8).

use msnp24_proto::xml::endpoint::ActiveEndpoint;
use msnp24_proto::xml::misc::Wait;
use msnp24_proto::{Frame, Payload};

use super::{bad_xml, Flow, Outcome};
use crate::session::Session;

/// Seconds a client may wait before its next ping.
pub const PING_WAIT_SECS: u32 = 50;

/// Answers `PNG` at once with `<wait>`.
pub fn png(s: &mut Session, frame: &Frame, out: &mut Vec<Frame>) -> Outcome {
    let body = Wait {
        seconds: PING_WAIT_SECS,
    }
    .to_xml();
    out.push(s.reply(frame, body, false));
    Ok(Flow::Continue)
}

/// `OUT`: the client signs this endpoint out; the connection closes after flushing, and the
/// endpoint leaves presence at once.
pub fn out(s: &mut Session) -> Flow {
    s.signed_out = true;
    Flow::Close
}

/// Records the idle timer (§4.5) with the presence service.
pub async fn active_endpoint(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let active = ActiveEndpoint::parse(&payload.body).map_err(bad_xml)?;
    tracing::debug!(conn = s.conn_id, timeout = active.timeout, "ACTIVEENDPOINT");
    if let Some(b) = s.bound().cloned() {
        s.state
            .presence
            .active(&b.account, &b.epid, active.timeout)
            .await;
    }
    out.push(s.reply(frame, Vec::new(), false));
    Ok(Flow::Continue)
}
