//! The challenge digest of §2.4 (the classic MSNP11 `QRY` algorithm): what an endpoint answers to
//! the `<nonce>` of a BND reply when challenges are switched on. Pure, total, and fuzzed.

use md5::{Digest, Md5};

/// The product ids and keys real clients are known to use; a configuration may add more.
pub const KNOWN_PRODUCTS: [(&str, &str); 2] = [
    ("PROD0090YUAUV{2B", "YMM8C_H7KCQ2S_KL"),
    ("PROD0120PW!CCV9@", "C1BX{V4W}Q3*10SM"),
];

const P: u64 = 0x7FFF_FFFF;

fn words_le(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
}

/// The 32 lower-case hex digits an endpoint must answer for `nonce` with product `product_id`
/// whose secret key is `product_key` (§2.4 steps 1–5).
pub fn challenge_response(nonce: &str, product_id: &str, product_key: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(nonce.as_bytes());
    md5.update(product_key.as_bytes());
    let digest: [u8; 16] = md5.finalize().into();
    let h: Vec<u64> = words_le(&digest).collect();
    let m: Vec<u64> = h.iter().map(|w| w & P).collect();

    let mut s = Vec::with_capacity(nonce.len() + product_id.len() + 8);
    s.extend_from_slice(nonce.as_bytes());
    s.extend_from_slice(product_id.as_bytes());
    s.resize(s.len().div_ceil(8) * 8, b'0');
    let c: Vec<u64> = words_le(&s).collect();

    // Every product below is of two values under 2^32, so u64 never overflows; `low` only
    // accumulates, and wraps (harmlessly, for absurd lengths) instead of panicking.
    let (mut high, mut low) = (0u64, 0u64);
    for pair in c.chunks_exact(2) {
        let t = (m[0] * (((0x0E79_A9C1 * pair[0]) % P) + high) + m[1]) % P;
        high = (m[2] * ((pair[1] + t) % P) + m[3]) % P;
        low = low.wrapping_add(high).wrapping_add(t);
    }
    high = (high + m[1]) % P;
    low = (low % P + m[3]) % P;

    let mut out = String::with_capacity(32);
    for (i, w) in h.iter().enumerate() {
        let mix = if i % 2 == 0 { high } else { low };
        // h is a u32 widened and mix is below 2^31: the XOR fits in u32.
        let word = ((w ^ mix) & 0xFFFF_FFFF) as u32;
        for b in word.to_le_bytes() {
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

/// The key of a known product id, from [`KNOWN_PRODUCTS`].
pub fn known_product_key(product_id: &str) -> Option<&'static str> {
    KNOWN_PRODUCTS
        .iter()
        .find(|(id, _)| *id == product_id)
        .map(|(_, key)| *key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(nonce: &str, id: &str) -> String {
        challenge_response(nonce, id, known_product_key(id).unwrap())
    }

    #[test]
    fn reference_vector_numeric_nonce() {
        assert_eq!(
            answer("22210219642164014968", "PROD0090YUAUV{2B"),
            "85ecb0db8f32113df79ce0892b9a102c"
        );
    }

    #[test]
    fn reference_vector_uuid_nonce() {
        assert_eq!(
            answer("3d5b2f1e-8a4c-4f0b-9c1d-2e3f4a5b6c7d", "PROD0090YUAUV{2B"),
            "6ea285ca6de6904cea751299f4dd9a4a"
        );
    }

    #[test]
    fn reference_vector_second_product() {
        assert_eq!(
            answer("22210219642164014968", "PROD0120PW!CCV9@"),
            "6e92a312bf6b70ee58e75a1e3315695c"
        );
    }

    #[test]
    fn odd_inputs_never_panic() {
        for nonce in ["", "x", &"9".repeat(100_000)] {
            let r = challenge_response(nonce, "\u{1F600}", "");
            assert_eq!(r.len(), 32);
            assert!(r.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
}
