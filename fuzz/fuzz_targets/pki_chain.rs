//! Device chain verification, as the hub runs it at CONNECT and `certhub pki verify` runs it:
//! arbitrary DER chains against a fixed trust store of three roots.
//!
//! An input is a list of records (see `certhub_fuzz::records`): a header below 0x80 adds a
//! certificate to the current chain, a header from 0x80 verifies the chain so far and starts
//! the next one (bits 0-1 pick the clock from `CLOCKS`, bit 2 the server usage, bit 3 the
//! device id check). Every chain is verified twice against a store that lives for the whole
//! input (so earlier chains fill its cache of verified links) and once against a fresh store:
//! the cache must never change a decision.
#![no_main]

use certhub_fuzz::{ANCHORS, CLOCKS, certificate, records, unix};
use certhub_pki::{
    CertificateDer, Rejection, TrustStore, Usage, VerifiedChain, verify_chain, verify_device_chain,
};
use libfuzzer_sys::fuzz_target;

const DEVICE_ID: &str = "fuzz-device";

fn store() -> TrustStore {
    TrustStore::new(ANCHORS.map(certificate)).expect("the fixed anchors are valid")
}

fn verify(
    chain: &[CertificateDer<'_>],
    trust: &TrustStore,
    flags: u8,
) -> Result<VerifiedChain, Rejection> {
    let now = unix(CLOCKS[usize::from(flags & 3)]);
    let device_id = (flags & 8 != 0).then_some(DEVICE_ID);
    if flags & 4 == 0 {
        return verify_device_chain(chain, trust, device_id, now);
    }
    match chain.split_first() {
        Some((leaf, intermediates)) => {
            verify_chain(leaf, intermediates, trust, now, Usage::ServerAuth)
        }
        None => verify_device_chain(chain, trust, device_id, now),
    }
}

fuzz_target!(|data: &[u8]| {
    let shared = store();
    let mut chain: Vec<CertificateDer<'_>> = Vec::new();
    let check = |chain: &[CertificateDer<'_>], flags: u8| {
        let first = verify(chain, &shared, flags);
        let again = verify(chain, &shared, flags);
        let fresh = verify(chain, &store(), flags);
        assert_eq!(first, fresh, "the link cache changed a decision");
        assert_eq!(again, fresh, "the link cache changed a decision");
        match &fresh {
            Ok(v) => {
                assert!(v.anchor_index < shared.len());
                assert!(v.path.len() >= 2, "a path runs from the leaf to an anchor");
            }
            Err(r) => assert!(!r.detail.is_empty(), "a refusal says why"),
        }
    };
    for record in records(data) {
        if record.header < 0x80 {
            chain.push(CertificateDer::from(record.payload));
        } else {
            check(&chain, record.header);
            chain.clear();
        }
    }
    if !chain.is_empty() {
        check(&chain, 0);
    }
});
