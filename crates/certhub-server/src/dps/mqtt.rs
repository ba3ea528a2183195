//! Provisioning over MQTT (azure-protocol 7, azure-more-protocols 6.3): a CONNECT whose
//! username is `{idScope}/registrations/{registrationId}/api-version=...` on the device
//! listener (8883, or MQTT over WebSockets on 443) is a provisioning client. It subscribes to
//! `$dps/registrations/res/#`, publishes its register request and polls the operation; every
//! answer is a QoS 0 PUBLISH on `$dps/registrations/res/{status}/?$rid={rid}` (`$rid` first:
//! the Python SDK reads it so). The session is clean whatever the device asked, holds no
//! place among the hub's device sessions and ends after a few minutes at most.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use certhub_pki::CertificateDer;
use futures_util::StreamExt;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3::{ConnectAck, ConnectAckReason, Packet, SubscribeReturnCode};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Answer, Request};
use crate::mqtt::session::{Conn, write};
use crate::state::AppState;

/// A provisioning session ends this long after CONNECT, whatever it does: registering takes
/// one request and a poll or two.
const SESSION_LIMIT: Duration = Duration::from_secs(300);
/// Register requests one connection may make.
const MAX_REGISTRATIONS: usize = 8;
/// The response topic filter the SDKs subscribe to.
const RESPONSE_FILTER: &str = "$dps/registrations/res/#";

/// What a CONNECT username says when it is a provisioning client's:
/// `{idScope}/registrations/{registrationId}/...`.
pub(crate) fn is_provisioning(username: Option<&str>) -> Option<(&str, &str)> {
    let u = username?;
    let mut parts = u.splitn(4, '/');
    let scope = parts.next()?;
    if parts.next()? != "registrations" {
        return None;
    }
    let id = parts.next()?;
    (!scope.is_empty() && !id.is_empty() && !id.starts_with('?')).then_some((scope, id))
}

/// Serves a provisioning client from its CONNECT to its end.
pub(crate) async fn serve<S>(
    framed: &mut Conn<S>,
    state: &AppState,
    connect: &certhub_mqtt::Connect,
    peer: SocketAddr,
    chain: &[CertificateDer<'static>],
    transport: &'static str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Some((scope, id)) = is_provisioning(connect.username.as_deref()) else {
        return;
    };
    let refuse = |reason: &'static str, detail: String| async move {
        let req = Request {
            registration_id: &connect.client_id,
            peer,
            chain,
            token: None,
            payload: None,
            force: false,
            transport,
        };
        super::audit_refusal(state, &req, reason, &detail).await;
    };
    if !scope.eq_ignore_ascii_case(state.id_scope()) {
        refuse(
            "unknown-id-scope",
            format!(
                "the username names ID scope {scope:?}; this hub's is {} (certhub dps id-scope); peer {peer} over {transport}",
                state.id_scope()
            ),
        )
        .await;
        connack(framed, ConnectAckReason::NotAuthorized).await;
        return;
    }
    if id != connect.client_id {
        refuse(
            "username-mismatch",
            format!(
                "the username names registration {id:?} but the client id is {:?}; peer {peer} over {transport}",
                connect.client_id
            ),
        )
        .await;
        connack(framed, ConnectAckReason::NotAuthorized).await;
        return;
    }
    let Ok(_place) = state.dps().mqtt_sessions.clone().try_acquire_owned() else {
        tracing::warn!(%peer, "provisioning session limit reached");
        state.metrics().connect("overloaded");
        connack(framed, ConnectAckReason::ServiceUnavailable).await;
        return;
    };
    if !connack(framed, ConnectAckReason::ConnectionAccepted).await {
        return;
    }
    let token = connect
        .password
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let keep_alive = Duration::from_secs(u64::from(connect.keep_alive.max(10))) * 3 / 2;
    let deadline = tokio::time::Instant::now() + SESSION_LIMIT;
    let mut registered = false;
    let mut attempts = 0;
    loop {
        let next = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + keep_alive),
            framed.next(),
        )
        .await;
        let packet = match next {
            Ok(Some(Ok((packet, _)))) => packet,
            _ => return,
        };
        match packet {
            Packet::Subscribe {
                packet_id,
                topic_filters,
            } => {
                let status = topic_filters
                    .iter()
                    .map(|(f, _)| {
                        if &**f == RESPONSE_FILTER {
                            SubscribeReturnCode::Success(QoS::AtLeastOnce)
                        } else {
                            SubscribeReturnCode::Failure
                        }
                    })
                    .collect();
                if !write(framed, Packet::SubscribeAck { packet_id, status }).await {
                    return;
                }
            }
            Packet::Unsubscribe { packet_id, .. } => {
                if !write(framed, Packet::UnsubscribeAck { packet_id }).await {
                    return;
                }
            }
            Packet::PingRequest => {
                if !write(framed, Packet::PingResponse).await {
                    return;
                }
            }
            Packet::Publish(p) => {
                if let Some(packet_id) = p.packet_id
                    && p.qos == QoS::AtLeastOnce
                    && !write(framed, Packet::PublishAck { packet_id }).await
                {
                    return;
                }
                let Some(request) = parse_topic(&p.topic) else {
                    // Not a provisioning topic: the session ends, as the hub ends a device's
                    // on a topic it may not use.
                    return;
                };
                let answer = match request.operation {
                    Operation::Register => {
                        attempts += 1;
                        if attempts > MAX_REGISTRATIONS {
                            return;
                        }
                        let answer = super::register_request(
                            state,
                            Request {
                                registration_id: id,
                                peer,
                                chain,
                                token: token.as_deref(),
                                payload: None,
                                force: false,
                                transport,
                            },
                            &p.payload,
                        )
                        .await;
                        registered |= answer.status < 300;
                        answer
                    }
                    Operation::Status(operation) => {
                        // A poll proves the connection's credential again unless this session
                        // registered (an SDK may reconnect while it polls).
                        if registered
                            || super::prove_again(state, id, chain, token.as_deref()).await
                        {
                            super::operation_status(state, id, &operation).await
                        } else {
                            Answer::error(&super::unauthorized())
                        }
                    }
                };
                if !write(framed, response(&request.rid, &answer)).await {
                    return;
                }
            }
            Packet::Disconnect => return,
            // Anything else (a second CONNECT, QoS 2 flow, ...) ends the session.
            _ => return,
        }
    }
}

