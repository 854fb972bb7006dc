//! Presence (§4.3–§4.5): the documents of every online account, the status rules, and the
//! fan-out of `NFY MSGR\PUT` / `NFY MSGR\DEL` to watchers and to the account's own endpoints.
//!
//! Presence is not durable: clients publish everything again at sign-in. It lives in a
//! [`PresenceStore`]: this process's memory on one node, or a store all nodes of a cluster share.
//! Who may see whom is durable and lives in the contact lists
//! ([`crate::storage::Storage::presence_watchers`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use msnp24_proto::xml::presence_doc::UserDoc;
use msnp24_proto::{AccountName, Epid, FormattedMessage, Frame, Headers};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::routing::{DeliveryFilter, Outbound, Router};
use crate::state::now_ms;
use crate::storage::Storage;

mod state;
pub mod store;

pub use state::{AccountState, Status, View};
pub use store::{MemoryPresenceStore, PresenceStore, Timer};

pub use state::{Trimmed, MAX_DOCUMENT_BYTES, MAX_FIELDS, MAX_SEPS, MAX_SERVICES};

use state::{views, EndpointState, Views};

/// Room left in a frame for a notification's headers around the document (`To`, `From` with an
/// epid, `NotifNum`… take about 250 bytes).
const NOTICE_HEADROOM: usize = 1024;

/// `ACTIVEENDPOINT` timeouts beyond this are treated as this (keeps deadline arithmetic safe).
const MAX_ACTIVE_SECS: u64 = 24 * 3600;

/// The presence service: one per server, shared by every connection.
pub struct PresenceService {
    store: Arc<dyn PresenceStore>,
    storage: Arc<dyn Storage>,
    router: Arc<dyn Router>,
    keepalive: Duration,
    /// Largest document a publication may leave behind (see [`MAX_DOCUMENT_BYTES`]).
    max_document: usize,
    wake: Notify,
    notif_num: AtomicU64,
}

/// What a change left behind, for fan-out.
struct Change {
    before: Views,
    after: Views,
    from: Option<Epid>,
}

impl PresenceService {
    /// A service with no one online; `keepalive` is how long a vanished endpoint stays present;
    /// `max_frame` is the largest payload a peer accepts, which every notification must fit.
    pub fn new(
        store: Arc<dyn PresenceStore>,
        storage: Arc<dyn Storage>,
        router: Arc<dyn Router>,
        keepalive: Duration,
        max_frame: usize,
    ) -> PresenceService {
        PresenceService {
            store,
            storage,
            router,
            keepalive,
            max_document: MAX_DOCUMENT_BYTES.min(max_frame.saturating_sub(NOTICE_HEADROOM)),
            wake: Notify::new(),
            // Distinct per process, so notifications from two nodes of a cluster rarely share one.
            notif_num: AtomicU64::new(u64::from(rand::random::<u16>()) << 32 | 1),
        }
    }

