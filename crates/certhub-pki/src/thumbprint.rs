use std::fmt::Write;

use aws_lc_rs::digest;

/// The SHA-1 and SHA-256 thumbprints of a certificate's DER, as Azure IoT Hub writes them:
/// uppercase hex without separators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Thumbprints {
    pub sha1: String,
    pub sha256: String,
}

impl Thumbprints {
    /// Hashes the DER exactly as given (never a re-encoding).
    pub fn of(der: &[u8]) -> Self {
        Self {
            sha1: upper_hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref()),
            sha256: upper_hex(digest::digest(&digest::SHA256, der).as_ref()),
        }
    }

    /// True when `candidate` (any case, colons tolerated) equals either thumbprint.
    pub fn matches(&self, candidate: &str) -> bool {
        match normalize_thumbprint(candidate) {
            Some(t) => t == self.sha1 || t == self.sha256,
            None => false,
        }
    }
}

/// Normalises a thumbprint typed by a person: strips colons and spaces, uppercases, and
/// accepts only 40 (SHA-1) or 64 (SHA-256) hex digits.
pub fn normalize_thumbprint(input: &str) -> Option<String> {
    let t: String = input
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let ok = (t.len() == 40 || t.len() == 64) && t.chars().all(|c| c.is_ascii_hexdigit());
    ok.then_some(t)
}

pub(crate) fn upper_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02X}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        let t = Thumbprints::of(b"abc");
        assert_eq!(t.sha1, "A9993E364706816ABA3E25717850C26C9CD0D89D");
        assert_eq!(
            t.sha256,
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
        );
    }

    #[test]
    fn normalizes_people_input() {
        let colons = "a9:99:3e:36:47:06:81:6a:ba:3e:25:71:78:50:c2:6c:9c:d0:d8:9d";
        assert!(Thumbprints::of(b"abc").matches(colons));
        assert_eq!(normalize_thumbprint("abc"), None);
        assert_eq!(normalize_thumbprint(&"g".repeat(40)), None);
    }
}
