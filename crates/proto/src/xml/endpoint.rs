//! `PUT MSGR\ACTIVEENDPOINT` (§4.5) and the `GET MSGR\IMONLINE` response (§8).

use super::{parse_root, XmlError, XmlWriter};

/// The `<activeendpoint>` idle-timer body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActiveEndpoint {
    /// Seconds the endpoint stays active; 0 means idle now.
    pub timeout: u64,
}

impl ActiveEndpoint {
    /// Parses an `<activeendpoint>` body; `<timeout>` is required.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "activeendpoint")?;
        Ok(ActiveEndpoint {
            timeout: root.required_num("timeout")?,
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("activeendpoint");
        w.leaf_display("timeout", self.timeout);
        w.close("activeendpoint");
        w.finish()
    }
}

/// One `<endpoint>` of an `<imonline-response>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImOnlineEndpoint {
    /// The endpoint id (normalised, with braces).
    pub epid: String,
    /// The client name from BND `<client><name>`.
    pub name: String,
    /// The client version from BND `<client><ver>`.
    pub ver: String,
}

/// The `<imonline-response>` body: the caller's own online endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImOnlineResponse {
    /// The endpoints, in order.
    pub endpoints: Vec<ImOnlineEndpoint>,
}

impl ImOnlineResponse {
    /// Parses an `<imonline-response>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "imonline-response")?;
        let endpoints = root
            .children_named("endpoint")
            .map(|e| {
                Ok(ImOnlineEndpoint {
                    epid: e.required_text("epid")?.to_owned(),
                    name: e.opt_string("name").unwrap_or_default(),
                    ver: e.opt_string("ver").unwrap_or_default(),
                })
            })
            .collect::<Result<_, XmlError>>()?;
        Ok(ImOnlineResponse { endpoints })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("imonline-response");
        for e in &self.endpoints {
            w.open("endpoint");
            w.leaf("epid", &e.epid);
            w.leaf("name", &e.name);
            w.leaf("ver", &e.ver);
            w.close("endpoint");
        }
        w.close("imonline-response");
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_endpoint_reference_and_seed() {
        let body = b"<activeendpoint><timeout>135</timeout></activeendpoint>";
        let a = ActiveEndpoint::parse(body).unwrap();
        assert_eq!(a.timeout, 135);
        assert_eq!(a.to_xml().as_bytes(), body);
        let seed = b"<activeendpoint>\n  <timeout>0</timeout>\n</activeendpoint>";
        assert_eq!(ActiveEndpoint::parse(seed).unwrap().timeout, 0);
        assert_eq!(
            ActiveEndpoint::parse(b"<activeendpoint/>"),
            Err(XmlError::Missing("timeout"))
        );
        assert!(matches!(
            ActiveEndpoint::parse(b"<activeendpoint><timeout>-1</timeout></activeendpoint>"),
            Err(XmlError::InvalidValue { .. })
        ));
    }

    #[test]
    fn imonline_reference_round_trip() {
        let body = b"<imonline-response><endpoint><epid>{b958d334-651e-82fe-a2a1-3dfbb7f5cc08}</epid><name>Skype</name><ver>0/7.44.0.104</ver></endpoint><endpoint><epid>{00155193-decb-dc89-95e0-43bd987ed463}</epid><name>Web</name><ver>1</ver></endpoint></imonline-response>";
        let r = ImOnlineResponse::parse(body).unwrap();
        assert_eq!(r.endpoints.len(), 2);
        assert_eq!(r.endpoints[0].name, "Skype");
        assert_eq!(r.endpoints[0].ver, "0/7.44.0.104");
        assert_eq!(r.to_xml().as_bytes(), body);
        assert_eq!(
            ImOnlineResponse::default().to_xml(),
            "<imonline-response></imonline-response>"
        );
    }
}
