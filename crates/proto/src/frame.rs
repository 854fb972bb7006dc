//! Frame codec (reference §1): `CMD TrID TARGET LENGTH\r\n` followed by LENGTH bytes of payload, and
//! the header-block payload shapes clients send.

use crate::error::ErrorCode;

/// Bounds applied while decoding, so a peer cannot make the server buffer without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload accepted, in bytes (603 beyond it).
    pub max_payload: usize,
    /// Longest first line accepted, in bytes, `\r\n` included.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: 128 * 1024,
            max_line: 256,
        }
    }
}

/// Why a byte stream could not be decoded into a frame. Every variant ends the connection: after a
/// broken first line there is no way to find where the next frame starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// No `\r\n` within the allowed first-line length.
    #[error("first line longer than {0} bytes")]
    LineTooLong(usize),
    /// The first line is not `CMD TrID TARGET LENGTH`.
    #[error("malformed first line: {0}")]
    BadLine(&'static str),
    /// The announced payload is larger than the configured maximum.
    #[error("payload of {length} bytes exceeds the limit")]
    TooLarge {
        /// TrID of the offending frame, for the 603 reply.
        trid: u64,
        /// First part of its target, for the 603 reply.
        target: String,
        /// The announced length.
        length: usize,
    },
}

impl FrameError {
    /// The error code the server answers with before closing.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::Syntax,
        }
    }
}

/// Why a payload's header block could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// A header line without `: `, or with an invalid name.
    #[error("malformed header line")]
    BadHeader,
    /// Bytes that are not UTF-8 where text was required.
    #[error("invalid UTF-8")]
    InvalidUtf8,
}

