//! The small text parsers a peer reaches: addresses (MRI), account names, endpoint ids, and the
//! challenge digest over whatever nonce and product a client names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msnp24_proto::challenge::challenge_response;
use msnp24_proto::{AccountName, Epid, Mri};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mri) = Mri::parse(text) {
        let _ = mri.is_valid_thread();
        let shown = mri.to_string();
        assert_eq!(Mri::parse(&shown), Ok(mri));
    }
    if let Ok(name) = AccountName::parse(text) {
        assert_eq!(AccountName::parse(name.as_str()), Ok(name.clone()));
        let _ = name.mri().to_string();
    }
    if let Ok(epid) = Epid::parse(text) {
        assert_eq!(Epid::parse(epid.as_str()), Ok(epid));
    }
    let (nonce, product) = text.split_at(
        text.char_indices()
            .nth(text.chars().count() / 2)
            .map_or(text.len(), |(i, _)| i),
    );
    let answer = challenge_response(nonce, product, "YMM8C_H7KCQ2S_KL");
    assert_eq!(answer.len(), 32);
    assert!(answer
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
});
