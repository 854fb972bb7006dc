//! Conversations and history sync (§6): `GET MSGR\RECENTCONVERSATIONS`,
//! `GET MSGR\MESSAGESBYCONVERSATION`, `GET MSGR\CONVERSATIONS` and `PUT MSGR\CONVERSATION`.
//!
//! Paging states are signed with the server secret, name the account, and hold a position
//! (the last item returned), so a page never shifts when new messages arrive and a client cannot
//! make one up.

use msnp24_proto::mri::Network;
use msnp24_proto::xml::conversations::{
    Conversation, ConversationNotify, ConversationPut, ConversationsQuery, ConversationsResponse,
    HistoryMessage, MessagesByConversation, MessagesByConversationResponse, RecentConversations,
    RecentConversationsResponse, ThreadRef,
};
use msnp24_proto::{AccountName, ErrorCode, Frame, Mri, Payload};

use super::messaging::iso_time;
use super::{bad_xml, internal, Flow, Outcome, Refusal};
use crate::routing::{DeliveryFilter, Outbound};
use crate::session::{Bound, Session};
use crate::state::now_ms;
use crate::storage::{conversation_key, ConversationSummary, RecentPosition, StoredMessage};

/// `pagesize` when the request has none.
pub const DEFAULT_PAGE: u32 = 100;
/// The largest page served (§6).
pub const MAX_PAGE: u32 = 200;
/// Most properties one `PUT MSGR\CONVERSATION` may set.
const MAX_PROPERTIES: usize = 32;
/// Longest property value kept, in bytes.
const MAX_PROPERTY_VALUE: usize = 4096;

fn bound(s: &Session) -> Result<Bound, Refusal> {
    s.bound()
        .cloned()
        .ok_or_else(|| Refusal::new(ErrorCode::AuthFailed, "not bound"))
}

fn bad_state() -> Refusal {
    Refusal::new(ErrorCode::InvalidParameter, "bad sync state")
}

/// Absent or 0 means the default; anything above the cap is served as the cap.
fn page_size(asked: Option<u32>) -> u32 {
    match asked {
        None | Some(0) => DEFAULT_PAGE,
        Some(n) => n.min(MAX_PAGE),
    }
}

fn start_ms(start: Option<u64>) -> i64 {
    start.map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX))
}

/// Some clients send an empty body for "everything": read it as the defaults.
fn body_or_empty(payload: &Payload) -> Option<&[u8]> {
    let body = payload.body.as_slice();
    (!body.iter().all(u8::is_ascii_whitespace)).then_some(body)
}

/// A conversation id as this account sees it (`8:bob`, `19:…@thread.skype`, or a `1:` alias,
/// which never names a conversation yet), with the key its messages are stored under.
fn conversation_ref(me: &AccountName, raw: &str) -> Result<(String, String, Mri), Refusal> {
    let bad = || Refusal::new(ErrorCode::InvalidParameter, "bad conversation id");
    let mri = Mri::parse(raw).map_err(|_| bad())?.without_epid();
    match mri.network {
        Network::Skype => {
            let name = AccountName::parse(&mri.id).map_err(|_| bad())?;
            let id = name.mri().to_string();
            let key = conversation_key(&me.mri().to_string(), &id);
            Ok((id, key, mri))
        }
        Network::Thread if mri.is_valid_thread() => {
            let id = mri.to_string();
            Ok((id.clone(), id, mri))
        }
        Network::Live => {
            let id = format!("1:{}", mri.id.to_ascii_lowercase());
            let key = conversation_key(&me.mri().to_string(), &id);
            Ok((id, key, mri))
        }
        _ => Err(bad()),
    }
}

/// Keeps only characters XML 1.0 allows, so a body with control bytes cannot break a client's
/// parser (the writer escapes markup; it cannot escape these).
fn xml_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
        })
        .collect()
}

/// One stored message as history shows it.
pub fn history_message(m: &StoredMessage) -> HistoryMessage {
    let msg = &m.message;
    let from = if msg.sender_epid.is_empty() {
        msg.sender.clone()
    } else {
        format!("{};epid={}", msg.sender, msg.sender_epid)
    };
    HistoryMessage {
        message_id: u64::try_from(m.message_id).unwrap_or(0),
        original_arrival_time: iso_time(msg.arrival_ms),
        from,
        message_type: msg.message_type.clone(),
        content: xml_text(&msg.content),
        client_message_id: msg.client_message_id.clone(),
        // The compose time is the client's and never reaches the server: arrival stands in.
        compose_time: Some(iso_time(msg.arrival_ms)),
    }
}

