//! The `<user>` presence document of `PUT MSGR\PRESENCE`, `NFY MSGR\PUT` and `NFY MSGR\DEL` (§4.3, §4.4).
//!
//! Field values are kept as raw inner XML so that unknown services and fields survive a round trip verbatim.

use super::{escape_text, parse_root, Element, XmlError, XmlWriter};

/// Sets `name` to `raw` in an ordered field list: the first occurrence is replaced, later ones dropped.
fn set_in(fields: &mut Vec<(String, String)>, name: &str, raw: String) {
    match fields.iter().position(|(k, _)| k == name) {
        Some(i) => {
            fields[i].1 = raw;
            let mut seen = 0;
            fields.retain(|(k, _)| {
                if k == name {
                    seen += 1;
                    seen == 1
                } else {
                    true
                }
            });
        }
        None => fields.push((name.to_owned(), raw)),
    }
}

/// Overlays `update` on `fields`: known names are replaced in place, new ones appended while
/// there are fewer than `max_fields`. Returns how many new fields were dropped for want of room.
fn merge_in(
    fields: &mut Vec<(String, String)>,
    update: &[(String, String)],
    max_fields: usize,
) -> usize {
    let mut dropped = 0;
    for (name, raw) in update {
        if fields.len() >= max_fields && !fields.iter().any(|(k, _)| k == name) {
            dropped += 1;
            continue;
        }
        set_in(fields, name, raw.clone());
    }
    dropped
}

fn get_in<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn fields_of(element: &Element) -> Vec<(String, String)> {
    element
        .children
        .iter()
        .map(|c| (c.name.clone(), c.inner_xml()))
        .collect()
}

fn write_fields(w: &mut XmlWriter, fields: &[(String, String)]) {
    for (name, raw) in fields {
        w.leaf_raw(name, raw);
    }
}

/// One `<s n="…">`: the account's data for one service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceDoc {
    /// The service name (`IM`, `SKP`, `PE`, `PD`, or anything else).
    pub name: String,
    /// Child elements as `(element name, raw inner XML)`, in order.
    pub fields: Vec<(String, String)>,
}

impl ServiceDoc {
    /// Creates a service with no fields.
    pub fn new(name: impl Into<String>) -> Self {
        ServiceDoc {
            name: name.into(),
            fields: Vec::new(),
        }
    }

    /// The raw inner XML of the first field with this name.
    pub fn field(&self, name: &str) -> Option<&str> {
        get_in(&self.fields, name)
    }

    /// Sets a field to raw inner XML (replacing an existing one in place, dropping duplicates).
    pub fn set_field(&mut self, name: &str, raw_xml: impl Into<String>) {
        set_in(&mut self.fields, name, raw_xml.into());
    }

    /// Sets a field to plain text, escaping it.
    pub fn set_field_text(&mut self, name: &str, text: &str) {
        set_in(&mut self.fields, name, escape_text(text));
    }

    /// Removes every field with this name.
    pub fn remove_field(&mut self, name: &str) {
        self.fields.retain(|(k, _)| k != name);
    }

    /// Overlays another publication of the same service: its fields replace ours, or extend them
    /// up to `max_fields`; returns how many new fields did not fit.
    pub fn merge(&mut self, update: &ServiceDoc, max_fields: usize) -> usize {
        merge_in(&mut self.fields, &update.fields, max_fields)
    }
}

/// One `<sep n="…" epid="…">`: one endpoint's data for one service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointDoc {
    /// The service name.
    pub name: String,
    /// The endpoint id as written in the document.
    pub epid: String,
    /// Child elements as `(element name, raw inner XML)`, in order.
    pub fields: Vec<(String, String)>,
}

impl EndpointDoc {
    /// Creates an endpoint section with no fields.
    pub fn new(name: impl Into<String>, epid: impl Into<String>) -> Self {
        EndpointDoc {
            name: name.into(),
            epid: epid.into(),
            fields: Vec::new(),
        }
    }

    /// The raw inner XML of the first field with this name.
    pub fn field(&self, name: &str) -> Option<&str> {
        get_in(&self.fields, name)
    }

    /// Sets a field to raw inner XML (replacing an existing one in place, dropping duplicates).
    pub fn set_field(&mut self, name: &str, raw_xml: impl Into<String>) {
        set_in(&mut self.fields, name, raw_xml.into());
    }

    /// Overlays another publication of the same endpoint section, as [`ServiceDoc::merge`].
    pub fn merge(&mut self, update: &EndpointDoc, max_fields: usize) -> usize {
        merge_in(&mut self.fields, &update.fields, max_fields)
    }
}

