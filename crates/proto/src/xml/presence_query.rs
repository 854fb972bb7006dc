//! `GET MSGR\PRESENCE`: the `<presence>` query and the `<presence-response>` answer (§4.4).

use super::{parse_root, presence_doc::UserDoc, XmlError, XmlWriter};

/// The `<presence>` query: contacts asked about, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceQuery {
    /// The `<contact>` values (MRIs), in order.
    pub contacts: Vec<String>,
}

impl PresenceQuery {
    /// Parses a `<presence>` query body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "presence")?;
        Ok(PresenceQuery {
            contacts: root.texts_of("contact"),
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("presence");
        for c in &self.contacts {
            w.leaf("contact", c);
        }
        w.close("presence");
        w.finish()
    }
}

/// The `<presence-response>` body: one `<from>`/`<user>` pair per contact asked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceResponse {
    /// `(from MRI, presence document)` pairs, in order; an empty document means offline or not visible.
    pub entries: Vec<(String, UserDoc)>,
}

impl PresenceResponse {
    /// Parses a `<presence-response>` body; a `<from>` with no `<user>` after it gets an empty document.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "presence-response")?;
        let mut entries = Vec::new();
        let mut pending: Option<String> = None;
        for child in &root.children {
            match child.name.as_str() {
                "from" => {
                    if let Some(from) = pending.replace(child.text.clone()) {
                        entries.push((from, UserDoc::default()));
                    }
                }
                "user" => {
                    let from = pending.take().ok_or(XmlError::Missing("from"))?;
                    entries.push((from, UserDoc::from_element(child)));
                }
                _ => {}
            }
        }
        if let Some(from) = pending {
            entries.push((from, UserDoc::default()));
        }
        Ok(PresenceResponse { entries })
    }

    /// Writes the body; empty documents are written `<user/>`.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("presence-response");
        for (from, doc) in &self.entries {
            write_entry(&mut w, from, doc);
        }
        w.close("presence-response");
        w.finish()
    }

    /// The size of the body with no entries; each entry adds [`PresenceResponse::entry_len`].
    pub fn empty_len() -> usize {
        PresenceResponse::default().to_xml().len()
    }

    /// The bytes one `<from>`/`<user>` pair adds to the body, so a server can fit a reply to a
    /// frame limit before writing it.
    pub fn entry_len(from: &str, doc: &UserDoc) -> usize {
        let mut w = XmlWriter::new();
        write_entry(&mut w, from, doc);
        w.finish().len()
    }
}

fn write_entry(w: &mut XmlWriter, from: &str, doc: &UserDoc) {
    w.leaf("from", from);
    doc.write(w, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_reference_and_seed() {
        let body = b"<presence><contact>8:bob</contact><contact>8:carol</contact></presence>";
        let q = PresenceQuery::parse(body).unwrap();
        assert_eq!(q.contacts, ["8:bob", "8:carol"]);
        assert_eq!(q.to_xml().as_bytes(), body);
        let seed = b"<presence>\n  <contact>{wluid}</contact>\n</presence>";
        assert_eq!(PresenceQuery::parse(seed).unwrap().contacts, ["{wluid}"]);
    }

    #[test]
    fn response_reference_shape() {
        let body = b"<presence-response><from>8:bob</from><user><s n=\"IM\"><Status>NLN</Status></s></user><from>8:carol</from><user/></presence-response>";
        let r = PresenceResponse::parse(body).unwrap();
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.entries[0].0, "8:bob");
        assert_eq!(r.entries[0].1.status(), Some("NLN"));
        assert_eq!(r.entries[1], ("8:carol".to_owned(), UserDoc::default()));
        assert_eq!(r.to_xml().as_bytes(), body);
        let sizes: usize = r
            .entries
            .iter()
            .map(|(f, d)| PresenceResponse::entry_len(f, d))
            .sum();
        assert_eq!(PresenceResponse::empty_len() + sizes, body.len());
    }

    #[test]
    fn response_edge_cases() {
        let r = PresenceResponse::parse(
            b"<presence-response><from>8:a</from><from>8:b</from></presence-response>",
        )
        .unwrap();
        assert_eq!(r.entries.len(), 2);
        assert!(r.entries.iter().all(|(_, d)| d.is_empty()));
        assert_eq!(
            PresenceResponse::parse(b"<presence-response><user/></presence-response>"),
            Err(XmlError::Missing("from"))
        );
        assert_eq!(
            PresenceResponse::default().to_xml(),
            "<presence-response></presence-response>"
        );
    }
}
