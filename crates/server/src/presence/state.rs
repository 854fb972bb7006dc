//! One account's presence as data: its endpoints, merged `<s>` documents, the §4.3 status rules
//! and the documents each audience sees. Serialisable, so a cluster can keep it in a shared store.

use msnp24_proto::xml::presence_doc::{EndpointDoc, ServiceDoc, UserDoc};
use msnp24_proto::Epid;
use serde::{Deserialize, Serialize};

/// `<s>` services one account keeps; real clients publish four (`IM`, `SKP`, `PE`, `PD`).
pub const MAX_SERVICES: usize = 16;
/// `<sep>` sections one endpoint keeps.
pub const MAX_SEPS: usize = 16;
/// Fields one `<s>` or `<sep>` keeps; real clients publish fewer than ten.
pub const MAX_FIELDS: usize = 32;
/// Largest document (the account's own view, every endpoint's `<sep>` included) a publication
/// may leave behind; real documents are 1–2 KB per endpoint. Every change re-sends the whole
/// document to every watcher, so this bounds both memory and fan-out.
pub const MAX_DOCUMENT_BYTES: usize = 32 * 1024;

/// What the caps of a publication left out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// New services, sections and fields past the count caps, dropped.
    pub dropped: usize,
    /// The publication would have grown the document past its size cap: only its status was kept.
    pub oversized: bool,
}

/// An endpoint's effective status (§4.3): the only four values ever sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointState {
    #[serde(with = "epid_str")]
    pub(crate) epid: Epid,
    /// The connection that owns it; a stale connection's close must not remove its replacement.
    pub(crate) conn_id: u64,
    /// Present to others only after its first `PUT MSGR\PRESENCE` (a client signing in as `HDN`
    /// must not flash online in between).
    pub(crate) published: bool,
    pub(crate) status: Status,
    #[serde(with = "seps_list")]
    pub(crate) seps: Vec<EndpointDoc>,
    pub(crate) idle: bool,
    /// Active until this time (unix ms), then idle.
    pub(crate) active_until: Option<i64>,
    /// Set when the connection vanished without `OUT`: present until this time (unix ms).
    pub(crate) gone_until: Option<i64>,
}

impl EndpointState {
    /// A bound endpoint that has published nothing yet.
    pub(crate) fn new(epid: Epid, conn_id: u64) -> EndpointState {
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
    pub(crate) fn effective(&self) -> Status {
        match self.status {
            Status::Online | Status::Away if self.idle => Status::Away,
            s => s,
        }
    }
}

/// One account's presence: merged `<s>` documents and its endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    #[serde(with = "services_list")]
    pub(crate) services: Vec<ServiceDoc>,
    pub(crate) endpoints: Vec<EndpointState>,
    /// The endpoint behind the latest change, named in `From:` of snapshots.
    #[serde(with = "opt_epid_str")]
    pub(crate) last_cause: Option<Epid>,
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
    pub(crate) fn endpoint_mut(&mut self, epid: &Epid) -> Option<&mut EndpointState> {
        self.endpoints.iter_mut().find(|e| &e.epid == epid)
    }

    /// Merges `epid`'s publication (§4.3): `<s>` per account, `<sep>` and status per endpoint,
    /// within the caps above. Growth past a count cap is dropped; a publication that would make
    /// the document larger than `max_bytes` keeps only its status, so a client still changes its
    /// status whatever else it sent.
    pub(crate) fn merge_publication(
        &mut self,
        epid: &Epid,
        doc: &UserDoc,
        max_bytes: usize,
    ) -> Trimmed {
        let status = doc.status().map(Status::from_published);
        let before = self.clone();
        let mut trimmed = Trimmed::default();
        for s in &doc.services {
            let clean = clean_service(s);
            let room = self.services.len() < MAX_SERVICES;
            match self.services.iter_mut().find(|m| m.name == s.name) {
                Some(merged) => trimmed.dropped += merged.merge(&clean, MAX_FIELDS),
                None if room => {
                    let mut fresh = ServiceDoc::new(clean.name.clone());
                    trimmed.dropped += fresh.merge(&clean, MAX_FIELDS);
                    self.services.push(fresh);
                }
                None => trimmed.dropped += 1,
            }
        }
        let e = self.endpoint_entry(epid);
        for sep in &doc.endpoints {
            let clean = clean_sep(sep, epid);
            let room = e.seps.len() < MAX_SEPS;
            match e.seps.iter_mut().find(|m| m.name == sep.name) {
                Some(merged) => trimmed.dropped += merged.merge(&clean, MAX_FIELDS),
                None if room => {
                    let mut fresh = EndpointDoc::new(clean.name.clone(), clean.epid.clone());
                    trimmed.dropped += fresh.merge(&clean, MAX_FIELDS);
                    e.seps.push(fresh);
                }
                None => trimmed.dropped += 1,
            }
        }
        e.published = true;
        if self.document_len(View::Own) > max_bytes {
            *self = before;
            trimmed.oversized = true;
        }
        let e = self.endpoint_entry(epid);
        e.published = true;
        if let Some(status) = status {
            e.status = status;
        }
        trimmed
    }

