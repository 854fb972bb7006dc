//! Presence (§4.3–§4.5): the in-memory documents of every online account, the status rules, and
//! the fan-out of `NFY MSGR\PUT` / `NFY MSGR\DEL` to watchers and to the account's own endpoints.
//!
//! Presence is not durable: it dies with the process, and an account's documents are forgotten
//! when its last endpoint goes (clients publish everything again at sign-in). Who may see whom is
//! durable and lives in the contact lists ([`crate::storage::Storage::presence_watchers`]).

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use msnp24_proto::xml::presence_doc::{EndpointDoc, ServiceDoc, UserDoc};
use msnp24_proto::{AccountName, Epid, FormattedMessage, Frame, Headers};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::routing::{DeliveryFilter, Outbound, Router};
use crate::storage::Storage;

/// Changes of one account are serialised by one of these locks, so watchers see them in order;
/// striping keeps the table small without a lock per account.
const STRIPES: usize = 64;

/// `ACTIVEENDPOINT` timeouts beyond this are treated as this (keeps `Instant` arithmetic safe).
const MAX_ACTIVE_SECS: u64 = 24 * 3600;

/// An endpoint's effective status (§4.3): the only four values ever sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Online.
    Online,
    /// Busy.
    Busy,
    /// Away (also idle, `IDL`, `BRB`, `LUN`).
    Away,
    /// Invisible: offline to others, `HDN` to the account's own endpoints.
    Hidden,
}

impl Status {
    /// Maps a published status; values no client of the time sends count as online, since the
    /// endpoint is evidently there.
    pub fn from_published(raw: &str) -> Status {
        match raw.trim().to_ascii_uppercase().as_str() {
            "AWY" | "IDL" | "BRB" | "LUN" => Status::Away,
            "BSY" | "PHN" => Status::Busy,
            "HDN" => Status::Hidden,
            _ => Status::Online,
        }
    }

    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "NLN",
            Status::Busy => "BSY",
            Status::Away => "AWY",
            Status::Hidden => "HDN",
        }
    }

    /// Higher is more available: `NLN` over `BSY` over `AWY` (§4.3).
    fn availability(self) -> u8 {
        match self {
            Status::Online => 3,
            Status::Busy => 2,
            Status::Away => 1,
            Status::Hidden => 0,
        }
    }
}

/// One endpoint's presence.
#[derive(Debug, Clone)]
struct EndpointState {
    epid: Epid,
    /// The connection that owns it; a stale connection's close must not remove its replacement.
    conn_id: u64,
    /// Present to others only after its first `PUT MSGR\PRESENCE` (a client signing in as `HDN`
    /// must not flash online in between).
    published: bool,
    status: Status,
    seps: Vec<EndpointDoc>,
    idle: bool,
    active_until: Option<Instant>,
    /// Set when the connection vanished without `OUT`: present until then.
    gone_until: Option<Instant>,
}

impl EndpointState {
    fn new(epid: Epid, conn_id: u64) -> EndpointState {
        EndpointState {
            epid,
            conn_id,
            published: false,
            status: Status::Online,
            seps: Vec::new(),
            idle: false,
            active_until: None,
            gone_until: None,
        }
    }

    /// §4.3: idle counts as away unless busy (or hidden).
    fn effective(&self) -> Status {
        match self.status {
            Status::Online | Status::Away if self.idle => Status::Away,
            s => s,
        }
    }
}

/// One account's presence: merged `<s>` documents and its endpoints.
#[derive(Debug, Default)]
struct AccountState {
    services: Vec<ServiceDoc>,
    endpoints: Vec<EndpointState>,
    /// The endpoint behind the latest change, named in `From:` of snapshots.
    last_cause: Option<Epid>,
}

/// Who a document is rendered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Watchers: `HDN` endpoints left out, all `HDN` is offline.
    Others,
    /// The account's own endpoints: `HDN` shown as `HDN`.
    Own,
}

