//! KSUIDs, the sync ids of c1z files: 4 bytes of seconds since 2014-05-13 16:53:20 UTC (epoch 1400000000)
//! followed by 16 random bytes, written as 27 base62 characters (`0-9A-Za-z`). Lexical order of the text
//! follows creation time.

use std::time::{SystemTime, UNIX_EPOCH};

const EPOCH: u64 = 1_400_000_000;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new KSUID for the current time.
pub fn new_ksuid() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(EPOCH);
    let ts = now.saturating_sub(EPOCH).min(u64::from(u32::MAX)) as u32;
    let mut raw = [0u8; 20];
    raw[..4].copy_from_slice(&ts.to_be_bytes());
    raw[4..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    encode(&raw)
}

/// Base62-encodes 20 raw KSUID bytes into 27 characters, left-padded with `0`.
pub fn encode(raw: &[u8; 20]) -> String {
    let mut num = raw.to_vec();
    let mut out = Vec::with_capacity(27);
    while num.iter().any(|b| *b != 0) {
        // Long division of the big-endian number by 62.
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 62) as u8;
            rem = acc % 62;
        }
        out.push(ALPHABET[rem as usize]);
    }
    while out.len() < 27 {
        out.push(b'0');
    }
    out.reverse();
    out.into_iter().map(char::from).collect()
}

/// The creation time (Unix seconds) of a KSUID string, if it is one.
pub fn timestamp(ksuid: &str) -> Option<u64> {
    if ksuid.len() != 27 {
        return None;
    }
    let mut num = [0u8; 20];
    for c in ksuid.bytes() {
        let d = ALPHABET.iter().position(|a| *a == c)? as u32;
        let mut carry = d;
        for b in num.iter_mut().rev() {
            let acc = u32::from(*b) * 62 + carry;
            *b = (acc & 0xFF) as u8;
            carry = acc >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(u64::from(u32::from_be_bytes([num[0], num[1], num[2], num[3]])) + EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(encode(&[0; 20]), "000000000000000000000000000");
        assert_eq!(encode(&[0xFF; 20]), "aWgEPTl1tmebfsQzFP4bxwgy80V");
        // segmentio/ksuid's README example: 0669F7EFB5A1CD34B5F99D1154FB6853345C9735.
        let raw = [
            0x06, 0x69, 0xF7, 0xEF, 0xB5, 0xA1, 0xCD, 0x34, 0xB5, 0xF9, 0x9D, 0x11, 0x54, 0xFB, 0x68, 0x53,
            0x34, 0x5C, 0x97, 0x35,
        ];
        assert_eq!(encode(&raw), "0ujtsYcgvSTl8PAuAdqWYSMnLOv");
        assert_eq!(
            timestamp("0ujtsYcgvSTl8PAuAdqWYSMnLOv"),
            Some(107_608_047 + EPOCH)
        );
    }

    #[test]
    fn new_ids_are_27_chars_now_and_unique() {
        let a = new_ksuid();
        let b = new_ksuid();
        assert_eq!(a.len(), 27);
        assert_ne!(a, b);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(timestamp(&a).unwrap().abs_diff(now) < 5);
    }
}
