//! The client handle and the task that owns the connection.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::backoff::{Backoff, Clock, Random, ThreadRandom, TokioClock};
use crate::document::{DocumentChange, FrameVerdict, Replica, StatePatch, encode_lww};
use crate::error::{Error, Result};
use crate::event::{Event, Events, PresenceChange, ReconnectReason, SubscribeCause};
use crate::positions::{Position, Positions, Verdict};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Close codes after which retrying cannot help.
const FATAL_CLOSE: [u16; 2] = [4001, 4003];

/// How to reach a gateway, and the client's timings.
///
/// ```
/// use std::time::Duration;
/// use switchyard_client::{Backoff, Options};
///
/// let opts = Options::new("ws://127.0.0.1:8080/ws")
///     .token("secret")
///     .client_id("backend-1")
///     .backoff(Backoff { base_delay: Duration::from_millis(200), ..Backoff::default() });
/// assert_eq!(opts.url(), "ws://127.0.0.1:8080/ws");
/// ```
#[derive(Clone)]
pub struct Options {
    url: String,
    token: Option<String>,
    client_id: Option<String>,
    backoff: Backoff,
    connect_timeout: Duration,
    request_timeout: Duration,
    publish_timeout: Duration,
    heartbeat: Option<Duration>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("client_id", &self.client_id)
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// The gateway's WebSocket URL: `ws://host:port/ws` or `/ws/{tenant}` (`wss://` needs a TLS feature of tokio-tungstenite).
    pub fn new(url: impl Into<String>) -> Self {
        Options {
            url: url.into(),
            token: None,
            client_id: None,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(30),
            heartbeat: None,
            clock: Arc::new(TokioClock),
            random: Arc::new(ThreadRandom),
        }
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Credentials, sent as `Authorization: Bearer <token>`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Stable client id (`X-Client-Id`); by default the one the first
    /// `welcome` assigned is reused on reconnects.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Reconnect policy (default: the seed's, see [`Backoff`]).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Time for the TCP connect, the upgrade and the `welcome` (10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Time to wait for the reply to `presence`, `ping`, `subscribe` (10 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// How long a publish or patch may stay unacknowledged, across reconnects (30 s).
    pub fn publish_timeout(mut self, d: Duration) -> Self {
        self.publish_timeout = d;
        self
    }

    /// Silence after which an application `ping` checks the connection; no
    /// frame within the request timeout (at most this) counts as a dead
    /// server. Default: the welcome's `heartbeatMs`. `Duration::ZERO` turns it off.
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.heartbeat = Some(d);
        self
    }

    /// The clock the reconnect loop sleeps on (tests: [`FakeClock`](crate::FakeClock)).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The jitter's random source (tests: [`SequenceRandom`](crate::SequenceRandom)).
    pub fn random(mut self, random: impl Random) -> Self {
        self.random = Arc::new(random);
        self
    }
}

/// The `welcome` of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Session id.
    pub session: String,
    /// Client id.
    pub client: String,
    /// Node id.
    pub node: String,
    /// The gateway's heartbeat interval.
    pub heartbeat: Duration,
}

/// A `subscribed` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The channel.
    pub channel: String,
    /// Its epoch.
    pub epoch: String,
    /// Latest seq (a document: version) at subscribe time.
    pub seq: u64,
    /// The reply said `recovered:true` and the epoch matched.
    pub recovered: bool,
}

/// A publish acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The message's seq; `None` when the router dropped it.
    pub seq: Option<u64>,
}

/// One entry of a presence list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct PresenceEntry {
    /// Client id.
    #[serde(default)]
    pub client: String,
    /// Principal (empty for anonymous clients).
    #[serde(default)]
    pub principal: String,
    /// Node.
    #[serde(default)]
    pub node: String,
}

/// Options of one publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// The message id (default: a new UUID v4). Reused on every retry.
    pub msg_id: Option<String>,
    /// Not delivered back to this connection (`skipSelf`).
    pub skip_self: bool,
    /// Overrides [`Options::publish_timeout`].
    pub timeout: Option<Duration>,
}

/// Counters, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections opened after the first.
    pub reconnects: u64,
    /// Messages or document frames dropped as already delivered.
    pub duplicates_dropped: u64,
    /// Gaps seen in live streams (each resubscribed).
    pub gaps: u64,
    /// Publishes and patches sent again after a reconnect (same msgId).
    pub resent: u64,
}

#[derive(Debug, Default)]
struct Counters {
    reconnects: AtomicU64,
    duplicates_dropped: AtomicU64,
    gaps: AtomicU64,
    resent: AtomicU64,
}

#[derive(Debug, Default)]
struct Shared {
    counters: Counters,
    client_id: Mutex<Option<String>>,
    positions: Mutex<HashMap<String, Position>>,
}

enum Cmd {
    Subscribe {
        channel: String,
        presence: bool,
        reply: oneshot::Sender<Result<Subscribed>>,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        key: u64,
        channel: String,
        data: Value,
        msg_id: String,
        skip_self: bool,
        reply: oneshot::Sender<Result<Ack>>,
    },
    Cancel {
        key: u64,
    },
    Document {
        channel: String,
        reply: oneshot::Sender<Result<Subscribed>>,
    },
    Patch {
        key: u64,
        channel: String,
        delta: Bytes,
        msg_id: String,
        reply: oneshot::Sender<Result<u64>>,
    },
    Request {
        frame: Value,
        reply: oneshot::Sender<Result<Value>>,
    },
    DropConnection {
        reply: oneshot::Sender<bool>,
    },
    Close,
}

