//! `SDG MSGR` and `ACK MSGR` (§5): store the message durably, answer the sender, then deliver it to
//! the recipient's endpoints and the sender's other endpoints.

use std::sync::Arc;

use msnp24_proto::mri::Network;
use msnp24_proto::{
    AccountName, ErrorCode, FormattedMessage, FormattedMessageRef, Frame, Headers, Mri, Payload,
};

use super::{internal, Flow, Outcome, Refusal};
use crate::routing::{Delivery, DeliveryFilter, Outbound};
use crate::session::{Bound, Session};
use crate::state::now_ms;
use crate::storage::{conversation_key, AckRecord, DirectOutcome, NewMessage, Participant};

/// Headers the server writes itself; a client's copies are dropped so they cannot be forged.
const SERVER_HEADERS: [&str; 7] = [
    "Message-ID",
    "Relationship-Type",
    "Is-Active",
    "Original-Arrival-Time",
    "Skype-Age",
    "Content-Type",
    "Content-Length",
];

/// ISO 8601 UTC with milliseconds and `Z`, as §5 and §6 write times.
pub fn iso_time(ms: i64) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_string())
}

/// The content block delivered to recipients as §5 shows it: `Messaging`, the server's
/// `Message-ID`, the client's `Client-Message-ID`, the client's other headers in order, then the
/// server's delivery headers before `Content-Type`.
pub(crate) fn delivered_content(client: &Headers, message_id: i64, arrival_ms: i64) -> Headers {
    let mut out = Headers::new();
    let mut lines = client.iter();
    if let Some((kind, ver)) = lines.next() {
        out.push(kind, ver);
    }
    out.push("Message-ID", message_id.to_string());
    if let Some(cmid) = client.get("Client-Message-ID") {
        out.push("Client-Message-ID", cmid);
    }
    for (n, v) in lines {
        if !SERVER_HEADERS.iter().any(|s| s.eq_ignore_ascii_case(n))
            && !n.eq_ignore_ascii_case("Client-Message-ID")
        {
            out.push(n, v);
        }
    }
    out.push("Relationship-Type", "Explicit");
    out.push("Is-Active", "true");
    out.push("Original-Arrival-Time", iso_time(arrival_ms));
    out.push(
        "Content-Type",
        client
            .get("Content-Type")
            .unwrap_or("text/plain; charset=UTF-8"),
    );
    out
}

/// Resolves a one-to-one recipient (`8:name`, or `1:` and an e-mail alias) to an account name.
async fn recipient_account(s: &Session, to: &Mri) -> Result<AccountName, Refusal> {
    let unknown = || Refusal::new(ErrorCode::InvalidParameter, "unknown recipient");
    match to.network {
        Network::Skype => AccountName::parse(&to.id).map_err(|_| unknown()),
        Network::Live => s
            .state
            .storage
            .account_by_email(&to.id)
            .await
            .map_err(internal)?
            .map(|a| a.name)
            .ok_or_else(unknown),
        _ => Err(unknown()),
    }
}

