//! `CNT CON` (§2.1): echo the version and hand out a fresh nonce.

use msnp24_proto::xml::connect::{Connect, ConnectResponse};
use msnp24_proto::{Frame, Payload};

use super::{bad_xml, Flow, Outcome};
use crate::session::{Phase, Session};

/// Answers `CNT` with `<connect-response>`.
pub fn cnt(s: &mut Session, frame: &Frame, payload: &Payload, out: &mut Vec<Frame>) -> Outcome {
    let connect = Connect::parse(&payload.body).map_err(bad_xml)?;
    let response = ConnectResponse {
        ver: connect.ver,
        qostest: false,
        nonce: uuid::Uuid::new_v4().to_string(),
    };
    if s.phase == Phase::New {
        s.phase = Phase::Connected;
    }
    tracing::debug!(conn = s.conn_id, ver = connect.ver, "CNT");
    out.push(s.reply(frame, response.to_xml(), false));
    Ok(Flow::Continue)
}