    /// Applies `f` to the account's state (created if absent), stores the result and schedules
    /// the deadlines `f` asked for; `None` when the store failed and nothing changed. The caller
    /// holds the account's lock.
    async fn mutate(
        &self,
        account: &AccountName,
        cause: Option<&Epid>,
        f: impl FnOnce(&mut AccountState, &mut Vec<i64>),
    ) -> Option<Change> {
        let loaded = match self.store.load(account).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(account = %account, error = %e, "presence unavailable; change dropped");
                return None;
            }
        };
        let before = views(loaded.as_ref());
        let mut state = loaded.clone().unwrap_or_default();
        let mut deadlines = Vec::new();
        f(&mut state, &mut deadlines);
        if let Some(c) = cause {
            state.last_cause = Some(c.clone());
        }
        let from = cause.cloned().or_else(|| state.sender_epid().cloned());
        let after_state = (!state.endpoints.is_empty()).then_some(state);
        if after_state != loaded {
            if let Err(e) = self.store.save(account, after_state.as_ref()).await {
                tracing::error!(account = %account, error = %e, "presence not saved; change dropped");
                return None;
            }
        }
        if let (Some(epid), false) = (cause, deadlines.is_empty()) {
            for at_ms in deadlines.drain(..) {
                let timer = Timer {
                    at_ms,
                    account: account.clone(),
                    epid: epid.clone(),
                };
                if let Err(e) = self.store.schedule(timer).await {
                    tracing::error!(account = %account, error = %e, "presence deadline lost");
                }
            }
            self.wake.notify_one();
        }
        Some(Change {
            before,
            after: views(after_state.as_ref()),
            from,
        })
    }

    /// A connection bound `epid`: a new endpoint, or the same epid taking over from a connection
    /// that vanished or was replaced (its presence carries on without flickering offline).
    pub async fn bound(&self, account: &AccountName, epid: &Epid, conn_id: u64) {
        let _turn = self.store.lock(account).await;
        // Nothing others see changes (the endpoint has published nothing, or carries on).
        self.mutate(account, None, |state, _| match state.endpoint_mut(epid) {
            Some(e) => {
                e.conn_id = conn_id;
                e.gone_until = None;
            }
            None => state
                .endpoints
                .push(EndpointState::new(epid.clone(), conn_id)),
        })
        .await;
    }

    /// `PUT MSGR\PRESENCE`: merges `<s>` per account and `<sep>` per endpoint; `<s n="IM">`'s
    /// `<Status>` is this endpoint's own status. Returns how many endpoints were notified.
    pub async fn publish(&self, account: &AccountName, epid: &Epid, doc: UserDoc) -> usize {
        let _turn = self.store.lock(account).await;
        let max_bytes = self.max_document;
        let change = self.mutate(account, Some(epid), |state, _| {
            let trimmed = state.merge_publication(epid, &doc, max_bytes);
            if trimmed != Trimmed::default() {
                tracing::warn!(
                    account = %account,
                    epid = %epid,
                    dropped = trimmed.dropped,
                    oversized = trimmed.oversized,
                    max_bytes,
                    "presence publication past its caps; the excess was dropped"
                );
            }
        });
        match change.await {
            Some(change) => self.fan_out(account, change).await,
            None => 0,
        }
    }

    /// `PUT MSGR\ACTIVEENDPOINT` (§4.5): active for `timeout` seconds, idle now when 0.
    pub async fn active(&self, account: &AccountName, epid: &Epid, timeout: u64) -> usize {
        let _turn = self.store.lock(account).await;
        let now = now_ms();
        let change = self.mutate(account, Some(epid), |state, deadlines| {
            let Some(e) = state.endpoint_mut(epid) else {
                return;
            };
            if timeout == 0 {
                e.idle = true;
                e.active_until = None;
            } else {
                let at = now + (timeout.min(MAX_ACTIVE_SECS) * 1000) as i64;
                e.idle = false;
                e.active_until = Some(at);
                deadlines.push(at);
            }
        });
        match change.await {
            Some(change) => self.fan_out(account, change).await,
            None => 0,
        }
    }

    /// A connection ended. `vanished` (dropped without `OUT`) keeps the endpoint present for the
    /// keep-alive time; anything else removes it now.
    pub async fn closed(&self, account: &AccountName, epid: &Epid, conn_id: u64, vanished: bool) {
        let _turn = self.store.lock(account).await;
        let linger = vanished && !self.keepalive.is_zero();
        let at = now_ms() + self.keepalive.as_millis() as i64;
        let change = self.mutate(account, Some(epid), |state, deadlines| {
            let Some(i) = state
                .endpoints
                .iter()
                .position(|e| &e.epid == epid && e.conn_id == conn_id)
            else {
                return;
            };
            if linger && state.endpoints[i].published {
                state.endpoints[i].gone_until = Some(at);
                deadlines.push(at);
            } else {
                state.endpoints.remove(i);
            }
        });
        if let Some(change) = change.await {
            self.fan_out(account, change).await;
        }
    }

    /// A deadline passed: the endpoint may have become idle, or its keep-alive run out.
    async fn fire(&self, timer: Timer) {
        let _turn = self.store.lock(&timer.account).await;
        let now = now_ms();
        let change = self.mutate(&timer.account, Some(&timer.epid), |state, _| {
            let Some(i) = state.endpoints.iter().position(|e| e.epid == timer.epid) else {
                return;
            };
            let e = &mut state.endpoints[i];
            if e.gone_until.is_some_and(|t| t <= now) {
                state.endpoints.remove(i);
            } else if e.active_until.is_some_and(|t| t <= now) {
                e.idle = true;
                e.active_until = None;
            }
        });
        if let Some(change) = change.await {
            self.fan_out(&timer.account, change).await;
        }
    }

    /// Runs idle and keep-alive deadlines until shutdown.
    pub async fn run_timers(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            // An error here shows again in `take_due` below, which says so and backs off.
            let next = self.store.next_due().await.ok().flatten();
            let mut wait = match next {
                Some(at) => Duration::from_millis((at - now_ms()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            if let Some(poll) = self.store.poll_interval() {
                wait = wait.min(poll);
            }
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = self.wake.notified() => continue,
                _ = tokio::time::sleep_until(Instant::now() + wait) => {}
            }
            let due = match self.store.take_due(now_ms()).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "presence deadlines unavailable; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for t in due {
                self.fire(t).await;
            }
        }
    }

    /// Sends what changed: the whole document (or `DEL`) to every presence-subscribed endpoint of
    /// every watcher when the others' view changed, and the own view to the account's other
    /// endpoints. Returns how many endpoints took a notification.
    async fn fan_out(&self, account: &AccountName, change: Change) -> usize {
        let mut delivered = 0;
        let from = change.from.as_ref();
        if change.before.others != change.after.others {
            match self.storage.presence_watchers(account).await {
                Ok(watchers) => {
                    let notice = match change.after.others.as_ref() {
                        Some(doc) => self.put_notice(account, from, doc),
                        None => self.del_notice(account),
                    };
                    for w in &watchers {
                        let frame = self.frame_for(w, &notice);
                        delivered += self.deliver(w, None, frame).await;
                    }
                }
                Err(e) => {
                    tracing::error!(account = %account, error = %e, "presence watchers unavailable; change not sent")
                }
            }
        }
        if change.before.own != change.after.own {
            if let Some(doc) = &change.after.own {
                let frame = self.put_frame(account, account, from, doc);
                delivered += self.deliver(account, from.cloned(), frame).await;
            }
        }
        tracing::debug!(account = %account, delivered, "presence change");
        delivered
    }

    async fn deliver(&self, to: &AccountName, except: Option<Epid>, frame: Frame) -> usize {
        let filter = DeliveryFilter {
            except,
            presence_only: true,
            ..DeliveryFilter::default()
        };
        let n = self
            .router
            .deliver(to, filter, Outbound::Frame(frame))
            .await;
        crate::stats::count(crate::stats::PRESENCE_NOTIFICATIONS, n as u64);
        n
    }

    /// The document `view` shows of `account`, or `None` when it is offline to that view.
    pub async fn document(&self, account: &AccountName, view: View) -> Option<UserDoc> {
        match self.store.load(account).await {
            Ok(state) => state.and_then(|s| s.render(view)),
            Err(e) => {
                tracing::error!(account = %account, error = %e, "presence unavailable");
                None
            }
        }
    }

    /// The documents `view` shows of those of `accounts` that are online to it (one store read).
    pub async fn documents(
        &self,
        accounts: &[AccountName],
        view: View,
    ) -> std::collections::HashMap<AccountName, UserDoc> {
        match self.store.load_many(accounts).await {
            Ok(states) => states
                .into_iter()
                .filter_map(|(a, s)| s.render(view).map(|d| (a, d)))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "presence unavailable");
                Default::default()
            }
        }
    }

    /// `NFY MSGR\PUT` frames for a fresh presence subscription of `epid`: each of `contacts` that is
    /// online to others, then the account itself if another of its endpoints is present.
    pub async fn snapshot(
        &self,
        account: &AccountName,
        epid: &Epid,
        contacts: &[AccountName],
    ) -> Vec<Frame> {
        let mut wanted = contacts.to_vec();
        wanted.push(account.clone());
        let states: std::collections::HashMap<AccountName, AccountState> = match self
            .store
            .load_many(&wanted)
            .await
        {
            Ok(states) => states.into_iter().collect(),
            Err(e) => {
                tracing::error!(account = %account, error = %e, "presence snapshot unavailable");
                return Vec::new();
            }
        };
        let mut frames = Vec::new();
        for c in contacts {
            if let Some(state) = states.get(c) {
                if let Some(doc) = state.render(View::Others) {
                    frames.push(self.put_frame(account, c, state.sender_epid(), &doc));
                }
            }
        }
        if let Some(state) = states.get(account) {
            let others_present = state
                .endpoints
                .iter()
                .any(|e| e.published && &e.epid != epid);
            if let (true, Some(doc)) = (others_present, state.render(View::Own)) {
                frames.push(self.put_frame(account, account, state.sender_epid(), &doc));
            }
        }
        frames
    }

    /// Whether `watcher` may now see `target` changed (a contact-list change): sends `target`'s
    /// document or `DEL` to `watcher`, if `target` is online to others at all.
    pub async fn visibility_changed(
        &self,
        target: &AccountName,
        watcher: &AccountName,
        visible: bool,
    ) {
        let _turn = self.store.lock(target).await;
        let state = match self.store.load(target).await {
            Ok(Some(state)) => state,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(account = %target, error = %e, "presence unavailable");
                return;
            }
        };
        let Some(doc) = state.render(View::Others) else {
            return;
        };
        let frame = if visible {
            self.put_frame(watcher, target, state.sender_epid(), &doc)
        } else {
            self.frame_for(watcher, &self.del_notice(target))
        };
        self.deliver(watcher, None, frame).await;
    }

    /// What every recipient of one `NFY MSGR\PUT` about `account` shares: built once per change,
    /// not once per watcher.
    fn put_notice(&self, account: &AccountName, from: Option<&Epid>, doc: &UserDoc) -> Notice {
        let mri = account.mri();
        let from = match from {
            Some(e) => mri.with_epid(e.clone()).to_string(),
            None => mri.to_string(),
        };
        Notice::new("MSGR\\PUT", from, doc.to_xml().into_bytes())
    }

    /// Likewise for `NFY MSGR\DEL`: `account` went offline.
    fn del_notice(&self, account: &AccountName) -> Notice {
        Notice::new(
            "MSGR\\DEL",
            account.mri().to_string(),
            UserDoc::default().to_xml().into_bytes(),
        )
    }

    /// The notification frame for one recipient, with its own `To` and `NotifNum`.
    fn frame_for(&self, to: &AccountName, notice: &Notice) -> Frame {
        let num = self.notif_num.fetch_add(1, Ordering::Relaxed);
        Frame::new(
            "NFY",
            0,
            notice.target,
            notice.payload(&to.mri().to_string(), num),
        )
    }

    fn put_frame(
        &self,
        to: &AccountName,
        account: &AccountName,
        from: Option<&Epid>,
        doc: &UserDoc,
    ) -> Frame {
        self.frame_for(to, &self.put_notice(account, from, doc))
    }
}

