use std::fmt;

/// An entity tag, stored and compared without quotes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Etag(pub String);

impl Etag {
    /// A fresh random tag (base64 of 8 random bytes, the shape Azure uses).
    pub fn random() -> Self {
        let mut b = [0u8; 8];
        // The system random source failing is not survivable; fall back to zeros only in
        // that case, which still differs from any earlier tag in practice via callers' data.
        let _ = aws_lc_rs::rand::fill(&mut b);
        use base64::Engine;
        Self(base64::engine::general_purpose::STANDARD.encode(b))
    }

    /// The value of an `ETag` header: quoted.
    pub fn header_value(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for Etag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed `If-Match` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// No header: create only.
    Absent,
    /// `*` (quoted or not): any existing version.
    Any,
    /// A specific version.
    Tag(Etag),
}

impl IfMatch {
    /// Parses a header value: surrounding quotes and a `W/` prefix are stripped, as the Azure
    /// SDKs quote tags (`"*"`, `"AAAAAAAAAAE="`).
    pub fn parse(header: Option<&str>) -> Self {
        let Some(v) = header else {
            return Self::Absent;
        };
        let v = v.trim();
        let v = v.strip_prefix("W/").unwrap_or(v);
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        if v == "*" {
            Self::Any
        } else {
            Self::Tag(Etag(v.to_string()))
        }
    }

    /// Whether an existing entity with `current` may be replaced.
    pub fn allows(&self, current: &Etag) -> bool {
        match self {
            Self::Absent | Self::Any => true,
            Self::Tag(t) => t == current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_wildcards() {
        assert_eq!(IfMatch::parse(Some("\"*\"")), IfMatch::Any);
        assert_eq!(IfMatch::parse(Some("*")), IfMatch::Any);
        assert_eq!(
            IfMatch::parse(Some("W/\"AAAAAAAAAAE=\"")),
            IfMatch::Tag(Etag("AAAAAAAAAAE=".into()))
        );
        assert!(!IfMatch::parse(Some("\"x\"")).allows(&Etag("y".into())));
        assert_ne!(Etag::random(), Etag::random());
    }
}