impl AccountState {
    fn endpoint_mut(&mut self, epid: &Epid) -> Option<&mut EndpointState> {
        self.endpoints.iter_mut().find(|e| &e.epid == epid)
    }

    /// The whole merged document with exactly one `<Status>`, or `None` when offline to `view`.
    fn render(&self, view: View) -> Option<UserDoc> {
        let shown: Vec<&EndpointState> = self
            .endpoints
            .iter()
            .filter(|e| e.published && (view == View::Own || e.effective() != Status::Hidden))
            .collect();
        let status = shown
            .iter()
            .map(|e| e.effective())
            .max_by_key(|s| s.availability())?;
        let mut im = ServiceDoc::new("IM");
        im.set_field("Status", status.as_str());
        let mut doc = UserDoc::default();
        if let Some(stored) = self.services.iter().find(|s| s.name == "IM") {
            im.fields.extend(stored.fields.iter().cloned());
        }
        doc.services.push(im);
        doc.services
            .extend(self.services.iter().filter(|s| s.name != "IM").cloned());
        for e in shown {
            doc.endpoints.extend(e.seps.iter().cloned());
        }
        Some(doc)
    }

    /// The endpoint named in `From:` when no single change caused a notification.
    fn sender_epid(&self) -> Option<&Epid> {
        self.last_cause
            .as_ref()
            .filter(|c| self.endpoints.iter().any(|e| &e.epid == *c))
            .or_else(|| self.endpoints.iter().find(|e| e.published).map(|e| &e.epid))
    }
}

/// What each audience saw of an account at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Views {
    others: Option<UserDoc>,
    own: Option<UserDoc>,
}

fn views(state: Option<&AccountState>) -> Views {
    Views {
        others: state.and_then(|s| s.render(View::Others)),
        own: state.and_then(|s| s.render(View::Own)),
    }
}

/// A field that would smuggle a second `<Status>` or `<Mood>` into a notification (§0.5).
fn smuggles(raw: &str) -> bool {
    raw.contains("<Status") || raw.contains("<Mood")
}

/// Keeps the one `<Status>` and one `<Mood>` a notification may carry where they belong.
fn clean_service(s: &ServiceDoc) -> ServiceDoc {
    let mut out = s.clone();
    out.fields.retain(|(name, raw)| {
        !smuggles(raw) && name != "Status" && (name != "Mood" || s.name == "SKP")
    });
    out
}

fn clean_sep(sep: &EndpointDoc, epid: &Epid) -> EndpointDoc {
    let mut out = sep.clone();
    // The document names the publishing endpoint whatever the client wrote.
    out.epid = epid.to_string();
    out.fields
        .retain(|(name, raw)| !smuggles(raw) && name != "Status" && name != "Mood");
    out
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    account: AccountName,
    epid: Epid,
}

#[derive(Default)]
struct Inner {
    accounts: HashMap<AccountName, AccountState>,
    /// Idle and keep-alive deadlines; stale entries are skipped when they fire.
    timers: BinaryHeap<Reverse<Timer>>,
}

