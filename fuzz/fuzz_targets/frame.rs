//! The frame codec as the server runs it: decode frames off the front of a buffer until it needs
//! more bytes or fails, and read each payload's header block. Beyond "never panics", it checks
//! that what the encoder writes decodes to the same frame and payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msnp24_proto::frame::{decode, Limits, Payload};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_payload: 8 * 1024,
        max_line: 256,
    };
    let mut rest = data;
    while let Ok(Some((frame, used))) = decode(rest, &limits) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];

        let wire = frame.to_bytes();
        let (again, n) = decode(&wire, &limits)
            .expect("an encoded frame decodes")
            .expect("an encoded frame is complete");
        assert_eq!(again, frame);
        assert_eq!(n, wire.len());
        let _ = frame.target_head();
        let _ = frame.target_tail();
        let _ = frame.error_code();

        if let Ok(payload) = Payload::parse(&frame.payload) {
            let encoded = payload.encode();
            assert!(!encoded.is_empty(), "§0.3: a payload is never empty");
            assert_eq!(Payload::parse(&encoded), Ok(payload));
        }
    }
});
