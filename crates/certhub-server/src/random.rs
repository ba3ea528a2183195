//! Random identifiers the hub hands out: lock tokens, message ids, uuids.

/// 16 random bytes. Unique enough if the system's generator failed: these only name things
/// (tokens that grant anything are made where they are checked, and fail loudly).
fn bytes16() -> [u8; 16] {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b
}

/// 16 random bytes as lowercase hex: lock tokens and message ids.
pub(crate) fn hex_id() -> String {
    hex(&bytes16())
}

/// A random (version 4) uuid's 16 bytes.
pub(crate) fn uuid_v4() -> [u8; 16] {
    let mut b = bytes16();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// A random (version 4) uuid as text, `8-4-4-4-12` lowercase hex digits.
pub(crate) fn uuid_v4_text() -> String {
    uuid_text(&uuid_v4())
}

/// 16 bytes as a uuid's text; other lengths as plain hex.
pub(crate) fn uuid_text(bytes: &[u8]) -> String {
    let hex = hex(bytes);
    if hex.len() == 32 {
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    } else {
        hex
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_differ() {
        let (a, b) = (uuid_v4_text(), uuid_v4_text());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{a}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{a}");
        assert_eq!(hex_id().len(), 32);
        assert_eq!(uuid_text(&[0xab, 0x01]), "ab01");
    }
}
