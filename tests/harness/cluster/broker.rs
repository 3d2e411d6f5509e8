//! The broker fixture of the shared broker suite (`tests/brokers.rs`): one
//! scenario, written once, runs on the memory, Redis and NATS brokers. A
//! [`Broker`] starts the broker process (none for memory, a `redis-server`,
//! a `nats-server -js`) and yields the `[broker]` section and the gateway
//! configs that use it.

use std::time::Duration;

use super::{ready, until};
use crate::Gateway;
use crate::nats::NatsServer;
use crate::redis::RedisServer;

/// The API key of the default tenant in every config of the suite.
pub const KEY: &str = "k";

/// Which broker a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// The embedded single-node broker: no process, one node.
    Memory,
    /// A real `redis-server` (no persistence).
    Redis,
    /// A real `nats-server -js` (file store, kept across restarts).
    Nats,
}

/// A running broker of one kind (killed on drop).
pub struct Broker {
    /// Its kind.
    pub kind: BrokerKind,
    /// The `redis-server`s (shards), when `kind` is Redis.
    pub redis: Vec<RedisServer>,
    /// The `nats-server`, when `kind` is NATS.
    pub nats: Option<NatsServer>,
}

impl Broker {
    /// Starts a broker of `kind` (one shard for Redis).
    pub fn start(kind: BrokerKind) -> Broker {
        Broker::start_sharded(kind, 1)
    }

    /// Starts a broker of `kind`; Redis with `shards` servers (channels are
    /// spread over them by consistent hashing).
    pub fn start_sharded(kind: BrokerKind, shards: usize) -> Broker {
        let mut b = Broker {
            kind,
            redis: Vec::new(),
            nats: None,
        };
        match kind {
            BrokerKind::Memory => {}
            BrokerKind::Redis => {
                b.redis = (0..shards.max(1)).map(|_| RedisServer::start()).collect()
            }
            BrokerKind::Nats => b.nats = Some(NatsServer::start()),
        }
        b
    }

    /// Several gateways share this broker (memory: one node only).
    pub fn multi_node(&self) -> bool {
        self.kind != BrokerKind::Memory
    }

    /// The broker's history and documents survive a restart of its process
    /// (NATS: the JetStream file store; Redis runs without persistence).
    pub fn keeps_data_across_restart(&self) -> bool {
        self.kind == BrokerKind::Nats
    }

    /// The first (or only) `redis-server`.
    pub fn redis(&self) -> &RedisServer {
        self.redis.first().expect("a Redis broker")
    }

    /// The `nats-server`.
    pub fn nats(&self) -> &NatsServer {
        self.nats.as_ref().expect("a NATS broker")
    }

    /// The `[broker]` section.
    pub fn section(&self, presence_ttl: &str) -> String {
        match self.kind {
            BrokerKind::Memory => {
                format!("[broker]\nkind = \"memory\"\npresence_ttl = \"{presence_ttl}\"\n")
            }
            BrokerKind::Redis => {
                let urls: Vec<String> = self
                    .redis
                    .iter()
                    .map(|r| format!("\"{}\"", r.url()))
                    .collect();
                format!(
                    "[broker]\nkind = \"redis\"\nredis_urls = [{}]\npresence_ttl = \"{presence_ttl}\"\n",
                    urls.join(", ")
                )
            }
            BrokerKind::Nats => format!(
                "[broker]\nkind = \"nats\"\nnats_urls = [\"{}\"]\npresence_ttl = \"{presence_ttl}\"\n",
                self.nats().url()
            ),
        }
    }

    /// A gateway config of node `node` on this broker: tenant `default` with
    /// the API key [`KEY`], documents on `doc:*`, a history of 100.
    pub fn config(&self, node: &str, presence_ttl: &str) -> String {
        format!(
            r#"
[server]
node_id = "{node}"
drain_timeout = "2s"

{}
[tenants.default]
api_keys = ["{KEY}"]
documents = ["doc:*"]
history_size = 100
history_ttl = "5m"
"#,
            self.section(presence_ttl)
        )
    }

    /// Starts one gateway of node `node` (presence TTL 30 s).
    pub fn gateway(&self, node: &str) -> Gateway {
        Gateway::start(&self.config(node, "30s"))
    }

    /// Starts `n` gateways `node-a`, `node-b`, … (memory: one, whatever `n`)
    /// with `extra` appended to each config, and waits until all are ready.
    pub async fn cluster_with(&self, n: usize, presence_ttl: &str, extra: &str) -> Cluster {
        let n = if self.multi_node() { n.max(1) } else { 1 };
        let names: Vec<String> = (0..n)
            .map(|i| format!("node-{}", char::from(b'a' + i as u8)))
            .collect();
        let gws: Vec<Gateway> = names
            .iter()
            .map(|node| Gateway::start(&format!("{}{extra}", self.config(node, presence_ttl))))
            .collect();
        for gw in &gws {
            until("ready", Duration::from_secs(15), async || ready(gw).await).await;
        }
        Cluster { names, gws }
    }

    /// [`Broker::cluster_with`] with the default presence TTL (30 s).
    pub async fn cluster(&self, n: usize) -> Cluster {
        self.cluster_with(n, "30s", "").await
    }

    /// Kills the broker process (SIGKILL); memory has none.
    pub fn kill(&mut self) {
        for r in &mut self.redis {
            r.kill();
        }
        if let Some(n) = &mut self.nats {
            n.kill();
        }
    }

    /// Starts the broker process again on the same port: Redis empty (no
    /// persistence), NATS with its store (see
    /// [`Broker::keeps_data_across_restart`]).
    pub fn restart(&mut self) {
        for r in &mut self.redis {
            r.restart();
        }
        if let Some(n) = &mut self.nats {
            n.restart();
        }
    }

    /// Restarts the broker with all its data lost (Redis: a restart without
    /// persistence; NATS: an empty store).
    pub fn lose_data(&mut self) {
        for r in &mut self.redis {
            r.kill();
            r.restart();
        }
        if let Some(n) = &mut self.nats {
            n.restart_empty();
        }
    }
}

/// Gateways of one broker. On memory every node index names the single node,
/// so a scenario written for "node a and node b" runs on one node.
pub struct Cluster {
    /// Node ids, in order.
    pub names: Vec<String>,
    /// The gateways, in order.
    pub gws: Vec<Gateway>,
}

impl Cluster {
    /// Node `i` (the last one when there are fewer).
    pub fn node(&self, i: usize) -> &Gateway {
        &self.gws[i.min(self.gws.len() - 1)]
    }

    /// The node id of node `i` (the last one when there are fewer).
    pub fn name(&self, i: usize) -> &str {
        &self.names[i.min(self.names.len() - 1)]
    }

    /// Node `i`, mutably (to kill or restart it).
    pub fn node_mut(&mut self, i: usize) -> &mut Gateway {
        let last = self.gws.len() - 1;
        &mut self.gws[i.min(last)]
    }

    /// Nodes 0 and 1 at once, node 1 mutably (multi-node scenarios only).
    pub fn pair_mut(&mut self) -> (&Gateway, &mut Gateway) {
        let running = self.gws.len();
        match &mut self.gws[..] {
            [a, b, ..] => (a, b),
            _ => panic!("two nodes needed, {running} running"),
        }
    }
}