/// A handle to one logical connection to a gateway, which survives
/// reconnects and node drains. Cheap to clone; the connection stops when
/// [`close`](Client::close) is called or the last handle is dropped.
///
/// ```no_run
/// use serde_json::json;
/// use switchyard_client::{Client, Event, Options};
///
/// # async fn run() -> Result<(), switchyard_client::Error> {
/// let (client, mut events) =
///     Client::connect(Options::new("ws://127.0.0.1:8080/ws").client_id("bot")).await?;
/// client.subscribe("room:1").await?;
/// let ack = client.publish("room:1", json!({"text": "hi"})).await?;
/// println!("published at seq {:?}", ack.seq);
/// while let Some(event) = events.recv().await {
///     if let Event::Message { channel, seq, data, .. } = event {
///         println!("{channel} #{seq}: {data}");
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    keys: Arc<AtomicU64>,
    request_timeout: Duration,
    publish_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Starts the client and waits for its first connection: resolves with
    /// the handle and the event stream once `welcome` arrived, or fails with
    /// the error that stopped it ([`Error::Refused`], [`Error::GaveUp`]).
    /// Failed attempts are retried with backoff meanwhile. Needs a tokio runtime.
    pub async fn connect(options: Options) -> Result<(Client, Events)> {
        let (client, events, first) = Self::spawn(options);
        match first.await {
            Ok(Ok(_)) => Ok((client, events)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Starts the client without waiting: it connects (and reconnects) in the
    /// background; commands made meanwhile wait for the connection
    /// (publishes, subscriptions) or fail with [`Error::Disconnected`]
    /// (presence, ping). Needs a tokio runtime.
    pub fn start(options: Options) -> (Client, Events) {
        let (client, events, _) = Self::spawn(options);
        (client, events)
    }

    fn spawn(options: Options) -> (Client, Events, oneshot::Receiver<Result<Welcome>>) {
        let (tx, cmds) = mpsc::unbounded_channel();
        let (etx, erx) = mpsc::unbounded_channel();
        let (ftx, frx) = oneshot::channel();
        let shared = Arc::new(Shared::default());
        if let Ok(mut id) = shared.client_id.lock() {
            id.clone_from(&options.client_id);
        }
        let client = Client {
            tx,
            shared: shared.clone(),
            keys: Arc::new(AtomicU64::new(1)),
            request_timeout: options.request_timeout,
            publish_timeout: options.publish_timeout,
        };
        let driver = Driver::new(options, cmds, etx, shared, ftx);
        tokio::spawn(driver.run());
        (client, Events { rx: erx }, frx)
    }

    fn send(&self, cmd: Cmd) -> Result<()> {
        self.tx.send(cmd).map_err(|_| Error::Closed)
    }

    /// Subscribes to a message channel; resolves with the `subscribed` reply.
    /// Messages arrive as [`Event::Message`]. The subscription is resumed with
    /// `since` after every reconnect (see [`Event::Subscribed`]).
    pub async fn subscribe(&self, channel: &str) -> Result<Subscribed> {
        self.subscribe_with(channel, false).await
    }

    /// Like [`subscribe`](Client::subscribe), asking for `join`/`leave`
    /// presence events ([`Event::Presence`]) when `presence` is set.
    pub async fn subscribe_with(&self, channel: &str, presence: bool) -> Result<Subscribed> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Subscribe {
            channel: channel.to_owned(),
            presence,
            reply,
        })?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// Unsubscribes from a channel or document (fire and forget).
    pub fn unsubscribe(&self, channel: &str) -> Result<()> {
        self.send(Cmd::Unsubscribe {
            channel: channel.to_owned(),
        })
    }

    /// Publishes `data` to `channel`; resolves with the acknowledgement. The
    /// message carries a new UUID `msgId` that is reused when it is resent
    /// after a reconnect, so the gateway applies it once. The command is
    /// queued when this is called (before the future is polled).
    pub fn publish(
        &self,
        channel: &str,
        data: Value,
    ) -> impl Future<Output = Result<Ack>> + Send + 'static {
        self.publish_with(channel, data, PublishOptions::default())
    }

    /// [`publish`](Client::publish) with options.
    pub fn publish_with(
        &self,
        channel: &str,
        data: Value,
        options: PublishOptions,
    ) -> impl Future<Output = Result<Ack>> + Send + 'static {
        let key = self.keys.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Cmd::Publish {
            key,
            channel: channel.to_owned(),
            data,
            msg_id: options.msg_id.unwrap_or_else(new_msg_id),
            skip_self: options.skip_self,
            reply,
        });
        let timeout = options.timeout.unwrap_or(self.publish_timeout);
        let tx = self.tx.clone();
        let what = format!("ack of a publish to {channel}");
        async move {
            sent?;
            wait_acked(rx, timeout, what, move || {
                let _ = tx.send(Cmd::Cancel { key });
            })
            .await
        }
    }

    /// Opens a document channel (a tenant's `documents` pattern): subscribes
    /// and resolves with the `subscribed` reply. Its snapshot and patches
    /// arrive as [`Event::Document`], in version order; after a reconnect it
    /// resumes by `{epoch, version}`.
    pub async fn document(&self, channel: &str) -> Result<Subscribed> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Document {
            channel: channel.to_owned(),
            reply,
        })?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// Sends an LWW patch (a JSON object: keys to set, `null` deletes) to an
    /// open document; resolves with the acknowledged version. Like publishes,
    /// a patch keeps its `msgId` across retries and is applied once.
    pub fn patch(
        &self,
        channel: &str,
        delta: &Value,
    ) -> impl Future<Output = Result<u64>> + Send + 'static {
        let bytes = encode_lww(delta);
        let sent = bytes.and_then(|b| self.patch_queue(channel, b, None));
        let timeout = self.publish_timeout;
        let tx = self.tx.clone();
        let what = format!("ack of a patch to {channel}");
        async move {
            let (key, rx) = sent?;
            wait_acked(rx, timeout, what, move || {
                let _ = tx.send(Cmd::Cancel { key });
            })
            .await
        }
    }

    /// Sends a patch of raw merge-policy bytes (e.g. for a CRDT merge plugin),
    /// with an optional `msgId`.
    pub fn patch_bytes(
        &self,
        channel: &str,
        delta: Bytes,
        msg_id: Option<String>,
    ) -> impl Future<Output = Result<u64>> + Send + 'static {
        let sent = self.patch_queue(channel, delta, msg_id);
        let timeout = self.publish_timeout;
        let tx = self.tx.clone();
        let what = format!("ack of a patch to {channel}");
        async move {
            let (key, rx) = sent?;
            wait_acked(rx, timeout, what, move || {
                let _ = tx.send(Cmd::Cancel { key });
            })
            .await
        }
    }

    fn patch_queue(
        &self,
        channel: &str,
        delta: Bytes,
        msg_id: Option<String>,
    ) -> Result<(u64, oneshot::Receiver<Result<u64>>)> {
        let key = self.keys.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Patch {
            key,
            channel: channel.to_owned(),
            delta,
            msg_id: msg_id.unwrap_or_else(new_msg_id),
            reply,
        })?;
        Ok((key, rx))
    }

    /// Who is subscribed to `channel`, on every node.
    pub async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>> {
        let reply = self
            .request(json!({"type":"presence","channel":channel}))
            .await?;
        match reply.get("clients") {
            Some(list) => serde_json::from_value(list.clone())
                .map_err(|e| Error::bad_frame(format!("presence list: {e}"))),
            None => Ok(Vec::new()),
        }
    }

    /// An application-level ping; resolves with the round-trip time.
    pub async fn ping(&self) -> Result<Duration> {
        let t0 = Instant::now();
        self.request(json!({"type":"ping"})).await?;
        Ok(t0.elapsed())
    }

    async fn request(&self, frame: Value) -> Result<Value> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Request { frame, reply })?;
        let what = "reply".to_owned();
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(r) => r.unwrap_or(Err(Error::Closed)),
            Err(_) => Err(Error::Timeout {
                what,
                after: self.request_timeout,
            }),
        }
    }

    /// The client id (given, or assigned by the first `welcome`).
    pub fn client_id(&self) -> Option<String> {
        self.shared.client_id.lock().ok().and_then(|g| g.clone())
    }

    /// The last position seen on a message channel: where a reconnect resumes.
    pub fn position(&self, channel: &str) -> Option<Position> {
        self.shared
            .positions
            .lock()
            .ok()
            .and_then(|m| m.get(channel).cloned())
    }

    /// Counters since the start.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            reconnects: c.reconnects.load(Ordering::Relaxed),
            duplicates_dropped: c.duplicates_dropped.load(Ordering::Relaxed),
            gaps: c.gaps.load(Ordering::Relaxed),
            resent: c.resent.load(Ordering::Relaxed),
        }
    }

    /// Test hook: drops the current connection as a network failure would
    /// (no close handshake); the client reconnects as usual. Commands queued
    /// before it (a publish) are written first, their replies never read.
    /// Resolves with `false` when there was no open connection.
    pub async fn simulate_connection_loss(&self) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.send(Cmd::DropConnection { reply }).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Closes for good: close 1000, no reconnect; pending calls fail with
    /// [`Error::Closed`]; the stream ends with [`Event::Closed`].
    pub fn close(&self) {
        let _ = self.tx.send(Cmd::Close);
    }
}

