//! The formatted-message layout (reference §3) shared by chat messages, presence publications and
//! presence notifications: a routing block, a reliability block, a content block, then the body.

use crate::frame::{Headers, HeadersRef, PayloadError};

/// A formatted message without its transport headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormattedMessage {
    /// `Routing: 1.0`, `To`, `From` and any other routing lines, in order.
    pub routing: Headers,
    /// `Reliability: 1.0` and any other reliability lines, in order.
    pub reliability: Headers,
    /// `Messaging: 2.0` (or `Publication: 1.0` / `Notification: 1.0`) and its headers, in order.
    pub content: Headers,
    /// The body, `Content-Length` bytes.
    pub body: Vec<u8>,
}

/// Why a formatted message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormattedError {
    /// The header blocks are malformed.
    #[error(transparent)]
    Header(#[from] PayloadError),
    /// The first block does not start with `Routing:`.
    #[error("missing Routing block")]
    NoRouting,
    /// A block is not ended by an empty line.
    #[error("unterminated header block")]
    Unterminated,
    /// `Content-Length` is not a number or exceeds the bytes present.
    #[error("bad Content-Length")]
    BadLength,
}

fn split_block(bytes: &[u8]) -> Result<(&[u8], &[u8]), FormattedError> {
    let end = memchr::memmem::find(bytes, b"\r\n\r\n").ok_or(FormattedError::Unterminated)?;
    Ok((&bytes[..end], &bytes[end + 4..]))
}

fn first_name(headers: &Headers) -> Option<&str> {
    headers.0.first().map(|(n, _)| n.as_str())
}

/// A formatted message borrowed from the bytes it was parsed from: the blocks as borrowed header
/// lines and the body as a slice, so that reading an incoming message allocates no `String`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormattedMessageRef<'a> {
    /// `Routing: 1.0`, `To`, `From` and any other routing lines, in order.
    pub routing: HeadersRef<'a>,
    /// `Reliability: 1.0` and any other reliability lines, in order (`Reliability: 1.0` alone
    /// when the client left the block out).
    pub reliability: HeadersRef<'a>,
    /// `Messaging: 2.0` (or `Publication: 1.0` / `Notification: 1.0`) and its headers, in order.
    pub content: HeadersRef<'a>,
    /// The body, `Content-Length` bytes.
    pub body: &'a [u8],
}

impl<'a> FormattedMessageRef<'a> {
    /// Parses a whole frame payload: an optional transport header block (ended by an empty line),
    /// then the formatted message. Returns the transport headers and the message.
    pub fn parse_payload(
        payload: &'a [u8],
    ) -> Result<(HeadersRef<'a>, FormattedMessageRef<'a>), FormattedError> {
        let (transport, rest) = if payload.starts_with(b"Routing:") {
            (HeadersRef::default(), payload)
        } else if let Some(rest) = payload.strip_prefix(b"\r\n") {
            (HeadersRef::default(), rest)
        } else {
            let (block, rest) = split_block(payload)?;
            (HeadersRef::parse_lines(block)?, rest)
        };
        Ok((transport, FormattedMessageRef::parse(rest)?))
    }

    /// Parses the three blocks and the body.
    pub fn parse(bytes: &'a [u8]) -> Result<FormattedMessageRef<'a>, FormattedError> {
        let is = |h: &HeadersRef<'_>, name: &str| {
            h.0.first()
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        let (routing, rest) = split_block(bytes)?;
        let routing = HeadersRef::parse_lines(routing)?;
        if !is(&routing, "Routing") {
            return Err(FormattedError::NoRouting);
        }
        let (second, rest) = split_block(rest)?;
        let second = HeadersRef::parse_lines(second)?;
        // Some clients leave the reliability block out; the content block then comes second.
        let (reliability, content, rest) = if is(&second, "Reliability") {
            let (content, rest) = split_block(rest)?;
            (second, HeadersRef::parse_lines(content)?, rest)
        } else {
            (HeadersRef(vec![("Reliability", "1.0")]), second, rest)
        };
        let body = match content.get("Content-Length") {
            Some(len) => {
                let len: usize = len.trim().parse().map_err(|_| FormattedError::BadLength)?;
                // A trailing `\r\n` after the body is tolerated (§1), a short body is not.
                rest.get(..len).ok_or(FormattedError::BadLength)?
            }
            None => rest,
        };
        Ok(FormattedMessageRef {
            routing,
            reliability,
            content,
            body,
        })
    }

    /// `To:` as written.
    pub fn to(&self) -> Option<&'a str> {
        self.routing.get("To")
    }

