//! The floor of fe2o3-amqp's acceptor for device telemetry: an AMQP server over TLS that
//! accepts every transfer on every link at once and stores nothing. `certhub bench telemetry
//! --transport amqp` against it measures what fe2o3 alone costs per message.
//!
//!   cargo run --release -- ADDR CERT.pem KEY.pem

use std::sync::Arc;

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, SessionAcceptor, SupportedReceiverSettleModes,
};
use fe2o3_amqp::types::definitions::ReceiverSettleMode;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use futures_util::FutureExt;
use rustls_pki_types::pem::PemObject;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&args[2])
        .expect("cert")
        .map(|c| c.expect("pem"))
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&args[3]).expect("key");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("config");
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(&args[1]).await.expect("bind");
    println!("listening on {}", listener.local_addr().expect("addr"));
    loop {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = tls.clone();
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else { return };
            let acceptor = ConnectionAcceptor::builder().container_id("floor").build();
            let Ok(mut connection) = acceptor.accept(stream).await else { return };
            let sessions = SessionAcceptor::new();
            while let Some(incoming) = connection.next_incoming_session().await {
                let Ok(mut session) = sessions.accept_incoming_session(incoming, &mut connection).await else {
                    return;
                };
                tokio::spawn(async move {
                    let links = LinkAcceptor::builder()
                        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
                        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
                        .build();
                    while let Some(attach) = session.next_incoming_attach().await {
                        let Ok(LinkEndpoint::Receiver(mut rx)) =
                            links.accept_incoming_attach(attach, &mut session).await
                        else {
                            continue;
                        };
                        tokio::spawn(async move {
                            // Accept what has arrived, in one disposition per run.
                            while let Ok(first) = rx.recv::<Body<Value>>().await {
                                let mut run = vec![first];
                                while let Some(Ok(next)) = rx.recv::<Body<Value>>().now_or_never() {
                                    run.push(next);
                                }
                                if rx.accept_all(run.iter()).await.is_err() {
                                    return;
                                }
                            }
                        });
                    }
                });
            }
        });
    }
}
