//! Property tests for the wire codec (reference §0, §1), formatted messages and addresses (§3).

use msnp24_proto::frame::{
    decode, error_frame, valid_target, Frame, FrameError, Headers, Limits, Payload,
};
use msnp24_proto::{AccountName, Epid, ErrorCode, FormattedMessage, Mri};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Three upper-case letters, or a three-digit error code.
fn cmd() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Z]{3}", "[0-9]{3}"]
}

/// TrIDs up to 10^18, plus the rest of the 19-digit range `decode` accepts.
fn trid() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0..=1_000_000_000_000_000_000u64,
        1 => 0..10_000_000_000_000_000_000u64,
        1 => 0..100u64,
    ]
}

/// `CON`, `MSGR`, `CON\USER`, `MSGR\PUT`, or a random upper-case `A` / `A\B`.
fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("CON".to_string()),
        Just("MSGR".to_string()),
        Just("CON\\USER".to_string()),
        Just("MSGR\\PUT".to_string()),
        "[A-Z]{1,12}",
        r"[A-Z]{1,12}\\[A-Z]{1,12}",
    ]
}

fn header_name() -> impl Strategy<Value = String> {
    "[A-Z][A-Za-z-]{0,20}"
}

/// Non-empty, printable, no CR/LF, no leading space and no trailing whitespace (`parse_lines`
/// trims both, see `payload_encode_round_trips`).
fn header_value() -> impl Strategy<Value = String> {
    "[!-~é€]([ \t!-~é€]{0,30}[!-~é€])?"
}

fn header() -> impl Strategy<Value = (String, String)> {
    (header_name(), header_value())
}

fn headers(min: usize, max: usize) -> impl Strategy<Value = Headers> {
    vec(header(), min..=max).prop_map(Headers)
}

/// What separates a header's name from its value on the wire; `parse_lines` accepts all of them.
fn separator() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => Just(": "), 1 => Just(":"), 1 => Just(":   ")]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..200),
        // Bodies made of protocol-looking pieces: CRLFs, empty lines, `<`, header-like text.
        vec(
            prop_oneof![
                vec(any::<u8>(), 0..8),
                Just(b"\r\n".to_vec()),
                Just(b"\r\n\r\n".to_vec()),
                Just(b"<".to_vec()),
                Just(b"Name: value".to_vec()),
                Just(b" ".to_vec()),
            ],
            0..12
        )
        .prop_map(|parts| parts.concat()),
    ]
}

