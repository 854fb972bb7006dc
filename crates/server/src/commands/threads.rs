//! Group chats (§7): `PUT MSGR\THREAD` (create, add members, change roles and the topic),
//! `DEL MSGR\THREAD` (remove or leave), `GET MSGR\THREADS`, and `SDG` to a thread. The rules live
//! in [`crate::threads`]; here: parse, hold the thread's lock, decide, store, reply, route.

use std::sync::Arc;

use msnp24_proto::mri::Network;
use msnp24_proto::xml::thread::{Member, Thread, ThreadsQuery, ThreadsResponse};
use msnp24_proto::{AccountName, ErrorCode, FormattedMessage, Frame, Headers, Mri, Payload};

use super::messaging::{delivered_content, store_and_answer, Outgoing};
use super::{bad_xml, internal, Flow, Outcome, Refusal};
use crate::routing::{Delivery, DeliveryFilter, Outbound};
use crate::session::{Bound, Session};
use crate::state::now_ms;
use crate::storage::{NewMessage, Participant, StoredMessage, ThreadChange, ThreadRecord};
use crate::threads::{self, parse_role, Plan, RuleError};

/// Thread commands need an endpoint bound with `<ver>2` (§2.3); others get 240.
fn bound_v2(s: &Session) -> Result<Bound, Refusal> {
    let b = s
        .bound()
        .cloned()
        .ok_or_else(|| Refusal::new(ErrorCode::AuthFailed, "not bound"))?;
    if b.ver < 2 {
        return Err(Refusal::new(
            ErrorCode::UnknownCommand,
            "group chats need BND <ver>2</ver>",
        ));
    }
    Ok(b)
}

fn unknown_thread() -> Refusal {
    Refusal::new(ErrorCode::InvalidParameter, "no such thread")
}

fn refused(e: RuleError) -> Refusal {
    match e {
        RuleError::Forbidden(why) => Refusal::new(ErrorCode::Forbidden, why),
        RuleError::Invalid(why) => Refusal::new(ErrorCode::InvalidParameter, why),
    }
}

/// A well-formed thread id in its written form; anything else is 201.
fn thread_id(raw: &str) -> Result<String, Refusal> {
    Mri::parse(raw.trim())
        .ok()
        .map(|m| m.without_epid())
        .filter(Mri::is_valid_thread)
        .map(|m| m.to_string())
        .ok_or_else(unknown_thread)
}

/// The existing accounts `<members>` names, each once, with the role asked for. Addresses that
/// are no account are left out (§0.4: the rest of the request is well-formed and allowed); a
/// role other than `admin` or `user` is 201.
async fn resolve_members(
    s: &Session,
    members: &[Member],
) -> Result<Vec<(AccountName, Option<&'static str>)>, Refusal> {
    let mut out: Vec<(AccountName, Option<&'static str>)> = Vec::new();
    for m in members {
        let role = match m.role.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(r) => Some(parse_role(r).ok_or_else(|| {
                Refusal::new(ErrorCode::InvalidParameter, "roles are admin or user")
            })?),
        };
        let Ok(mri) = Mri::parse(m.mri.trim()) else {
            continue;
        };
        let account = match mri.network {
            Network::Skype => match AccountName::parse(&mri.id) {
                Ok(name) => s
                    .state
                    .storage
                    .account(&name)
                    .await
                    .map_err(internal)?
                    .map(|a| a.name),
                Err(_) => None,
            },
            Network::Live => s
                .state
                .storage
                .account_by_email(&mri.id)
                .await
                .map_err(internal)?
                .map(|a| a.name),
            _ => None,
        };
        match account {
            Some(a) if !out.iter().any(|(n, _)| n == &a) => out.push((a, role)),
            Some(_) => {}
            None => {
                tracing::debug!(conn = s.conn_id, mri = %crate::text::log(&m.mri), "thread member is no account; left out")
            }
        }
    }
    Ok(out)
}

/// The `Messaging` headers of a message the thread itself posts.
/// The type prefix of the messages only a thread posts (§7).
const ACTIVITY: &str = "ThreadActivity/";

fn activity_headers(message_type: &str) -> Headers {
    Headers::new()
        .with("Messaging", "2.0")
        .with("Message-Type", message_type)
        .with("Content-Type", "text/plain; charset=UTF-8")
}

