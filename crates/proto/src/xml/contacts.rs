//! `PUT`/`DEL MSGR\CONTACTS` and `NFY MSGR\CONTACTS`: the `<ml>` contact list body (§4.1).

use super::{parse_root, Element, XmlError, XmlWriter};

/// Network number of Skype names (`8:`).
const NETWORK_SKYPE: u32 = 8;
/// Network number of Microsoft accounts (`1:`).
const NETWORK_MSA: u32 = 1;

/// One `<c>` of an `<ml>` body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactEntry {
    /// The contact's name; `local@domain` for entries listed under `<d n="domain">`.
    pub name: String,
    /// The network (`t`): 8 Skype, 1 Microsoft account.
    pub network: u32,
    /// The list bits this entry names: the union of `ml@l`, `c@l` and every `s@l`.
    pub bits: u32,
    /// The `<s>` children as `(n, l)` pairs, in order.
    pub services: Vec<(String, u32)>,
}

/// The `<ml>` body: list bits and the contacts they apply to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactList {
    /// `ml@l` (0 if absent).
    pub list_bits: u32,
    /// Every `<c>` of every `<skp>` and `<d>` group, in document order.
    pub contacts: Vec<ContactEntry>,
}

impl ContactList {
    /// Parses an `<ml>` body; groups other than `<skp>` and `<d>` are ignored.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "ml")?;
        let list_bits = root.attr_num("l")?.unwrap_or(0);
        let mut contacts = Vec::new();
        for group in &root.children {
            let (domain, default_network) = match group.name.as_str() {
                "skp" => (None, NETWORK_SKYPE),
                "d" => (
                    Some(group.attr("n").ok_or(XmlError::Missing("d@n"))?),
                    NETWORK_MSA,
                ),
                _ => continue,
            };
            for c in group.children_named("c") {
                contacts.push(parse_entry(c, list_bits, domain, default_network)?);
            }
        }
        Ok(ContactList {
            list_bits,
            contacts,
        })
    }

    /// Writes the body, grouping consecutive `t=1` `local@domain` entries under `<d n="domain">`, others under `<skp>`.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        let l = self.list_bits.to_string();
        if self.list_bits == 0 {
            w.open("ml");
        } else {
            w.open_with("ml", &[("l", &l)]);
        }
        // Consecutive runs keep document order intact across a parse/write round trip.
        let mut current: Option<Option<&str>> = None;
        for entry in &self.contacts {
            let (domain, local) = split_domain(entry);
            if current != Some(domain) {
                close_group(&mut w, current);
                match domain {
                    Some(d) => w.open_with("d", &[("n", d)]),
                    None => w.open("skp"),
                }
                current = Some(domain);
            }
            self.write_entry(&mut w, entry, local);
        }
        close_group(&mut w, current);
        w.close("ml");
        w.finish()
    }

    fn write_entry(&self, w: &mut XmlWriter, entry: &ContactEntry, local: &str) {
        let t = entry.network.to_string();
        let service_bits = entry.services.iter().fold(0, |acc, (_, l)| acc | l);
        // Only bits not already implied by ml@l or the services need their own c@l.
        let own_bits = entry.bits & !(self.list_bits | service_bits);
        let own = own_bits.to_string();
        let mut attrs: Vec<(&str, &str)> = vec![("n", local)];
        if own_bits != 0 {
            attrs.push(("l", &own));
        }
        attrs.push(("t", &t));
        if entry.services.is_empty() {
            w.empty("c", &attrs);
            return;
        }
        w.open_with("c", &attrs);
        for (n, l) in &entry.services {
            w.empty("s", &[("l", &l.to_string()), ("n", n)]);
        }
        w.close("c");
    }
}

fn parse_entry(
    c: &Element,
    list_bits: u32,
    domain: Option<&str>,
    default_network: u32,
) -> Result<ContactEntry, XmlError> {
    let local = c.attr("n").ok_or(XmlError::Missing("c@n"))?;
    let name = match domain {
        Some(d) => format!("{local}@{d}"),
        None => local.to_owned(),
    };
    let network = c.attr_num("t")?.unwrap_or(default_network);
    let mut bits = list_bits | c.attr_num("l")?.unwrap_or(0);
    let mut services = Vec::new();
    for s in c.children_named("s") {
        let l: u32 = s.attr_num("l")?.unwrap_or(0);
        bits |= l;
        services.push((s.attr("n").unwrap_or_default().to_owned(), l));
    }
    Ok(ContactEntry {
        name,
        network,
        bits,
        services,
    })
}