/// The presence service: one per server, shared by every connection.
pub struct PresenceService {
    inner: Mutex<Inner>,
    storage: Arc<dyn Storage>,
    router: Arc<dyn Router>,
    keepalive: Duration,
    stripes: Vec<tokio::sync::Mutex<()>>,
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
    /// A service with no one online; `keepalive` is how long a vanished endpoint stays present.
    pub fn new(
        storage: Arc<dyn Storage>,
        router: Arc<dyn Router>,
        keepalive: Duration,
    ) -> PresenceService {
        PresenceService {
            inner: Mutex::new(Inner::default()),
            storage,
            router,
            keepalive,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            wake: Notify::new(),
            notif_num: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding this lock; recover rather than poison every connection.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stripe(&self, account: &AccountName) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        account.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    /// Applies `f` to the account's state (created if absent) and records both views.
    fn mutate(
        &self,
        account: &AccountName,
        cause: Option<&Epid>,
        f: impl FnOnce(&mut AccountState, &mut BinaryHeap<Reverse<Timer>>),
    ) -> Change {
        let mut inner = self.lock();
        let Inner { accounts, timers } = &mut *inner;
        let before = views(accounts.get(account));
        let state = accounts.entry(account.clone()).or_default();
        f(state, timers);
        if let Some(c) = cause {
            state.last_cause = Some(c.clone());
        }
        let from = cause.cloned().or_else(|| state.sender_epid().cloned());
        if state.endpoints.is_empty() {
            accounts.remove(account);
        }
        let after = views(accounts.get(account));
        Change {
            before,
            after,
            from,
        }
    }

    /// A connection bound `epid`: a new endpoint, or the same epid taking over from a connection
    /// that vanished or was replaced (its presence carries on without flickering offline).
    pub fn bound(&self, account: &AccountName, epid: &Epid, conn_id: u64) {
        let mut inner = self.lock();
        let state = inner.accounts.entry(account.clone()).or_default();
        match state.endpoint_mut(epid) {
            Some(e) => {
                e.conn_id = conn_id;
                e.gone_until = None;
            }
            None => state
                .endpoints
                .push(EndpointState::new(epid.clone(), conn_id)),
        }
    }

    /// `PUT MSGR\PRESENCE`: merges `<s>` per account and `<sep>` per endpoint; `<s n="IM">`'s
    /// `<Status>` is this endpoint's own status. Returns how many endpoints were notified.
    pub async fn publish(&self, account: &AccountName, epid: &Epid, doc: UserDoc) -> usize {
        let _turn = self.stripe(account).lock().await;
        let change = self.mutate(account, Some(epid), |state, _| {
            let status = doc.status().map(Status::from_published);
            for s in &doc.services {
                let clean = clean_service(s);
                match state.services.iter_mut().find(|m| m.name == s.name) {
                    Some(merged) => merged.merge(&clean),
                    None => state.services.push(clean),
                }
            }
            if state.endpoint_mut(epid).is_none() {
                state.endpoints.push(EndpointState::new(epid.clone(), 0));
            }
            let Some(e) = state.endpoint_mut(epid) else {
                return;
            };
            e.published = true;
            if let Some(status) = status {
                e.status = status;
            }
            for sep in &doc.endpoints {
                let clean = clean_sep(sep, epid);
                match e.seps.iter_mut().find(|m| m.name == sep.name) {
                    Some(merged) => merged.merge(&clean),
                    None => e.seps.push(clean),
                }
            }
        });
        self.fan_out(account, change).await
    }

    /// `PUT MSGR\ACTIVEENDPOINT` (§4.5): active for `timeout` seconds, idle now when 0.
    pub async fn active(&self, account: &AccountName, epid: &Epid, timeout: u64) -> usize {
        let _turn = self.stripe(account).lock().await;
        let now = Instant::now();
        let mut scheduled = false;
        let change = self.mutate(account, Some(epid), |state, timers| {
            let Some(e) = state.endpoint_mut(epid) else {
                return;
            };
            if timeout == 0 {
                e.idle = true;
                e.active_until = None;
            } else {
                let at = now + Duration::from_secs(timeout.min(MAX_ACTIVE_SECS));
                e.idle = false;
                e.active_until = Some(at);
                timers.push(Reverse(Timer {
                    at,
                    account: account.clone(),
                    epid: epid.clone(),
                }));
                scheduled = true;
            }
        });
        if scheduled {
            self.wake.notify_one();
        }
        self.fan_out(account, change).await
    }

    /// A connection ended. `vanished` (dropped without `OUT`) keeps the endpoint present for the
    /// keep-alive time; anything else removes it now.
    pub async fn closed(&self, account: &AccountName, epid: &Epid, conn_id: u64, vanished: bool) {
        let _turn = self.stripe(account).lock().await;
        let linger = vanished && !self.keepalive.is_zero();
        let at = Instant::now() + self.keepalive;
        let mut scheduled = false;
        let change = self.mutate(account, Some(epid), |state, timers| {
            let Some(i) = state
                .endpoints
                .iter()
                .position(|e| &e.epid == epid && e.conn_id == conn_id)
            else {
                return;
            };
            if linger && state.endpoints[i].published {
                state.endpoints[i].gone_until = Some(at);
                timers.push(Reverse(Timer {
                    at,
                    account: account.clone(),
                    epid: epid.clone(),
                }));
                scheduled = true;
            } else {
                state.endpoints.remove(i);
            }
        });
        if scheduled {
            self.wake.notify_one();
        }
        self.fan_out(account, change).await;
    }

    /// A deadline passed: the endpoint may have become idle, or its keep-alive run out.
    async fn fire(&self, timer: Timer) {
        let _turn = self.stripe(&timer.account).lock().await;
        let now = Instant::now();
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
        self.fan_out(&timer.account, change).await;
    }

    /// Runs idle and keep-alive deadlines until shutdown.
    pub async fn run_timers(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = self.lock().timers.peek().map(|t| t.0.at);
            let sleep_until = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = self.wake.notified() => continue,
                _ = tokio::time::sleep_until(sleep_until) => {}
            }
            let now = Instant::now();
            let due: Vec<Timer> = {
                let mut inner = self.lock();
                let mut due = Vec::new();
                while inner.timers.peek().is_some_and(|t| t.0.at <= now) {
                    if let Some(Reverse(t)) = inner.timers.pop() {
                        due.push(t);
                    }
                }
                due
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
                    let doc = change.after.others.as_ref();
                    for w in &watchers {
                        let frame = match doc {
                            Some(doc) => self.put_frame(w, account, from, doc),
                            None => self.del_frame(w, account),
                        };
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
        self.router
            .deliver(to, filter, Outbound::Frame(frame))
            .await
    }

    /// The document `view` shows of `account`, or `None` when it is offline to that view.
    pub fn document(&self, account: &AccountName, view: View) -> Option<UserDoc> {
        self.lock()
            .accounts
            .get(account)
            .and_then(|s| s.render(view))
    }

    /// `NFY MSGR\PUT` frames for a fresh presence subscription of `epid`: each of `contacts` that is
    /// online to others, then the account itself if another of its endpoints is present.
    pub fn snapshot(
        &self,
        account: &AccountName,
        epid: &Epid,
        contacts: &[AccountName],
    ) -> Vec<Frame> {
        let inner = self.lock();
        let mut frames = Vec::new();
        for c in contacts {
            if let Some(state) = inner.accounts.get(c) {
                if let Some(doc) = state.render(View::Others) {
                    frames.push(self.put_frame(account, c, state.sender_epid(), &doc));
                }
            }
        }
        if let Some(state) = inner.accounts.get(account) {
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
        let _turn = self.stripe(target).lock().await;
        let frame = {
            let inner = self.lock();
            let Some(state) = inner.accounts.get(target) else {
                return;
            };
            let Some(doc) = state.render(View::Others) else {
                return;
            };
            if visible {
                self.put_frame(watcher, target, state.sender_epid(), &doc)
            } else {
                self.del_frame(watcher, target)
            }
        };
        self.deliver(watcher, None, frame).await;
    }

    fn notification(&self, to: &AccountName, from: String, doc: &UserDoc) -> FormattedMessage {
        let mut m = FormattedMessage::new(
            &to.mri().to_string(),
            &from,
            ("Notification", "1.0"),
            doc.to_xml().into_bytes(),
        );
        let num = self.notif_num.fetch_add(1, Ordering::Relaxed);
        m.content.push("NotifNum", num.to_string());
        m.content.push("Uri", "/user");
        m.content.push("NotifType", "Full");
        m.content.push("Content-Type", "application/user+xml");
        m
    }

    fn put_frame(
        &self,
        to: &AccountName,
        account: &AccountName,
        from: Option<&Epid>,
        doc: &UserDoc,
    ) -> Frame {
        let mri = account.mri();
        let from = match from {
            Some(e) => mri.with_epid(e.clone()).to_string(),
            None => mri.to_string(),
        };
        let m = self.notification(to, from, doc);
        Frame::new("NFY", 0, "MSGR\\PUT", m.to_payload(&Headers::new()))
    }

    fn del_frame(&self, to: &AccountName, account: &AccountName) -> Frame {
        let m = self.notification(to, account.mri().to_string(), &UserDoc::default());
        Frame::new("NFY", 0, "MSGR\\DEL", m.to_payload(&Headers::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(n: u8, status: Status) -> EndpointState {
        let epid = Epid::parse(&format!("{n:08x}-0000-0000-0000-000000000000")).unwrap();
        let mut e = EndpointState::new(epid.clone(), 1);
        e.published = true;
        e.status = status;
        e.seps.push(EndpointDoc::new("IM", epid.to_string()));
        e
    }

    fn status_of(doc: &UserDoc) -> &str {
        doc.status().unwrap_or("none")
    }

    #[test]
    fn published_statuses_map_to_four() {
        for (raw, s) in [
            ("NLN", "NLN"),
            ("awy", "AWY"),
            ("IDL", "AWY"),
            ("BRB", "AWY"),
            ("LUN", "AWY"),
            ("PHN", "BSY"),
            ("BSY", "BSY"),
            ("HDN", "HDN"),
            ("FLN?", "NLN"),
        ] {
            assert_eq!(Status::from_published(raw).as_str(), s, "{raw}");
        }
    }

    #[test]
    fn aggregate_is_most_available_non_hidden() {
        let mut state = AccountState {
            endpoints: vec![
                ep(1, Status::Away),
                ep(2, Status::Busy),
                ep(3, Status::Hidden),
            ],
            ..Default::default()
        };
        let doc = state.render(View::Others).unwrap();
        assert_eq!(status_of(&doc), "BSY");
        assert_eq!(
            doc.endpoints.len(),
            2,
            "the HDN endpoint's <sep> is left out"
        );
        assert_eq!(status_of(&state.render(View::Own).unwrap()), "BSY");

        state.endpoints[1].idle = true; // busy stays busy when idle
        assert_eq!(status_of(&state.render(View::Others).unwrap()), "BSY");
        state.endpoints[1].status = Status::Online; // idle online is away
        assert_eq!(status_of(&state.render(View::Others).unwrap()), "AWY");

        state.endpoints.truncate(0);
        state.endpoints.push(ep(3, Status::Hidden));
        assert!(state.render(View::Others).is_none());
        assert_eq!(status_of(&state.render(View::Own).unwrap()), "HDN");
        state.endpoints[0].published = false;
        assert!(state.render(View::Own).is_none());
    }

    #[test]
    fn one_status_and_one_mood_survive_cleaning() {
        let doc = UserDoc::parse(
            b"<user><s n=\"IM\"><Status>NLN</Status><X><Status>BSY</Status></X></s><s n=\"PE\"><Mood>x</Mood><Status>AWY</Status><PSM>p</PSM></s><s n=\"SKP\"><Mood>m</Mood></s></user>",
        )
        .unwrap();
        let mut state = AccountState::default();
        for s in &doc.services {
            state.services.push(clean_service(s));
        }
        state.endpoints.push(ep(1, Status::Online));
        let xml = state.render(View::Others).unwrap().to_xml();
        assert_eq!(xml.matches("<Status>").count(), 1, "{xml}");
        assert_eq!(xml.matches("<Mood>").count(), 1, "{xml}");
        assert!(xml.contains("<PSM>p</PSM>"));
    }
}