    /// `From:` as written.
    pub fn from(&self) -> Option<&'a str> {
        self.routing.get("From")
    }

    /// The content block's kind: `Messaging`, `Publication` or `Notification`.
    pub fn kind(&self) -> Option<&'a str> {
        self.content.0.first().map(|&(n, _)| n)
    }

    /// `Message-Type`, e.g. `Text` or `Control/Typing`.
    pub fn message_type(&self) -> Option<&'a str> {
        self.content.get("Message-Type")
    }

    /// An owned copy.
    pub fn to_owned(&self) -> FormattedMessage {
        FormattedMessage {
            routing: self.routing.to_owned(),
            reliability: self.reliability.to_owned(),
            content: self.content.to_owned(),
            body: self.body.to_vec(),
        }
    }
}

impl FormattedMessage {
    /// A message with the standard first lines and the given addresses; content headers follow
    /// `kind` (`Messaging: 2.0` and the like).
    pub fn new(to: &str, from: &str, kind: (&str, &str), body: impl Into<Vec<u8>>) -> Self {
        FormattedMessage {
            routing: Headers::new()
                .with("Routing", "1.0")
                .with("To", to)
                .with("From", from),
            reliability: Headers::new().with("Reliability", "1.0"),
            content: Headers::new().with(kind.0, kind.1),
            body: body.into(),
        }
    }

    /// Parses a whole frame payload: an optional transport header block (ended by an empty line),
    /// then the formatted message. Returns the transport headers and the message.
    pub fn parse_payload(payload: &[u8]) -> Result<(Headers, FormattedMessage), FormattedError> {
        let (transport, message) = FormattedMessageRef::parse_payload(payload)?;
        Ok((transport.to_owned(), message.to_owned()))
    }

    /// Parses the three blocks and the body.
    pub fn parse(bytes: &[u8]) -> Result<FormattedMessage, FormattedError> {
        FormattedMessageRef::parse(bytes).map(|m| m.to_owned())
    }

