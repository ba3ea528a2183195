//! Service connection strings (`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`) as
//! the CLI and the bench read them. Whatever one parses to, the string a policy prints for the
//! same host, name and key parses back to the same values.
#![no_main]

use certhub_core::{Policy, Rights, ServiceConnectionString};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match ServiceConnectionString::parse(&text) {
        Ok(cs) => {
            let policy = Policy {
                name: cs.policy.clone(),
                rights: Rights::default(),
                primary_key: cs.key.clone(),
                secondary_key: String::new(),
            };
            let printed = policy.connection_string(&cs.host);
            assert_eq!(ServiceConnectionString::parse(&printed), Ok(cs));
        }
        Err(e) => assert!(e.starts_with("connection string: ")),
    }
});