/// The `<d>` domain an entry is written under (None for `<skp>`), and the name to put in `c@n`.
fn split_domain(entry: &ContactEntry) -> (Option<&str>, &str) {
    if entry.network == NETWORK_MSA {
        if let Some((local, domain)) = entry.name.rsplit_once('@') {
            return (Some(domain), local);
        }
    }
    (None, &entry.name)
}

fn close_group(w: &mut XmlWriter, group: Option<Option<&str>>) {
    match group {
        Some(Some(_)) => w.close("d"),
        Some(None) => w.close("skp"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reference_put() {
        let body = br#"<ml l="1"><skp><c n="bob" t="8"><s l="3" n="IM"/><s l="3" n="SKP"/></c><c n="live:carol" t="8"><s l="3" n="PE"/><s l="3" n="IM"/><s l="3" n="SKP"/><s l="3" n="PUB"/></c></skp></ml>"#;
        let ml = ContactList::parse(body).unwrap();
        assert_eq!(ml.list_bits, 1);
        assert_eq!(ml.contacts.len(), 2);
        assert_eq!(ml.contacts[0].name, "bob");
        assert_eq!(ml.contacts[0].network, 8);
        assert_eq!(ml.contacts[0].bits, 3);
        assert_eq!(
            ml.contacts[0].services,
            [("IM".to_owned(), 3), ("SKP".to_owned(), 3)]
        );
        assert_eq!(ml.contacts[1].name, "live:carol");
        assert_eq!(ml.contacts[1].services.len(), 4);
        assert_eq!(ml.to_xml().as_bytes(), body);
    }

    #[test]
    fn parses_reference_pending_notification() {
        let body = br#"<ml l="8"><skp><c n="alice" t="8"/></skp></ml>"#;
        let ml = ContactList::parse(body).unwrap();
        assert_eq!(
            ml.contacts,
            [ContactEntry {
                name: "alice".into(),
                network: 8,
                bits: 8,
                services: vec![]
            }]
        );
        assert_eq!(ml.to_xml().as_bytes(), body);
    }

    #[test]
    fn domain_groups_and_mixed_order() {
        let body = br#"<ml l="2"><d n="example.com"><c n="alice" t="1"><s l="1" n="IM"/></c></d><skp><c n="bob" t="8"/></skp><d n="example.org"><c n="dave" t="1"/></d></ml>"#;
        let ml = ContactList::parse(body).unwrap();
        let names: Vec<_> = ml.contacts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["alice@example.com", "bob", "dave@example.org"]);
        assert_eq!(ml.contacts[0].bits, 3);
        assert_eq!(ml.contacts[0].network, 1);
        assert_eq!(ml.to_xml().as_bytes(), body);
    }

    #[test]
    fn c_level_bits_and_missing_l() {
        let ml = ContactList::parse(br#"<ml><skp><c n="bob" l="4" t="8"/></skp></ml>"#).unwrap();
        assert_eq!(ml.list_bits, 0);
        assert_eq!(ml.contacts[0].bits, 4);
        assert_eq!(ContactList::parse(ml.to_xml().as_bytes()).unwrap(), ml);
        assert_eq!(
            ContactList::parse(b"<ml/>").unwrap(),
            ContactList::default()
        );
        assert_eq!(ContactList::default().to_xml(), "<ml></ml>");
    }

    #[test]
    fn bad_attributes_are_errors() {
        assert!(matches!(
            ContactList::parse(br#"<ml l="x"/>"#),
            Err(XmlError::InvalidValue { .. })
        ));
        assert_eq!(
            ContactList::parse(br#"<ml><skp><c t="8"/></skp></ml>"#),
            Err(XmlError::Missing("c@n"))
        );
    }
}