async fn wait_acked<T>(
    rx: oneshot::Receiver<Result<T>>,
    timeout: Duration,
    what: String,
    cancel: impl FnOnce(),
) -> Result<T> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(r) => r.unwrap_or(Err(Error::Closed)),
        Err(_) => {
            cancel();
            Err(Error::Timeout {
                what,
                after: timeout,
            })
        }
    }
}

fn new_msg_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

// ---------------------------------------------------------------------------
// The driver: one task owns the socket and all state.

struct Sub {
    presence: bool,
    confirmed: bool,
    recovering: bool,
    waiters: Vec<oneshot::Sender<Result<Subscribed>>>,
}

struct Doc {
    replica: Replica,
    confirmed: bool,
    recovering: bool,
    waiters: Vec<oneshot::Sender<Result<Subscribed>>>,
}

struct Pub {
    channel: String,
    data: Value,
    msg_id: String,
    skip_self: bool,
    reply: oneshot::Sender<Result<Ack>>,
    id: Option<u64>,
    sends: u32,
}

struct PatchQ {
    channel: String,
    delta: Bytes,
    msg_id: String,
    reply: oneshot::Sender<Result<u64>>,
    id: Option<u64>,
    sends: u32,
}

enum Pending {
    Subscribe {
        channel: String,
        cause: SubscribeCause,
    },
    DocSubscribe {
        channel: String,
        cause: SubscribeCause,
    },
    Publish {
        key: u64,
    },
    Patch {
        key: u64,
    },
    Request(oneshot::Sender<Result<Value>>),
    Fire,
}

enum Flow {
    Continue,
    Stop,
    Drop(oneshot::Sender<bool>),
}

enum End {
    /// The app closed the client.
    Stop,
    /// The connection ended; reconnect unless `code` is fatal.
    Lost { code: u16, reason: String },
}

struct Driver {
    opts: Options,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<Event>,
    shared: Arc<Shared>,
    first: Option<oneshot::Sender<Result<Welcome>>>,
    client_id: Option<String>,
    subs: BTreeMap<String, Sub>,
    positions: Positions,
    docs: BTreeMap<String, Doc>,
    pending: HashMap<u64, Pending>,
    publishes: BTreeMap<u64, Pub>,
    patches: BTreeMap<u64, PatchQ>,
    next_id: u64,
    retries: u32,
    ever_opened: bool,
    shutdown_in: Option<Duration>,
    online: bool,
    outbox: Vec<Message>,
}