/// Handles `SDG MSGR`.
pub async fn sdg(s: &mut Session, frame: &Frame, out: &mut Vec<Frame>) -> Outcome {
    let Some(bound) = s.bound().cloned() else {
        return Err(Refusal::new(ErrorCode::AuthFailed, "not bound"));
    };
    if !s.state.send_limiter.try_send(&bound.account) {
        return Err(Refusal::new(
            ErrorCode::RateLimited,
            "too many messages; slow down",
        ));
    }
    // The transport headers were read with the frame; only the message is made owned here.
    let msg = FormattedMessageRef::parse_payload(&frame.payload)
        .map(|(_, m)| m.to_owned())
        .map_err(|e| Refusal::new(ErrorCode::Syntax, format!("bad message: {e}")))?;
    if !msg
        .kind()
        .is_some_and(|k| k.eq_ignore_ascii_case("Messaging"))
    {
        return Err(Refusal::new(
            ErrorCode::Syntax,
            "SDG carries a Messaging block",
        ));
    }
    // The type decides what a message may be (group activity, control); a second one could say
    // something else to a recipient than to this check.
    let types = msg
        .content
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Message-Type"))
        .count();
    if types > 1 {
        return Err(Refusal::new(
            ErrorCode::Syntax,
            "more than one Message-Type header",
        ));
    }
    let to = msg
        .to()
        .and_then(|t| Mri::parse(t).ok())
        .ok_or_else(|| Refusal::new(ErrorCode::InvalidParameter, "bad To address"))?;
    if to.network == Network::Thread {
        return super::threads::sdg(s, frame, &bound, msg, &to, out).await;
    }
    let recipient = recipient_account(s, &to).await?;
    let sender_mri = bound.account.mri();
    let to_text = recipient.mri().to_string();
    let arrival_ms = now_ms();
    // A stored message has its recipient and blocks checked by the store, in the same step as the
    // write; a control message (typing…) is not stored, so it reads them here.
    if is_control(&msg) && recipient != bound.account {
        let storage = &s.state.storage;
        if storage
            .account(&recipient)
            .await
            .map_err(internal)?
            .is_none()
        {
            return Err(unknown_recipient());
        }
        if storage
            .is_blocked(&bound.account, &recipient)
            .await
            .map_err(internal)?
        {
            tracing::debug!(conn = s.conn_id, to = %to_text, "SDG between blocked accounts dropped");
            out.push(message_id_reply(s, frame, arrival_ms));
            return Ok(Flow::Continue);
        }
    }

    let conversation = conversation_key(&sender_mri.to_string(), &to_text);
    let mut participants = vec![Participant {
        account: bound.account.clone(),
        conversation_id: to_text.clone(),
    }];
    if recipient != bound.account {
        participants.push(Participant {
            account: recipient.clone(),
            conversation_id: sender_mri.to_string(),
        });
    }
    let outgoing = Outgoing {
        to: to_text.clone(),
        conversation,
        participants,
        arrival_ms,
        direct: Some(recipient.clone()),
    };
    let Some((delivery, message_id)) =
        store_and_answer(s, frame, &bound, msg, outgoing, out).await?
    else {
        return Ok(Flow::Continue);
    };
    let router = &s.state.router;
    let mut delivered = router
        .deliver(
            &bound.account,
            DeliveryFilter {
                except: Some(bound.epid.clone()),
                messaging_only: true,
                ..DeliveryFilter::default()
            },
            Outbound::Message(delivery.clone()),
        )
        .await;
    if recipient != bound.account {
        delivered += router
            .deliver(
                &recipient,
                DeliveryFilter {
                    messaging_only: true,
                    ..DeliveryFilter::default()
                },
                Outbound::Message(delivery),
            )
            .await;
    }
    tracing::debug!(conn = s.conn_id, id = message_id, to = %to_text, delivered, "SDG");
    Ok(Flow::Continue)
}

/// A chat message on its way: where it goes and whose history it enters.
pub(crate) struct Outgoing {
    /// The address written in `To` and stored as the recipient (`8:bob`, a thread id).
    pub to: String,
    /// The conversation key of its history.
    pub conversation: String,
    /// The accounts whose history it enters.
    pub participants: Vec<Participant>,
    /// Arrival time, unix ms.
    pub arrival_ms: i64,
    /// The recipient of a one-to-one message: the store checks that it exists and that neither
    /// party blocks the other. Blocking is silent (§5): the sender gets the normal reply, and
    /// nothing is stored (the shared history would show it to the recipient) or delivered.
    pub direct: Option<AccountName>,
}

fn unknown_recipient() -> Refusal {
    Refusal::new(ErrorCode::InvalidParameter, "unknown recipient")
}

/// `Control/*` messages (typing, clear typing…) are delivered, never stored.
fn is_control(msg: &FormattedMessage) -> bool {
    msg.message_type().unwrap_or("Text").starts_with("Control/")
}

