//! The IoT Hub query language of `POST /devices/query`: parsed, then evaluated and projected
//! against a fixed device twin and a fixed module twin. Refusals name a column inside the query.
#![no_main]

use std::sync::OnceLock;

use certhub_twin::QueryError;
use certhub_twin::query::{self, Projection};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fn twins() -> &'static [Value; 2] {
    static TWINS: OnceLock<[Value; 2]> = OnceLock::new();
    TWINS.get_or_init(|| {
        [
            json!({
                "deviceId": "sensor-01",
                "etag": "AAAAAAAAAAE=",
                "status": "enabled",
                "connectionState": "Connected",
                "authenticationType": "sas",
                "version": 7,
                "tags": {
                    "location": {"region": "us", "floor": 3},
                    "owner": null,
                    "labels": ["a", "b"]
                },
                "properties": {
                    "desired": {"rate": 5, "$version": 2},
                    "reported": {
                        "temp": 21.5,
                        "battery": 80,
                        "big": 18446744073709551615u64,
                        "neg": -9223372036854775808i64,
                        "tiny": 1e-300,
                        "fw": "1.2.0",
                        "online": true,
                        "config": {"mode": "eco"},
                        "$version": 4
                    }
                }
            }),
            json!({
                "deviceId": "sensor-01",
                "moduleId": "m1",
                "status": "enabled",
                "version": 2,
                "tags": {},
                "properties": {"desired": {"$version": 1}, "reported": {"$version": 1}}
            }),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match query::parse(text) {
        Ok(q) => {
            for twin in twins() {
                if q.matches(twin) {
                    let row = q.project(twin);
                    match &q.projection {
                        Projection::All => assert_eq!(&row, twin),
                        _ => assert!(row.is_object()),
                    }
                }
            }
            assert_eq!(q.is_count(), q.count_alias().is_some());
        }
        Err(e) => {
            let columns = text.chars().count() + 1;
            match &e {
                QueryError::TooLong { len } => assert_eq!(*len, text.len()),
                QueryError::Syntax { column, .. }
                | QueryError::Unsupported { column, .. }
                | QueryError::TooDeep { column } => {
                    assert!(
                        (1..=columns).contains(column),
                        "column {column} of {columns}"
                    );
                }
            }
            assert!(!e.to_string().is_empty());
        }
    }
});
