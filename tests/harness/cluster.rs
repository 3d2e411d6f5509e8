//! Helpers of the shared broker suite (`tests/brokers.rs`): gateways sharing
//! a broker, driven over WebSocket and HTTP; [`broker`] is the fixture that
//! starts the broker (memory, Redis or NATS).

pub mod broker;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::doc::{self, Got, SNAPSHOT};
use crate::{Client, Gateway};

/// Polls `f` every 50 ms until it holds; panics after `limit`.
pub async fn until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/readyz` answers 200.
pub async fn ready(gw: &Gateway) -> bool {
    gw.get("/readyz").await.0 == 200
}

/// A WebSocket client with client id `id`.
pub async fn client(gw: &Gateway, id: &str) -> Client {
    Client::connect(&gw.ws_url(&format!("/ws?client_id={id}"))).await
}

/// Publishes and returns the `ack` or `error` reply.
pub async fn publish(c: &mut Client, id: u64, channel: &str, data: Value) -> Value {
    c.send_json(json!({"type":"publish","id":id,"channel":channel,"data":data}))
        .await;
    loop {
        let v = c.recv_json().await;
        if v["id"] == id && (v["type"] == "ack" || v["type"] == "error") {
            return v;
        }
    }
}

/// The next `n` `message` frames.
pub async fn messages(c: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = c.recv_json().await;
        if v["type"] == "message" {
            out.push(v);
        }
    }
    out
}

/// A channel's presence as sorted (client, node) pairs.
pub async fn presence(c: &mut Client, id: u64, channel: &str) -> Vec<(String, String)> {
    c.send_json(json!({"type":"presence","id":id,"channel":channel}))
        .await;
    let v = c.recv_type("presence").await;
    assert_eq!(v["id"], id);
    let mut list: Vec<(String, String)> = v["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|e| {
            (
                e["client"].as_str().unwrap_or("").to_owned(),
                e["node"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    list.sort();
    list
}

/// Publishes `data` on `channel` over `gw`'s HTTP API with `key` until it is
/// accepted (503 while the broker reconnects); returns the acknowledged seq.
pub async fn publish_until_accepted(gw: &Gateway, key: &str, channel: &str, data: Value) -> u64 {
    let body = json!({"channel": channel, "data": data}).to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, reply) = gw.post_json("/api/publish", Some(key), &body).await;
        if st == 200 {
            let v: Value = serde_json::from_str(&reply).expect("json");
            return v["seq"].as_u64().expect("seq");
        }
        assert_eq!(
            st, 503,
            "only unavailable while the broker is back: {st} {reply}"
        );
        assert!(Instant::now() < deadline, "publish never accepted again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts one reply of a limited channel: accepted, or refused as
/// `rate_limited` (anything else fails the test).
pub fn tally(r: &Value, ok: &mut u32, limited: &mut u32) {
    match (r["type"].as_str(), r["code"].as_str()) {
        (Some("ack"), _) => *ok += 1,
        (Some("error"), Some("rate_limited")) => *limited += 1,
        _ => panic!("unexpected {r}"),
    }
}

/// Burst 20, then 20/s for both nodes together (not 20/s each).
pub fn assert_within_the_shared_budget(ok: u32, limited: u32, started: Instant) {
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = 20.0 + 20.0 * elapsed;
    assert!(ok >= 20, "the burst went through: {ok}");
    assert!(
        f64::from(ok) <= allowed + 1.0,
        "{ok} accepted in {elapsed:.2}s (at most {allowed:.0} across both nodes)"
    );
    assert!(limited > 0);
}

/// One editor's view of a document: its copy, its version, and its acks.
pub struct Editor {
    /// Its connection.
    pub c: Client,
    /// Its copy of the state.
    pub state: serde_json::Map<String, Value>,
    /// Its version.
    pub version: i64,
    /// The epoch it follows.
    pub epoch: String,
    /// Acks received.
    pub acked: usize,
}

impl Editor {
    /// Subscribes `id` on `gw` to the document `channel`.
    pub async fn open(gw: &Gateway, id: &str, channel: &str) -> Editor {
        let mut c = client(gw, id).await;
        let (sub, snap) = c.subscribe_doc(1, channel, None).await;
        let snap = snap.expect("snapshot");
        let mut state = serde_json::Map::new();
        doc::apply_lww(&mut state, &snap);
        Editor {
            c,
            state,
            version: snap.version,
            epoch: sub["epoch"].as_str().expect("epoch").to_owned(),
            acked: 0,
        }
    }

    /// Reads one frame: applies a patch (versions must be gapless), counts an ack.
    pub async fn step(&mut self) {
        match self.c.recv_got().await {
            Got::Json(v) if v["type"] == "ack" => self.acked += 1,
            Got::Json(v) => panic!("unexpected reply {v}"),
            Got::Patch(p) if p.kind == SNAPSHOT => {
                // A new epoch (the store was re-seeded): the whole state again.
                self.epoch = p.epoch.clone();
                self.version = p.version;
                doc::apply_lww(&mut self.state, &p);
            }
            Got::Patch(p) => {
                assert_eq!(p.version, self.version + 1, "gapless, no duplicate: {p:?}");
                assert_eq!(p.epoch, self.epoch);
                self.version = p.version;
                doc::apply_lww(&mut self.state, &p);
            }
        }
    }
}

/// `GET /api/documents/{channel}` with the API key `key`.
pub async fn document_state(gw: &Gateway, key: &str, channel: &str) -> Value {
    let auth = format!("Bearer {key}");
    let (st, body) = crate::http(
        gw.addr,
        "GET",
        &format!("/api/documents/{channel}"),
        &[("authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}
