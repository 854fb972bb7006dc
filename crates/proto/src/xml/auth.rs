//! `ATH CON\USER`: the client's `<user>` credentials and the server's `<auth-response>` (§2.2).

use super::{parse_bool, parse_root, XmlError, XmlWriter};

/// The client's `<user>` body of `ATH CON\USER`; every element is optional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthUser {
    /// `<ssl-compact-ticket>`: `t=TICKET[&p=…]` or a bare ticket.
    pub ssl_compact_ticket: Option<String>,
    /// `<uic>`: may be the literal `null`.
    pub uic: Option<String>,
    /// `<id>` (informational).
    pub id: Option<String>,
    /// `<alias>` (informational).
    pub alias: Option<String>,
    /// `<ssl-site-name>` (informational).
    pub ssl_site_name: Option<String>,
    /// `<web-compact-ticket>`: often present and empty.
    pub web_compact_ticket: Option<String>,
}

impl AuthUser {
    /// Parses a `<user>` credentials body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "user")?;
        Ok(AuthUser {
            ssl_compact_ticket: root.opt_string("ssl-compact-ticket"),
            uic: root.opt_string("uic"),
            id: root.opt_string("id"),
            alias: root.opt_string("alias"),
            ssl_site_name: root.opt_string("ssl-site-name"),
            web_compact_ticket: root.opt_string("web-compact-ticket"),
        })
    }

    /// Writes the body in the order real clients use.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("user");
        w.leaf_opt("ssl-compact-ticket", self.ssl_compact_ticket.as_deref());
        w.leaf_opt("uic", self.uic.as_deref());
        w.leaf_opt("id", self.id.as_deref());
        w.leaf_opt("alias", self.alias.as_deref());
        w.leaf_opt("ssl-site-name", self.ssl_site_name.as_deref());
        w.leaf_opt("web-compact-ticket", self.web_compact_ticket.as_deref());
        w.close("user");
        w.finish()
    }

    /// Candidate tokens to verify, in order: the ticket's `t=` value (or whole text), `<uic>`, the web ticket.
    ///
    /// Empty values, a `null` uic and repeats are left out, so the caller can try each in turn.
    pub fn credentials(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |token: &str| {
            let token = token.trim();
            if !token.is_empty() && !out.iter().any(|t| t == token) {
                out.push(token.to_owned());
            }
        };
        if let Some(ticket) = self.ssl_compact_ticket.as_deref() {
            let ticket = ticket.trim();
            match ticket.strip_prefix("t=") {
                Some(rest) => push(rest.split_once("&p=").map_or(rest, |(t, _)| t)),
                None => push(ticket),
            }
        }
        if let Some(uic) = self.uic.as_deref() {
            if !uic.trim().eq_ignore_ascii_case("null") {
                push(uic);
            }
        }
        if let Some(web) = self.web_compact_ticket.as_deref() {
            push(web);
        }
        out
    }
}

/// The server's `<auth-response>` body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthResponse {
    /// `<new-thread-allowed>`.
    pub new_thread_allowed: bool,
    /// `<p2p-migration-allowed>`.
    pub p2p_migration_allowed: bool,
}

impl AuthResponse {
    /// Parses an `<auth-response>` body; absent flags read as false.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "auth-response")?;
        let flag = |name: &str| {
            root.child_text(name)
                .map_or(Ok(false), |t| parse_bool(name, t))
        };
        Ok(AuthResponse {
            new_thread_allowed: flag("new-thread-allowed")?,
            p2p_migration_allowed: flag("p2p-migration-allowed")?,
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("auth-response");
        w.leaf_display("new-thread-allowed", self.new_thread_allowed);
        w.leaf_display("p2p-migration-allowed", self.p2p_migration_allowed);
        w.close("auth-response");
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_with_t_ticket_and_id() {
        let body = b"<user><ssl-compact-ticket>t=TICKET</ssl-compact-ticket><uic>UIC</uic><id>alice@example.com</id><alias>live:alice</alias></user>";
        let u = AuthUser::parse(body).unwrap();
        assert_eq!(u.ssl_compact_ticket.as_deref(), Some("t=TICKET"));
        assert_eq!(u.id.as_deref(), Some("alice@example.com"));
        assert_eq!(u.alias.as_deref(), Some("live:alice"));
        assert_eq!(u.credentials(), ["TICKET", "UIC"]);
        assert_eq!(u.to_xml().as_bytes(), body);
    }

    #[test]
    fn shape_with_bare_ticket_and_site_name() {
        let body = b"<user><ssl-compact-ticket>TICKET</ssl-compact-ticket><uic>UIC</uic><ssl-site-name>chatservice.live.com</ssl-site-name></user>";
        let u = AuthUser::parse(body).unwrap();
        assert_eq!(u.ssl_site_name.as_deref(), Some("chatservice.live.com"));
        assert_eq!(u.credentials(), ["TICKET", "UIC"]);
        assert_eq!(u.to_xml().as_bytes(), body);
    }

    #[test]
    fn shape_with_uic_only() {
        let u = AuthUser::parse(b"<user><uic>UIC</uic><id>alice</id></user>").unwrap();
        assert_eq!(u.ssl_compact_ticket, None);
        assert_eq!(u.credentials(), ["UIC"]);
    }

    #[test]
    fn shape_with_empty_web_ticket() {
        let u = AuthUser::parse(b"<user><uic>UIC</uic><web-compact-ticket/></user>").unwrap();
        assert_eq!(u.web_compact_ticket.as_deref(), Some(""));
        assert_eq!(u.credentials(), ["UIC"]);
    }

    #[test]
    fn ticket_suffix_null_uic_and_escaped_ampersand() {
        let u = AuthUser::parse(b"<user><ssl-compact-ticket>t=ABC&amp;p=XYZ</ssl-compact-ticket><uic>null</uic><web-compact-ticket>WEB</web-compact-ticket></user>").unwrap();
        assert_eq!(u.ssl_compact_ticket.as_deref(), Some("t=ABC&p=XYZ"));
        assert_eq!(u.credentials(), ["ABC", "WEB"]);
        let empty = AuthUser {
            ssl_compact_ticket: Some("t=".into()),
            uic: Some(String::new()),
            ..Default::default()
        };
        assert!(empty.credentials().is_empty());
        assert_eq!(AuthUser::parse(&u.to_xml().into_bytes()).unwrap(), u);
    }

    #[test]
    fn auth_response_reference() {
        let body = b"<auth-response><new-thread-allowed>true</new-thread-allowed><p2p-migration-allowed>false</p2p-migration-allowed></auth-response>";
        let r = AuthResponse::parse(body).unwrap();
        assert_eq!(
            r,
            AuthResponse {
                new_thread_allowed: true,
                p2p_migration_allowed: false
            }
        );
        assert_eq!(r.to_xml().as_bytes(), body);
    }
}
