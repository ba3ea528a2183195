use std::fmt;

/// Azure's id character set: ASCII letters and digits plus these.
const SPECIAL: &str = "-.+%_#*?!(),=@$':";
const MAX_LEN: usize = 128;
/// An id used with CA authentication must fit a certificate CN (`deviceId` or
/// `deviceId/moduleId`), which X.509 caps at 64 characters.
pub const MAX_CN_LEN: usize = 64;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("the {kind} id is empty")]
    Empty { kind: &'static str },
    #[error("the {kind} id {id:?} is longer than {MAX_LEN} characters")]
    TooLong { kind: &'static str, id: String },
    #[error("the {kind} id {id:?} contains {bad:?}; ids use ASCII letters, digits and {SPECIAL}")]
    BadCharacter {
        kind: &'static str,
        id: String,
        bad: char,
    },
}

fn check(kind: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if id.len() > MAX_LEN {
        return Err(IdError::TooLong {
            kind,
            id: id.to_string(),
        });
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || SPECIAL.contains(*c)))
    {
        return Err(IdError::BadCharacter {
            kind,
            id: id.to_string(),
            bad,
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($name:ident, $kind:literal) => {
        #[doc = concat!("A validated ", $kind, " id (case-sensitive, at most 128 characters).")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                check($kind, &id)?;
                Ok(Self(id))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(DeviceId, "device");
id_type!(ModuleId, "module");

impl DeviceId {
    /// Whether a certificate CN can carry this id (CA authentication).
    pub fn fits_cn(&self) -> bool {
        self.0.len() <= MAX_CN_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_rules() {
        assert!(DeviceId::new("smart-x-widget-0001").is_ok());
        assert!(DeviceId::new("a.b+c%d_e#f*g?h!i(j)k,l=m@n$o'p:q").is_ok());
        assert!(matches!(DeviceId::new(""), Err(IdError::Empty { .. })));
        assert!(matches!(
            DeviceId::new("x".repeat(129)),
            Err(IdError::TooLong { .. })
        ));
        assert!(matches!(
            DeviceId::new("a/b"),
            Err(IdError::BadCharacter { bad: '/', .. })
        ));
        assert!(DeviceId::new("é").is_err());
        assert!(!DeviceId::new("x".repeat(65)).expect("valid").fits_cn());
    }
}
