use std::fmt;

use crate::generate_key;

/// What a shared access policy may do (azure-protocol 4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights(u8);

impl Rights {
    pub const REGISTRY_READ: Rights = Rights(1);
    pub const REGISTRY_WRITE: Rights = Rights(2);
    pub const SERVICE_CONNECT: Rights = Rights(4);
    pub const DEVICE_CONNECT: Rights = Rights(8);
    /// The provisioning service's rights (Azure DPS's names): read and write enrollments and
    /// enrollment groups, read and delete registration states.
    pub const ENROLLMENT_READ: Rights = Rights(16);
    pub const ENROLLMENT_WRITE: Rights = Rights(32);
    pub const REGISTRATION_STATUS_READ: Rights = Rights(64);
    pub const REGISTRATION_STATUS_WRITE: Rights = Rights(128);
    /// Every right of the provisioning service.
    pub const PROVISIONING_OWNER: Rights = Rights(16 | 32 | 64 | 128);
    const NAMES: [(Rights, &'static str); 8] = [
        (Self::REGISTRY_READ, "RegistryRead"),
        (Self::REGISTRY_WRITE, "RegistryWrite"),
        (Self::SERVICE_CONNECT, "ServiceConnect"),
        (Self::DEVICE_CONNECT, "DeviceConnect"),
        (Self::ENROLLMENT_READ, "EnrollmentRead"),
        (Self::ENROLLMENT_WRITE, "EnrollmentWrite"),
        (Self::REGISTRATION_STATUS_READ, "RegistrationStatusRead"),
        (Self::REGISTRATION_STATUS_WRITE, "RegistrationStatusWrite"),
    ];

    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    /// The rights of `self` that `other` does not have.
    pub const fn without(self, other: Rights) -> Rights {
        Rights(self.0 & !other.0)
    }

    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// Parses Azure's comma-joined form, e.g. `RegistryRead, RegistryWrite`.
    pub fn parse(s: &str) -> Option<Rights> {
        let mut r = Rights(0);
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (bit, _) = Self::NAMES
                .iter()
                .find(|(_, n)| n.eq_ignore_ascii_case(part))?;
            r = r.union(*bit);
        }
        Some(r)
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(bit, _)| self.contains(*bit))
            .map(|(_, n)| *n)
            .collect();
        f.write_str(&names.join(", "))
    }
}

/// The provisioning service's owner policy, made on first start (also in a hub made before
/// provisioning existed).
pub const PROVISIONING_OWNER_POLICY: &str = "provisioningserviceowner";

/// A shared access policy: a name, its rights and two keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub rights: Rights,
    pub primary_key: String,
    pub secondary_key: String,
}

impl Policy {
    /// Azure IoT Hub's five default policies and the provisioning service's owner policy
    /// (`provisioningserviceowner`, as Azure DPS names it), with fresh keys.
    pub fn defaults() -> Vec<Policy> {
        let all = Rights::REGISTRY_READ
            .union(Rights::REGISTRY_WRITE)
            .union(Rights::SERVICE_CONNECT)
            .union(Rights::DEVICE_CONNECT);
        [
            ("iothubowner", all),
            ("service", Rights::SERVICE_CONNECT),
            ("device", Rights::DEVICE_CONNECT),
            ("registryRead", Rights::REGISTRY_READ),
            (
                "registryReadWrite",
                Rights::REGISTRY_READ.union(Rights::REGISTRY_WRITE),
            ),
            (PROVISIONING_OWNER_POLICY, Rights::PROVISIONING_OWNER),
        ]
        .into_iter()
        .map(|(name, rights)| Policy {
            name: name.to_string(),
            rights,
            primary_key: generate_key(),
            secondary_key: generate_key(),
        })
        .collect()
    }

    /// The connection string the Azure service SDKs take.
    pub fn connection_string(&self, host: &str) -> String {
        format!(
            "HostName={host};SharedAccessKeyName={};SharedAccessKey={}",
            self.name, self.primary_key
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_round_trip() {
        let r = Rights::parse("RegistryRead, RegistryWrite").expect("parse");
        assert!(r.contains(Rights::REGISTRY_WRITE));
        assert!(!r.contains(Rights::SERVICE_CONNECT));
        assert_eq!(r.to_string(), "RegistryRead, RegistryWrite");
        assert!(Rights::parse("Everything").is_none());
        assert_eq!(Policy::defaults().len(), 6);
    }
}
