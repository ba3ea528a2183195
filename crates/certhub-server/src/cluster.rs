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
//! Direct method calls go to the node that holds the session, found through presence (the
//! `session`/`ended` notices), on that node's own subject `certhub.{hub}.node.{node}.methods`
//! as NATS requests, so the caller's node gets the device's answer back.
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
    /// `cn` connected on the sending node (its connection number there): close it here.
    Session {
        cn: String,
        #[serde(default)]
        conn: u64,
    },
    /// `cn`'s connection `conn` on the sending node ended.
    Ended { cn: String, conn: u64 },
    /// The sending node is alive (every 2 s), and how it is doing.
    Heartbeat(NodeInfo),
    /// The sending node joined (or its NATS connection came back): every node answers with
    /// its roster.
    Hello,
    /// Sessions the sending node holds (identity, connection number), in answer to `Hello`.
    Roster { sessions: Vec<(String, u64)> },
    /// The sending node is stopping (it closed its sessions).
    Leaving,
    /// The sending node wrote this identity (device, or one module): forget what is kept of
    /// it for connections.
    Forget {
        device: String,
        module: Option<String>,
    },
    /// Cloud-to-device messages were queued for `device`: its session, here, reads the queue
    /// (shared in the database).
    C2d { device: String },
    /// A desired-properties patch for `cn`'s session, if it is here.
    Desired { cn: String, patch: String },
    /// `cn`'s persistent MQTT session as the sending node just stored it (its subscriptions),
    /// or `None`: it was discarded. Every node keeps them in memory, so a connect reads no
    /// database.
    Persistent {
        cn: String,
        subs: Option<std::collections::BTreeMap<String, u8>>,
    },
    /// The sending node wrote hub settings, trust (CAs) or the provisioning service's
    /// configuration: read them again now (every node also polls the database's change
    /// counters twice a second, in case this is missed).
    Changed,
    /// A device (and its modules) or one module was deleted: its persistent sessions go.
    Deleted {
        device: String,
        module: Option<String>,
    },
}

/// What a node says of itself in its heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Its own service API address (`host:port`).
    pub address: String,
    pub version: String,
    pub started_ms: i64,
    /// Device sessions it holds.
    pub sessions: usize,
    /// The highest telemetry number it knows to be stored.
    pub telemetry_seq: i64,
}

/// A direct method call sent to the node that holds the session.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MethodCall {
    /// The identity called (`deviceId` or `deviceId/moduleId`).
    cn: String,
    name: String,
    /// The request's JSON body, as text.
    payload: String,
    response_timeout_ms: u64,
}

/// That node's answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "camelCase")]
enum MethodAnswer {
    /// The device's status and payload (as text).
    Answered {
        status: i64,
        payload: String,
    },
    Failed {
        why: RemoteMethod,
    },
}

/// Why a method call to another node gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum RemoteMethod {
    /// No node holds a session of the identity.
    NotOnline,
    /// The session that holds it has too many calls outstanding.
    Busy,
    /// No answer within the response timeout.
    TimedOut,
}

/// One message on the notice subject: the notices a node queued within [`BATCH_WINDOW`].
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    node: String,
    notices: Vec<Notice>,
}

/// How long a node gathers notices before it publishes them as one message: a busy node sends
/// one message per window instead of one per connect and disconnect (each costs every NATS
/// server on the route and every node), and a kick waits at most this long.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);
/// A batch is published once its notices reach this size (NATS's default limit is 1 MB).
const BATCH_BYTES: usize = 256 * 1024;

