//! The nodes of one hub telling each other what must act at once (issue 15): over NATS core
//! subjects, `certhub.{hub}.notice`, each a JSON notice naming the node that sent it. What
//! needs no promptness (trust and provisioning changes) follows through the database's change
//! counters instead (`AppState::follow_changes`); what must close a live session on whichever
//! node holds it travels here:
//!
//! - a device or module disabled, deleted or given another credential (`kick`), so its session
//!   on another node closes within milliseconds, not at its next connection;
//! - a new session of an identity (`session`), so the older one on another node closes: the
//!   newest connection wins across nodes as it does on one;
//! - work for a session that is not on this node: C2D messages queued (`c2d`, a wake-up: the
//!   queue is in the database) and desired-property patches (`desired`).
//!
//! Delivery is at most once (core NATS). A node that misses a notice (its NATS connection was
//! down) still refuses the device at its next CONNECT, which reads the registry.

use serde::{Deserialize, Serialize};

/// What one node tells the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub(crate) enum Notice {
    /// Close the sessions of a device (and its modules), or of one module.
    Kick {
        device: String,
        module: Option<String>,
        reason: String,
    },
    /// `cn` connected on the sending node: close it here.
    Session { cn: String },
    /// Cloud-to-device messages were queued for `device`: its session, here, reads the queue
    /// (shared in the database).
    C2d { device: String },
    /// A desired-properties patch for `cn`'s session, if it is here.
    Desired { cn: String, patch: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    node: String,
    #[serde(flatten)]
    notice: Notice,
}

/// This node's link to the others.
#[derive(Debug)]
pub struct Cluster {
    client: async_nats::Client,
    subject: String,
    /// This process's id in the cluster (notices it sent come back and are ignored).
    node: String,
}

impl Cluster {
    /// Connects to NATS and starts taking notices; `act` runs each one from another node.
    /// `hub` names the hub (one NATS may serve several hubs).
    pub async fn join(
        url: &str,
        hub: &str,
        act: impl Fn(Notice) + Send + 'static,
    ) -> Result<Self, String> {
        let node = crate::random::uuid_v4_text();
        let client = async_nats::ConnectOptions::new()
            .name(format!("certhub node {node}"))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("cluster bus (NATS) connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("cluster bus (NATS) disconnected: sessions on other nodes are not closed by what happens here until it is back")
                    }
                    other => tracing::info!(event = %other, "cluster bus (NATS)"),
                }
            })
            .connect(url)
            .await
            .map_err(|e| format!("the cluster bus at {url}: {e}"))?;
        let subject = format!("certhub.{hub}.notice");
        let mut notices = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| format!("the cluster bus at {url}: subscribing to {subject}: {e}"))?;
        // Published after the subscription is in place: the server has it once this flush
        // returns, so no notice sent from now on is missed.
        client
            .flush()
            .await
            .map_err(|e| format!("the cluster bus at {url}: {e}"))?;
        let me = node.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(message) = notices.next().await {
                match serde_json::from_slice::<Envelope>(&message.payload) {
                    Ok(e) if e.node == me => {}
                    Ok(e) => act(e.notice),
                    Err(e) => tracing::warn!(error = %e, "a cluster notice that does not parse"),
                }
            }
        });
        Ok(Self {
            client,
            subject,
            node,
        })
    }

    /// Tells the other nodes (best effort: a failure is logged).
    pub(crate) async fn tell(&self, notice: Notice) {
        let envelope = Envelope {
            node: self.node.clone(),
            notice,
        };
        let Ok(payload) = serde_json::to_vec(&envelope) else {
            return;
        };
        if let Err(e) = self
            .client
            .publish(self.subject.clone(), payload.into())
            .await
        {
            tracing::warn!(error = %e, "a cluster notice was not sent");
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_as_json() {
        let e = Envelope {
            node: "n1".into(),
            notice: Notice::Kick {
                device: "d".into(),
                module: None,
                reason: "disabled".into(),
            },
        };
        let text = serde_json::to_string(&e).expect("json");
        assert!(text.contains("\"type\":\"kick\""), "{text}");
        let back: Envelope = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.notice, e.notice);
    }
}