/// One frame as it travels: the payload is kept as raw bytes and parsed on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Command (`CNT`, `SDG`…) or a three-digit error code.
    pub cmd: String,
    /// Transaction id; 0 for frames the server sends on its own.
    pub trid: u64,
    /// Target, e.g. `CON\USER` or `MSGR`.
    pub target: String,
    /// The payload bytes (LENGTH of them).
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame from its parts.
    pub fn new(
        cmd: impl Into<String>,
        trid: u64,
        target: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Frame {
        Frame {
            cmd: cmd.into(),
            trid,
            target: target.into(),
            payload: payload.into(),
        }
    }

    /// The first part of the target (`MSGR` of `MSGR\PUT`), which is what replies carry (§0.2).
    pub fn target_head(&self) -> &str {
        target_head(&self.target)
    }

    /// The part after the backslash (`PUT` of `MSGR\PUT`), empty when there is none.
    pub fn target_tail(&self) -> &str {
        self.target.split_once('\\').map(|(_, t)| t).unwrap_or("")
    }

    /// A success reply to this frame: same command and TrID, the first part of the target.
    pub fn reply(&self, payload: &Payload) -> Frame {
        Frame::new(
            self.cmd.clone(),
            self.trid,
            self.target_head(),
            payload.encode(),
        )
    }

    /// An error reply to this frame (§1: `CODE TrID TARGET LENGTH` + `\r\n` + reason).
    pub fn error_reply(&self, code: ErrorCode, reason: &str) -> Frame {
        error_frame(code, self.trid, self.target_head(), reason)
    }

    /// The error code this frame carries, if its command is a number.
    pub fn error_code(&self) -> Option<u16> {
        if self.cmd.len() == 3 && self.cmd.bytes().all(|b| b.is_ascii_digit()) {
            self.cmd.parse().ok()
        } else {
            None
        }
    }

    /// Parses the payload's header block and body.
    pub fn parse_payload(&self) -> Result<Payload, PayloadError> {
        Payload::parse(&self.payload)
    }

    /// Appends the wire form of the frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.cmd.len() + self.target.len() + 32 + self.payload.len());
        out.extend_from_slice(self.cmd.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.trid.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.payload.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.payload);
    }

    /// The wire form of the frame.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// The payload as text, for logs (lossy).
    pub fn payload_lossy(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// The first part of a target, before any backslash.
pub fn target_head(target: &str) -> &str {
    target.split_once('\\').map(|(h, _)| h).unwrap_or(target)
}

/// An error frame: `CODE TrID TARGET LENGTH\r\n\r\nreason`.
pub fn error_frame(code: ErrorCode, trid: u64, target: &str, reason: &str) -> Frame {
    let mut payload = Vec::with_capacity(reason.len() + 2);
    payload.extend_from_slice(b"\r\n");
    payload.extend_from_slice(reason.as_bytes());
    Frame::new(code.code().to_string(), trid, target_head(target), payload)
}

fn valid_cmd(cmd: &str) -> bool {
    let b = cmd.as_bytes();
    (b.len() == 3 && b.iter().all(u8::is_ascii_digit))
        || (!b.is_empty() && b.len() <= 8 && b.iter().all(u8::is_ascii_uppercase))
}

/// `CON`, `MSGR`, `CON\USER`: letters, at most one backslash, no empty part.
pub fn valid_target(target: &str) -> bool {
    let mut parts = target.split('\\');
    let ok = |p: &str| !p.is_empty() && p.len() <= 64 && p.bytes().all(|b| b.is_ascii_alphabetic());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(h), None, None) => ok(h),
        (Some(h), Some(t), None) => ok(h) && ok(t),
        _ => false,
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Decodes one frame from the front of `buf`. `Ok(None)` means more bytes are needed; on success
/// the frame and the number of bytes it used are returned.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>, FrameError> {
    let scan = &buf[..buf.len().min(limits.max_line)];
    let Some(eol) = memchr::memmem::find(scan, b"\r\n") else {
        if buf.len() >= limits.max_line {
            return Err(FrameError::LineTooLong(limits.max_line));
        }
        // A bare `\n` can never become valid; fail early rather than wait for more bytes.
        if scan.contains(&b'\n') {
            return Err(FrameError::BadLine("line ended without \\r\\n"));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..eol]).map_err(|_| FrameError::BadLine("not ASCII"))?;
    let mut tokens = line.split(' ');
    let (Some(cmd), Some(trid), Some(target), Some(length), None) = (
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
    ) else {
        return Err(FrameError::BadLine("expected CMD TrID TARGET LENGTH"));
    };
    if !valid_cmd(cmd) {
        return Err(FrameError::BadLine("invalid command"));
    }
    let trid = parse_decimal(trid).ok_or(FrameError::BadLine("invalid TrID"))?;
    if !valid_target(target) {
        return Err(FrameError::BadLine("invalid target"));
    }
    let length = parse_decimal(length).ok_or(FrameError::BadLine("invalid length"))?;
    let length = usize::try_from(length).unwrap_or(usize::MAX);
    if length > limits.max_payload {
        return Err(FrameError::TooLarge {
            trid,
            target: target_head(target).to_string(),
            length,
        });
    }
    let start = eol + 2;
    if buf.len() - start < length {
        return Ok(None);
    }
    let frame = Frame::new(cmd, trid, target, &buf[start..start + length]);
    Ok(Some((frame, start + length)))
}

/// An ordered header block; names compare case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// An empty block.
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Appends a header.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Builder form of [`Headers::push`].
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Headers {
        self.push(name, value);
        self
    }

    /// Replaces the first `name` in place, or appends it.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self
            .0
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    /// Removes every `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Writes `Name: value\r\n` lines (without the closing empty line).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        for (n, v) in &self.0 {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Parses `Name: value` lines; `lines` holds no empty line.
    pub fn parse_lines(lines: &[u8]) -> Result<Headers, PayloadError> {
        HeadersRef::parse_lines(lines).map(|h| h.to_owned())
    }
}

/// A header block borrowed from the bytes it was parsed from: the same lines as [`Headers`]
/// without a `String` per name and value, for the parse of every incoming frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadersRef<'a>(pub Vec<(&'a str, &'a str)>);

