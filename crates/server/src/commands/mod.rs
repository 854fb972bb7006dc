//! One module per command family; `dispatch` maps a frame's command and target to its handler.
//! Each handler reads like the reference: parse the typed body, decide, store, route, reply.

use msnp24_proto::{ErrorCode, Frame, Payload};

use crate::session::Session;

pub mod auth;
pub mod bind;
pub mod challenge;
pub mod connect;
pub mod contacts;
pub mod conversations;
pub mod endpoint;
pub mod messaging;
pub mod misc;
pub mod presence;
pub mod subscriptions;
pub mod threads;

/// A request refused with an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The code sent.
    pub code: ErrorCode,
    /// The reason text sent (and logged).
    pub reason: String,
    /// Whether the connection is closed after the error frame.
    pub close: bool,
}

impl Refusal {
    /// A refusal that keeps the connection open.
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
            close: false,
        }
    }

    /// A refusal after which the connection is closed.
    pub fn fatal(code: ErrorCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            close: true,
            ..Refusal::new(code, reason)
        }
    }
}

/// What the connection does after a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Flush what was queued and close.
    Close,
}

/// A handler's outcome.
pub type Outcome = Result<Flow, Refusal>;

/// Which state a command needs (§2: before ATH only CNT, ATH, PNG, OUT; before BND no MSGR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Needs {
    /// Allowed on a fresh connection.
    Nothing,
    /// Needs a successful ATH.
    Auth,
    /// Needs BND.
    Bound,
}

/// The state `frame` needs before it is served.
pub fn needs(frame: &Frame) -> Needs {
    match (frame.cmd.as_str(), frame.target_head()) {
        ("CNT" | "ATH" | "PNG" | "OUT", _) => Needs::Nothing,
        (_, "MSGR") => Needs::Bound,
        _ => Needs::Auth,
    }
}

/// Runs the handler of `frame`; replies go to `out` in order.
pub async fn dispatch(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    match (frame.cmd.as_str(), frame.target.as_str()) {
        ("CNT", "CON") => connect::cnt(s, frame, payload, out),
        ("ATH", "CON\\USER") => auth::ath(s, frame, payload, out).await,
        ("BND", "CON\\MSGR") => bind::bnd(s, frame, payload, out).await,
        ("PNG", "CON") => endpoint::png(s, frame, out),
        ("OUT", "CON") => Ok(endpoint::out(s)),
        ("PUT", "MSGR\\ACTIVEENDPOINT") => endpoint::active_endpoint(s, frame, payload, out).await,
        ("PUT", "MSGR\\SUBSCRIPTIONS") => subscriptions::put(s, frame, payload, out).await,
        ("PUT", "MSGR\\CONTACTS") => {
            contacts::change(s, frame, payload, out, crate::contacts::ListOp::Put).await
        }
        ("DEL", "MSGR\\CONTACTS") => {
            contacts::change(s, frame, payload, out, crate::contacts::ListOp::Del).await
        }
        ("PUT", "MSGR\\PRESENCE") => presence::put(s, frame, payload, out).await,
        ("GET", "MSGR\\PRESENCE") => presence::get(s, frame, payload, out).await,
        ("GET", "MSGR\\IMONLINE") => presence::imonline(s, frame, out).await,
        ("SDG", "MSGR") => messaging::sdg(s, frame, out).await,
        ("ACK", "MSGR") => messaging::ack(s, frame, payload, out).await,
        ("GET", "MSGR\\RECENTCONVERSATIONS") => conversations::recent(s, frame, payload, out).await,
        ("GET", "MSGR\\MESSAGESBYCONVERSATION") => {
            conversations::messages(s, frame, payload, out).await
        }
        ("GET", "MSGR\\CONVERSATIONS") => conversations::get(s, frame, payload, out).await,
        ("PUT", "MSGR\\CONVERSATION") => conversations::put(s, frame, payload, out).await,
        ("PUT", "MSGR\\CHALLENGE") => challenge::put(s, frame, payload, out),
        ("PUT", "MSGR\\PARTNERS") => misc::partners(s, frame, payload, out).await,
        ("PUT", "MSGR\\OPTIONS") => misc::options(s, frame, payload, out).await,
        ("PUT", "MSGR\\NETWORKS") => misc::networks(s, frame, payload, out).await,
        ("PUT", "MSGR\\REPORTSPAM") => misc::report_spam(s, frame, payload, out).await,
        ("PUT", "MSGR\\THREAD") => threads::put(s, frame, payload, out).await,
        ("DEL", "MSGR\\THREAD") => threads::del(s, frame, payload, out).await,
        ("GET", "MSGR\\THREADS") => threads::get(s, frame, payload, out).await,
        _ => Err(Refusal::new(
            ErrorCode::UnknownCommand,
            format!("unknown command {} {}", frame.cmd, frame.target),
        )),
    }
}

/// Takes one unit of the bound account's write allowance (`[write_rate]`): every command that
/// stores rows other than messages calls this first, so what one account stores per unit of time
/// is bounded (messages have their own rate).
pub fn charge_write(s: &Session) -> Result<(), Refusal> {
    let Some(bound) = s.bound() else {
        return Err(Refusal::new(ErrorCode::AuthFailed, "not bound"));
    };
    if s.state.write_limiter.try_send(&bound.account) {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::RateLimited,
            "too many changes; slow down",
        ))
    }
}

/// Maps an XML parse failure to 200.
pub fn bad_xml(e: msnp24_proto::xml::XmlError) -> Refusal {
    Refusal::new(ErrorCode::Syntax, format!("bad XML: {e}"))
}

/// Maps a storage failure to 500 (logged; nothing was half-written).
pub fn internal(e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "internal error");
    Refusal::new(ErrorCode::Internal, "internal error")
}