/// A presence notification as every recipient gets it but for `To` and `NotifNum`: the payload
/// is encoded once, around two markers, and each recipient's copy is three slices and two values.
struct Notice {
    target: &'static str,
    /// The payload before `To`'s value, between it and `NotifNum`'s, and after that.
    parts: [Vec<u8>; 3],
}

/// Stand-ins for the per-recipient values; neither byte occurs in an address or an XML document.
const TO_MARK: u8 = 0x01;
const NUM_MARK: u8 = 0x02;

impl Notice {
    fn new(target: &'static str, from: String, body: Vec<u8>) -> Notice {
        let mut m = FormattedMessage::new(
            &char::from(TO_MARK).to_string(),
            &from,
            ("Notification", "1.0"),
            body,
        );
        m.content.push("NotifNum", char::from(NUM_MARK).to_string());
        m.content.push("Uri", "/user");
        m.content.push("NotifType", "Full");
        m.content.push("Content-Type", "application/user+xml");
        let whole = m.to_payload(&Headers::new());
        // The headers come before the body, so the first of each marker is the one we placed.
        let to_at = whole.iter().position(|b| *b == TO_MARK).unwrap_or(0);
        let num_at = whole.iter().position(|b| *b == NUM_MARK).unwrap_or(to_at);
        Notice {
            target,
            parts: [
                whole[..to_at].to_vec(),
                whole[(to_at + 1).min(num_at)..num_at].to_vec(),
                whole[(num_at + 1).min(whole.len())..].to_vec(),
            ],
        }
    }

