//! Small bodies of §2.4 and §8: partners, options, networks, spam reports, challenges, `OUT`, `PNG` and `XFR`.

use super::{parse_num, parse_root, XmlError, XmlWriter};

/// Writes `<root>` + one `<item>text</item>` per value + `</root>`.
fn write_list(root: &str, item: &str, values: &[String]) -> String {
    let mut w = XmlWriter::new();
    w.open(root);
    for v in values {
        w.leaf(item, v);
    }
    w.close(root);
    w.finish()
}

/// `PUT MSGR\PARTNERS`: `<partners><type>ABCH</type></partners>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Partners {
    /// The `<type>` values, in order.
    pub types: Vec<String>,
}

impl Partners {
    /// Parses a `<partners>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        Ok(Partners {
            types: parse_root(input, "partners")?.texts_of("type"),
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        write_list("partners", "type", &self.types)
    }
}

/// `PUT MSGR\OPTIONS`: `<options>` with arbitrary ordered children.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    /// `(element name, text)` pairs, in order (e.g. `pwrmode`, `deliveryConfirmation`, `batchtimeout`).
    pub fields: Vec<(String, String)>,
}

impl Options {
    /// Parses an `<options>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        Ok(Options {
            fields: parse_root(input, "options")?.text_pairs(),
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("options");
        for (k, v) in &self.fields {
            w.leaf(k, v);
        }
        w.close("options");
        w.finish()
    }
}

/// `PUT MSGR\NETWORKS`: `<networks><network>fb</network></networks>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Networks {
    /// The `<network>` values, in order.
    pub networks: Vec<String>,
}

impl Networks {
    /// Parses a `<networks>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        Ok(Networks {
            networks: parse_root(input, "networks")?.texts_of("network"),
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        write_list("networks", "network", &self.networks)
    }
}

/// `PUT MSGR\REPORTSPAM`: `<reportspam><alias>8:bob</alias></reportspam>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReportSpam {
    /// The reported `<alias>` values, in order.
    pub aliases: Vec<String>,
}

impl ReportSpam {
    /// Parses a `<reportspam>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        Ok(ReportSpam {
            aliases: parse_root(input, "reportspam")?.texts_of("alias"),
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        write_list("reportspam", "alias", &self.aliases)
    }
}

/// `PUT MSGR\CHALLENGE`: the client's answer to a BND nonce (§2.4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Challenge {
    /// `<appId>`: the product id whose key keyed the digest.
    pub app_id: String,
    /// `<response>`: 32 hex digits.
    pub response: String,
}

impl Challenge {
    /// Parses a `<challenge>` body; both elements are required.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "challenge")?;
        Ok(Challenge {
            app_id: root.required_text("appId")?.to_owned(),
            response: root.required_text("response")?.to_owned(),
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("challenge");
        w.leaf("appId", &self.app_id);
        w.leaf("response", &self.response);
        w.close("challenge");
        w.finish()
    }
}

/// `OUT 0 CON` from the server: `<out><reason>OtherLocation</reason></out>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Out {
    /// `SessionTimeout`, `OtherLocation`, `ServerShutdown`…
    pub reason: Option<String>,
}

impl Out {
    /// Parses an `<out>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        Ok(Out {
            reason: parse_root(input, "out")?.opt_string("reason"),
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("out");
        w.leaf_opt("reason", self.reason.as_deref());
        w.close("out");
        w.finish()
    }
}

/// The `PNG` reply: `<wait>50</wait>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Wait {
    /// Seconds the client may wait before its next ping.
    pub seconds: u32,
}

impl Wait {
    /// Parses a `<wait>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "wait")?;
        Ok(Wait {
            seconds: parse_num("wait", &root.text)?,
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.leaf_display("wait", self.seconds);
        w.finish()
    }
}

/// The `XFR` reply to `CNT`: move to another node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Xfr {
    /// `host:port` of the node to move to.
    pub target: String,
    /// `<flags>`, e.g. `S`.
    pub flags: String,
    /// Opaque `<state>` to carry over.
    pub state: String,
    /// Seconds to wait before reconnecting.
    pub wait: u32,
}

