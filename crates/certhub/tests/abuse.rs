//! Idle TCP connections and junk handshakes do not keep a legitimate device out.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Pub, enroll_widget, mosquitto_pub, s, start_hub, tmp};

#[test]
fn idle_and_junk_connections_do_not_block_devices() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    enroll_widget(d, &data);

    let addr = format!("127.0.0.1:{}", hub_process.mqtt_port);
    // More idle connections than the hub has handshake slots (256), and junk handshakes.
    let mut held = Vec::new();
    for _ in 0..400 {
        held.push(TcpStream::connect(&addr).expect("connect"));
    }
    for i in 0..50u8 {
        let mut junk = TcpStream::connect(&addr).expect("connect");
        let _ = junk.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, i, i, i, i, i]);
        let _ = junk.write_all(b"GET / HTTP/1.1\r\n\r\n");
        held.push(junk);
    }

    let started = Instant::now();
    let out = mosquitto_pub(
        d,
        &Pub {
            port: hub_process.mqtt_port,
            ca: s(&data.join("tls/server-ca.pem")),
            widget: "pki/devices/smart-x-widget-0001",
            client_id: "smart-x-widget-0001",
            topic: "devices/smart-x-widget-0001/messages/events/",
            message: "still here",
            extra: &[],
        },
    );
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "the device was kept out: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "the device needed {elapsed:?} among {} idle and junk connections",
        held.len()
    );
    drop(held);
}
