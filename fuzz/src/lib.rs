//! What the fuzz targets share: the fixed clock, the fixed trust store, and the record framing
//! that lets one input carry several certificates.
#![forbid(unsafe_code)]

use certhub_pki::{CertificateDer, UnixTime};

/// The targets' clock: 2030-01-01T00:00:00Z, inside the validity of the long-lived
/// certificates of `data/pki` (2025 to 2099) and after the expiry of the old root (2028).
pub const NOW: i64 = 1_893_456_000;

/// Instants a chain input can pick (two bits of a verify record): now, before every
/// certificate, after the old root expired but before 2031, after every certificate.
pub const CLOCKS: [i64; 4] = [NOW, 1_600_000_000, 1_900_000_000, 4_200_000_000];

/// `secs` as the verifier's time.
pub fn unix(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs.max(0).unsigned_abs()))
}

/// The trust anchors of the chain target (see `data/generate`): an ECDSA root, an RSA root and
/// a root that expired in 2028.
pub const ANCHORS: [&str; 3] = [
    include_str!("../data/pki/root.pem"),
    include_str!("../data/pki/root-rsa.pem"),
    include_str!("../data/pki/old-root.pem"),
];

/// The ECDSA root alone (the CA the upload target proves possession against).
pub const ROOT: &str = ANCHORS[0];

/// A verification certificate signed by [`ROOT`] with CN [`POP_CODE`], valid until 2099.
pub const POP: &str = include_str!("../data/pki/pop.pem");

/// The verification code [`POP`] carries.
pub const POP_CODE: &str = "FUZZ-POP-CODE-0001";

/// The DER of one PEM certificate of `data/pki`.
pub fn certificate(pem: &str) -> CertificateDer<'static> {
    let certs =
        certhub_pki::read_certificates(pem.as_bytes()).expect("data/pki holds certificates");
    certs.into_iter().next().expect("one certificate")
}

/// One record of a framed input: a header byte and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub header: u8,
    pub payload: &'a [u8],
}

/// Splits `data` into records: a header byte, a 16-bit big-endian length, then that many bytes
/// of payload. A record cut short by the end of the input keeps what is there, so every input
/// means something.
pub fn records(mut data: &[u8]) -> Vec<Record<'_>> {
    let mut out = Vec::new();
    while let Some((&header, rest)) = data.split_first() {
        let (len, rest) = match rest {
            [hi, lo, rest @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
            _ => (rest.len(), &[][..]),
        };
        let len = len.min(rest.len());
        let (payload, tail) = rest.split_at(len);
        out.push(Record { header, payload });
        data = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let data = [0, 0, 2, b'a', b'b', 0x88, 0, 0, 1, 0, 9, b'c'];
        assert_eq!(
            records(&data),
            vec![
                Record {
                    header: 0,
                    payload: b"ab"
                },
                Record {
                    header: 0x88,
                    payload: b""
                },
                Record {
                    header: 1,
                    payload: b"c"
                },
            ]
        );
    }
}