/// One conversation as sync shows it, with its last message (if any).
fn conversation_xml(c: ConversationSummary) -> Conversation {
    let thread = c.id.starts_with("19:").then(|| ThreadRef {
        id: c.id.clone(),
        last_leave_at: c.left_at.and_then(|l| u64::try_from(l).ok()),
    });
    Conversation {
        version: u64::try_from(c.version).unwrap_or(0),
        properties: c.properties,
        thread,
        messages: c.last_message.iter().map(history_message).collect(),
        id: c.id,
    }
}

/// `R|account|start|version|id`: where a page of recent conversations ended.
fn recent_state(s: &Session, account: &AccountName, start: i64, last: &RecentPosition) -> String {
    s.state
        .tokens
        .sign_state(&format!("R|{account}|{start}|{}|{}", last.version, last.id))
}

fn open_recent_state(
    s: &Session,
    account: &AccountName,
    state: &str,
) -> Result<(i64, RecentPosition), Refusal> {
    let body = s.state.tokens.open_state(state).ok_or_else(bad_state)?;
    let mut parts = body.splitn(5, '|');
    let (Some("R"), Some(who), Some(start), Some(version), Some(id)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad_state());
    };
    if who != account.as_str() {
        return Err(bad_state());
    }
    Ok((
        start.parse().map_err(|_| bad_state())?,
        RecentPosition {
            version: version.parse().map_err(|_| bad_state())?,
            id: id.to_string(),
        },
    ))
}

/// Handles `GET MSGR\RECENTCONVERSATIONS`.
pub async fn recent(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let me = bound(s)?.account;
    let req = match body_or_empty(payload) {
        Some(body) => RecentConversations::parse(body).map_err(bad_xml)?,
        None => RecentConversations::default(),
    };
    let pagesize = page_size(req.pagesize);
    let (start, after) = match req.syncstate.as_deref().map(str::trim) {
        Some(state) if !state.is_empty() => {
            let (start, pos) = open_recent_state(s, &me, state)?;
            (start, Some(pos))
        }
        _ => (start_ms(req.start), None),
    };
    let mut rows = s
        .state
        .storage
        .recent_conversations(&me, start, after.as_ref(), pagesize + 1)
        .await
        .map_err(internal)?;
    let hasmore = rows.len() > pagesize as usize;
    rows.truncate(pagesize as usize);
    let syncstate = match (hasmore, rows.last()) {
        (true, Some(last)) => Some(recent_state(
            s,
            &me,
            start,
            &RecentPosition {
                version: last.version,
                id: last.id.clone(),
            },
        )),
        _ => None,
    };
    let response = RecentConversationsResponse {
        conversations: rows.into_iter().map(conversation_xml).collect(),
        hasmore: hasmore.then_some(true),
        syncstate,
    };
    out.push(s.reply(frame, response.to_xml(), false));
    Ok(Flow::Continue)
}

/// `M|account|start|before|id`: the oldest message id a page returned.
fn open_messages_state(
    s: &Session,
    account: &AccountName,
    id: &str,
    state: &str,
) -> Result<(i64, i64), Refusal> {
    let body = s.state.tokens.open_state(state).ok_or_else(bad_state)?;
    let mut parts = body.splitn(5, '|');
    let (Some("M"), Some(who), Some(start), Some(before), Some(conv)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad_state());
    };
    if who != account.as_str() || conv != id {
        return Err(bad_state());
    }
    Ok((
        start.parse().map_err(|_| bad_state())?,
        before.parse().map_err(|_| bad_state())?,
    ))
}

/// Handles `GET MSGR\MESSAGESBYCONVERSATION`: newest first, paged towards older messages.
pub async fn messages(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let me = bound(s)?.account;
    let req = MessagesByConversation::parse(&payload.body).map_err(bad_xml)?;
    let (id, _, _) = conversation_ref(&me, &req.id)?;
    let pagesize = page_size(req.pagesize);
    let (start, before) = match req.messagessyncstate.as_deref().map(str::trim) {
        Some(state) if !state.is_empty() => {
            let (start, before) = open_messages_state(s, &me, &id, state)?;
            (start, Some(before))
        }
        _ => (start_ms(req.start), None),
    };
    let mut page = s
        .state
        .storage
        .history(&me, &id, start, before, pagesize + 1)
        .await
        .map_err(internal)?;
    let hasmore = page.len() > pagesize as usize;
    page.truncate(pagesize as usize);
    let messagessyncstate = match (hasmore, page.last()) {
        (true, Some(oldest)) => Some(
            s.state
                .tokens
                .sign_state(&format!("M|{me}|{start}|{}|{id}", oldest.message_id)),
        ),
        _ => None,
    };
    let response = MessagesByConversationResponse {
        // Echoed as the client wrote it, so it can match the answer to its question.
        id: req.id.trim().to_string(),
        hasmore,
        messagessyncstate,
        messages: page.iter().map(history_message).collect(),
    };
    out.push(s.reply(frame, response.to_xml(), false));
    Ok(Flow::Continue)
}