/// Stores a chat message and answers its `SDG` with the `Message-ID`, then returns what to
/// deliver with that id. `None` is a retry of a stored message: it is answered with the first
/// copy's id and not delivered again. `Control/*` messages are not stored; their arrival time is
/// their id.
pub(crate) async fn store_and_answer(
    s: &mut Session,
    frame: &Frame,
    bound: &Bound,
    msg: FormattedMessage,
    outgoing: Outgoing,
    out: &mut Vec<Frame>,
) -> Result<Option<(Arc<Delivery>, i64)>, Refusal> {
    let Outgoing {
        to,
        conversation,
        participants,
        arrival_ms,
        direct,
    } = outgoing;
    let sender_mri = bound.account.mri();
    let message_type = msg.message_type().unwrap_or("Text").to_string();
    let mut routing = Headers::new()
        .with("Routing", "1.0")
        .with("To", to.clone())
        .with("From", sender_mri.with_epid(bound.epid.clone()).to_string());
    for (n, v) in msg.routing.iter().skip(1) {
        if !n.eq_ignore_ascii_case("To") && !n.eq_ignore_ascii_case("From") {
            routing.push(n, v);
        }
    }
    let is_control = is_control(&msg);
    let message_id = if is_control {
        arrival_ms
    } else {
        let mut stored_headers = Vec::new();
        msg.content.encode_into(&mut stored_headers);
        let message = NewMessage {
            conversation: conversation.clone(),
            participants,
            sender: sender_mri.to_string(),
            sender_epid: bound.epid.to_string(),
            recipient: to,
            client_message_id: msg.content.get("Client-Message-ID").map(str::to_string),
            message_type,
            headers: String::from_utf8_lossy(&stored_headers).into_owned(),
            content: msg.body.clone(),
            arrival_ms,
        };
        let storage = &s.state.storage;
        let stored = match &direct {
            None => storage.store_message(message).await.map_err(internal)?,
            Some(recipient) => match storage
                .store_direct_message(message, &bound.account, recipient)
                .await
                .map_err(internal)?
            {
                DirectOutcome::Stored(stored) => *stored,
                DirectOutcome::UnknownRecipient => return Err(unknown_recipient()),
                DirectOutcome::Blocked => {
                    tracing::debug!(conn = s.conn_id, %recipient, "SDG between blocked accounts dropped");
                    out.push(message_id_reply(s, frame, arrival_ms));
                    return Ok(None);
                }
            },
        };
        if stored.duplicate {
            tracing::debug!(
                conn = s.conn_id,
                id = stored.message_id,
                "retry of a stored message; not delivered again"
            );
            out.push(message_id_reply(s, frame, stored.message_id));
            return Ok(None);
        }
        crate::stats::count(crate::stats::MESSAGES_STORED, 1);
        stored.message_id
    };
    out.push(message_id_reply(s, frame, message_id));
    let delivery = Arc::new(Delivery {
        message: FormattedMessage {
            routing,
            reliability: msg.reliability,
            content: delivered_content(&msg.content, message_id, arrival_ms),
            body: msg.body,
        },
        arrival_ms,
        stored: (!is_control).then_some((conversation, message_id)),
    });
    Ok(Some((delivery, message_id)))
}

/// The reply to an `SDG`: `Message-ID` first in its header block, built once.
fn message_id_reply(s: &mut Session, request: &Frame, message_id: i64) -> Frame {
    let payload = Payload {
        headers: Headers::new().with("Message-ID", message_id.to_string()),
        body: Vec::new(),
    };
    s.reply_with(request, payload, false)
}

/// Handles `ACK MSGR`: the endpoint acknowledges a delivery by its `Ack-Id`; the acknowledgement
/// is recorded for this endpoint (with the message, when this connection handed the id out).
pub async fn ack(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let Some(bound) = s.bound().cloned() else {
        return Err(Refusal::new(ErrorCode::AuthFailed, "not bound"));
    };
    let ack_id = payload
        .headers
        .get("Ack-Id")
        .map(str::trim)
        .filter(|a| !a.is_empty() && a.len() <= 64)
        .ok_or_else(|| Refusal::new(ErrorCode::Syntax, "ACK without a usable Ack-Id"))?;
    // Only what this connection handed out is recorded: an invented Ack-Id is acknowledged (a
    // harmless request) but stores nothing, so ACKs cannot fill the disk.
    let Some(message) = s.handed_out(ack_id) else {
        tracing::debug!(
            conn = s.conn_id,
            ack_id,
            "ACK of an Ack-Id not handed out here; not recorded"
        );
        out.push(s.reply(frame, Vec::new(), false));
        return Ok(Flow::Continue);
    };
    tracing::debug!(conn = s.conn_id, ack_id, ?message, "ACK");
    s.state
        .storage
        .record_ack(AckRecord {
            account: bound.account.clone(),
            epid: bound.epid.to_string(),
            ack_id: ack_id.to_ascii_uppercase(),
            message,
            acked_ms: now_ms(),
        })
        .await
        .map_err(internal)?;
    out.push(s.reply(frame, Vec::new(), false));
    Ok(Flow::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times() {
        assert_eq!(iso_time(1431981331592), "2015-05-18T20:35:31.592Z");
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn delivered_header_order() {
        let client = Headers::new()
            .with("Messaging", "2.0")
            .with("Message-Type", "Text")
            .with("Client-Message-ID", "1")
            .with("Message-ID", "forged")
            .with("Content-Type", "Text/plain; charset=UTF-8")
            .with("Content-Length", "2");
        let out = delivered_content(&client, 42, 0);
        let names: Vec<&str> = out.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "Messaging",
                "Message-ID",
                "Client-Message-ID",
                "Message-Type",
                "Relationship-Type",
                "Is-Active",
                "Original-Arrival-Time",
                "Content-Type"
            ]
        );
        assert_eq!(out.get("Message-ID"), Some("42"));
    }
}