/// The `<user>` presence document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserDoc {
    /// Every `<s>` in document order.
    pub services: Vec<ServiceDoc>,
    /// Every `<sep>` in document order.
    pub endpoints: Vec<EndpointDoc>,
}

impl UserDoc {
    /// Parses a `<user>` document; other top-level elements are ignored.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        Ok(Self::from_element(&parse_root(input, "user")?))
    }

    /// Builds the document from an already parsed `<user>` element (its name is not checked).
    pub fn from_element(user: &Element) -> Self {
        let mut doc = UserDoc::default();
        for child in &user.children {
            match child.name.as_str() {
                "s" => doc.services.push(ServiceDoc {
                    name: child.attr("n").unwrap_or_default().to_owned(),
                    fields: fields_of(child),
                }),
                "sep" => doc.endpoints.push(EndpointDoc {
                    name: child.attr("n").unwrap_or_default().to_owned(),
                    epid: child.attr("epid").unwrap_or_default().to_owned(),
                    fields: fields_of(child),
                }),
                _ => {}
            }
        }
        doc
    }

    /// Writes the document: every `<s>` in order, then every `<sep>`; an empty one is `<user></user>`.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        self.write(&mut w, false);
        w.finish()
    }

    /// Writes the document into `w`; an empty document becomes `<user/>` when `self_close_empty`.
    pub(crate) fn write(&self, w: &mut XmlWriter, self_close_empty: bool) {
        if self_close_empty && self.is_empty() {
            w.empty("user", &[]);
            return;
        }
        w.open("user");
        for s in &self.services {
            w.open_with("s", &[("n", &s.name)]);
            write_fields(w, &s.fields);
            w.close("s");
        }
        for sep in &self.endpoints {
            w.open_with("sep", &[("n", &sep.name), ("epid", &sep.epid)]);
            write_fields(w, &sep.fields);
            w.close("sep");
        }
        w.close("user");
    }

    /// True when the document has no `<s>` and no `<sep>` (the offline document).
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.endpoints.is_empty()
    }

    /// The first `<s>` with this service name.
    pub fn service(&self, name: &str) -> Option<&ServiceDoc> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The first `<s>` with this service name, mutable.
    pub fn service_mut(&mut self, name: &str) -> Option<&mut ServiceDoc> {
        self.services.iter_mut().find(|s| s.name == name)
    }

    /// The `<Status>` of `<s n="IM">`, trimmed (statuses are plain letters, so raw and unescaped agree).
    pub fn status(&self) -> Option<&str> {
        self.service("IM")
            .and_then(|s| s.field("Status"))
            .map(str::trim)
    }

    /// The `<Mood>` of `<s n="SKP">` as unescaped text.
    pub fn mood(&self) -> Option<String> {
        let raw = self.service("SKP")?.field("Mood")?;
        // Raw values come from our own serialiser, so failure only means markup inside; fall back to it as is.
        Some(quick_xml::escape::unescape(raw).map_or_else(|_| raw.to_owned(), |t| t.into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLICATION: &[u8] = b"<user><s n=\"IM\"><Status>NLN</Status></s><sep n=\"IM\" epid=\"{e}\"><Capabilities>0:4194560</Capabilities></sep>\n      <s n=\"SKP\"><Mood>at work</Mood><Skypename>alice</Skypename></s><sep n=\"SKP\" epid=\"{e}\"><Version>24</Version><Seamless>true</Seamless></sep></user>";

    #[test]
    fn parses_reference_publication() {
        let doc = UserDoc::parse(PUBLICATION).unwrap();
        assert_eq!(doc.services.len(), 2);
        assert_eq!(doc.endpoints.len(), 2);
        assert_eq!(doc.status(), Some("NLN"));
        assert_eq!(doc.mood().as_deref(), Some("at work"));
        assert_eq!(
            doc.services[1].fields,
            [
                ("Mood".into(), "at work".into()),
                ("Skypename".into(), "alice".into())
            ]
        );
        assert_eq!(doc.endpoints[0].epid, "{e}");
        assert_eq!(doc.endpoints[0].field("Capabilities"), Some("0:4194560"));
        assert_eq!(doc.endpoints[1].fields.len(), 2);
        assert_eq!(
            doc.to_xml(),
            "<user><s n=\"IM\"><Status>NLN</Status></s><s n=\"SKP\"><Mood>at work</Mood><Skypename>alice</Skypename></s>\
             <sep n=\"IM\" epid=\"{e}\"><Capabilities>0:4194560</Capabilities></sep>\
             <sep n=\"SKP\" epid=\"{e}\"><Version>24</Version><Seamless>true</Seamless></sep></user>"
        );
        assert_eq!(UserDoc::parse(doc.to_xml().as_bytes()).unwrap(), doc);
    }

    #[test]
    fn parses_reference_notification_and_partial_update() {
        let body = b"<user><s n=\"IM\"><Status>NLN</Status></s><sep n=\"IM\" epid=\"{e}\"><Capabilities>0:4194560</Capabilities></sep>\n      <s n=\"SKP\"><Mood>at work</Mood></s><sep n=\"SKP\" epid=\"{e}\"><Version>24</Version></sep></user>";
        let doc = UserDoc::parse(body).unwrap();
        assert_eq!(doc.status(), Some("NLN"));
        let update = UserDoc::parse(b"<user><s n=\"IM\"><Status>AWY</Status></s></user>").unwrap();
        assert_eq!(update.status(), Some("AWY"));
        assert_eq!(update.mood(), None);
        assert!(update.endpoints.is_empty());
    }

    #[test]
    fn unknown_fields_kept_verbatim() {
        let body = "<user><s n=\"PE\"><PSM>a &amp; b &lt;3</PSM><UserTileLocation/><X><y k=\"v&quot;\">1</y><z/></X></s><s n=\"NEW\"><Q>q</Q></s></user>";
        let doc = UserDoc::parse(body.as_bytes()).unwrap();
        let pe = doc.service("PE").unwrap();
        assert_eq!(pe.field("PSM"), Some("a &amp; b &lt;3"));
        assert_eq!(pe.field("UserTileLocation"), Some(""));
        assert_eq!(pe.field("X"), Some("<y k=\"v&quot;\">1</y><z/>"));
        assert_eq!(doc.service("NEW").unwrap().field("Q"), Some("q"));
        assert_eq!(
            doc.to_xml(),
            body.replace(
                "<UserTileLocation/>",
                "<UserTileLocation></UserTileLocation>"
            )
        );
        assert_eq!(UserDoc::parse(doc.to_xml().as_bytes()).unwrap(), doc);
    }

    #[test]
    fn mood_is_unescaped() {
        let doc =
            UserDoc::parse(b"<user><s n=\"SKP\"><Mood>fish &amp; chips</Mood></s></user>").unwrap();
        assert_eq!(doc.mood().as_deref(), Some("fish & chips"));
    }

    #[test]
    fn empty_documents() {
        assert_eq!(
            UserDoc::parse(b"<user></user>").unwrap(),
            UserDoc::default()
        );
        assert_eq!(UserDoc::parse(b"<user/>").unwrap(), UserDoc::default());
        assert_eq!(UserDoc::default().to_xml(), "<user></user>");
        assert!(matches!(
            UserDoc::parse(b"<users/>"),
            Err(XmlError::UnexpectedRoot { .. })
        ));
    }

    #[test]
    fn set_merge_and_remove_fields() {
        let mut doc = UserDoc::parse(PUBLICATION).unwrap();
        let im = doc.service_mut("IM").unwrap();
        im.fields.push(("Status".into(), "BSY".into()));
        im.set_field("Status", "AWY");
        assert_eq!(im.fields, [("Status".into(), "AWY".into())]);
        im.merge(
            &ServiceDoc {
                name: "IM".into(),
                fields: vec![("CurrentMedia".into(), String::new())],
            },
            32,
        );
        assert_eq!(im.fields.len(), 2);
        let extra = ServiceDoc {
            name: "IM".into(),
            fields: vec![
                ("Status".into(), "BSY".into()),
                ("A".into(), String::new()),
                ("B".into(), String::new()),
            ],
        };
        assert_eq!(im.merge(&extra, 3), 1, "one new field fits, one does not");
        assert_eq!(
            im.field("Status"),
            Some("BSY"),
            "known fields are still replaced"
        );
        assert_eq!(im.fields.len(), 3);
        im.remove_field("A");
        im.remove_field("CurrentMedia");
        let skp = doc.service_mut("SKP").unwrap();
        skp.set_field_text("Mood", "<3 & more");
        assert_eq!(skp.field("Mood"), Some("&lt;3 &amp; more"));
        assert_eq!(doc.mood().as_deref(), Some("<3 & more"));
        let mut sep = EndpointDoc::new("IM", "{e}");
        assert_eq!(sep.merge(&doc.endpoints[0], 32), 0);
        assert_eq!(sep.field("Capabilities"), Some("0:4194560"));
    }
}
