//! `BND CON\MSGR`: the client's `<msgr>` and the server's `<msgr-response>` (§2.3, §2.4).

use super::{parse_num, parse_root, XmlError, XmlWriter};

/// The `<client>` part of `<msgr>`: what the endpoint says it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientInfo {
    /// `<name>`, e.g. `Skype`.
    pub name: String,
    /// `<ver>`, e.g. `0/7.44.0.104`.
    pub ver: String,
    /// `<networks>`, e.g. `skype`.
    pub networks: String,
}

/// The client's `<msgr>` body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Msgr {
    /// Feature version: 2 enables threads.
    pub ver: u32,
    /// `<altVersions><ver>…</ver></altVersions>`.
    pub alt_versions: Vec<u32>,
    /// `<client>`, if sent.
    pub client: Option<ClientInfo>,
    /// The endpoint id exactly as sent (braces and case not normalised).
    pub epid: String,
}

impl Msgr {
    /// Parses a `<msgr>` body; `<ver>` and `<epid>` are required.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "msgr")?;
        let alt_versions = match root.child("altVersions") {
            Some(alt) => alt
                .children_named("ver")
                .map(|v| parse_num("ver", &v.text))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let client = root.child("client").map(|c| ClientInfo {
            name: c.opt_string("name").unwrap_or_default(),
            ver: c.opt_string("ver").unwrap_or_default(),
            networks: c.opt_string("networks").unwrap_or_default(),
        });
        Ok(Msgr {
            ver: root.required_num("ver")?,
            alt_versions,
            client,
            epid: root.required_text("epid")?.to_owned(),
        })
    }

    /// Writes the body: ver, altVersions (if any), client (if any), epid.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("msgr");
        w.leaf_display("ver", self.ver);
        if !self.alt_versions.is_empty() {
            w.open("altVersions");
            for v in &self.alt_versions {
                w.leaf_display("ver", v);
            }
            w.close("altVersions");
        }
        if let Some(c) = &self.client {
            w.open("client");
            w.leaf("name", &c.name);
            w.leaf("ver", &c.ver);
            w.leaf("networks", &c.networks);
            w.close("client");
        }
        w.leaf("epid", &self.epid);
        w.close("msgr");
        w.finish()
    }
}

/// The server's `<msgr-response>` body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MsgrResponse {
    /// The bound feature version.
    pub ver: u32,
    /// A challenge nonce, only when challenges are switched on (§2.4).
    pub nonce: Option<String>,
}

impl MsgrResponse {
    /// Parses a `<msgr-response>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "msgr-response")?;
        Ok(MsgrResponse {
            ver: root.required_num("ver")?,
            nonce: root.opt_string("nonce"),
        })
    }

    /// Writes the body; `<nonce>` only when present.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("msgr-response");
        w.leaf_display("ver", self.ver);
        w.leaf_opt("nonce", self.nonce.as_deref());
        w.close("msgr-response");
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reference_bind() {
        let body = b"<msgr><ver>2</ver><client><name>Skype</name><ver>0/7.44.0.104</ver><networks>skype</networks></client><epid>b958d334-651e-82fe-a2a1-3dfbb7f5cc08</epid></msgr>";
        let m = Msgr::parse(body).unwrap();
        assert_eq!(m.ver, 2);
        assert!(m.alt_versions.is_empty());
        assert_eq!(
            m.client,
            Some(ClientInfo {
                name: "Skype".into(),
                ver: "0/7.44.0.104".into(),
                networks: "skype".into()
            })
        );
        assert_eq!(m.epid, "b958d334-651e-82fe-a2a1-3dfbb7f5cc08");
        assert_eq!(m.to_xml().as_bytes(), body);
    }

    #[test]
    fn alt_versions_and_braced_epid() {
        let body = b"<msgr><ver>2</ver><altVersions><ver>1</ver></altVersions><epid>{B958D334-651E-82FE-A2A1-3DFBB7F5CC08}</epid></msgr>";
        let m = Msgr::parse(body).unwrap();
        assert_eq!(m.alt_versions, [1]);
        assert_eq!(m.client, None);
        assert_eq!(m.epid, "{B958D334-651E-82FE-A2A1-3DFBB7F5CC08}");
        assert_eq!(m.to_xml().as_bytes(), body);
        assert_eq!(
            Msgr::parse(b"<msgr><ver>2</ver></msgr>"),
            Err(XmlError::Missing("epid"))
        );
    }

    #[test]
    fn response_without_and_with_nonce() {
        let r = MsgrResponse::parse(b"<msgr-response><ver>2</ver></msgr-response>").unwrap();
        assert_eq!(
            r,
            MsgrResponse {
                ver: 2,
                nonce: None
            }
        );
        assert_eq!(r.to_xml(), "<msgr-response><ver>2</ver></msgr-response>");
        let r = MsgrResponse {
            ver: 2,
            nonce: Some("22210219642164014968".into()),
        };
        assert_eq!(
            r.to_xml(),
            "<msgr-response><ver>2</ver><nonce>22210219642164014968</nonce></msgr-response>"
        );
        assert_eq!(MsgrResponse::parse(r.to_xml().as_bytes()).unwrap(), r);
    }
}