/// Stores the change and its activity messages in one transaction.
async fn store(s: &Session, plan: &Plan) -> Result<Vec<StoredMessage>, Refusal> {
    let id = &plan.thread.id;
    let arrival_ms = plan.thread.version;
    let activity = plan
        .activity()
        .into_iter()
        .map(|(kind, body, audience)| {
            let mut headers = Vec::new();
            activity_headers(kind).encode_into(&mut headers);
            NewMessage {
                conversation: id.clone(),
                participants: audience
                    .into_iter()
                    .map(|account| Participant {
                        account,
                        conversation_id: id.clone(),
                    })
                    .collect(),
                sender: id.clone(),
                sender_epid: String::new(),
                recipient: id.clone(),
                client_message_id: None,
                message_type: kind.to_string(),
                headers: String::from_utf8_lossy(&headers).into_owned(),
                content: body.into_bytes(),
                arrival_ms,
            }
        })
        .collect();
    s.state
        .storage
        .apply_thread_change(ThreadChange {
            thread: plan.thread.clone(),
            joined: plan.added.clone(),
            left: plan.removed.clone(),
            activity,
        })
        .await
        .map_err(internal)
}

/// Tells everyone concerned: the whole thread (`NFY 0 MSGR\THREAD`), then each activity message
/// (`SDG 0 MSGR` from the thread) to the accounts it concerns. Only `<ver>2` endpoints hear it.
async fn announce(s: &Session, plan: &Plan, stored: Vec<StoredMessage>) {
    let router = &s.state.router;
    let nfy = Frame::new(
        "NFY",
        0,
        "MSGR\\THREAD",
        Payload::body(threads::thread_xml(&plan.thread).to_full_xml()).encode(),
    );
    let threads_only = DeliveryFilter {
        threads_only: true,
        ..DeliveryFilter::default()
    };
    for account in plan.audience() {
        router
            .deliver(&account, threads_only.clone(), Outbound::Frame(nfy.clone()))
            .await;
    }
    for m in stored {
        let id = &plan.thread.id;
        let delivery = Arc::new(Delivery {
            message: FormattedMessage {
                routing: Headers::new()
                    .with("Routing", "1.0")
                    .with("To", id.clone())
                    .with("From", id.clone()),
                reliability: Headers::new().with("Reliability", "1.0"),
                content: delivered_content(
                    &activity_headers(&m.message.message_type),
                    m.message_id,
                    m.message.arrival_ms,
                ),
                body: m.message.content,
            },
            arrival_ms: m.message.arrival_ms,
            stored: Some((id.clone(), m.message_id)),
        });
        for p in &m.message.participants {
            router
                .deliver(
                    &p.account,
                    DeliveryFilter {
                        messaging_only: true,
                        threads_only: true,
                        ..DeliveryFilter::default()
                    },
                    Outbound::Message(delivery.clone()),
                )
                .await;
        }
    }
}

/// The reply to `PUT`/`DEL MSGR\THREAD`: the header set of §7 and the thread's id.
fn thread_reply(s: &mut Session, frame: &Frame, id: &str) -> Frame {
    let body = Thread {
        id: id.to_string(),
        ..Thread::default()
    };
    s.reply(frame, body.to_xml(), true)
}

/// Applies a plan: store, reply, then announce (the reply leaves before anything queued, so the
/// requester reads its reply first).
async fn carry_out(s: &mut Session, frame: &Frame, plan: Plan, out: &mut Vec<Frame>) -> Outcome {
    if plan.is_noop() {
        out.push(thread_reply(s, frame, &plan.thread.id));
        return Ok(Flow::Continue);
    }
    let stored = store(s, &plan).await?;
    out.push(thread_reply(s, frame, &plan.thread.id));
    tracing::debug!(
        conn = s.conn_id,
        thread = %plan.thread.id,
        added = plan.added.len(),
        removed = plan.removed.len(),
        roles = plan.roles.len(),
        topic = plan.topic.is_some(),
        members = plan.thread.members.len(),
        "thread changed"
    );
    announce(s, &plan, stored).await;
    Ok(Flow::Continue)
}

/// The open thread `id`, or 201.
async fn load(s: &Session, id: &str) -> Result<ThreadRecord, Refusal> {
    s.state
        .storage
        .thread(id)
        .await
        .map_err(internal)?
        .ok_or_else(unknown_thread)
}

