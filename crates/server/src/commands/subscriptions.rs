//! `PUT MSGR\SUBSCRIPTIONS` (§4.2): what this endpoint receives from now on.

use msnp24_proto::xml::subscribe::Subscribe;
use msnp24_proto::{Frame, Payload};

use super::{bad_xml, Flow, Outcome};
use crate::session::Session;

/// Records the endpoint's subscriptions.
pub async fn put(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let sub = Subscribe::parse(&payload.body).map_err(bad_xml)?;
    if let (true, Some(bound)) = (sub.messaging, s.bound()) {
        let addr = bound.addr();
        s.state.router.set_messaging(&addr, s.conn_id).await;
    }
    out.push(s.reply(frame, Vec::new(), false));
    Ok(Flow::Continue)
}
