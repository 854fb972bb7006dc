//! The formatted-message parser (§3) on whole frame payloads: never panics, and what it reads
//! survives being written and read again (the server re-writes every message it relays).
#![no_main]

use libfuzzer_sys::fuzz_target;
use msnp24_proto::{FormattedMessage, Mri};

fuzz_target!(|data: &[u8]| {
    let Ok((transport, message)) = FormattedMessage::parse_payload(data) else {
        return;
    };
    for addr in [message.to(), message.from()].into_iter().flatten() {
        let _ = Mri::parse(addr);
    }
    let _ = (message.kind(), message.message_type(), message.body_lossy());

    let wire = message.to_payload(&transport);
    let (transport2, again) =
        FormattedMessage::parse_payload(&wire).expect("a written message parses again");
    assert_eq!(transport2, transport);
    assert_eq!(again.routing, message.routing);
    assert_eq!(again.reliability, message.reliability);
    assert_eq!(again.body, message.body);
    // The writer always sets Content-Length to the body's size; everything else is kept.
    let without_length = |m: &FormattedMessage| {
        let mut c = m.content.clone();
        c.remove("Content-Length");
        c
    };
    assert_eq!(without_length(&again), without_length(&message));
    assert_eq!(
        again.content.get("Content-Length"),
        Some(message.body.len().to_string().as_str())
    );
});