async fn connack<S>(framed: &mut Conn<S>, code: ConnectAckReason) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    write(
        framed,
        Packet::ConnectAck(ConnectAck {
            return_code: code,
            session_present: false,
        }),
    )
    .await
}

#[derive(Debug, PartialEq, Eq)]
enum Operation {
    Register,
    Status(String),
}

#[derive(Debug, PartialEq, Eq)]
struct TopicRequest {
    operation: Operation,
    rid: String,
}

/// `$dps/registrations/PUT/iotdps-register/?$rid={rid}` or
/// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}`.
fn parse_topic(topic: &str) -> Option<TopicRequest> {
    let rest = topic.strip_prefix("$dps/registrations/")?;
    let (path, query) = rest.split_once("/?")?;
    let mut rid = None;
    let mut op = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(v)
            .decode_utf8_lossy()
            .into_owned();
        match k {
            "$rid" => rid = Some(v),
            "operationId" => op = Some(v),
            _ => {}
        }
    }
    let rid = rid.filter(|r| !r.is_empty() && r.len() <= 128 && !r.contains(['$', '&', '/']))?;
    let operation = match path {
        "PUT/iotdps-register" => Operation::Register,
        "GET/iotdps-get-operationstatus" => Operation::Status(op?),
        _ => return None,
    };
    Some(TopicRequest { operation, rid })
}

/// The register body: `{"registrationId": ..., "payload": ...}` (Python adds
/// `"payload": null`; Node leaves it out). Returns the payload.
pub(crate) fn check_body(
    body: &Value,
    id: &str,
) -> Result<Option<Value>, certhub_core::dps::DpsError> {
    let Some(obj) = body.as_object() else {
        return Err(certhub_core::dps::DpsError::bad_request(
            "the register request's body must be a JSON object {\"registrationId\": ...}",
        ));
    };
    if let Some(given) = obj.get("registrationId").filter(|v| !v.is_null())
        && given.as_str().is_none_or(|g| !g.eq_ignore_ascii_case(id))
    {
        return Err(certhub_core::dps::DpsError::bad_request(format!(
            "the body's registrationId {given} is not the registration id the request names ({id:?})"
        )));
    }
    if obj.contains_key("tpm") {
        return Err(certhub_core::dps::DpsError::bad_request(
            "TPM attestation is not supported by certhub; use X.509 or a symmetric key",
        ));
    }
    Ok(obj.get("payload").filter(|p| !p.is_null()).cloned())
}

fn response(rid: &str, answer: &Answer) -> Packet {
    let mut topic = format!("$dps/registrations/res/{}/?$rid={rid}", answer.status);
    if let Some(s) = answer.retry_after {
        topic.push_str(&format!("&retry-after={s}"));
    }
    Packet::Publish(Box::new(Publish {
        dup: false,
        retain: false,
        qos: QoS::AtMostOnce,
        topic: topic.into(),
        packet_id: None,
        payload: Bytes::from(answer.body.to_string()),
        properties: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioning_usernames_are_told_from_hub_ones() {
        assert_eq!(
            is_provisioning(Some(
                "0ne00ABCDEF/registrations/dev1/api-version=2019-03-31&ClientVersion=x"
            )),
            Some(("0ne00ABCDEF", "dev1"))
        );
        assert_eq!(
            is_provisioning(Some("hub.example.com/dev1/?api-version=2021-04-12")),
            None
        );
        // A hub device whose id is "registrations".
        assert_eq!(
            is_provisioning(Some("hub/registrations/?api-version=1")),
            None
        );
        assert_eq!(is_provisioning(None), None);
    }

    #[test]
    fn topics_of_both_sdks_parse() {
        assert_eq!(
            parse_topic("$dps/registrations/PUT/iotdps-register/?$rid=7c9e"),
            Some(TopicRequest {
                operation: Operation::Register,
                rid: "7c9e".into()
            })
        );
        assert_eq!(
            parse_topic(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=4.a.b"
            ),
            Some(TopicRequest {
                operation: Operation::Status("4.a.b".into()),
                rid: "1".into()
            })
        );
        assert_eq!(parse_topic("devices/d/messages/events/"), None);
        assert_eq!(
            parse_topic("$dps/registrations/PUT/iotdps-register/?$rid="),
            None
        );
    }
}