impl Driver {
    fn new(
        opts: Options,
        cmds: mpsc::UnboundedReceiver<Cmd>,
        events: mpsc::UnboundedSender<Event>,
        shared: Arc<Shared>,
        first: oneshot::Sender<Result<Welcome>>,
    ) -> Driver {
        Driver {
            client_id: opts.client_id.clone(),
            opts,
            cmds,
            events,
            shared,
            first: Some(first),
            subs: BTreeMap::new(),
            positions: Positions::default(),
            docs: BTreeMap::new(),
            pending: HashMap::new(),
            publishes: BTreeMap::new(),
            patches: BTreeMap::new(),
            next_id: 1,
            retries: 0,
            ever_opened: false,
            shutdown_in: None,
            online: false,
            outbox: Vec::new(),
        }
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn run(mut self) {
        let error = loop {
            // Connect, serving commands meanwhile.
            let req = match self.request() {
                Ok(r) => r,
                Err(e) => break Some(e),
            };
            let open = open(req, self.opts.connect_timeout);
            tokio::pin!(open);
            let opened = loop {
                tokio::select! {
                    r = &mut open => break Some(r),
                    cmd = self.cmds.recv() => match self.on_cmd(cmd) {
                        Flow::Continue => {}
                        Flow::Stop => break None,
                        Flow::Drop(reply) => { let _ = reply.send(false); }
                    },
                }
            };
            let Some(opened) = opened else { break None };
            match opened {
                Ok((ws, welcome)) => match self.session(ws, welcome).await {
                    End::Stop => break None,
                    End::Lost { code, reason } => {
                        if FATAL_CLOSE.contains(&code) {
                            self.emit(Event::Disconnected {
                                code,
                                reason: reason.clone(),
                                will_reconnect: false,
                            });
                            break Some(Error::Refused { code, reason });
                        }
                        self.emit(Event::Disconnected {
                            code,
                            reason,
                            will_reconnect: true,
                        });
                    }
                },
                Err(e @ Error::Refused { .. }) => break Some(e),
                Err(e) => self.emit(Event::Error {
                    channel: None,
                    error: e,
                }),
            }
            // Plan the next attempt.
            let (delay, reason) = if let Some(ms) = self.shutdown_in.take() {
                let r = self.opts.random.next_f64();
                (
                    self.opts.backoff.shutdown_delay(ms, r),
                    ReconnectReason::ServerShutdown,
                )
            } else {
                if self.retries >= self.opts.backoff.max_retries {
                    break Some(Error::GaveUp(self.retries));
                }
                let r = self.opts.random.next_f64();
                let d = self.opts.backoff.delay(self.retries, r);
                self.retries += 1;
                (d, ReconnectReason::Backoff)
            };
            self.emit(Event::Reconnecting {
                attempt: self.retries,
                delay,
                reason,
            });
            let sleep = self.opts.clock.sleep(delay);
            tokio::pin!(sleep);
            let stop = loop {
                tokio::select! {
                    () = &mut sleep => break false,
                    cmd = self.cmds.recv() => match self.on_cmd(cmd) {
                        Flow::Continue => {}
                        Flow::Stop => break true,
                        Flow::Drop(reply) => { let _ = reply.send(false); }
                    },
                }
            };
            if stop {
                break None;
            }
        };
        let err = error.clone().unwrap_or(Error::Closed);
        if let Some(first) = self.first.take() {
            let _ = first.send(Err(err.clone()));
        }
        self.fail_all(&err);
        if let Some(e) = &error {
            self.emit(Event::Error {
                channel: None,
                error: e.clone(),
            });
        }
        self.emit(Event::Closed { error });
    }

    fn request(&self) -> Result<tungstenite::handshake::client::Request> {
        let mut req = self
            .opts
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::Invalid(format!("gateway URL {}: {e}", self.opts.url)))?;
        let h = req.headers_mut();
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("switchyard.v1"),
        );
        if let Some(t) = &self.opts.token {
            let v = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| Error::Invalid("token is not a valid header value".into()))?;
            h.insert("authorization", v);
        }
        if let Some(id) = &self.client_id {
            let v = HeaderValue::from_str(id)
                .map_err(|_| Error::Invalid("client id is not a valid header value".into()))?;
            h.insert("x-client-id", v);
        }
        Ok(req)
    }

    // ---- one connection ----

    async fn session(&mut self, mut ws: Ws, welcome: Welcome) -> End {
        self.on_welcome(&welcome);
        let every = self.opts.heartbeat.unwrap_or(welcome.heartbeat);
        let probe_wait = self.opts.request_timeout.min(every);
        let tick_every = (every.min(self.opts.request_timeout) / 4).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rx = Instant::now();
        let mut probe: Option<(Instant, Instant)> = None; // (sent at, deadline)
        let end = loop {
            if let Err(e) = self.flush(&mut ws).await {
                break End::Lost {
                    code: 1006,
                    reason: format!("write failed: {e}"),
                };
            }
            tokio::select! {
                biased;
                cmd = self.cmds.recv() => match self.on_cmd(cmd) {
                    Flow::Continue => {}
                    Flow::Stop => {
                        let _ = self.flush(&mut ws).await;
                        let close = ws.close(Some(CloseFrame { code: 1000.into(), reason: "client closed".into() }));
                        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                        break End::Stop;
                    }
                    Flow::Drop(reply) => {
                        let _ = self.flush(&mut ws).await;
                        let _ = reply.send(true);
                        break End::Lost { code: 1006, reason: "simulated connection loss".into() };
                    }
                },
                msg = ws.next() => match msg {
                    None => break End::Lost { code: 1006, reason: "connection ended".into() },
                    Some(Err(e)) => break End::Lost { code: 1006, reason: e.to_string() },
                    Some(Ok(m)) => {
                        last_rx = Instant::now();
                        match m {
                            Message::Text(t) => self.on_text(t.as_str()),
                            Message::Binary(b) => self.on_binary(&b),
                            Message::Close(f) => {
                                let (code, reason) = f.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                                // Let tungstenite send the close reply, then end.
                                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                                    while let Some(Ok(_)) = ws.next().await {}
                                }).await;
                                break End::Lost { code, reason };
                            }
                            // tungstenite queues the pong to a ping itself.
                            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                        }
                    }
                },
                _ = tick.tick(), if !every.is_zero() => {
                    let now = Instant::now();
                    if probe.is_some_and(|(sent, _)| last_rx >= sent) {
                        probe = None;
                    }
                    if let Some((_, deadline)) = probe && now >= deadline {
                        break End::Lost { code: 1006, reason: "heartbeat timeout".into() };
                    }
                    if probe.is_none() && now.duration_since(last_rx) >= every {
                        let id = self.id();
                        self.pending.insert(id, Pending::Fire);
                        self.send_json(&json!({"type":"ping","id":id}));
                        probe = Some((now, now + probe_wait));
                    }
                },
            }
        };
        self.on_lost();
        end
    }

    async fn flush(&mut self, ws: &mut Ws) -> Result<(), tungstenite::Error> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        for m in self.outbox.drain(..) {
            ws.feed(m).await?;
        }
        ws.flush().await
    }

    fn send_json(&mut self, v: &Value) {
        if self.online {
            self.outbox.push(Message::text(v.to_string()));
        }
    }

    fn on_welcome(&mut self, w: &Welcome) {
        let reconnected = self.ever_opened;
        self.online = true;
        self.ever_opened = true;
        self.retries = 0;
        self.shutdown_in = None;
        if !w.client.is_empty() {
            self.client_id = Some(w.client.clone());
            if let Ok(mut id) = self.shared.client_id.lock() {
                *id = Some(w.client.clone());
            }
        }
        if reconnected {
            self.shared
                .counters
                .reconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        self.emit(Event::Connected {
            session: w.session.clone(),
            client: w.client.clone(),
            node: w.node.clone(),
            reconnected,
        });
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for c in channels {
            self.send_subscribe(&c, None);
        }
        let docs: Vec<String> = self.docs.keys().cloned().collect();
        for c in docs {
            self.send_doc_subscribe(&c, None);
        }
        let keys: Vec<u64> = self.publishes.keys().copied().collect();
        for k in keys {
            self.send_publish(k);
        }
        if let Some(first) = self.first.take() {
            let _ = first.send(Ok(w.clone()));
        }
    }

    fn on_lost(&mut self) {
        self.online = false;
        self.outbox.clear();
        for s in self.subs.values_mut() {
            s.confirmed = false;
            s.recovering = false;
        }
        for d in self.docs.values_mut() {
            d.confirmed = false;
            d.recovering = false;
        }
        for (_, p) in self.pending.drain() {
            if let Pending::Request(reply) = p {
                let _ = reply.send(Err(Error::Disconnected));
            }
        }
        for p in self.publishes.values_mut() {
            p.id = None;
        }
        for p in self.patches.values_mut() {
            p.id = None;
        }
    }

    fn fail_all(&mut self, err: &Error) {
        self.online = false;
        for (_, p) in self.pending.drain() {
            if let Pending::Request(reply) = p {
                let _ = reply.send(Err(err.clone()));
            }
        }
        for (_, p) in std::mem::take(&mut self.publishes) {
            let _ = p.reply.send(Err(err.clone()));
        }
        for (_, p) in std::mem::take(&mut self.patches) {
            let _ = p.reply.send(Err(err.clone()));
        }
        for (_, s) in std::mem::take(&mut self.subs) {
            for w in s.waiters {
                let _ = w.send(Err(err.clone()));
            }
        }
        for (_, d) in std::mem::take(&mut self.docs) {
            for w in d.waiters {
                let _ = w.send(Err(err.clone()));
            }
        }
    }

    // ---- commands ----

    fn on_cmd(&mut self, cmd: Option<Cmd>) -> Flow {
        let Some(cmd) = cmd else {
            return Flow::Stop; // every handle dropped
        };
        match cmd {
            Cmd::Close => return Flow::Stop,
            Cmd::DropConnection { reply } => return Flow::Drop(reply),
            Cmd::Subscribe {
                channel,
                presence,
                reply,
            } => {
                if self.docs.contains_key(&channel) {
                    let _ = reply.send(Err(Error::Invalid(format!(
                        "{channel} is open as a document"
                    ))));
                    return Flow::Continue;
                }
                let sub = self.subs.entry(channel.clone()).or_insert(Sub {
                    presence,
                    confirmed: false,
                    recovering: false,
                    waiters: Vec::new(),
                });
                sub.presence |= presence;
                sub.waiters.push(reply);
                if self.online {
                    self.send_subscribe(&channel, None);
                }
            }
            Cmd::Unsubscribe { channel } => {
                let had =
                    self.subs.remove(&channel).is_some() | self.docs.remove(&channel).is_some();
                self.positions.remove(&channel);
                self.sync_positions(&channel);
                if had {
                    self.fail_patches_of(&channel, &Error::Closed);
                    if self.online {
                        let id = self.id();
                        self.pending.insert(id, Pending::Fire);
                        self.send_json(&json!({"type":"unsubscribe","id":id,"channel":channel}));
                    }
                }
            }
            Cmd::Publish {
                key,
                channel,
                data,
                msg_id,
                skip_self,
                reply,
            } => {
                self.publishes.insert(
                    key,
                    Pub {
                        channel,
                        data,
                        msg_id,
                        skip_self,
                        reply,
                        id: None,
                        sends: 0,
                    },
                );
                if self.online {
                    self.send_publish(key);
                }
            }
            Cmd::Cancel { key } => {
                if let Some(p) = self.publishes.remove(&key)
                    && let Some(id) = p.id
                {
                    self.pending.remove(&id);
                }
                if let Some(p) = self.patches.remove(&key)
                    && let Some(id) = p.id
                {
                    self.pending.remove(&id);
                }
            }
            Cmd::Document { channel, reply } => {
                if self.subs.contains_key(&channel) {
                    let _ = reply.send(Err(Error::Invalid(format!(
                        "{channel} is subscribed as a message channel"
                    ))));
                    return Flow::Continue;
                }
                let doc = self.docs.entry(channel.clone()).or_insert(Doc {
                    replica: Replica::default(),
                    confirmed: false,
                    recovering: false,
                    waiters: Vec::new(),
                });
                doc.waiters.push(reply);
                if self.online {
                    self.send_doc_subscribe(&channel, None);
                }
            }
            Cmd::Patch {
                key,
                channel,
                delta,
                msg_id,
                reply,
            } => {
                let Some(doc) = self.docs.get(&channel) else {
                    let _ = reply.send(Err(Error::Invalid(format!(
                        "{channel} is not open as a document (Client::document first)"
                    ))));
                    return Flow::Continue;
                };
                let confirmed = doc.confirmed;
                self.patches.insert(
                    key,
                    PatchQ {
                        channel,
                        delta,
                        msg_id,
                        reply,
                        id: None,
                        sends: 0,
                    },
                );
                if self.online && confirmed {
                    self.send_patch(key);
                }
            }
            Cmd::Request { mut frame, reply } => {
                if !self.online {
                    let _ = reply.send(Err(Error::Disconnected));
                    return Flow::Continue;
                }
                let id = self.id();
                frame["id"] = json!(id);
                self.pending.insert(id, Pending::Request(reply));
                self.send_json(&frame);
            }
        }
        Flow::Continue
    }

    fn send_subscribe(&mut self, channel: &str, cause: Option<SubscribeCause>) {
        let Some(sub) = self.subs.get(channel) else {
            return;
        };
        let presence = sub.presence;
        let since = self.positions.get(channel).cloned();
        let cause = cause.unwrap_or(if since.is_some() {
            SubscribeCause::Reconnect
        } else {
            SubscribeCause::New
        });
        let id = self.id();
        self.pending.insert(
            id,
            Pending::Subscribe {
                channel: channel.to_owned(),
                cause,
            },
        );
        let mut frame = json!({"type":"subscribe","id":id,"channel":channel});
        if let Some(p) = since {
            frame["since"] = json!({"epoch": p.epoch, "seq": p.seq});
        }
        if presence {
            frame["presence"] = json!(true);
        }
        self.send_json(&frame);
    }

    fn send_doc_subscribe(&mut self, channel: &str, cause: Option<SubscribeCause>) {
        let Some(doc) = self.docs.get(channel) else {
            return;
        };
        let since = doc.replica.since();
        let cause = cause.unwrap_or(if since.is_some() {
            SubscribeCause::Reconnect
        } else {
            SubscribeCause::New
        });
        let id = self.id();
        self.pending.insert(
            id,
            Pending::DocSubscribe {
                channel: channel.to_owned(),
                cause,
            },
        );
        let mut frame = json!({"type":"subscribe","id":id,"channel":channel});
        if let Some((epoch, version)) = since {
            frame["since"] = json!({"epoch": epoch, "version": version});
        }
        self.send_json(&frame);
    }

    fn send_publish(&mut self, key: u64) {
        let id = self.id();
        let Some(p) = self.publishes.get_mut(&key) else {
            return;
        };
        if let Some(old) = p.id.take() {
            self.pending.remove(&old);
        }
        p.id = Some(id);
        p.sends += 1;
        if p.sends > 1 {
            self.shared.counters.resent.fetch_add(1, Ordering::Relaxed);
        }
        let mut frame = json!({
            "type": "publish",
            "id": id,
            "channel": p.channel,
            "data": p.data,
            "msgId": p.msg_id,
        });
        if p.skip_self {
            frame["skipSelf"] = json!(true);
        }
        self.pending.insert(id, Pending::Publish { key });
        self.send_json(&frame);
    }

    fn send_patch(&mut self, key: u64) {
        let id = self.id();
        let Some(p) = self.patches.get_mut(&key) else {
            return;
        };
        if let Some(old) = p.id.take() {
            self.pending.remove(&old);
        }
        p.id = Some(id);
        p.sends += 1;
        if p.sends > 1 {
            self.shared.counters.resent.fetch_add(1, Ordering::Relaxed);
        }
        let base = self
            .docs
            .get(&p.channel)
            .and_then(|d| d.replica.version)
            .unwrap_or(0);
        let frame = StatePatch::client_patch(id, &p.channel, p.delta.clone(), &p.msg_id, base);
        self.pending.insert(id, Pending::Patch { key });
        if self.online {
            self.outbox.push(Message::Binary(frame.into()));
        }
    }

    fn fail_patches_of(&mut self, channel: &str, err: &Error) {
        let keys: Vec<u64> = self
            .patches
            .iter()
            .filter(|(_, p)| p.channel == channel)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(p) = self.patches.remove(&k) {
                if let Some(id) = p.id {
                    self.pending.remove(&id);
                }
                let _ = p.reply.send(Err(err.clone()));
            }
        }
    }

    fn sync_positions(&self, channel: &str) {
        if let Ok(mut m) = self.shared.positions.lock() {
            match self.positions.get(channel) {
                Some(p) => {
                    m.insert(channel.to_owned(), p.clone());
                }
                None => {
                    m.remove(channel);
                }
            }
        }
    }

    // ---- frames ----

    fn bad_frame(&self, what: String) {
        self.emit(Event::Error {
            channel: None,
            error: Error::BadFrame(what),
        });
    }

    fn on_text(&mut self, text: &str) {
        let v: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return self.bad_frame("a text frame that is not a JSON object".into()),
            Err(e) => return self.bad_frame(format!("a text frame that is not JSON: {e}")),
        };
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
        match ty {
            "message" => return self.on_message(&v),
            "direct" => {
                self.emit(Event::Direct {
                    data: v.get("data").cloned().unwrap_or(Value::Null),
                });
                return;
            }
            "SERVER_SHUTDOWN" => {
                let ms = v.get("reconnectIn").and_then(Value::as_u64);
                self.shutdown_in =
                    Some(ms.map_or(self.opts.backoff.base_delay, Duration::from_millis));
                return;
            }
            "join" | "leave" => return self.on_presence_event(ty == "join", &v),
            _ => {}
        }
        let pending = v
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|id| self.pending.remove(&id));
        let Some(p) = pending else {
            if ty == "error" {
                self.emit(Event::Error {
                    channel: None,
                    error: server_error(&v),
                });
            }
            return;
        };
        match p {
            Pending::Subscribe { channel, cause } => self.on_subscribe_reply(channel, cause, &v),
            Pending::DocSubscribe { channel, cause } => {
                self.on_doc_subscribe_reply(channel, cause, &v);
            }
            Pending::Publish { key } => {
                let Some(p) = self.publishes.remove(&key) else {
                    return;
                };
                let seq = v.get("seq").and_then(Value::as_u64);
                if ty == "ack"
                    && p.skip_self
                    && let Some(s) = seq
                    && v.get("routes").is_none()
                {
                    // never delivered to us: not a gap in our position
                    self.positions.on_skipped(&p.channel, s);
                    self.sync_positions(&p.channel);
                }
                let r = match ty {
                    "ack" => Ok(Ack { seq }),
                    "error" => Err(server_error(&v)),
                    other => Err(Error::bad_frame(format!("reply to publish: {other}"))),
                };
                let _ = p.reply.send(r);
            }
            Pending::Patch { key } => {
                let Some(p) = self.patches.remove(&key) else {
                    return;
                };
                let r = match ty {
                    "ack" => v
                        .get("version")
                        .and_then(Value::as_u64)
                        .ok_or_else(|| Error::bad_frame("patch ack without a version")),
                    "error" => Err(server_error(&v)),
                    other => Err(Error::bad_frame(format!("reply to a patch: {other}"))),
                };
                let _ = p.reply.send(r);
            }
            Pending::Request(reply) => {
                let r = if ty == "error" {
                    Err(server_error(&v))
                } else {
                    Ok(v)
                };
                let _ = reply.send(r);
            }
            Pending::Fire => {}
        }
    }

    fn on_message(&mut self, v: &Value) {
        let (Some(channel), Some(seq), Some(epoch)) = (
            v.get("channel").and_then(Value::as_str),
            v.get("seq").and_then(Value::as_u64),
            v.get("epoch").and_then(Value::as_str),
        ) else {
            return self.bad_frame(format!("message without channel, seq or epoch: {v}"));
        };
        let online = self.online;
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        match self.positions.on_message(channel, epoch, seq) {
            Verdict::Duplicate => {
                self.shared
                    .counters
                    .duplicates_dropped
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            Verdict::Gap => {
                self.shared.counters.gaps.fetch_add(1, Ordering::Relaxed);
                if !sub.recovering && online {
                    sub.recovering = true;
                    let channel = channel.to_owned();
                    self.send_subscribe(&channel, Some(SubscribeCause::Gap));
                }
                return;
            }
            Verdict::Epoch => self.emit(Event::EpochChanged {
                channel: channel.to_owned(),
                epoch: epoch.to_owned(),
            }),
            Verdict::Deliver => {}
        }
        self.sync_positions(channel);
        self.emit(Event::Message {
            channel: channel.to_owned(),
            seq,
            epoch: epoch.to_owned(),
            data: v.get("data").cloned().unwrap_or(Value::Null),
        });
    }

    fn on_presence_event(&mut self, join: bool, v: &Value) {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(channel), Some(client)) = (s("channel"), s("client")) else {
            return self.bad_frame(format!("presence event without channel or client: {v}"));
        };
        self.emit(Event::Presence {
            channel,
            change: if join {
                PresenceChange::Join
            } else {
                PresenceChange::Leave
            },
            client,
            principal: s("principal").unwrap_or_default(),
            node: s("node").unwrap_or_default(),
        });
    }

    fn on_subscribe_reply(&mut self, channel: String, cause: SubscribeCause, v: &Value) {
        let Some(sub) = self.subs.get_mut(&channel) else {
            return; // unsubscribed meanwhile
        };
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
        if ty == "error" {
            let err = server_error(v);
            if let Some(sub) = self.subs.remove(&channel) {
                for w in sub.waiters {
                    let _ = w.send(Err(err.clone()));
                }
            }
            self.positions.remove(&channel);
            self.sync_positions(&channel);
            self.emit(Event::Error {
                channel: Some(channel),
                error: err,
            });
            return;
        }
        let (Some(epoch), Some(seq)) = (
            v.get("epoch").and_then(Value::as_str),
            v.get("seq").and_then(Value::as_u64),
        ) else {
            return self.bad_frame(format!("subscribed without epoch or seq: {v}"));
        };
        let flag = v.get("recovered").and_then(Value::as_bool) == Some(true);
        sub.confirmed = true;
        sub.recovering = false;
        let waiters = std::mem::take(&mut sub.waiters);
        let (recovered, resumed) = self.positions.on_subscribed(&channel, epoch, seq, flag);
        self.sync_positions(&channel);
        let info = Subscribed {
            channel: channel.clone(),
            epoch: epoch.to_owned(),
            seq,
            recovered,
        };
        for w in waiters {
            let _ = w.send(Ok(info.clone()));
        }
        self.emit(Event::Subscribed {
            channel,
            epoch: epoch.to_owned(),
            seq,
            recovered,
            resumed,
            document: false,
            cause,
        });
    }

    fn on_doc_subscribe_reply(&mut self, channel: String, cause: SubscribeCause, v: &Value) {
        if !self.docs.contains_key(&channel) {
            return;
        }
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
        let refusal = match ty {
            "error" => Some(server_error(v)),
            "subscribed" if v.get("document").and_then(Value::as_bool) != Some(true) => {
                let id = self.id();
                self.pending.insert(id, Pending::Fire);
                self.send_json(&json!({"type":"unsubscribe","id":id,"channel":channel}));
                Some(Error::Invalid(format!(
                    "{channel} is not a document channel"
                )))
            }
            _ => None,
        };
        if let Some(err) = refusal {
            if let Some(doc) = self.docs.remove(&channel) {
                for w in doc.waiters {
                    let _ = w.send(Err(err.clone()));
                }
            }
            self.fail_patches_of(&channel, &err);
            self.emit(Event::Error {
                channel: Some(channel),
                error: err,
            });
            return;
        }
        let (Some(epoch), Some(version)) = (
            v.get("epoch").and_then(Value::as_str),
            v.get("version")
                .or_else(|| v.get("seq"))
                .and_then(Value::as_u64),
        ) else {
            return self.bad_frame(format!("document subscribed without epoch or version: {v}"));
        };
        let flag = v.get("recovered").and_then(Value::as_bool) == Some(true);
        let Some(doc) = self.docs.get_mut(&channel) else {
            return;
        };
        let (recovered, resumed) = doc.replica.on_subscribed(epoch, flag);
        doc.confirmed = true;
        doc.recovering = false;
        let info = Subscribed {
            channel: channel.clone(),
            epoch: epoch.to_owned(),
            seq: version,
            recovered,
        };
        for w in std::mem::take(&mut doc.waiters) {
            let _ = w.send(Ok(info.clone()));
        }
        self.emit(Event::Subscribed {
            channel: channel.clone(),
            epoch: epoch.to_owned(),
            seq: version,
            recovered,
            resumed,
            document: true,
            cause,
        });
        // Patches made meanwhile (or whose ack was lost) go out now, same msgId.
        let keys: Vec<u64> = self
            .patches
            .iter()
            .filter(|(_, p)| p.channel == channel && p.id.is_none())
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.send_patch(k);
        }
    }

    fn on_binary(&mut self, bytes: &[u8]) {
        let f = match StatePatch::decode_frame(bytes) {
            Ok(f) => f,
            Err(e) => {
                return self.emit(Event::Error {
                    channel: None,
                    error: e,
                });
            }
        };
        let online = self.online;
        let Some(doc) = self.docs.get_mut(&f.channel) else {
            return;
        };
        match doc.replica.on_frame(&f) {
            FrameVerdict::Applied(kind) => {
                let change = DocumentChange {
                    channel: f.channel,
                    kind,
                    version: doc.replica.version.unwrap_or(0),
                    epoch: doc.replica.epoch.clone().unwrap_or_default(),
                    delta: f.delta,
                    client_id: f.client_id,
                    msg_id: f.msg_id,
                    lamport: f.lamport,
                };
                self.emit(Event::Document(change));
            }
            FrameVerdict::Duplicate => {
                self.shared
                    .counters
                    .duplicates_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
            v @ (FrameVerdict::Gap | FrameVerdict::Epoch) => {
                if v == FrameVerdict::Gap {
                    self.shared.counters.gaps.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Another epoch: start over from a snapshot.
                    doc.replica.reset();
                }
                if !doc.recovering && online {
                    doc.recovering = true;
                    self.send_doc_subscribe(&f.channel, Some(SubscribeCause::Gap));
                }
            }
            FrameVerdict::Ignored => {}
        }
    }
}

