use std::fmt;
use std::str::FromStr;

use rcgen::{KeyPair, RsaKeySize};

use crate::PkiError;

/// Key algorithms the toolkit generates. Every one of them is accepted by rustls/webpki with
/// aws-lc-rs, so every certificate certhub issues can authenticate a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
    Ed25519,
}

impl KeyAlgorithm {
    pub const ALL: [KeyAlgorithm; 6] = [
        Self::EcdsaP256,
        Self::EcdsaP384,
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
        Self::Ed25519,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
            Self::Ed25519 => "ed25519",
        }
    }

    /// Generates a fresh key pair with the operating system's random source.
    pub fn generate(self) -> Result<KeyPair, PkiError> {
        let key = match self {
            Self::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            Self::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            Self::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
            Self::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
            Self::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
            Self::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
        };
        Ok(key?)
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, PkiError> {
        let norm: String = s
            .to_ascii_lowercase()
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect();
        Ok(match norm.as_str() {
            "ecdsap256" | "p256" | "ecp256" | "ecdsa" | "ec" | "prime256v1" | "secp256r1" => {
                Self::EcdsaP256
            }
            "ecdsap384" | "p384" | "ecp384" | "secp384r1" => Self::EcdsaP384,
            "rsa2048" | "rsa" => Self::Rsa2048,
            "rsa3072" => Self::Rsa3072,
            "rsa4096" => Self::Rsa4096,
            "ed25519" => Self::Ed25519,
            n if n.starts_with("rsa") && n[3..].parse::<u32>().is_ok_and(|bits| bits < 2048) => {
                return Err(PkiError::Unsupported(format!(
                    "algorithm {s:?} refused: RSA keys under 2048 bits are too weak and no TLS stack certhub serves accepts them; use rsa-2048 or larger"
                )));
            }
            _ => {
                let names: Vec<&str> = Self::ALL.iter().map(|a| a.name()).collect();
                return Err(PkiError::Unsupported(format!(
                    "unknown algorithm {s:?}; choose one of {}",
                    names.join(", ")
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_weak_rsa_is_refused() {
        for a in KeyAlgorithm::ALL {
            assert_eq!(a.name().parse::<KeyAlgorithm>().unwrap(), a);
        }
        let e = "rsa-1024".parse::<KeyAlgorithm>().unwrap_err().to_string();
        assert!(e.contains("under 2048"), "{e}");
        assert!("dsa".parse::<KeyAlgorithm>().is_err());
    }
}