/// Handles `GET MSGR\CONVERSATIONS`: the conversations asked for that the account has.
pub async fn get(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let me = bound(s)?.account;
    let req = ConversationsQuery::parse(&payload.body).map_err(bad_xml)?;
    let mut conversations = Vec::new();
    for raw in &req.ids {
        let Ok((id, _, _)) = conversation_ref(&me, raw) else {
            continue;
        };
        if conversations.iter().any(|c: &Conversation| c.id == id) {
            continue;
        }
        if let Some(c) = s
            .state
            .storage
            .conversation(&me, &id)
            .await
            .map_err(internal)?
        {
            conversations.push(conversation_xml(c));
        }
    }
    let response = ConversationsResponse { conversations };
    out.push(s.reply(frame, response.to_xml(), false));
    Ok(Flow::Continue)
}

/// Handles `PUT MSGR\CONVERSATION`: stores the properties for this account, then tells its other
/// endpoints with `NFY 0 MSGR\CONVERSATION`.
pub async fn put(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let b = bound(s)?;
    let me = b.account.clone();
    super::charge_write(s)?;
    let req = ConversationPut::parse(&payload.body).map_err(bad_xml)?;
    let (id, key, mri) = conversation_ref(&me, &req.id)?;
    if req.properties.len() > MAX_PROPERTIES
        || req
            .properties
            .iter()
            .any(|(_, v)| v.len() > MAX_PROPERTY_VALUE)
    {
        return Err(Refusal::new(
            ErrorCode::InvalidParameter,
            "too many or too large properties",
        ));
    }
    let storage = &s.state.storage;
    let known = storage
        .conversation(&me, &id)
        .await
        .map_err(internal)?
        .is_some()
        || match (mri.network, AccountName::parse(&mri.id)) {
            (Network::Skype, Ok(other)) => {
                other == me || storage.account(&other).await.map_err(internal)?.is_some()
            }
            _ => false,
        };
    if !known || req.properties.is_empty() {
        // Acknowledged (an error would end a strict client's session) but nothing to keep:
        // no such account, or nothing set.
        tracing::debug!(
            conn = s.conn_id,
            id,
            known,
            "PUT MSGR\\CONVERSATION not stored"
        );
        out.push(s.reply(frame, Vec::new(), false));
        return Ok(Flow::Continue);
    }
    let summary = storage
        .set_conversation_properties(&me, &id, &key, &req.properties, now_ms())
        .await
        .map_err(internal)?;
    out.push(s.reply(frame, Vec::new(), false));
    let notify = ConversationNotify {
        id: summary.id,
        version: u64::try_from(summary.version).unwrap_or(0),
        properties: summary.properties,
    };
    let nfy = Frame::new(
        "NFY",
        0,
        "MSGR\\CONVERSATION",
        Payload::body(notify.to_xml()).encode(),
    );
    s.state
        .router
        .deliver(
            &me,
            DeliveryFilter {
                except: Some(b.epid.clone()),
                messaging_only: true,
                ..DeliveryFilter::default()
            },
            Outbound::Frame(nfy),
        )
        .await;
    Ok(Flow::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(None), DEFAULT_PAGE);
        assert_eq!(page_size(Some(0)), DEFAULT_PAGE);
        assert_eq!(page_size(Some(7)), 7);
        assert_eq!(page_size(Some(100_000)), MAX_PAGE);
    }

    #[test]
    fn conversation_ids() {
        let me = AccountName::parse("alice").unwrap();
        let (id, key, _) =
            conversation_ref(&me, "8:Bob;epid={b958d334-651e-82fe-a2a1-3dfbb7f5cc08}").unwrap();
        assert_eq!((id.as_str(), key.as_str()), ("8:bob", "8:alice|8:bob"));
        let t = "19:0123456789abcdef0123456789abcdef@thread.skype";
        let (id, key, _) = conversation_ref(&me, t).unwrap();
        assert_eq!((id.as_str(), key.as_str()), (t, t));
        for bad in ["bob", "4:+15551234", "19:nothex@thread.skype", "8:1x", ""] {
            assert!(conversation_ref(&me, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn xml_text_drops_what_xml_cannot_carry() {
        assert_eq!(xml_text(b"a\x01b\tc\r\n<&>"), "ab\tc\r\n<&>");
        assert_eq!(xml_text(&[0x68, 0xff, 0x69]), "h\u{FFFD}i");
    }
}