fn server_error(v: &Value) -> Error {
    Error::Server {
        code: v
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned(),
        message: v
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    }
}

/// TCP connect, upgrade, and the `welcome`, within `timeout`.
async fn open(
    req: tungstenite::handshake::client::Request,
    timeout: Duration,
) -> Result<(Ws, Welcome)> {
    let attempt = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(handshake_error)?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok((ws, parse_welcome(t.as_str())?)),
                Some(Ok(Message::Close(f))) => {
                    let (code, reason) = f.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    if FATAL_CLOSE.contains(&code) {
                        return Err(Error::Refused { code, reason });
                    }
                    return Err(Error::Connect(format!(
                        "closed before welcome: {code} {reason}"
                    )));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(Error::Connect(e.to_string())),
                None => return Err(Error::Connect("connection ended before welcome".into())),
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(Error::Connect(format!("no welcome within {timeout:?}"))),
    }
}

fn handshake_error(e: tungstenite::Error) -> Error {
    if let tungstenite::Error::Http(resp) = &e {
        let status = resp.status().as_u16();
        let body = resp
            .body()
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        if status == 401 || status == 403 {
            return Error::Refused {
                code: status,
                reason: body,
            };
        }
        return Error::Connect(format!("HTTP {status}: {body}"));
    }
    Error::Connect(e.to_string())
}