/// What the publisher of notices takes.
enum Queued {
    Notice(Notice),
    /// Answered once every notice queued before it is handed to NATS.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// An [`Envelope`] as text, from the sender's id (as JSON) and its notices (each as JSON).
fn batch(node: &str, notices: &[String]) -> String {
    format!("{{\"node\":{node},\"notices\":[{}]}}", notices.join(","))
}

/// Publishes the notices queued by this node, in order, gathered into batches.
async fn publish_notices(
    client: async_nats::Client,
    subject: String,
    node: String,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Queued>,
) {
    let node = serde_json::to_string(&node).unwrap_or_else(|_| "\"\"".into());
    while let Some(first) = queue.recv().await {
        let mut parts: Vec<String> = Vec::new();
        let mut flushed = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        loop {
            match next.take() {
                Some(Queued::Notice(n)) => match serde_json::to_string(&n) {
                    Ok(text) => {
                        bytes += text.len() + 1;
                        parts.push(text);
                    }
                    Err(e) => tracing::warn!(error = %e, "a cluster notice not serialized"),
                },
                // Asked to send now: what is gathered goes at once.
                Some(Queued::Flush(done)) => {
                    flushed.push(done);
                    break;
                }
                None => {}
            }
            if bytes >= BATCH_BYTES {
                break;
            }
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(item)) => next = Some(item),
                _ => break,
            }
        }
        if !parts.is_empty()
            && let Err(e) = client
                .publish(subject.clone(), batch(&node, &parts).into())
                .await
        {
            tracing::warn!(error = %e, notices = parts.len(), "cluster notices were not sent");
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// This node's link to the others.
#[derive(Debug)]
pub struct Cluster {
    client: async_nats::Client,
    /// `certhub.{hub}`: the prefix of this hub's subjects.
    prefix: String,
    /// This process's id in the cluster (notices it sent come back and are ignored).
    node: String,
    /// Whether the NATS connection is up (false from a disconnection until it is back).
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Notices to publish (see [`publish_notices`]).
    queue: tokio::sync::mpsc::UnboundedSender<Queued>,
    /// Connections made to NATS so far (1, then one more at each reconnection).
    connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The NATS servers of `--nats` (comma-separated URLs), with the credentials taken out of
/// them: `nats://user:password@host:4222` (a user and password) or `nats://token@host:4222`
/// (a token), percent-encoded as in any URL. async-nats would ignore credentials left in a
/// URL, and a URL with a password must not reach a log or an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsServers {
    urls: Vec<String>,
    /// A user and its password, or a token (no password).
    auth: Option<(String, Option<String>)>,
}

impl std::fmt::Debug for NatsServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl NatsServers {
    /// `list` checked: every URL `nats://` or `tls://`, and one set of credentials at most
    /// (a NATS cluster's servers share their accounts; given in the first URL only, they
    /// serve for every server).
    pub fn parse(list: &str) -> Result<Self, String> {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let mut urls = Vec::new();
        let mut auth: Option<(String, Option<String>)> = None;
        for given in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let shown = redacted(given);
            let mut url = url::Url::parse(given).map_err(|e| {
                format!("--nats / nats_url: {shown:?} is not a nats:// URL ({e}; several servers of a NATS cluster: nats://a:4222,nats://b:4222)")
            })?;
            if !matches!(url.scheme(), "nats" | "tls") || url.host_str().is_none_or(str::is_empty) {
                return Err(format!(
                    "--nats / nats_url: {shown:?} is not a nats:// URL (several servers of a NATS cluster: nats://a:4222,nats://b:4222)"
                ));
            }
            if !url.username().is_empty() {
                let these = (decode(url.username()), url.password().map(decode));
                if auth.as_ref().is_some_and(|a| *a != these) {
                    return Err("--nats / nats_url: the servers' URLs carry different credentials; a NATS cluster's servers share their accounts: give the same user and password (or token) in each URL, or in the first only".into());
                }
                auth = Some(these);
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            urls.push(url.as_str().trim_end_matches('/').to_string());
        }
        if urls.is_empty() {
            return Err("--nats / nats_url is empty: give nats://host:4222 (several servers of a NATS cluster: nats://a:4222,nats://b:4222)".into());
        }
        Ok(Self { urls, auth })
    }

    /// The servers' URLs, without credentials: what logs and errors may show.
    pub fn shown(&self) -> String {
        self.urls.join(",")
    }

    fn authenticate(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        match &self.auth {
            Some((user, Some(password))) => {
                options.user_and_password(user.clone(), password.clone())
            }
            Some((token, None)) => options.token(token.clone()),
            None => options,
        }
    }
}

/// `url` with whatever stands between `://` and `@` (credentials) replaced by `***`.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => format!("{}***{}", &url[..start + 3], &url[at..]),
        _ => url.to_string(),
    }
}

