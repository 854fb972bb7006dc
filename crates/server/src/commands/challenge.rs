//! `PUT MSGR\CHALLENGE` (§2.4): the endpoint's answer to the nonce of the BND reply, when
//! challenges are switched on. Until it answers correctly, no other `MSGR` command is served.

use msnp24_proto::challenge::challenge_response;
use msnp24_proto::xml::misc::Challenge;
use msnp24_proto::{ErrorCode, Frame, Payload};
use rand::Rng;

use super::{bad_xml, Flow, Outcome, Refusal};
use crate::session::Session;

/// A fresh nonce: 20 decimal digits, the shape of the classic MSNP challenge strings that the
/// clients' digest code was written for.
pub fn new_nonce() -> String {
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

/// Checks the answer; a wrong one (or an unknown product id) ends the connection with 911.
pub fn put(s: &mut Session, frame: &Frame, payload: &Payload, out: &mut Vec<Frame>) -> Outcome {
    let answer = Challenge::parse(&payload.body).map_err(bad_xml)?;
    let Some(nonce) = s.challenge_nonce.clone() else {
        // Challenges are off, or this endpoint already passed: an answer to nothing is harmless,
        // and §0.4 says harmless requests are acknowledged.
        tracing::debug!(
            conn = s.conn_id,
            "challenge answer with no challenge pending"
        );
        out.push(s.reply(frame, Vec::new(), false));
        return Ok(Flow::Continue);
    };
    let Some(key) = s.state.config.challenges.product_key(&answer.app_id) else {
        return Err(Refusal::fatal(
            ErrorCode::AuthFailed,
            "unknown product id in challenge answer",
        ));
    };
    let expected = challenge_response(&nonce, &answer.app_id, key);
    if !answer.response.trim().eq_ignore_ascii_case(&expected) {
        return Err(Refusal::fatal(
            ErrorCode::AuthFailed,
            "wrong challenge answer",
        ));
    }
    tracing::info!(conn = s.conn_id, app_id = %crate::text::log(&answer.app_id), "challenge passed");
    s.challenge_nonce = None;
    out.push(s.reply(frame, Vec::new(), false));
    Ok(Flow::Continue)
}