fn parse_welcome(text: &str) -> Result<Welcome> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::bad_frame(format!("first frame is not JSON: {e}")))?;
    if v.get("type").and_then(Value::as_str) != Some("welcome") {
        return Err(Error::bad_frame(format!("first frame is not welcome: {v}")));
    }
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(Welcome {
        session: s("session"),
        client: s("client"),
        node: s("node"),
        heartbeat: Duration::from_millis(
            v.get("heartbeatMs")
                .and_then(Value::as_u64)
                .filter(|ms| *ms > 0)
                .unwrap_or(30_000),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welcome_parsing_refuses_garbage() {
        let w = parse_welcome(r#"{"type":"welcome","session":"s","client":"c","node":"n","protocol":1,"heartbeatMs":5000}"#)
            .expect("welcome");
        assert_eq!(w.heartbeat, Duration::from_secs(5));
        assert_eq!(
            (w.session.as_str(), w.client.as_str(), w.node.as_str()),
            ("s", "c", "n")
        );
        assert!(matches!(parse_welcome("[1]"), Err(Error::BadFrame(_))));
        assert!(matches!(
            parse_welcome("{\"type\":\"message\"}"),
            Err(Error::BadFrame(_))
        ));
        assert!(matches!(parse_welcome("\u{0}"), Err(Error::BadFrame(_))));
        let w = parse_welcome(r#"{"type":"welcome","heartbeatMs":-3}"#).expect("lenient");
        assert_eq!(w.heartbeat, Duration::from_secs(30));
    }

    fn driver() -> (Driver, mpsc::UnboundedReceiver<Event>) {
        let (_tx, cmds) = mpsc::unbounded_channel();
        let (etx, erx) = mpsc::unbounded_channel();
        let (ftx, _frx) = oneshot::channel();
        let d = Driver::new(
            Options::new("ws://127.0.0.1:1/ws"),
            cmds,
            etx,
            Arc::new(Shared::default()),
            ftx,
        );
        (d, erx)
    }

    #[test]
    fn bad_frames_are_error_events_not_panics() {
        let (mut d, mut ev) = driver();
        d.online = true;
        for t in [
            "not json",
            "[1,2]",
            "42",
            r#"{"type":"message","channel":"c:1","seq":"x","epoch":"e"}"#,
            r#"{"type":"message","seq":1}"#,
            r#"{"type":"join","channel":5}"#,
            r#"{"type":"ack","id":99999}"#,
            r#"{"type":"subscribed","id":"nope"}"#,
            r#"{"type":"SERVER_SHUTDOWN","reconnectIn":"soon"}"#,
        ] {
            d.on_text(t);
        }
        d.on_binary(&[0xff, 0xff, 0xff, 0xff]);
        d.on_binary(&[]);
        let mut bad = 0;
        while let Ok(e) = ev.try_recv() {
            assert!(
                matches!(
                    e,
                    Event::Error {
                        error: Error::BadFrame(_),
                        ..
                    }
                ),
                "{e:?}"
            );
            bad += 1;
        }
        assert_eq!(bad, 7);
        assert_eq!(d.shutdown_in, Some(d.opts.backoff.base_delay));
    }

    #[test]
    fn messages_are_ordered_and_gaps_resubscribe() {
        let (mut d, mut ev) = driver();
        d.online = true;
        let (reply, mut rx) = oneshot::channel();
        assert!(matches!(
            d.on_cmd(Some(Cmd::Subscribe {
                channel: "c:1".into(),
                presence: false,
                reply
            })),
            Flow::Continue
        ));
        assert_eq!(d.outbox.len(), 1);
        d.on_text(
            r#"{"type":"subscribed","id":1,"channel":"c:1","epoch":"e","seq":2,"recovered":false}"#,
        );
        assert_eq!(rx.try_recv().expect("replied").expect("ok").seq, 2);
        for seq in [3, 3, 5] {
            d.on_text(&format!(
                r#"{{"type":"message","channel":"c:1","seq":{seq},"epoch":"e","data":{{"n":{seq}}}}}"#
            ));
        }
        let got: Vec<Event> = std::iter::from_fn(|| ev.try_recv().ok()).collect();
        assert!(matches!(
            &got[0],
            Event::Subscribed {
                seq: 2,
                recovered: false,
                resumed: false,
                ..
            }
        ));
        assert!(matches!(&got[1], Event::Message { seq: 3, .. }));
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            d.shared.counters.duplicates_dropped.load(Ordering::Relaxed),
            1
        );
        assert_eq!(d.shared.counters.gaps.load(Ordering::Relaxed), 1);
        // the gap resubscribed from seq 3
        let Message::Text(last) = d.outbox.last().expect("resubscribe") else {
            panic!("text")
        };
        let v: Value = serde_json::from_str(last.as_str()).expect("json");
        assert_eq!(v["since"], json!({"epoch":"e","seq":3}));
    }

    #[test]
    fn a_publish_keeps_its_msg_id_across_reconnects() {
        let (mut d, _ev) = driver();
        d.online = true;
        let (reply, mut rx) = oneshot::channel();
        d.on_cmd(Some(Cmd::Publish {
            key: 7,
            channel: "c:1".into(),
            data: json!({"a":1}),
            msg_id: "m-1".into(),
            skip_self: true,
            reply,
        }));
        d.on_lost();
        let w = Welcome {
            session: "s2".into(),
            client: "c".into(),
            node: "n".into(),
            heartbeat: Duration::from_secs(30),
        };
        d.on_welcome(&w);
        let frames: Vec<Value> = d
            .outbox
            .iter()
            .filter_map(|m| match m {
                Message::Text(t) => serde_json::from_str(t.as_str()).ok(),
                _ => None,
            })
            .collect();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["msgId"], "m-1");
        assert_eq!(frames[0]["skipSelf"], true);
        assert_eq!(d.shared.counters.resent.load(Ordering::Relaxed), 1);
        let id = frames[0]["id"].as_u64().expect("id");
        d.on_text(&format!(r#"{{"type":"ack","id":{id},"seq":4}}"#));
        assert_eq!(rx.try_recv().expect("acked").expect("ok").seq, Some(4));
    }

    // ---- the reconnect loop over real sockets, timed by a fake clock ----

    use crate::backoff::{FakeClock, SequenceRandom};
    use tokio::net::TcpListener;

    async fn refused_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        port
    }

    #[tokio::test]
    async fn backoff_timings_follow_the_formula_and_the_client_gives_up() {
        let port = refused_port().await;
        let clock = FakeClock::default();
        let randoms = [0.0, 0.25, 0.5, 0.75, 0.999];
        let backoff = Backoff {
            max_retries: 5,
            ..Backoff::default()
        };
        let opts = Options::new(format!("ws://127.0.0.1:{port}/ws"))
            .backoff(backoff)
            .clock(clock.clone())
            .random(SequenceRandom::new(randoms.to_vec()));
        let started = std::time::Instant::now();
        let err = Client::connect(opts).await.expect_err("nothing listens");
        assert_eq!(err, Error::GaveUp(5));
        // 0.8 s + 2 s + 4 s + 8.8 s + 19.2 s of virtual time, not slept
        let want: Vec<Duration> = randoms
            .iter()
            .enumerate()
            .map(|(i, r)| backoff.delay(i as u32, *r))
            .collect();
        assert_eq!(clock.sleeps(), want);
        assert_eq!(want[0], Duration::from_millis(800));
        assert_eq!(want[2], Duration::from_secs(4));
        assert!(clock.elapsed() > Duration::from_secs(34));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no real sleeping"
        );
    }

    #[tokio::test]
    async fn reconnecting_events_carry_the_delays() {
        let port = refused_port().await;
        let clock = FakeClock::default();
        let backoff = Backoff {
            max_retries: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(250),
            jitter: 0.4,
        };
        let (_client, mut events) = Client::start(
            Options::new(format!("ws://127.0.0.1:{port}/ws"))
                .backoff(backoff)
                .clock(clock.clone())
                .random(SequenceRandom::new(vec![0.5])),
        );
        let mut delays = Vec::new();
        let mut connect_errors = 0;
        while let Some(e) = events.recv().await {
            match e {
                Event::Reconnecting {
                    attempt,
                    delay,
                    reason,
                } => {
                    assert_eq!(reason, ReconnectReason::Backoff);
                    assert_eq!(attempt as usize, delays.len() + 1);
                    delays.push(delay);
                }
                Event::Error {
                    error: Error::Connect(_),
                    ..
                } => connect_errors += 1,
                Event::Closed { error } => {
                    assert_eq!(error, Some(Error::GaveUp(3)));
                    break;
                }
                _ => {}
            }
        }
        let ms = Duration::from_millis;
        assert_eq!(
            delays,
            vec![ms(100), ms(200), ms(250)],
            "capped at max_delay"
        );
        assert_eq!(clock.sleeps(), delays);
        assert_eq!(connect_errors, 4, "first attempt and three retries");
    }

    /// A tiny protocol v1 server on a real socket: each connection gets a
    /// welcome, then `script` decides what happens.
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    async fn serve<F, Fut>(script: F) -> u16
    where
        F: Fn(usize, WebSocketStream<TcpStream>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((tcp, _)) = l.accept().await {
                // Answer the subprotocol as the gateway does.
                let echo =
                    |_: &tungstenite::handshake::server::Request,
                     mut resp: tungstenite::handshake::server::Response| {
                        resp.headers_mut().insert(
                            "sec-websocket-protocol",
                            HeaderValue::from_static("switchyard.v1"),
                        );
                        Ok(resp)
                    };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, echo).await else {
                    continue;
                };
                let welcome = json!({"type":"welcome","session":format!("s{n}"),"client":"c1","node":"n1","protocol":1,"heartbeatMs":200});
                if ws.send(Message::text(welcome.to_string())).await.is_err() {
                    continue;
                }
                tokio::spawn(script(n, ws));
                n += 1;
            }
        });
        port
    }

    #[tokio::test]
    async fn server_shutdown_reconnects_after_reconnect_in_with_jitter() {
        let port = serve(|n, mut ws| async move {
            if n == 0 {
                let _ = ws
                    .send(Message::text(
                        r#"{"type":"SERVER_SHUTDOWN","reconnectIn":2000}"#,
                    ))
                    .await;
                let _ = ws
                    .close(Some(CloseFrame {
                        code: 1001.into(),
                        reason: "Server restarting".into(),
                    }))
                    .await;
            }
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        let clock = FakeClock::default();
        let (client, mut events) = Client::connect(
            Options::new(format!("ws://127.0.0.1:{port}/ws"))
                .heartbeat(Duration::ZERO)
                .clock(clock.clone())
                .random(SequenceRandom::new(vec![0.5])),
        )
        .await
        .expect("connects");
        let mut seen = Vec::new();
        while let Some(e) = events.recv().await {
            let done = matches!(
                e,
                Event::Connected {
                    reconnected: true,
                    ..
                }
            );
            seen.push(e);
            if done {
                break;
            }
        }
        assert!(
            seen.iter().any(|e| matches!(
                e,
                Event::Disconnected {
                    code: 1001,
                    will_reconnect: true,
                    ..
                }
            )),
            "{seen:?}"
        );
        assert!(
            seen.contains(&Event::Reconnecting {
                attempt: 0,
                delay: Duration::from_millis(2400),
                reason: ReconnectReason::ServerShutdown,
            }),
            "{seen:?}"
        );
        assert_eq!(clock.sleeps(), vec![Duration::from_millis(2400)]);
        assert_eq!(client.stats().reconnects, 1);
        client.close();
    }

    #[tokio::test]
    async fn a_silent_server_is_detected_by_the_heartbeat() {
        // The second connection stays silent: no reads, so no pong and no reply to `ping`.
        let port = serve(|_, ws| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(ws);
        })
        .await;
        let clock = FakeClock::default();
        let (client, mut events) = Client::connect(
            Options::new(format!("ws://127.0.0.1:{port}/ws"))
                .heartbeat(Duration::from_millis(150))
                .request_timeout(Duration::from_millis(150))
                .clock(clock.clone()),
        )
        .await
        .expect("connects");
        let t0 = std::time::Instant::now();
        let lost = events
            .wait_for(|e| match e {
                Event::Disconnected { code, reason, .. } => Some((*code, reason.clone())),
                _ => None,
            })
            .await;
        assert_eq!(lost, Some((1006, "heartbeat timeout".to_owned())));
        assert!(t0.elapsed() < Duration::from_secs(5));
        // and it reconnects (to the same silent server)
        let again = events
            .wait_for(|e| {
                matches!(
                    e,
                    Event::Connected {
                        reconnected: true,
                        ..
                    }
                )
                .then_some(())
            })
            .await;
        assert_eq!(again, Some(()));
        client.close();
    }
}