impl Cluster {
    /// Connects to NATS and starts taking notices; `act` runs each one from another node.
    /// `hub` names the hub (one NATS may serve several hubs).
    pub async fn join(
        servers: &NatsServers,
        hub: &str,
        node: &str,
        act: impl Fn(&str, Notice) + Send + 'static,
        reconnected: impl Fn() + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let reconnected = std::sync::Arc::new(reconnected);
        let node = node.to_string();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = up.clone();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
        let counted = connections.clone();
        let url = servers.shown();
        let client = servers
            .authenticate(async_nats::ConnectOptions::new())
            .name(format!("certhub node {node}"))
            // What this node publishes is for the others (its own notices, ticks): the server
            // need not send them back to it.
            .no_echo()
            .event_callback(move |event| {
                let flag = flag.clone();
                let counted = counted.clone();
                let reconnected = reconnected.clone();
                async move {
                    use std::sync::atomic::Ordering;
                    match event {
                        async_nats::Event::Connected => {
                            // Before admitting devices again: what other nodes said meanwhile
                            // was not heard.
                            reconnected();
                            counted.fetch_add(1, Ordering::SeqCst);
                            flag.store(true, Ordering::SeqCst);
                            tracing::info!("cluster bus (NATS) connected: admitting devices");
                        }
                        async_nats::Event::Disconnected => {
                            flag.store(false, Ordering::SeqCst);
                            tracing::warn!("cluster bus (NATS) disconnected: no new device sessions until it is back (this node could not close them when another node revokes them)");
                        }
                        other => tracing::info!(event = %other, "cluster bus (NATS)"),
                    }
                }
            })
            // Several servers of a NATS cluster, comma-separated: any of them will do, and
            // the client moves to another when its server goes.
            .connect(servers.urls.clone())
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
                    Ok(e) => {
                        for notice in e.notices {
                            act(&e.node, notice);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "a cluster notice that does not parse"),
                }
            }
        });
        let (queue, queued) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(publish_notices(
            client.clone(),
            subject.clone(),
            node.clone(),
            queued,
        ));
        Ok(Self {
            client,
            prefix: format!("certhub.{hub}"),
            node,
            up,
            queue,
            connections,
        })
    }

    /// Connections made to NATS so far: a change means notices may have been missed.
    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this node hears the others now.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Where method calls for sessions on `node` go: one subject per node, which that node
    /// listens on (the caller finds the node through presence).
    fn methods_subject(&self, node: &str) -> String {
        format!("{}.node.{node}.methods", self.prefix)
    }

    /// Calls a direct method on `cn`'s session on `node`; its answer (status, payload).
    pub(crate) async fn call_method(
        &self,
        node: &str,
        cn: &str,
        name: &str,
        payload: &[u8],
        response_timeout: std::time::Duration,
    ) -> Result<(i64, Vec<u8>), RemoteMethod> {
        // Node ids come from other nodes' notices: only what a subject token may hold.
        if node.is_empty() || !node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(RemoteMethod::NotOnline);
        }
        let call = MethodCall {
            cn: cn.to_string(),
            name: name.to_string(),
            payload: String::from_utf8_lossy(payload).into_owned(),
            response_timeout_ms: response_timeout.as_millis() as u64,
        };
        let body = serde_json::to_vec(&call).map_err(|_| RemoteMethod::NotOnline)?;
        let request = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(response_timeout + std::time::Duration::from_secs(1)));
        match self
            .client
            .send_request(self.methods_subject(node), request)
            .await
        {
            Ok(message) => match serde_json::from_slice::<MethodAnswer>(&message.payload) {
                Ok(MethodAnswer::Answered { status, payload }) => {
                    Ok((status, payload.into_bytes()))
                }
                Ok(MethodAnswer::Failed { why }) => Err(why),
                Err(_) => Err(RemoteMethod::TimedOut),
            },
            // That node is gone (its presence not forgotten yet).
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                Err(RemoteMethod::NotOnline)
            }
            Err(_) => Err(RemoteMethod::TimedOut),
        }
    }

    /// Answers method calls from other nodes for the sessions here, through one subscription
    /// for the node (not one per session: a connect costs NATS nothing for methods). Each
    /// call is handed to `start` with the identity, and its outcome goes back. Runs until
    /// the NATS client is dropped.
    pub(crate) async fn serve_methods<F, Fut>(&self, start: F) -> Result<(), String>
    where
        F: Fn(String, String, Vec<u8>, std::time::Duration) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(i64, Vec<u8>), RemoteMethod>> + Send + 'static,
    {
        use futures_util::StreamExt;
        let subject = self.methods_subject(&self.node);
        let mut calls = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| format!("subscribing to {subject}: {e}"))?;
        let client = self.client.clone();
        let start = std::sync::Arc::new(start);
        tokio::spawn(async move {
            while let Some(message) = calls.next().await {
                let (Some(reply), Ok(call)) = (
                    message.reply.clone(),
                    serde_json::from_slice::<MethodCall>(&message.payload),
                ) else {
                    continue;
                };
                let client = client.clone();
                let start = start.clone();
                tokio::spawn(async move {
                    let timeout = std::time::Duration::from_millis(call.response_timeout_ms);
                    let answer =
                        match start(call.cn, call.name, call.payload.into_bytes(), timeout).await {
                            Ok((status, payload)) => MethodAnswer::Answered {
                                status,
                                payload: String::from_utf8_lossy(&payload).into_owned(),
                            },
                            Err(why) => MethodAnswer::Failed { why },
                        };
                    if let Ok(body) = serde_json::to_vec(&answer) {
                        let _ = client.publish(reply, body.into()).await;
                    }
                });
            }
        });
        Ok(())
    }

    /// A function that tells the other nodes (for callers that cannot wait: telling never
    /// waits, see [`Cluster::tell`]).
    pub(crate) fn teller(&self) -> impl Fn(Notice) + Send + Sync + 'static {
        let queue = self.queue.clone();
        move |notice| {
            let _ = queue.send(Queued::Notice(notice));
        }
    }

    /// Tells the other nodes: queued, and published with what else this node tells within
    /// [`BATCH_WINDOW`] (best effort: a failure is logged).
    pub(crate) async fn tell(&self, notice: Notice) {
        let _ = self.queue.send(Queued::Notice(notice));
    }

    /// Waits until every notice told so far is handed to NATS (not that it reached anyone:
    /// `client().flush()` after this for that).
    pub(crate) async fn sent(&self) {
        let (done, sent) = tokio::sync::oneshot::channel();
        if self.queue.send(Queued::Flush(done)).is_ok() {
            let _ = sent.await;
        }
    }

    /// The NATS connection (the telemetry stream shares it).
    pub(crate) fn client(&self) -> async_nats::Client {
        self.client.clone()
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
            notices: vec![
                Notice::Kick {
                    device: "d".into(),
                    module: None,
                    reason: "disabled".into(),
                },
                Notice::Ended {
                    cn: "d".into(),
                    conn: 7,
                },
            ],
        };
        let text = serde_json::to_string(&e).expect("json");
        assert!(text.contains("\"type\":\"kick\""), "{text}");
        let back: Envelope = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.notices, e.notices);
    }

    #[test]
    fn a_batch_is_an_envelope() {
        let notices = [
            Notice::Hello,
            Notice::Session {
                cn: "d/m".into(),
                conn: 3,
            },
        ];
        let parts: Vec<String> = notices
            .iter()
            .map(|n| serde_json::to_string(n).expect("json"))
            .collect();
        let text = batch(&serde_json::to_string("n\"1").expect("json"), &parts);
        let back: Envelope = serde_json::from_str(&text).expect(&text);
        assert_eq!(back.node, "n\"1");
        assert_eq!(back.notices, notices);
    }

    #[test]
    fn method_answers_round_trip_as_json() {
        for answer in [
            MethodAnswer::Answered {
                status: 200,
                payload: "{\"ok\":true}".into(),
            },
            MethodAnswer::Failed {
                why: RemoteMethod::NotOnline,
            },
            MethodAnswer::Failed {
                why: RemoteMethod::Busy,
            },
        ] {
            let text = serde_json::to_string(&answer).expect("json");
            let back: MethodAnswer = serde_json::from_str(&text).expect("parse");
            assert_eq!(back, answer, "{text}");
        }
    }
}