    /// The payload for one recipient.
    fn payload(&self, to: &str, num: u64) -> Vec<u8> {
        let num = num.to_string();
        let [a, b, c] = &self.parts;
        let mut out = Vec::with_capacity(a.len() + to.len() + b.len() + num.len() + c.len());
        out.extend_from_slice(a);
        out.extend_from_slice(to.as_bytes());
        out.extend_from_slice(b);
        out.extend_from_slice(num.as_bytes());
        out.extend_from_slice(c);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_is_the_message_it_stands_for() {
        let mut doc = UserDoc::default();
        let mut im = msnp24_proto::xml::presence_doc::ServiceDoc::new("IM");
        im.set_field("Status", "NLN");
        doc.services.push(im);
        let notice = Notice::new(
            "MSGR\\PUT",
            "8:alice;epid={x}".into(),
            doc.to_xml().into_bytes(),
        );
        let mut want = FormattedMessage::new(
            "8:bob",
            "8:alice;epid={x}",
            ("Notification", "1.0"),
            doc.to_xml().into_bytes(),
        );
        want.content.push("NotifNum", "1234567");
        want.content.push("Uri", "/user");
        want.content.push("NotifType", "Full");
        want.content.push("Content-Type", "application/user+xml");
        assert_eq!(
            String::from_utf8(notice.payload("8:bob", 1234567)).unwrap(),
            String::from_utf8(want.to_payload(&Headers::new())).unwrap()
        );
    }
}
