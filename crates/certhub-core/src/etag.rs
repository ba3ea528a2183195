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
    /// A list (`"a", "b"`): any of these versions (RFC 9110 13.1.1).
    AnyOf(Vec<Etag>),
}

impl IfMatch {
    /// Parses a header value: surrounding quotes and a `W/` prefix are stripped, as the Azure
    /// SDKs quote tags (`"*"`, `"AAAAAAAAAAE="`); a comma-separated list matches if any entry
    /// does (tags are base64, so they hold no comma).
    pub fn parse(header: Option<&str>) -> Self {
        let Some(v) = header else {
            return Self::Absent;
        };
        let mut tags: Vec<Etag> = Vec::new();
        for part in v.split(',') {
            let p = part.trim();
            let p = p.strip_prefix("W/").unwrap_or(p);
            let p = p
                .strip_prefix('"')
                .and_then(|p| p.strip_suffix('"'))
                .unwrap_or(p);
            if p == "*" {
                return Self::Any;
            }
            if !p.is_empty() || tags.is_empty() {
                tags.push(Etag(p.to_string()));
            }
        }
        match tags.len() {
            1 => Self::Tag(tags.remove(0)),
            _ => Self::AnyOf(tags),
        }
    }

    /// Whether an existing entity with `current` may be replaced.
    pub fn allows(&self, current: &Etag) -> bool {
        match self {
            Self::Absent | Self::Any => true,
            Self::Tag(t) => t == current,
            Self::AnyOf(ts) => ts.contains(current),
        }
    }

    /// The version a conditional write must find, given the entity's `current` one (read only
    /// for a list): `None` for no condition; for a list, `current` when listed, else an entry
    /// (which will not match, so the write answers 412).
    pub fn expected(&self, current: Option<&Etag>) -> Option<Etag> {
        match self {
            Self::Absent | Self::Any => None,
            Self::Tag(t) => Some(t.clone()),
            Self::AnyOf(ts) => match current {
                Some(c) if ts.contains(c) => Some(c.clone()),
                _ => ts.first().cloned(),
            },
        }
    }

    /// Whether [`IfMatch::expected`] needs the current version.
    pub fn is_list(&self) -> bool {
        matches!(self, Self::AnyOf(_))
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

    #[test]
    fn a_list_matches_if_any_entry_does() {
        let list = IfMatch::parse(Some("\"a\", W/\"b\" ,\"c\""));
        assert_eq!(
            list,
            IfMatch::AnyOf(vec![Etag("a".into()), Etag("b".into()), Etag("c".into())])
        );
        assert!(list.allows(&Etag("b".into())));
        assert!(!list.allows(&Etag("d".into())));
        assert_eq!(
            list.expected(Some(&Etag("c".into()))),
            Some(Etag("c".into()))
        );
        assert_eq!(
            list.expected(Some(&Etag("d".into()))),
            Some(Etag("a".into()))
        );
        assert_eq!(IfMatch::parse(Some("\"a\", *")), IfMatch::Any);
    }
}
