//! The test hub: the API router over a real SQLite store in a temporary folder.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use certhub_core::{Policy, sign_token};
use certhub_server::{AppState, router};
use certhub_store::Store;
use serde_json::Value;
use tower::ServiceExt;

pub struct Hub {
    pub state: AppState,
    pub policies: Vec<Policy>,
    _dir: tempfile::TempDir,
}

pub async fn hub() -> Hub {
    hub_with_code_ttl(std::time::Duration::from_secs(3600)).await
}

pub async fn hub_with_code_ttl(ttl: std::time::Duration) -> Hub {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("certhub.db"))
        .await
        .expect("store");
    let state = AppState::with_code_ttl(store, vec!["localhost".into()], ttl)
        .await
        .expect("state");
    Hub {
        policies: state.policies(),
        state,
        _dir: dir,
    }
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Hub {
    pub fn token(&self, policy: &str) -> String {
        let p = self
            .policies
            .iter()
            .find(|p| p.name == policy)
            .expect("policy");
        sign_token("localhost", &p.primary_key, Some(policy), now() + 600)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        if_match: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(m) = if_match {
            req = req.header("if-match", m);
        }
        let req = req
            .header("content-type", "application/json")
            .body(Body::from(body.unwrap_or("").to_string()))
            .expect("request");
        let resp = router(self.state.clone())
            .oneshot(req)
            .await
            .expect("response");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    pub async fn owner(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let t = self.token("iothubowner");
        self.call(method, path, Some(&t), None, body).await
    }

    /// GET as the owner, returning the status and content type without reading the body.
    pub async fn head_only(&self, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method("GET")
            .uri(path)
            .header("authorization", self.token("iothubowner"))
            .body(Body::empty())
            .expect("request");
        let resp = router(self.state.clone())
            .oneshot(req)
            .await
            .expect("response");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (resp.status(), ct)
    }

    pub async fn count(&self) -> i64 {
        self.state
            .store()
            .device_stats()
            .await
            .expect("stats")
            .total
    }
}

pub fn message(v: &Value) -> String {
    v["Message"].as_str().unwrap_or_default().to_string()
}