/// Handles `PUT MSGR\THREAD`: an empty `<id>` creates a thread.
pub async fn put(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let b = bound_v2(s)?;
    super::charge_write(s)?;
    let req = Thread::parse(&payload.body).map_err(bad_xml)?;
    let listed = resolve_members(s, &req.members).await?;
    let create = req.id.trim().is_empty();
    let id = if create {
        threads::new_thread_id()
    } else {
        thread_id(&req.id)?
    };
    let state = s.state.clone();
    let _turn = state.thread_locks.lock(&id).await;
    let current = if create {
        threads::new_thread(id, &b.account)
    } else {
        load(s, &id).await?
    };
    let plan = threads::plan_put(
        &current,
        create,
        &b.account,
        &listed,
        req.topic.as_deref(),
        now_ms(),
    )
    .map_err(refused)?;
    carry_out(s, frame, plan, out).await
}

/// Handles `DEL MSGR\THREAD`: removes the listed members, or the caller itself (leave).
pub async fn del(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let b = bound_v2(s)?;
    super::charge_write(s)?;
    let req = Thread::parse(&payload.body).map_err(bad_xml)?;
    let id = thread_id(&req.id)?;
    let targets: Vec<AccountName> = resolve_members(s, &req.members)
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let state = s.state.clone();
    let _turn = state.thread_locks.lock(&id).await;
    let Some(current) = state.storage.thread(&id).await.map_err(internal)? else {
        // A thread closed by the caller's own leaving: a retried leave is harmless.
        if targets.iter().all(|t| t == &b.account) {
            out.push(thread_reply(s, frame, &id));
            return Ok(Flow::Continue);
        }
        return Err(unknown_thread());
    };
    let plan = threads::plan_del(&current, &b.account, &targets, now_ms()).map_err(refused)?;
    carry_out(s, frame, plan, out).await
}

/// Handles `GET MSGR\THREADS`: the full threads asked for that the caller belongs to.
pub async fn get(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let b = bound_v2(s)?;
    let req = ThreadsQuery::parse(&payload.body).map_err(bad_xml)?;
    let mut threads_out: Vec<Thread> = Vec::new();
    for raw in &req.ids {
        let Ok(id) = thread_id(raw) else { continue };
        if threads_out.iter().any(|t| t.id == id) {
            continue;
        }
        if let Some(t) = s.state.storage.thread(&id).await.map_err(internal)? {
            if t.members.iter().any(|m| m.account == b.account) {
                threads_out.push(threads::thread_xml(&t));
            }
        }
    }
    let response = ThreadsResponse {
        threads: threads_out,
    };
    out.push(s.reply(frame, response.to_xml(), false));
    Ok(Flow::Continue)
}

/// `SDG` to a thread (§7): from a member, stored once in the thread's history and delivered to
/// every member's `<ver>2` endpoints subscribed to messaging (and the sender's other ones); from
/// anyone else, 208.
pub async fn sdg(
    s: &mut Session,
    frame: &Frame,
    bound: &Bound,
    msg: FormattedMessage,
    to: &Mri,
    out: &mut Vec<Frame>,
) -> Outcome {
    let b = bound_v2(s)?;
    let id = thread_id(&to.to_string())?;
    let state = s.state.clone();
    let _turn = state.thread_locks.lock(&id).await;
    let thread = load(s, &id).await?;
    if !thread.members.iter().any(|m| m.account == b.account) {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "not a member of this thread",
        ));
    }
    // Clients compare types without regard to case, so the check does too.
    if msg.message_type().is_some_and(|t| {
        t.trim_start()
            .get(..ACTIVITY.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(ACTIVITY))
    }) {
        // Only the thread posts these (§0.6); a member cannot forge one.
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "activity messages come from the thread",
        ));
    }
    let outgoing = Outgoing {
        to: id.clone(),
        conversation: id.clone(),
        participants: thread
            .members
            .iter()
            .map(|m| Participant {
                account: m.account.clone(),
                conversation_id: id.clone(),
            })
            .collect(),
        arrival_ms: now_ms(),
        direct: None,
    };
    let Some((delivery, message_id)) =
        store_and_answer(s, frame, bound, msg, outgoing, out).await?
    else {
        return Ok(Flow::Continue);
    };
    let mut delivered = 0;
    for m in &thread.members {
        let except = (m.account == bound.account).then(|| bound.epid.clone());
        delivered += state
            .router
            .deliver(
                &m.account,
                DeliveryFilter {
                    except,
                    messaging_only: true,
                    threads_only: true,
                    ..DeliveryFilter::default()
                },
                Outbound::Message(delivery.clone()),
            )
            .await;
    }
    tracing::debug!(conn = s.conn_id, id = message_id, thread = %id, delivered, "SDG to a thread");
    Ok(Flow::Continue)
}
