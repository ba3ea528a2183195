//! The Event Hubs-compatible endpoint with the Azure Event Hubs SDKs, against a real `certhub
//! serve`: telemetry readers written for Azure IoT Hub, given only the connection string
//! `certhub hub connection-string --event-hub` prints. Python's `azure-eventhub` (its own AMQP
//! stack: SASL ANONYMOUS, a CBS token for `sb://{host}/{entity}`, `$management`, a partition
//! receiver with a selector filter) reads what the widget sent over MQTT, with its properties
//! and annotations, from the start, from a checkpointed offset and sequence number, in another
//! consumer group and from `@latest` (tests/interop/eventhub.py). The SDKs dial 5671 (the
//! device SDK 8883); the test port map sends them to this hub's ports.

mod common;

use common::{certhub_at, enroll_widget, start_hub_on, tmp};

const HOST: &str = "127.0.0.7";

#[test]
fn the_python_event_hubs_sdk_reads_device_telemetry() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub = start_hub_on(&data, HOST, &[]);
    enroll_widget(d, &data);
    let cs = certhub_at(d, &data, &["hub", "connection-string"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let eh = certhub_at(d, &data, &["hub", "connection-string", "--event-hub"])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(
        eh.starts_with(&format!(
            "Endpoint=sb://{HOST}/;SharedAccessKeyName=iothubowner;"
        )) && eh.ends_with(";EntityPath=certhub"),
        "{eh}"
    );
    common::event_hubs_checks(&hub, d, &data, HOST, &cs, &eh);
}