impl<'a> HeadersRef<'a> {
    /// Parses `Name: value` lines; `lines` holds no empty line. Accepts and refuses exactly what
    /// [`Headers::parse_lines`] does.
    pub fn parse_lines(lines: &'a [u8]) -> Result<HeadersRef<'a>, PayloadError> {
        let text = std::str::from_utf8(lines).map_err(|_| PayloadError::InvalidUtf8)?;
        let mut headers = Vec::with_capacity(8);
        let mut start = 0;
        let ends = memchr::memmem::find_iter(lines, b"\r\n").chain([lines.len()]);
        // `text` is split at every `\r\n` (both ASCII, so every split is on a char boundary).
        for line in ends
            .map(|end| {
                let line = &text[start.min(end)..end];
                start = end + 2;
                line
            })
            .filter(|l| !l.is_empty())
        {
            let (name, value) = line.split_once(':').ok_or(PayloadError::BadHeader)?;
            if !valid_header_name(name) {
                return Err(PayloadError::BadHeader);
            }
            headers.push((name, value.trim_start_matches(' ').trim_end()));
        }
        Ok(HeadersRef(headers))
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    }

    /// The headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.0.iter().copied()
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Headers {
        Headers(
            self.0
                .iter()
                .map(|&(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }
}

/// A header name as clients send them: letters, digits and hyphens, starting with a letter.
pub fn valid_header_name(name: &str) -> bool {
    name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A payload borrowed from its frame: the transport headers and the body as slices of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayloadRef<'a> {
    /// Transport headers (`Registration`, `Set-Registration`, `Ack-Id`…).
    pub headers: HeadersRef<'a>,
    /// Everything after the empty line: XML or a formatted message.
    pub body: &'a [u8],
}

impl<'a> PayloadRef<'a> {
    /// Reads any of the shapes of §1, as [`Payload::parse`] does, without copying.
    pub fn parse(bytes: &'a [u8]) -> Result<PayloadRef<'a>, PayloadError> {
        let body = |body| PayloadRef {
            headers: HeadersRef::default(),
            body,
        };
        if bytes.is_empty() {
            return Ok(body(bytes));
        }
        if let Some(rest) = bytes.strip_prefix(b"\r\n") {
            return Ok(body(rest));
        }
        if bytes.first() == Some(&b'<') || bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(body(bytes));
        }
        match memchr::memmem::find(bytes, b"\r\n\r\n") {
            Some(end) => Ok(PayloadRef {
                headers: HeadersRef::parse_lines(&bytes[..end])?,
                body: &bytes[end + 4..],
            }),
            None => Ok(PayloadRef {
                headers: HeadersRef::parse_lines(bytes)?,
                body: &[],
            }),
        }
    }
}

/// A payload: a (possibly empty) header block and a body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    /// Transport headers (`Registration`, `Set-Registration`, `Ack-Id`…).
    pub headers: Headers,
    /// Everything after the empty line: XML or a formatted message.
    pub body: Vec<u8>,
}

impl Payload {
    /// A payload with no headers and this body.
    pub fn body(body: impl Into<Vec<u8>>) -> Payload {
        Payload {
            headers: Headers::new(),
            body: body.into(),
        }
    }

    /// A payload with these headers and this body.
    pub fn with_headers(headers: Headers, body: impl Into<Vec<u8>>) -> Payload {
        Payload {
            headers,
            body: body.into(),
        }
    }

    /// The empty success payload, `\r\n`.
    pub fn empty() -> Payload {
        Payload::default()
    }

    /// Reads any of the shapes of §1: headers + empty line + body, `\r\n` + body, a body starting
    /// with `<`, or header lines with no empty line and no body.
    pub fn parse(bytes: &[u8]) -> Result<Payload, PayloadError> {
        let p = PayloadRef::parse(bytes)?;
        Ok(Payload {
            headers: p.headers.to_owned(),
            body: p.body.to_vec(),
        })
    }

    /// The wire form: headers, the empty line, the body — never empty (§0.3).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 2 + self.headers.0.len() * 40);
        self.headers.encode_into(&mut out);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// The body as UTF-8 text.
    pub fn body_str(&self) -> Result<&str, PayloadError> {
        std::str::from_utf8(&self.body).map_err(|_| PayloadError::InvalidUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(bytes: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        decode(bytes, &Limits::default())
    }

    #[test]
    fn decodes_pipelined_frames_in_order() {
        let cnt = b"\r\n<connect><ver>2</ver></connect>";
        let mut wire = format!("CNT 1 CON {}\r\n", cnt.len()).into_bytes();
        wire.extend_from_slice(cnt);
        wire.extend_from_slice(b"PNG 2 CON 0\r\n");
        let (f1, used) = dec(&wire).unwrap().unwrap();
        assert_eq!(
            (f1.cmd.as_str(), f1.trid, f1.target.as_str()),
            ("CNT", 1, "CON")
        );
        assert_eq!(f1.payload, cnt);
        let (f2, used2) = dec(&wire[used..]).unwrap().unwrap();
        assert_eq!((f2.cmd.as_str(), f2.trid, f2.payload.len()), ("PNG", 2, 0));
        assert_eq!(used + used2, wire.len());
    }

    #[test]
    fn waits_for_more_bytes() {
        assert_eq!(dec(b"").unwrap(), None);
        assert_eq!(dec(b"PNG 1 CON").unwrap(), None);
        assert_eq!(dec(b"PNG 1 CON 5\r\nab").unwrap(), None);
    }

    #[test]
    fn rejects_bad_first_lines() {
        for bad in [
            &b"PNG 1 CON\r\n"[..],
            b"PNG x CON 0\r\n",
            b"PNG 1 CON -1\r\n",
            b"PNG 1 CON 0 extra\r\n",
            b"PNG  1 CON 0\r\n",
            b"png 1 CON 0\r\n",
            b"PNG 1 CON\\A\\B 0\r\n",
            b"PNG 1 CON 0\n",
            b"PNG 1 C:N 0\r\n",
            b"\xff\xfe 1 CON 0\r\n",
            b"\r\n",
        ] {
            assert!(matches!(dec(bad), Err(FrameError::BadLine(_))), "{bad:?}");
        }
        let long = vec![b'A'; 300];
        assert_eq!(dec(&long), Err(FrameError::LineTooLong(256)));
    }

    #[test]
    fn rejects_oversized_payload_before_reading_it() {
        let err = dec(b"SDG 7 MSGR 999999999\r\n").unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                trid: 7,
                target: "MSGR".into(),
                length: 999_999_999
            }
        );
        assert_eq!(err.code(), ErrorCode::PayloadTooLarge);
    }

    #[test]
    fn reply_carries_first_part_of_target() {
        let f = Frame::new("GET", 12, "MSGR\\RECENTCONVERSATIONS", Vec::new());
        let r = f.reply(&Payload::empty());
        assert_eq!(r.to_bytes(), b"GET 12 MSGR 2\r\n\r\n");
        let e = f.error_reply(ErrorCode::InvalidParameter, "bad");
        assert_eq!(e.to_bytes(), b"201 12 MSGR 5\r\n\r\nbad");
        assert_eq!(e.error_code(), Some(201));
    }

    #[test]
    fn payload_shapes() {
        let p = Payload::parse(b"Registration: abc\r\nFoo: x y\r\n\r\n<body/>").unwrap();
        assert_eq!(p.headers.get("registration"), Some("abc"));
        assert_eq!(p.headers.get("Foo"), Some("x y"));
        assert_eq!(p.body, b"<body/>");
        let p = Payload::parse(b"\r\n<connect/>").unwrap();
        assert!(p.headers.is_empty());
        assert_eq!(p.body, b"<connect/>");
        let p = Payload::parse(b"<connect/>").unwrap();
        assert_eq!(p.body, b"<connect/>");
        let p = Payload::parse(b"Registration: X\r\n").unwrap();
        assert_eq!(p.headers.get("Registration"), Some("X"));
        assert!(p.body.is_empty());
        assert_eq!(
            Payload::parse(b"no colon here\r\n\r\n"),
            Err(PayloadError::BadHeader)
        );
        assert_eq!(
            Payload::parse(b"B\xffd: x\r\n\r\n"),
            Err(PayloadError::InvalidUtf8)
        );
        assert_eq!(Payload::empty().encode(), b"\r\n");
    }
}
