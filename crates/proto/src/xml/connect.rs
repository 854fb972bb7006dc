//! `CNT CON`: the client's `<connect>` and the server's `<connect-response>` (§2.1).

use super::{parse_bool, parse_root, write_text_pairs, XmlError, XmlWriter};

/// The client's `<connect>` body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connect {
    /// Protocol version the client asks for.
    pub ver: u32,
    /// The `<agent>` children as ordered name/value pairs (informational; empty if absent).
    pub agent: Vec<(String, String)>,
}

impl Connect {
    /// Parses a `<connect>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "connect")?;
        Ok(Connect {
            ver: root.required_num("ver")?,
            agent: root
                .child("agent")
                .map(|a| a.text_pairs())
                .unwrap_or_default(),
        })
    }

    /// Writes the body; `<agent>` is left out when there is nothing in it.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("connect");
        w.leaf_display("ver", self.ver);
        if !self.agent.is_empty() {
            write_text_pairs(&mut w, "agent", &self.agent);
        }
        w.close("connect");
        w.finish()
    }
}

/// The server's `<connect-response>` body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectResponse {
    /// The client's `<ver>`, echoed.
    pub ver: u32,
    /// Whether the client should run a QoS test (always false here).
    pub qostest: bool,
    /// A fresh nonce (UUID) some clients need to compute their `<uic>`.
    pub nonce: String,
}

impl ConnectResponse {
    /// Parses a `<connect-response>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "connect-response")?;
        Ok(ConnectResponse {
            ver: root.required_num("ver")?,
            qostest: match root.child_text("qostest") {
                Some(t) => parse_bool("qostest", t)?,
                None => false,
            },
            nonce: root.opt_string("nonce").unwrap_or_default(),
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("connect-response");
        w.leaf_display("ver", self.ver);
        w.leaf_display("qostest", self.qostest);
        w.leaf("nonce", &self.nonce);
        w.close("connect-response");
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reference_connect() {
        let body = br#"<connect><ver>2</ver><agent><os>winnt</os><osVer>5.2</osVer><proc>x86</proc><lcid>en-us</lcid><country>us</country></agent></connect>"#;
        let c = Connect::parse(body).unwrap();
        assert_eq!(c.ver, 2);
        let names: Vec<_> = c.agent.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["os", "osVer", "proc", "lcid", "country"]);
        assert_eq!(c.agent[1].1, "5.2");
        assert_eq!(c.to_xml().as_bytes(), body);
    }

    #[test]
    fn parses_seed_pretty_printed_connect() {
        let body = b"<connect>\n  <ver>2</ver>\n  <agent>\n    <os>winnt</os>\n    <country>us</country>\n  </agent>\n</connect>\n";
        let c = Connect::parse(body).unwrap();
        assert_eq!(c.ver, 2);
        assert_eq!(
            c.agent,
            vec![
                ("os".into(), "winnt".into()),
                ("country".into(), "us".into())
            ]
        );
    }

    #[test]
    fn agent_is_optional_and_ver_required() {
        let c = Connect::parse(b"<connect><ver>1</ver></connect>").unwrap();
        assert_eq!(
            c,
            Connect {
                ver: 1,
                agent: vec![]
            }
        );
        assert_eq!(c.to_xml(), "<connect><ver>1</ver></connect>");
        assert_eq!(Connect::parse(b"<connect/>"), Err(XmlError::Missing("ver")));
        assert!(matches!(
            Connect::parse(b"<connect><ver>two</ver></connect>"),
            Err(XmlError::InvalidValue { .. })
        ));
        assert!(matches!(
            Connect::parse(b"<user/>"),
            Err(XmlError::UnexpectedRoot {
                expected: "connect",
                ..
            })
        ));
    }

    #[test]
    fn response_matches_reference_and_round_trips() {
        let body = b"<connect-response><ver>2</ver><qostest>false</qostest><nonce>3f1c-a-b</nonce></connect-response>";
        let r = ConnectResponse::parse(body).unwrap();
        assert_eq!(
            r,
            ConnectResponse {
                ver: 2,
                qostest: false,
                nonce: "3f1c-a-b".into()
            }
        );
        assert_eq!(r.to_xml().as_bytes(), body);
    }
}
