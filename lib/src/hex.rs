//! Lower-case hex digits of bytes: the one encoder behind every digest we print or store (checkpoint and export
//! sidecars' sha256, data fingerprints, protocol hashes).
//!
//! Kept as our own ten lines rather than the `hex` crate (issue 22): `hex` 0.4.3 is its newest release, from 2021,
//! so it fails the rule that a new dependency has a release in the last 18 months, and it would replace one loop.

use sha2::{Digest, Sha256};

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Two hex digits per byte, lower case.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The first 16 hex digits (8 bytes) of a digest: the short form of data fingerprints.
pub fn short(digest: &[u8]) -> String {
    encode(&digest[..digest.len().min(8)])
}

/// The sha256 of `bytes`, 64 hex digits.
pub fn sha256(bytes: &[u8]) -> String {
    encode(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_format_loop_it_replaced() {
        let bytes: Vec<u8> = (0..=255).collect();
        let by_format: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::encode(&bytes), by_format);
        assert_eq!(super::short(&bytes), "0001020304050607");
        assert_eq!(super::short(&[0xab]), "ab");
        assert_eq!(super::sha256(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
