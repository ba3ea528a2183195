//! MQTT over WebSockets on the 443 listener, at the wire: what the hub does with upgrades and
//! frames the Azure SDKs never send. The client is tokio-tungstenite over rustls, with the
//! widget's chain in the TLS handshake; the SDK paths are in python_device.rs and
//! python_features.rs.

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use common::wire::{packet, string};

const ID: &str = "smart-x-widget-0001";

/// The widget's CONNECT (X.509: no password).
fn connect_packet() -> Vec<u8> {
    let mut body = string("MQTT");
    body.extend([4, 0x82, 0, 60]);
    body.extend(string(ID));
    body.extend(string(&format!("localhost/{ID}/?api-version=2021-04-12")));
    packet(0x10, body)
}

struct Hub {
    _t: tempfile::TempDir,
    dir: std::path::PathBuf,
    data: std::path::PathBuf,
    _process: common::HubProcess,
    port: u16,
    tls: tokio_rustls::TlsConnector,
}

/// A hub with Company-X registered and the widget enrolled; a TLS client with its chain.
fn hub() -> Hub {
    let t = common::tmp();
    let dir = t.path().to_path_buf();
    let data = dir.join("data");
    let process = common::start_hub(&data);
    common::enroll_widget(&dir, &data);
    let widget = dir.join("pki/devices").join(ID);
    let tls = common::device_tls(&data, &widget);
    Hub {
        port: process.https_port(),
        _t: t,
        dir,
        data,
        _process: process,
        tls,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens `GET /$iothub/websocket` asking for `protocol` (none: no header).
async fn open(hub: &Hub, protocol: Option<&str>) -> Result<(Ws, Option<String>), WsError> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", hub.port))
        .await
        .expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = hub.tls.connect(name, tcp).await.expect("TLS handshake");
    let mut request = format!("wss://localhost:{}/$iothub/websocket", hub.port)
        .into_client_request()
        .expect("request");
    if let Some(p) = protocol {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
    }
    let (ws, response) = tokio_tungstenite::client_async(request, tls).await?;
    let selected = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((ws, selected))
}

/// What the hub sends next: binary payload, or `None` once the connection is closed.
async fn next_binary(ws: &mut Ws) -> Option<Vec<u8>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the hub answers or closes within 5 s")
        {
            Some(Ok(Message::Binary(b))) => return Some(b.to_vec()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

#[test]
fn an_upgrade_must_ask_for_the_mqtt_or_amqp_subprotocol() {
    let hub = hub();
    runtime().block_on(async {
        for protocol in [None, Some("AMQPWSB11"), Some("chat, superchat")] {
            match open(&hub, protocol).await {
                Err(WsError::Http(response)) => {
                    assert_eq!(response.status(), 400, "{protocol:?}");
                    let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or(b""))
                        .to_string();
                    assert!(
                        body.contains("mqtt") && body.contains("AMQPWSB10"),
                        "the answer says what to ask for: {body}"
                    );
                }
                Ok(_) => panic!("{protocol:?} was upgraded"),
                Err(e) => panic!("{protocol:?}: {e}"),
            }
        }
        // AMQP's is accepted too (the Node AmqpWs test speaks it: tests/interop/node/amqp.js).
        let (_, selected) = open(&hub, Some("AMQPWSB10")).await.expect("upgrade");
        assert_eq!(selected.as_deref(), Some("AMQPWSB10"));
        // The SDKs' request is accepted and the subprotocol confirmed.
        let (mut ws, selected) = open(&hub, Some("mqtt")).await.expect("upgrade");
        assert_eq!(selected.as_deref(), Some("mqtt"));
        ws.send(Message::binary(connect_packet()))
            .await
            .expect("send");
        assert_eq!(
            next_binary(&mut ws).await,
            Some(vec![0x20, 2, 0, 0]),
            "CONNACK 0"
        );
    });
}

#[test]
fn text_frames_and_frames_past_the_packet_limit_close_the_connection() {
    let hub = hub();
    runtime().block_on(async {
        // A text frame, even one holding a valid CONNECT's bytes, is not MQTT over WebSockets.
        let (mut ws, _) = open(&hub, Some("mqtt")).await.expect("upgrade");
        let text = String::from_utf8_lossy(&connect_packet()).to_string();
        ws.send(Message::text(text)).await.expect("send");
        assert_eq!(next_binary(&mut ws).await, None, "closed without CONNACK");

        // After CONNECT, a frame larger than the largest MQTT packet (256 KiB + 4 KiB) closes
        // the session before anything of it is stored.
        let (mut ws, _) = open(&hub, Some("mqtt")).await.expect("upgrade");
        ws.send(Message::binary(connect_packet()))
            .await
            .expect("send");
        assert_eq!(next_binary(&mut ws).await, Some(vec![0x20, 2, 0, 0]));
        let mut body = string(&format!("devices/{ID}/messages/events/"));
        body.extend([0, 1]);
        body.extend(vec![b'x'; 300 * 1024]);
        let _ = ws.send(Message::binary(packet(0x32, body))).await;
        assert_eq!(next_binary(&mut ws).await, None, "closed without PUBACK");

        // A packet split across frames is one packet: frame boundaries mean nothing.
        let (mut ws, _) = open(&hub, Some("mqtt")).await.expect("upgrade");
        let connect = connect_packet();
        let (a, b) = connect.split_at(7);
        ws.send(Message::binary(a.to_vec())).await.expect("send");
        ws.send(Message::binary(b.to_vec())).await.expect("send");
        assert_eq!(next_binary(&mut ws).await, Some(vec![0x20, 2, 0, 0]));
        let mut body = string(&format!("devices/{ID}/messages/events/"));
        body.extend([0, 7]);
        body.extend(b"in two frames");
        let publish = packet(0x32, body);
        let (a, b) = publish.split_at(publish.len() / 2);
        ws.send(Message::binary(a.to_vec())).await.expect("send");
        ws.send(Message::binary(b.to_vec())).await.expect("send");
        assert_eq!(
            next_binary(&mut ws).await,
            Some(vec![0x40, 2, 0, 7]),
            "PUBACK 7"
        );
    });
    let events = common::certhub_at(
        &hub.dir,
        &hub.data,
        &["messages", "tail", "--device", ID, "--idle-exit", "1"],
    )
    .ok();
    assert!(events.stdout.contains("in two frames"), "{events}");
    assert!(
        !events.stdout.contains("xxxx"),
        "the oversized frame stored nothing: {events}"
    );
}