#[cfg(test)]
mod nats_url_tests {
    use super::NatsServers;

    #[test]
    fn credentials_come_out_of_the_urls_and_never_show() {
        let n = NatsServers::parse("nats://certhub:p%40ss@a:4222, nats://b:4222").expect("parses");
        assert_eq!(n.shown(), "nats://a:4222,nats://b:4222");
        assert_eq!(n.auth, Some(("certhub".into(), Some("p@ss".into()))));
        assert_eq!(format!("{n:?}"), "nats://a:4222,nats://b:4222");
        let t = NatsServers::parse("tls://s3cret-token@a:4222").expect("parses");
        assert_eq!(t.shown(), "tls://a:4222");
        assert_eq!(t.auth, Some(("s3cret-token".into(), None)));
        assert_eq!(
            NatsServers::parse("nats://a:4222").expect("parses").auth,
            None
        );
    }

    #[test]
    fn bad_lists_are_refused_without_their_secrets() {
        for (list, want) in [
            (
                "http://u:secret@b:2",
                "\"http://***@b:2\" is not a nats:// URL",
            ),
            (
                "nats://u:secret@a:1,nats://u:other@b:2",
                "different credentials",
            ),
            (" , ", "is empty"),
            ("not a url", "is not a nats:// URL"),
        ] {
            let e = NatsServers::parse(list).expect_err(list);
            assert!(e.contains(want), "{list}: {e}");
            assert!(!e.contains("secret") && !e.contains("other"), "{list}: {e}");
        }
    }
}