    /// The wire form, with `Content-Length` set to the body's size.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the wire form to `out`, with `Content-Length` set to the body's size.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.encode_with(out, None);
    }

    /// Appends the wire form with one more content header, `extra`, written right after the
    /// header named `after` (or after the last one when there is none): a server header added on
    /// the way out, such as `Skype-Age` after `Original-Arrival-Time`, without copying the message.
    pub fn encode_into_with(&self, out: &mut Vec<u8>, after: &str, extra: (&str, &str)) {
        self.encode_with(out, Some((after, extra)));
    }

    fn encode_with(&self, out: &mut Vec<u8>, extra: Option<(&str, (&str, &str))>) {
        fn line(out: &mut Vec<u8>, n: &str, v: &str) {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.routing.encode_into(out);
        out.extend_from_slice(b"\r\n");
        self.reliability.encode_into(out);
        out.extend_from_slice(b"\r\n");
        let len = self.body.len().to_string();
        let mut wrote_len = false;
        // The header after which `extra` goes; `None` puts it after the last one.
        let extra_at = extra.and_then(|(after, _)| {
            self.content
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case(after))
        });
        for (i, (n, v)) in self.content.iter().enumerate() {
            let v = if n.eq_ignore_ascii_case("Content-Length") {
                wrote_len = true;
                len.as_str()
            } else {
                v
            };
            line(out, n, v);
            if let (Some((_, (en, ev))), true) = (extra, extra_at == Some(i)) {
                line(out, en, ev);
            }
        }
        if let (Some((_, (en, ev))), None) = (extra, extra_at) {
            line(out, en, ev);
        }
        if !wrote_len {
            line(out, "Content-Length", &len);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
    }

    /// Transport headers, an empty line, then this message: a whole frame payload.
    pub fn to_payload(&self, transport: &Headers) -> Vec<u8> {
        let mut out = Vec::with_capacity(320 + self.body.len());
        transport.encode_into(&mut out);
        out.extend_from_slice(b"\r\n");
        self.encode_into(&mut out);
        out
    }

    /// `To:` as written.
    pub fn to(&self) -> Option<&str> {
        self.routing.get("To")
    }

    /// `From:` as written.
    pub fn from(&self) -> Option<&str> {
        self.routing.get("From")
    }

    /// The content block's kind: `Messaging`, `Publication` or `Notification`.
    pub fn kind(&self) -> Option<&str> {
        first_name(&self.content)
    }

    /// `Message-Type`, e.g. `Text` or `Control/Typing`.
    pub fn message_type(&self) -> Option<&str> {
        self.content.get("Message-Type")
    }

    /// The body as text (lossy, for display).
    pub fn body_lossy(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDG: &[u8] = b"Registration: abc\r\n\r\nRouting: 1.0\r\nTo: 8:bob\r\nFrom: 8:alice;epid={b958d334-651e-82fe-a2a1-3dfbb7f5cc08}\r\n\r\nReliability: 1.0\r\n\r\nMessaging: 2.0\r\nMessage-Type: Text\r\nClient-Message-ID: 6643607751647822671\r\nIM-Display-Name: Alice\r\nContent-Type: Text/plain; charset=UTF-8\r\nContent-Length: 2\r\n\r\nhi\r\n";

    #[test]
    fn parses_reference_sdg() {
        let (transport, m) = FormattedMessage::parse_payload(SDG).unwrap();
        assert_eq!(transport.get("Registration"), Some("abc"));
        assert_eq!(m.to(), Some("8:bob"));
        assert_eq!(m.kind(), Some("Messaging"));
        assert_eq!(m.message_type(), Some("Text"));
        assert_eq!(
            m.content.get("Content-Type"),
            Some("Text/plain; charset=UTF-8")
        );
        assert_eq!(m.body, b"hi");
    }

    #[test]
    fn borrowed_parse_reads_what_the_owned_one_does() {
        let (transport, m) = FormattedMessageRef::parse_payload(SDG).unwrap();
        assert_eq!(transport.get("Registration"), Some("abc"));
        assert_eq!((m.to(), m.kind()), (Some("8:bob"), Some("Messaging")));
        assert_eq!(m.body, b"hi");
        let (owned_transport, owned) = FormattedMessage::parse_payload(SDG).unwrap();
        assert_eq!(
            (transport.to_owned(), m.to_owned()),
            (owned_transport, owned)
        );
        // A message without its reliability block reads as if it had `Reliability: 1.0`.
        let short =
            b"Routing: 1.0\r\nTo: 8:bob\r\n\r\nMessaging: 2.0\r\nContent-Length: 2\r\n\r\nhi";
        let m = FormattedMessageRef::parse(short).unwrap();
        assert_eq!(m.reliability.get("Reliability"), Some("1.0"));
        assert_eq!(m.message_type(), None);
        assert_eq!(m.to_owned(), FormattedMessage::parse(short).unwrap());
    }

    #[test]
    fn encode_recomputes_length_and_keeps_order() {
        let (_, mut m) = FormattedMessage::parse_payload(SDG).unwrap();
        m.body = "héllo".as_bytes().to_vec();
        let wire = m.encode();
        let back = FormattedMessage::parse(&wire).unwrap();
        assert_eq!(back.content.get("Content-Length"), Some("6"));
        assert_eq!(back.body, "héllo".as_bytes());
        assert_eq!(back.content.0[1].0, "Message-Type");
    }

    #[test]
    fn empty_body_still_ends_with_empty_line() {
        let m = FormattedMessage::new("8:bob", "8:alice", ("Messaging", "2.0"), Vec::new());
        assert!(m.encode().ends_with(b"Content-Length: 0\r\n\r\n"));
        let p = m.to_payload(&Headers::new());
        assert!(p.starts_with(b"\r\nRouting: 1.0\r\n"));
        assert_eq!(
            FormattedMessage::parse_payload(&p).unwrap().1,
            FormattedMessage::parse(&m.encode()).unwrap()
        );
    }

    #[test]
    fn malformed() {
        assert_eq!(
            FormattedMessage::parse(b"To: 8:bob\r\n\r\n"),
            Err(FormattedError::NoRouting)
        );
        assert_eq!(
            FormattedMessage::parse(b"Routing: 1.0\r\nTo: 8:bob"),
            Err(FormattedError::Unterminated)
        );
        assert_eq!(
            FormattedMessage::parse(b"Routing: 1.0\r\n\r\nReliability: 1.0\r\n\r\nMessaging: 2.0\r\nContent-Length: 9\r\n\r\nhi"),
            Err(FormattedError::BadLength)
        );
    }
}