    /// The endpoint's entry, created (unbound, unpublished) if the account has none for it.
    fn endpoint_entry(&mut self, epid: &Epid) -> &mut EndpointState {
        let i = match self.endpoints.iter().position(|e| &e.epid == epid) {
            Some(i) => i,
            None => {
                self.endpoints.push(EndpointState::new(epid.clone(), 0));
                self.endpoints.len() - 1
            }
        };
        &mut self.endpoints[i]
    }

    /// The size in bytes of the document `view` shows (0 when offline to it).
    pub(crate) fn document_len(&self, view: View) -> usize {
        self.render(view).map_or(0, |d| d.to_xml().len())
    }

    /// The whole merged document with exactly one `<Status>`, or `None` when offline to `view`.
    pub(crate) fn render(&self, view: View) -> Option<UserDoc> {
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
    pub(crate) fn sender_epid(&self) -> Option<&Epid> {
        self.last_cause
            .as_ref()
            .filter(|c| self.endpoints.iter().any(|e| &e.epid == *c))
            .or_else(|| self.endpoints.iter().find(|e| e.published).map(|e| &e.epid))
    }
}

/// What each audience saw of an account at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Views {
    pub(crate) others: Option<UserDoc>,
    pub(crate) own: Option<UserDoc>,
}

pub(crate) fn views(state: Option<&AccountState>) -> Views {
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
pub(crate) fn clean_service(s: &ServiceDoc) -> ServiceDoc {
    let mut out = s.clone();
    out.fields.retain(|(name, raw)| {
        !smuggles(raw) && name != "Status" && (name != "Mood" || s.name == "SKP")
    });
    out
}

pub(crate) fn clean_sep(sep: &EndpointDoc, epid: &Epid) -> EndpointDoc {
    let mut out = sep.clone();
    // The document names the publishing endpoint whatever the client wrote.
    out.epid = epid.to_string();
    out.fields
        .retain(|(name, raw)| !smuggles(raw) && name != "Status" && name != "Mood");
    out
}

// The proto crate's document types carry no serde (it stays free of it); these adapters store them
// as plain tuples, and addresses as their text, parsed again on the way back.

mod epid_str {
    use msnp24_proto::Epid;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(e: &Epid, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&e.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Epid, D::Error> {
        let raw = String::deserialize(d)?;
        Epid::parse(&raw).map_err(serde::de::Error::custom)
    }
}

mod opt_epid_str {
    use msnp24_proto::Epid;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(e: &Option<Epid>, s: S) -> Result<S::Ok, S::Error> {
        match e {
            Some(e) => s.serialize_some(&e.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Epid>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|raw| Epid::parse(&raw).map_err(serde::de::Error::custom))
            .transpose()
    }
}

type Fields = Vec<(String, String)>;

mod services_list {
    use msnp24_proto::xml::presence_doc::ServiceDoc;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Fields;

    pub fn serialize<S: Serializer>(v: &[ServiceDoc], s: S) -> Result<S::Ok, S::Error> {
        let plain: Vec<(&str, &Fields)> = v.iter().map(|d| (d.name.as_str(), &d.fields)).collect();
        plain.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ServiceDoc>, D::Error> {
        let plain = Vec::<(String, Fields)>::deserialize(d)?;
        Ok(plain
            .into_iter()
            .map(|(name, fields)| ServiceDoc { name, fields })
            .collect())
    }
}

mod seps_list {
    use msnp24_proto::xml::presence_doc::EndpointDoc;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Fields;

    pub fn serialize<S: Serializer>(v: &[EndpointDoc], s: S) -> Result<S::Ok, S::Error> {
        let plain: Vec<(&str, &str, &Fields)> = v
            .iter()
            .map(|d| (d.name.as_str(), d.epid.as_str(), &d.fields))
            .collect();
        plain.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EndpointDoc>, D::Error> {
        let plain = Vec::<(String, String, Fields)>::deserialize(d)?;
        Ok(plain
            .into_iter()
            .map(|(name, epid, fields)| EndpointDoc { name, epid, fields })
            .collect())
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

    #[test]
    fn state_survives_the_shared_store_encoding() {
        let mut state = AccountState {
            endpoints: vec![ep(1, Status::Busy), ep(2, Status::Hidden)],
            ..Default::default()
        };
        let mut pe = ServiceDoc::new("PE");
        pe.set_field("PSM", "a &amp; <b>b</b>");
        state.services.push(pe);
        state.endpoints[0].idle = true;
        state.endpoints[0].active_until = Some(1_700_000_000_123);
        state.endpoints[1].gone_until = Some(-5);
        state.last_cause = Some(state.endpoints[1].epid.clone());
        let text = serde_json::to_string(&state).unwrap();
        let back: AccountState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
        assert!(serde_json::from_str::<AccountState>(
            &text.replace("00000001-0000", "not an epid")
        )
        .is_err());
    }
}