/// The payload shapes of §1, built by hand (not with `Payload::encode`).
#[derive(Debug, Clone)]
enum Shape {
    /// (a) header lines, an empty line, the body.
    Full {
        lines: Vec<(String, &'static str, String)>,
        body: Vec<u8>,
    },
    /// (b) `\r\n` then the body.
    NoHeaders(Vec<u8>),
    /// (c) the body alone, starting with `<`.
    Xml(Vec<u8>),
    /// (d) header lines with no empty line and no body; the last `\r\n` may be missing too.
    HeadersOnly {
        lines: Vec<(String, &'static str, String)>,
        final_crlf: bool,
    },
    /// (e) nothing at all.
    Empty,
}

fn header_lines(
    min: usize,
    max: usize,
) -> impl Strategy<Value = Vec<(String, &'static str, String)>> {
    vec((header_name(), separator(), header_value()), min..=max)
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        (header_lines(1, 6), body()).prop_map(|(lines, body)| Shape::Full { lines, body }),
        body().prop_map(Shape::NoHeaders),
        body().prop_map(|b| Shape::Xml([&b"<"[..], &b].concat())),
        (header_lines(1, 6), any::<bool>())
            .prop_map(|(lines, final_crlf)| Shape::HeadersOnly { lines, final_crlf }),
        Just(Shape::Empty),
    ]
}

fn write_lines(lines: &[(String, &'static str, String)], out: &mut Vec<u8>) {
    for (n, sep, v) in lines {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(sep.as_bytes());
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

fn to_headers(lines: &[(String, &'static str, String)]) -> Headers {
    Headers(
        lines
            .iter()
            .map(|(n, _, v)| (n.clone(), v.clone()))
            .collect(),
    )
}

impl Shape {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Shape::Full { lines, body } => {
                write_lines(lines, &mut out);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(body);
            }
            Shape::NoHeaders(body) => {
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(body);
            }
            Shape::Xml(body) => out.extend_from_slice(body),
            Shape::HeadersOnly { lines, final_crlf } => {
                write_lines(lines, &mut out);
                if !final_crlf {
                    out.truncate(out.len() - 2);
                }
            }
            Shape::Empty => {}
        }
        out
    }

    fn expected(&self) -> Payload {
        match self {
            Shape::Full { lines, body } => Payload::with_headers(to_headers(lines), body.clone()),
            Shape::NoHeaders(body) | Shape::Xml(body) => Payload::body(body.clone()),
            Shape::HeadersOnly { lines, .. } => {
                Payload::with_headers(to_headers(lines), Vec::new())
            }
            Shape::Empty => Payload::empty(),
        }
    }
}

fn frame_and_shape() -> impl Strategy<Value = (Frame, Shape)> {
    (cmd(), trid(), target(), shape()).prop_map(|(c, t, g, s)| (Frame::new(c, t, g, s.bytes()), s))
}

fn frame() -> impl Strategy<Value = Frame> {
    frame_and_shape().prop_map(|(f, _)| f)
}

fn first_line(f: &Frame) -> String {
    format!("{} {} {} {}\r\n", f.cmd, f.trid, f.target, f.payload.len())
}

/// Feeds `chunks` one after the other into a buffer, decoding as many frames as possible after
/// each, like a connection's read loop.
fn decode_incrementally(chunks: &[&[u8]], limits: &Limits) -> (Vec<Frame>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some((f, used)) = decode(&buf, limits).expect("valid stream") {
            assert!(used > 0 && used <= buf.len());
            out.push(f);
            buf.drain(..used);
        }
    }
    (out, buf)
}

// ---------------------------------------------------------------------------------------------
// 1. Frames and payload shapes round-trip
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frame_round_trips((frame, shape) in frame_and_shape()) {
        let wire = frame.to_bytes();
        prop_assert!(wire.starts_with(first_line(&frame).as_bytes()));
        let (back, used) = decode(&wire, &Limits::default()).unwrap().expect("complete frame");
        prop_assert_eq!(&back, &frame);
        prop_assert_eq!(used, wire.len());
        // The same frame followed by anything: still the same frame and the same byte count.
        let mut more = wire.clone();
        more.extend_from_slice(b"PNG 1 CON 0\r\n\xff");
        prop_assert_eq!(decode(&more, &Limits::default()), Ok(Some((frame.clone(), used))));
        // Every proper prefix just asks for more bytes.
        for k in [0, 1, wire.len() / 2, wire.len() - 1] {
            prop_assert_eq!(decode(&wire[..k], &Limits::default()), Ok(None), "prefix {}", k);
        }
        prop_assert_eq!(back.parse_payload(), Ok(shape.expected()));
    }

    /// Invariant (from `Payload::parse` and `Headers::parse_lines`): `Payload::parse(&p.encode())
    /// == Ok(p)` for **every** body whenever each header name passes `valid_header_name` (so holds
    /// no `:`), and each value holds no `\r`/`\n`, does not start with a space and does not end
    /// with whitespace (`parse_lines` strips leading spaces and trailing whitespace). Values may be
    /// empty. With no headers, `encode` starts with `\r\n`, which `parse` strips before looking at
    /// anything else, so even a body starting with `<`, with `\r\n`, made only of whitespace or
    /// looking like headers comes back unchanged. With headers, the first `\r\n\r\n` is the one
    /// ending the block (values hold no CR/LF) and the first byte is a letter, so again the body
    /// is unrestricted.
    #[test]
    fn payload_encode_round_trips(
        hs in vec((header_name(), prop_oneof![Just(String::new()), header_value()]), 0..6),
        body in body(),
    ) {
        let p = Payload::with_headers(Headers(hs), body);
        let wire = p.encode();
        prop_assert!(!wire.is_empty());
        prop_assert_eq!(Payload::parse(&wire), Ok(p));
    }

    /// A reply carries the request's command and TrID, only the first part of its target (§0.2),
    /// and a non-empty payload starting with a header block (§0.3).
    #[test]
    fn reply_carries_head_of_target(request in frame(), hs in headers(0, 4), body in body()) {
        let p = Payload::with_headers(hs, body);
        let r = request.reply(&p);
        prop_assert_eq!(&r.cmd, &request.cmd);
        prop_assert_eq!(r.trid, request.trid);
        prop_assert_eq!(r.target.as_str(), request.target.split('\\').next().unwrap());
        prop_assert!(!r.payload.is_empty());
        prop_assert_eq!(r.parse_payload(), Ok(p));
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Pipelining
// ---------------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn pipelined_frames_survive_any_chunking(
        frames in vec(frame(), 1..=10),
        cuts in vec(any::<Index>(), 0..24),
        bytewise in prop::bool::weighted(0.1),
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(Frame::to_bytes).collect();
        let chunks: Vec<&[u8]> = if bytewise {
            wire.chunks(1).collect()
        } else {
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            at.push(0);
            at.push(wire.len());
            at.sort_unstable();
            at.windows(2).map(|w| &wire[w[0]..w[1]]).collect()
        };
        let (out, rest) = decode_incrementally(&chunks, &Limits::default());
        prop_assert_eq!(out, frames);
        prop_assert!(rest.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Hostile input
// ---------------------------------------------------------------------------------------------

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        (0usize..1_000, 0usize..300).prop_map(|(max_payload, max_line)| Limits {
            max_payload,
            max_line
        }),
    ]
}

/// A token from pieces that are almost valid frame tokens.
fn soup_token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Z]{1,9}",
        "[a-zA-Z]{1,4}",
        "[0-9]{0,21}",
        r"[A-Z]{0,4}\\[A-Z]{0,4}(\\[A-Z]{0,3})?",
        "-[0-9]{1,3}",
        "[ -~]{0,6}",
    ]
}

/// A first line that is valid, or close to valid, followed by anything.
fn hostile_input() -> impl Strategy<Value = Vec<u8>> {
    let valid_line = (cmd(), trid(), target(), 0usize..1_200)
        .prop_map(|(c, t, g, len)| format!("{c} {t} {g} {len}\r\n").into_bytes());
    let soup_line = (
        vec(
            (
                soup_token(),
                prop_oneof![4 => Just(" "), 1 => Just("  "), 1 => Just("")],
            ),
            1..6,
        ),
        prop_oneof![Just("\r\n"), Just("\n"), Just(""), Just("\r")],
    )
        .prop_map(|(tokens, end)| {
            let mut s: String = tokens.into_iter().map(|(t, sep)| t + sep).collect();
            s.pop();
            s.push_str(end);
            s.into_bytes()
        });
    prop_oneof![
        vec(any::<u8>(), 0..600),
        (valid_line, vec(any::<u8>(), 0..1_500)).prop_map(|(l, rest)| [l, rest].concat()),
        (soup_line, vec(any::<u8>(), 0..300)).prop_map(|(l, rest)| [l, rest].concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn decode_never_panics_and_stays_in_bounds(
        input in hostile_input(),
        limits in limits(),
        extra in vec(any::<u8>(), 1..64),
    ) {
        let result = decode(&input, &limits);
        let mut longer = input.clone();
        longer.extend_from_slice(&extra);
        match &result {
            Ok(Some((f, used))) => {
                let used = *used;
                prop_assert!(used <= input.len());
                prop_assert!(f.payload.len() <= limits.max_payload);
                prop_assert_eq!(&f.payload[..], &input[used - f.payload.len()..used]);
                prop_assert!(valid_target(&f.target));
                prop_assert!(used - f.payload.len() <= limits.max_line);
                // The frame re-encodes canonically and decodes back to itself.
                let canon = f.to_bytes();
                prop_assert_eq!(
                    decode(&canon, &Limits { max_line: usize::MAX, ..limits }),
                    Ok(Some((f.clone(), canon.len())))
                );
                // Bytes after the frame change nothing; any proper prefix asks for more.
                prop_assert_eq!(decode(&longer, &limits), result.clone());
                for k in 0..used {
                    prop_assert_eq!(decode(&input[..k], &limits), Ok(None), "prefix {}", k);
                }
            }
            Ok(None) => {
                // Waiting is only right for an unfinished first line that is still short and has
                // no bare `\n`, or for a complete first line whose payload is still arriving.
                let scan = &input[..input.len().min(limits.max_line)];
                match scan.windows(2).position(|w| w == b"\r\n") {
                    Some(eol) => prop_assert!(input.len() - (eol + 2) < limits.max_payload),
                    None => prop_assert!(input.len() < limits.max_line && !input.contains(&b'\n')),
                }
            }
            Err(e) => {
                if let FrameError::TooLarge { length, target, .. } = e {
                    prop_assert!(*length > limits.max_payload);
                    prop_assert!(valid_target(target) && !target.contains('\\'));
                }
                // An error is final: more bytes never turn it into a frame.
                prop_assert!(decode(&longer, &limits).is_err());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Oversized payloads
// ---------------------------------------------------------------------------------------------

proptest! {
    /// Lengths up to 19 digits (the most `decode` reads, like TrIDs) above the limit give
    /// `TooLarge` as soon as the first line is complete.
    #[test]
    fn oversized_length_is_refused_before_the_payload(
        cmd in cmd(),
        trid in trid(),
        target in target(),
        max_payload in prop_oneof![0usize..2_000, Just(Limits::default().max_payload)],
        over in prop_oneof![1u64..10, 1u64..1_000_000, 1u64..9_000_000_000_000_000_000],
        partial in vec(any::<u8>(), 0..64),
    ) {
        let limits = Limits { max_payload, ..Limits::default() };
        let length = max_payload as u64 + over;
        let line = format!("{cmd} {trid} {target} {length}\r\n").into_bytes();
        let expected = FrameError::TooLarge {
            trid,
            target: target.split('\\').next().unwrap().to_string(),
            length: length as usize,
        };
        prop_assert_eq!(decode(&line, &limits), Err(expected.clone()));
        prop_assert_eq!(expected.code(), ErrorCode::PayloadTooLarge);
        let mut with_some = line.clone();
        with_some.extend_from_slice(&partial);
        prop_assert_eq!(decode(&with_some, &limits), Err(expected));
        // Exactly at the limit is fine.
        let mut at_limit = format!("{cmd} {trid} {target} {max_payload}\r\n").into_bytes();
        let header_len = at_limit.len();
        at_limit.resize(header_len + max_payload, b'x');
        let (f, used) = decode(&at_limit, &limits).unwrap().expect("frame at the limit");
        prop_assert_eq!(f.payload.len(), max_payload);
        prop_assert_eq!(used, at_limit.len());
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Malformed first lines
// ---------------------------------------------------------------------------------------------

/// A valid first line (without `\r\n`) as its four tokens.
fn line_tokens() -> impl Strategy<Value = [String; 4]> {
    (cmd(), trid(), target(), 0usize..1_000)
        .prop_map(|(c, t, g, l)| [c, t.to_string(), g, l.to_string()])
}

fn join(tokens: &[String]) -> String {
    tokens.join(" ")
}

/// (what is wrong, line bytes including whatever ends them).
fn malformed_line() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let crlf = |s: String| [s.into_bytes(), b"\r\n".to_vec()].concat();
    prop_oneof![
        (line_tokens(), "[0-9]{0,4}[A-Za-z+.#_-][0-9A-Za-z]{0,4}").prop_map(move |(mut t, bad)| {
            t[1] = bad;
            ("non-numeric TrID", crlf(join(&t)))
        }),
        (
            line_tokens(),
            prop_oneof!["-[0-9]{1,6}", "[0-9]{0,3}[A-Za-z+.#_-][0-9]{0,3}"]
        )
            .prop_map(move |(mut t, bad)| {
                t[3] = bad;
                ("negative or non-numeric length", crlf(join(&t)))
            }),
        (line_tokens(), vec("[!-~]{1,8}", 1..3)).prop_map(move |(t, extra)| {
            (
                "extra tokens",
                crlf(format!("{} {}", join(&t), extra.join(" "))),
            )
        }),
        (line_tokens(), 0usize..3, 1usize..3).prop_map(move |(t, at, n)| {
            let mut s = String::new();
            for (i, tok) in t.iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                    if i - 1 == at {
                        s.push_str(&" ".repeat(n));
                    }
                }
                s.push_str(tok);
            }
            ("double space", crlf(s))
        }),
        line_tokens().prop_map(move |t| ("trailing space", crlf(join(&t) + " "))),
        line_tokens().prop_map(move |t| ("leading space", crlf(" ".to_string() + &join(&t)))),
        (line_tokens(), "[A-Z]{0,2}[a-z][A-Za-z]{0,2}").prop_map(move |(mut t, c)| {
            t[0] = c;
            ("lower-case command", crlf(join(&t)))
        }),
        (line_tokens(), r"[A-Z]{1,5}\\[A-Z]{0,5}\\[A-Z]{0,5}").prop_map(move |(mut t, g)| {
            t[2] = g;
            ("two backslashes in target", crlf(join(&t)))
        }),
        (line_tokens(), 0usize..4).prop_map(move |(t, drop)| {
            let three: Vec<String> = t
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != drop)
                .map(|(_, s)| s.clone())
                .collect();
            ("three tokens", crlf(join(&three)))
        }),
        (line_tokens(), any::<Index>(), 0x80u8..=0xff).prop_map(move |(t, at, b)| {
            let mut bytes = join(&t).into_bytes();
            bytes.insert(at.index(bytes.len() + 1), b);
            bytes.extend_from_slice(b"\r\n");
            ("invalid UTF-8", bytes)
        }),
        Just(("empty line", b"\r\n".to_vec())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn malformed_first_lines_are_bad_lines(
        (what, line) in malformed_line(),
        tail in vec(any::<u8>(), 0..64),
    ) {
        let input = [line, tail].concat();
        prop_assert!(
            matches!(decode(&input, &Limits::default()), Err(FrameError::BadLine(_))),
            "{}: {:?} gave {:?}", what, String::from_utf8_lossy(&input), decode(&input, &Limits::default())
        );
    }

    /// A line ended by a bare `\n` fails at once, without waiting for more bytes; whatever
    /// follows it, the frame stays an error.
    #[test]
    fn bare_newline_is_a_bad_line(t in line_tokens(), tail in vec(any::<u8>(), 0..400)) {
        let line = format!("{}\n", join(&t)).into_bytes();
        prop_assert!(matches!(decode(&line, &Limits::default()), Err(FrameError::BadLine(_))));
        let input = [line, tail].concat();
        prop_assert!(matches!(
            decode(&input, &Limits::default()),
            Err(FrameError::BadLine(_) | FrameError::LineTooLong(_))
        ));
    }

    /// Without any `\n`, a buffer shorter than `max_line` waits for more and one of `max_line`
    /// bytes or more is refused — so `decode` never needs more than `max_line` bytes to decide.
    #[test]
    fn line_without_newline(
        bytes in vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..900),
        max_line in 2usize..400,
    ) {
        let limits = Limits { max_line, ..Limits::default() };
        let expected = if bytes.len() >= max_line { Err(FrameError::LineTooLong(max_line)) } else { Ok(None) };
        prop_assert_eq!(decode(&bytes, &limits), expected);
    }

    /// A valid first line of exactly `max_line` bytes (CRLF included) is accepted; one byte less
    /// of room and it is too long.
    #[test]
    fn max_line_boundary(f in frame()) {
        let len = first_line(&f).len();
        let wire = f.to_bytes();
        let fits = Limits { max_line: len, ..Limits::default() };
        prop_assert_eq!(decode(&wire, &fits), Ok(Some((f.clone(), wire.len()))));
        let short = Limits { max_line: len - 1, ..Limits::default() };
        prop_assert_eq!(decode(&wire, &short), Err(FrameError::LineTooLong(len - 1)));
    }
}

#[test]
fn ten_megabyte_line_is_refused_after_max_line_bytes() {
    let limits = Limits::default();
    let huge = vec![b'A'; 10 * 1024 * 1024];
    assert_eq!(decode(&huge[..limits.max_line - 1], &limits), Ok(None));
    assert_eq!(
        decode(&huge[..limits.max_line], &limits),
        Err(FrameError::LineTooLong(limits.max_line))
    );
    assert_eq!(
        decode(&huge, &limits),
        Err(FrameError::LineTooLong(limits.max_line))
    );
    // A plausible start does not change that.
    let mut plausible = b"SDG 1 MSGR ".to_vec();
    plausible.resize(10 * 1024 * 1024, b'7');
    assert_eq!(
        decode(&plausible[..limits.max_line], &limits),
        Err(FrameError::LineTooLong(limits.max_line))
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Formatted messages
// ---------------------------------------------------------------------------------------------

fn not_content_length(h: &(String, String)) -> bool {
    !h.0.eq_ignore_ascii_case("Content-Length")
}

/// A message as a sender builds it (maybe with a stale `Content-Length` in the content block), and
/// the message `parse` must give back from its encoding.
fn formatted() -> impl Strategy<Value = (FormattedMessage, FormattedMessage)> {
    let kind = prop_oneof![
        3 => Just(("Messaging", "2.0")),
        1 => Just(("Publication", "1.0")),
        1 => Just(("Notification", "1.0")),
    ];
    (
        vec(header(), 0..4),
        vec(header(), 0..3),
        kind,
        vec(
            header().prop_filter("no Content-Length", not_content_length),
            0..6,
        ),
        prop::option::weighted(0.3, (any::<Index>(), "[0-9]{1,4}")),
        body(),
    )
        .prop_map(|(routing, reliability, kind, extra, stale_len, body)| {
            let routing = Headers(
                [("Routing".to_string(), "1.0".to_string())]
                    .into_iter()
                    .chain(routing)
                    .collect(),
            );
            let reliability = Headers(
                [("Reliability".to_string(), "1.0".to_string())]
                    .into_iter()
                    .chain(reliability)
                    .collect(),
            );
            let mut content = Headers::new().with(kind.0, kind.1);
            content.0.extend(extra);
            let mut expected_content = content.clone();
            let len = body.len().to_string();
            match stale_len {
                // `encode` rewrites a Content-Length in place…
                Some((at, stale)) => {
                    let pos = 1 + at.index(content.0.len());
                    content.0.insert(pos, ("Content-Length".to_string(), stale));
                    expected_content
                        .0
                        .insert(pos, ("Content-Length".to_string(), len));
                }
                // …or appends one at the end of the content block.
                None => expected_content.push("Content-Length", len),
            }
            let sent = FormattedMessage {
                routing: routing.clone(),
                reliability: reliability.clone(),
                content,
                body: body.clone(),
            };
            let expected = FormattedMessage {
                routing,
                reliability,
                content: expected_content,
                body,
            };
            (sent, expected)
        })
}

/// Transport headers for `to_payload`. Invariant (from `parse_payload`): a payload starting with
/// `Routing:` is read as a bare formatted message, so the round trip needs the first transport
/// header not to be named exactly `Routing` (a case `to_payload` cannot express otherwise).
fn transport() -> impl Strategy<Value = Headers> {
    prop_oneof![
        1 => Just(Headers::new()),
        3 => vec(
            (
                prop_oneof![
                    Just("Registration".to_string()),
                    Just("Ack-Id".to_string()),
                    Just("Context".to_string()),
                    Just("UtcTime".to_string()),
                    header_name(),
                ],
                header_value(),
            ),
            1..5,
        )
        .prop_filter("first transport header is not Routing", |h| h[0].0 != "Routing")
        .prop_map(Headers),
    ]
}

/// `m` as `encode` writes it: every `Content-Length` set to the body's size, or one appended.
fn with_length(m: &FormattedMessage) -> FormattedMessage {
    let mut m = m.clone();
    let len = m.body.len().to_string();
    let mut found = false;
    for (n, v) in &mut m.content.0 {
        if n.eq_ignore_ascii_case("Content-Length") {
            v.clone_from(&len);
            found = true;
        }
    }
    if !found {
        m.content.push("Content-Length", len);
    }
    m
}

/// One line of a header block, mostly plausible.
fn soup_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"Routing: 1.0".to_vec()),
        Just(b"Reliability: 1.0".to_vec()),
        Just(b"Messaging: 2.0".to_vec()),
        Just(b"To: 8:bob".to_vec()),
        Just(b"Registration: x".to_vec()),
        (0u8..30).prop_map(|n| format!("Content-Length: {n}").into_bytes()),
        Just(b"Content-Length: x".to_vec()),
        (header_name(), separator(), "[ -~\t\r\n]{0,8}")
            .prop_map(|(n, s, v)| format!("{n}{s}{v}").into_bytes()),
        vec(any::<u8>(), 0..6),
        Just(Vec::new()),
        Just(b" ".to_vec()),
    ]
}

fn soup_block() -> impl Strategy<Value = Vec<u8>> {
    vec(soup_line(), 0..5).prop_map(|lines| lines.join(&b"\r\n"[..]))
}

/// Bytes built from pieces of formatted messages, so that `parse` often gets past its checks.
fn formatted_soup() -> impl Strategy<Value = Vec<u8>> {
    let routing_first = prop_oneof![3 => Just(b"Routing: 1.0\r\n".to_vec()), 1 => Just(Vec::new())];
    let structured = (
        prop::option::of(soup_block()),
        routing_first,
        vec(soup_block(), 1..5),
        prop_oneof![
            Just(b"\r\n\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(Vec::new())
        ],
        body(),
    )
        .prop_map(|(transport, routing, blocks, end, body)| {
            let mut out = Vec::new();
            if let Some(t) = transport {
                out.extend_from_slice(&t);
                out.extend_from_slice(b"\r\n\r\n");
            }
            out.extend_from_slice(&routing);
            out.extend_from_slice(&blocks.join(&b"\r\n\r\n"[..]));
            out.extend_from_slice(&end);
            out.extend_from_slice(&body);
            out
        });
    prop_oneof![
        1 => vec(any::<u8>(), 0..300),
        1 => vec(prop_oneof![soup_line(), Just(b"\r\n".to_vec())], 0..24).prop_map(|p| p.concat()),
        4 => structured,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn formatted_message_round_trips((sent, expected) in formatted()) {
        let wire = sent.encode();
        prop_assert_eq!(FormattedMessage::parse(&wire), Ok(expected.clone()));
        prop_assert_eq!(expected.encode(), wire.clone());
        // A trailing `\r\n` after the body is tolerated (§1).
        let trailing = [wire, b"\r\n".to_vec()].concat();
        prop_assert_eq!(FormattedMessage::parse(&trailing), Ok(expected.clone()));
        // Some clients leave the reliability block out: the default one is filled in.
        let mut omitted = Vec::new();
        expected.routing.encode_into(&mut omitted);
        omitted.extend_from_slice(b"\r\n");
        expected.content.encode_into(&mut omitted);
        omitted.extend_from_slice(b"\r\n");
        omitted.extend_from_slice(&expected.body);
        let defaulted = FormattedMessage {
            reliability: Headers::new().with("Reliability", "1.0"),
            ..expected
        };
        prop_assert_eq!(FormattedMessage::parse(&omitted), Ok(defaulted));
    }

    #[test]
    fn formatted_payload_round_trips((sent, expected) in formatted(), transport in transport()) {
        let payload = sent.to_payload(&transport);
        if transport.is_empty() {
            prop_assert!(payload.starts_with(b"\r\nRouting: 1.0\r\n"));
        }
        prop_assert_eq!(
            FormattedMessage::parse_payload(&payload),
            Ok((transport, expected.clone()))
        );
        // Some clients leave the transport block out entirely.
        prop_assert_eq!(
            FormattedMessage::parse_payload(&sent.encode()),
            Ok((Headers::new(), expected))
        );
    }

    /// Never panics; whatever parses is normalised by one encode: encoding it and parsing again
    /// gives the same message with `Content-Length` set.
    #[test]
    fn formatted_parse_survives_anything(bytes in formatted_soup()) {
        if let Ok(m) = FormattedMessage::parse(&bytes) {
            prop_assert_eq!(FormattedMessage::parse(&m.encode()), Ok(with_length(&m)));
        }
        if let Ok((t, m)) = FormattedMessage::parse_payload(&bytes) {
            prop_assert_eq!(
                FormattedMessage::parse_payload(&m.to_payload(&t)),
                Ok((t, with_length(&m)))
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Addresses
// ---------------------------------------------------------------------------------------------

fn swap_case(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Epid-like text: five hex groups, sometimes the wrong length, any case, maybe braced/padded.
fn epid_text() -> impl Strategy<Value = String> {
    (
        "[0-9a-fA-F]{8}",
        "[0-9a-fA-F]{4}",
        "[0-9a-fA-F]{4}",
        prop_oneof![3 => "[0-9a-fA-F]{4}", 1 => "[0-9a-fA-F]{3,5}"],
        prop_oneof![3 => "[0-9a-fA-F]{12}", 1 => "[0-9a-fA-Fg]{11,13}"],
        prop_oneof![
            3 => Just(("{", "}")),
            2 => Just(("", "")),
            1 => Just(("{", "")),
            1 => Just(("", "}")),
        ],
        prop_oneof![4 => Just(""), 1 => Just(" ")],
    )
        .prop_map(|(a, b, c, d, e, (open, close), pad)| {
            format!("{pad}{open}{a}-{b}-{c}-{d}-{e}{close}{pad}")
        })
}

fn mri_text() -> impl Strategy<Value = String> {
    let id = prop_oneof![
        "[a-z][a-z0-9._-]{0,10}",
        "live:[a-z]{2,8}",
        "[a-z]{1,6}@[a-z]{1,6}\\.com",
        "[0-9a-f]{32}@thread\\.skype",
        "[!-~]{0,10}",
        "[^;]{0,10}",
    ];
    let param = prop_oneof![
        epid_text().prop_map(|e| format!("epid={e}")),
        "epid=[ -~]{0,8}",
        "[a-z]{1,5}=[a-z0-9]{0,5}",
        Just(String::new()),
    ];
    (
        "[0-9]{0,4}",
        prop_oneof![6 => Just(":"), 1 => Just("")],
        id,
        vec(param, 0..3),
        prop_oneof![4 => Just(""), 1 => Just(" "), 1 => Just("\t")],
    )
        .prop_map(|(prefix, colon, id, params, pad)| {
            let params: String = params.iter().map(|p| format!(";{p}")).collect();
            format!("{pad}{prefix}{colon}{id}{params}{pad}")
        })
}

fn account_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "(live:|LIVE:|Live:)?[A-Za-z][A-Za-z0-9._-]{0,33}",
        "(live:)?[A-Za-z0-9._ !:-]{0,34}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn address_parsers_never_panic(s in any::<String>()) {
        let _ = Mri::parse(&s);
        let _ = Epid::parse(&s);
        let _ = AccountName::parse(&s);
    }

    #[test]
    fn mri_reparses_from_its_text(s in prop_oneof![mri_text(), any::<String>()]) {
        if let Ok(m) = Mri::parse(&s) {
            // The prefix's value and the id as given, up to the first `;`.
            let addr = s.trim().split(';').next().unwrap();
            let (prefix, id) = addr.split_once(':').unwrap();
            prop_assert_eq!(prefix.parse::<u16>(), Ok(m.network.prefix()));
            prop_assert_eq!(id, m.id.as_str());
            let text = m.to_string();
            prop_assert_eq!(Mri::parse(&text), Ok(m.clone()), "{:?} -> {:?}", s, text);
            prop_assert_eq!(Mri::parse(&text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn epid_is_normalised(s in epid_text()) {
        if let Ok(e) = Epid::parse(&s) {
            let text = e.as_str();
            prop_assert_eq!(text.len(), 38);
            let braced = text.starts_with('{') && text.ends_with('}');
            prop_assert!(braced, "{}", text);
            prop_assert_eq!(text.to_ascii_lowercase(), text);
            prop_assert_eq!(Epid::parse(text), Ok(e.clone()));
            prop_assert_eq!(Epid::parse(&swap_case(&s)), Ok(e.clone()));
            prop_assert_eq!(Epid::parse(&text[1..37]), Ok(e));
        }
    }

    #[test]
    fn account_names_are_lower_case_and_stable(s in account_text()) {
        if let Ok(a) = AccountName::parse(&s) {
            prop_assert_eq!(a.as_str(), s.to_ascii_lowercase());
            prop_assert_eq!(AccountName::parse(a.as_str()), Ok(a.clone()));
            prop_assert_eq!(AccountName::parse(&swap_case(&s)), Ok(a.clone()));
            let mri = a.mri();
            prop_assert_eq!(mri.to_string(), format!("8:{a}"));
            prop_assert_eq!(Mri::parse(&mri.to_string()), Ok(mri));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Error frames
// ---------------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn error_frames_have_the_reference_shape(
        trid in trid(),
        target in target(),
        reason in prop_oneof!["[ -~]{0,60}", any::<String>()],
    ) {
        let head = target.split('\\').next().unwrap();
        for code in ErrorCode::ALL {
            let f = error_frame(code, trid, &target, &reason);
            let expected = format!(
                "{} {} {} {}\r\n\r\n{}",
                code.code(),
                trid,
                head,
                reason.len() + 2,
                reason
            );
            prop_assert_eq!(f.to_bytes(), expected.into_bytes());
            prop_assert!(!f.payload.is_empty() && f.payload.starts_with(b"\r\n"));
            prop_assert_eq!(f.error_code(), Some(code.code()));
            prop_assert_eq!(ErrorCode::from_code(code.code()), Some(code));
            prop_assert_eq!(f.parse_payload(), Ok(Payload::body(reason.as_bytes())));
            let wire = f.to_bytes();
            prop_assert_eq!(decode(&wire, &Limits::default()), Ok(Some((f.clone(), wire.len()))));
            let request = Frame::new("SDG", trid, target.clone(), b"x".to_vec());
            prop_assert_eq!(request.error_reply(code, &reason), f);
        }
    }
}