impl Xfr {
    /// Parses an `<xfr>` body; `<target>` is required.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "xfr")?;
        Ok(Xfr {
            target: root.required_text("target")?.to_owned(),
            flags: root.opt_string("flags").unwrap_or_default(),
            state: root.opt_string("state").unwrap_or_default(),
            wait: root.opt_num("wait")?.unwrap_or(0),
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("xfr");
        w.leaf("target", &self.target);
        w.leaf("flags", &self.flags);
        w.leaf("state", &self.state);
        w.leaf_display("wait", self.wait);
        w.close("xfr");
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partners_reference() {
        let body = b"<partners><type>ABCH</type></partners>";
        let p = Partners::parse(body).unwrap();
        assert_eq!(p.types, ["ABCH"]);
        assert_eq!(p.to_xml().as_bytes(), body);
    }

    #[test]
    fn options_reference_and_seed() {
        let body = b"<options><pwrmode>1</pwrmode><deliveryConfirmation>true</deliveryConfirmation><batchtimeout>10</batchtimeout></options>";
        let o = Options::parse(body).unwrap();
        assert_eq!(
            o.fields,
            [
                ("pwrmode".to_owned(), "1".to_owned()),
                ("deliveryConfirmation".to_owned(), "true".to_owned()),
                ("batchtimeout".to_owned(), "10".to_owned())
            ]
        );
        assert_eq!(o.to_xml().as_bytes(), body);
        let seed = b"<options>\n  <pwrmode>1</pwrmode>\n  <deliveryConfirmation>true</deliveryConfirmation>\n  <batchtimeout>10</batchtimeout>\n</options>";
        assert_eq!(Options::parse(seed).unwrap(), o);
    }

    #[test]
    fn networks_and_reportspam_reference() {
        let body = b"<networks><network>fb</network></networks>";
        let n = Networks::parse(body).unwrap();
        assert_eq!(n.networks, ["fb"]);
        assert_eq!(n.to_xml().as_bytes(), body);
        let body = b"<reportspam><alias>8:bob</alias></reportspam>";
        let r = ReportSpam::parse(body).unwrap();
        assert_eq!(r.aliases, ["8:bob"]);
        assert_eq!(r.to_xml().as_bytes(), body);
        assert_eq!(
            ReportSpam::parse(b"<reportspam>\n  <alias>{wluid}</alias>\n</reportspam>")
                .unwrap()
                .aliases,
            ["{wluid}"]
        );
    }

    #[test]
    fn challenge_reference() {
        let body = b"<challenge><appId>PROD0090YUAUV{2B</appId><response>85ecb0db8f32113df79ce0892b9a102c</response></challenge>";
        let c = Challenge::parse(body).unwrap();
        assert_eq!(c.app_id, "PROD0090YUAUV{2B");
        assert_eq!(c.response, "85ecb0db8f32113df79ce0892b9a102c");
        assert_eq!(c.to_xml().as_bytes(), body);
        assert_eq!(
            Challenge::parse(b"<challenge><appId>x</appId></challenge>"),
            Err(XmlError::Missing("response"))
        );
    }

    #[test]
    fn out_wait_xfr_reference() {
        let body = b"<out><reason>OtherLocation</reason></out>";
        let o = Out::parse(body).unwrap();
        assert_eq!(o.reason.as_deref(), Some("OtherLocation"));
        assert_eq!(o.to_xml().as_bytes(), body);
        assert_eq!(Out::parse(b"<out/>").unwrap(), Out::default());

        let w = Wait::parse(b"<wait>50</wait>").unwrap();
        assert_eq!(w.seconds, 50);
        assert_eq!(w.to_xml(), "<wait>50</wait>");
        assert!(matches!(
            Wait::parse(b"<wait/>"),
            Err(XmlError::InvalidValue { .. })
        ));

        let body = b"<xfr><target>host:port</target><flags>S</flags><state>abc</state><wait>0</wait></xfr>";
        let x = Xfr::parse(body).unwrap();
        assert_eq!(
            x,
            Xfr {
                target: "host:port".into(),
                flags: "S".into(),
                state: "abc".into(),
                wait: 0
            }
        );
        assert_eq!(x.to_xml().as_bytes(), body);
    }
}
