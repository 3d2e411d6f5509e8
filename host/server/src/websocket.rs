//! The WebSocket transport: drives a [`Handler`] over any `Sink + Stream` of
//! tungstenite messages (a real socket, or an in-memory pair in tests).
//!
//! One task per connection runs two futures, [`read`] (inbound frames →
//! handler) and [`write`] (outbox → socket, heartbeats, zombie detection),
//! over one socket that both borrow without a lock (see [`Conn`]).
//! The writer takes everything queued at once and flushes it as one batch,
//! so a busy connection costs one write for many messages; after each wake-up
//! it lets the other ready tasks run once first, so the frames they fan out
//! to it join the batch. Closes always try
//! the close handshake, bounded by `close_timeout`, then the socket is dropped.
//!
//! A socket must not be dropped with the peer's input unread: the kernel then
//! answers with a reset, and the peer may lose our close frame with it (it
//! sees 1006 instead of, say, 1009). So after every close we send, input is
//! read on until the peer's close reply or EOF: as frames while the stream is
//! intact; after a read error (an oversized frame, bad UTF-8, a protocol
//! error: the stream is no longer framed) as raw bytes, discarded, after
//! shutting down our side, for at most [`LINGER`] and [`LINGER_BYTES`].

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use switchyard_core::backpressure::{CloseRequest, Outbox};
use switchyard_core::metrics::{DeliveryMetrics, Metrics};
use switchyard_core::protocol::{CloseCode, Frame};
use switchyard_core::session::{Handler, WireFormat};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::connection::Drain;

/// Timing limits of the transport.
#[derive(Debug, Clone, Copy)]
pub struct TransportLimits {
    /// Ping interval.
    pub heartbeat_interval: Duration,
    /// Silence after which the peer is terminated.
    pub idle_timeout: Duration,
    /// Grace period for the close handshake.
    pub close_timeout: Duration,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code was exchanged or sent (server- or peer-initiated).
    Closed(u16),
    /// Silent past the idle timeout: terminated without a handshake.
    Zombie,
    /// The socket failed or vanished.
    Dropped,
}

impl Ended {
    /// Code used for the closed-connections metric (1006 = abnormal).
    pub fn code(self) -> u16 {
        match self {
            Ended::Closed(c) => c,
            Ended::Zombie | Ended::Dropped => 1006,
        }
    }
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_micros() -> u64 {
    u64::try_from(EPOCH.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Longest the raw input is read on (and discarded) after a close that
/// followed a read error (also bounded by `close_timeout`).
pub const LINGER: Duration = Duration::from_secs(1);
/// Most raw bytes discarded after such a close (a 10 MB frame fits).
pub const LINGER_BYTES: u64 = 32 << 20;

/// The byte stream under a WebSocket, for what follows a close after a read
/// error, when the stream can no longer be read as frames.
pub trait RawInput: Send {
    /// Shuts down our sending side, then reads and discards input until EOF,
    /// an error or `max_bytes`; returns how many bytes were discarded. The
    /// caller bounds the time.
    fn discard_input(&mut self, max_bytes: u64) -> impl Future<Output = u64> + Send;
}

impl<T> RawInput for WebSocketStream<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn discard_input(&mut self, max_bytes: u64) -> u64 {
        let io = self.get_mut();
        // Our close frame is flushed; EOF tells the peer nothing else comes.
        let _ = io.shutdown().await;
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0u64;
        while total < max_bytes {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        total
    }
}

/// Converts an outbound frame to a tungstenite message without copying.
pub fn to_message(frame: Frame) -> Message {
    if frame.is_binary() {
        Message::Binary(frame.into_bytes())
    } else {
        let bytes = frame.into_bytes();
        // SAFETY: text `Frame`s are valid UTF-8 by construction (built from
        // `String`, `&'static str` or checked bytes; see `Frame`).
        #[allow(unsafe_code)]
        let text = unsafe { Utf8Bytes::from_bytes_unchecked(bytes) };
        Message::Text(text)
    }
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: WsCloseCode::from(code),
        reason: Utf8Bytes::from(reason),
    }))
}

fn error_close(e: &WsError) -> Option<CloseCode> {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => Some(CloseCode::TooBig),
        WsError::Capacity(_) => Some(CloseCode::TooBig),
        WsError::Utf8(_) => Some(CloseCode::InvalidPayload),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Io(_) => None,
        WsError::Protocol(_) => Some(CloseCode::ProtocolError),
        _ => Some(CloseCode::ProtocolError),
    }
}

/// The socket, and what the reader and the writer of one connection tell
/// each other. Both are futures that [`drive`] polls itself, one after the
/// other, in the connection's own task (never spawned); each borrows the
/// socket only inside a single poll, never across an `.await`, so the borrows
/// cannot overlap and no lock is taken — where tokio-tungstenite's `split()`
/// takes a `BiLock` on every frame read and written.
struct Conn<S> {
    ws: RefCell<S>,
    /// When anything (a frame, a pong) last arrived, µs since [`EPOCH`]: set
    /// by the reader, read by the writer's heartbeat (zombie detection).
    last_seen: Cell<u64>,
    /// The peer's close code, once its close frame arrived.
    peer_close: Cell<Option<u16>>,
    /// Our close frame is out (or going): the reader ignores data frames and
    /// takes the peer's next close as the end of the handshake.
    close_sent: Cell<bool>,
}

// SAFETY: a `Conn` lives inside one `drive` future and is borrowed only by the
// reader and writer futures that this `drive` future polls. Those run on
// whichever thread polls the `drive` future, one at a time, so the `RefCell`
// and `Cell`s are never touched by two threads at once; no reference leaves
// `drive` (the type is private to this module). `Sync` is what lets the
// `drive` future, which holds `&Conn` across awaits, be `Send`.
#[allow(unsafe_code)]
unsafe impl<S: Send> Sync for Conn<S> {}

impl<S> Conn<S>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    fn new(ws: S) -> Self {
        Conn {
            ws: RefCell::new(ws),
            last_seen: Cell::new(now_micros()),
            peer_close: Cell::new(None),
            close_sent: Cell::new(false),
        }
    }

    /// Runs `f` on the socket within the current poll.
    fn with<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut self.ws.borrow_mut())
    }

    async fn next(&self) -> Option<Result<Message, WsError>> {
        poll_fn(|cx| self.with(|ws| ws.poll_next_unpin(cx))).await
    }

    /// Queues a frame in the socket's write buffer (written when it is full or flushed).
    async fn feed(&self, m: Message) -> Result<(), WsError> {
        poll_fn(|cx| self.with(|ws| ws.poll_ready_unpin(cx))).await?;
        self.ws.borrow_mut().start_send_unpin(m)
    }

    async fn flush(&self) -> Result<(), WsError> {
        poll_fn(|cx| self.with(|ws| ws.poll_flush_unpin(cx))).await
    }

    async fn send(&self, m: Message) -> Result<(), WsError> {
        self.feed(m).await?;
        self.flush().await
    }
}

/// How the reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    /// The stream ended (EOF, reset), the close handshake completed, or the
    /// wait for the peer's close reply ran out.
    Done,
    /// A frame could not be read: a close was requested, and the stream can
    /// no longer be read as frames (what is left of the input is raw bytes).
    Broken,
}

/// How the writer stopped.
enum WriteEnd {
    /// Close frame sent (or attempted) with this code.
    Closed(u16),
    /// Nothing arrived for `idle_timeout`.
    Zombie,
    /// The socket failed.
    Failed,
}

/// The reader: inbound frames to the handler, until the stream ends or the
/// close handshake is over. Once the handler asks to close, or our close
/// frame is out, data frames are ignored and reading continues only to
/// receive the peer's close reply (for at most `close_timeout × 2` when the
/// handler asked). A frame that cannot be read asks the writer for the
/// matching close (1009, 1007, 1002) and ends `Broken`.
async fn read<S, H>(
    conn: &Conn<S>,
    handler: &mut H,
    outbox: &Outbox,
    limits: TransportLimits,
    metrics: &Metrics,
) -> ReadEnd
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    H: Handler,
{
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let item = match deadline {
            None => {
                // Flow control: no new command while its replies pile up.
                outbox.replies_drained().await;
                conn.next().await
            }
            Some(d) => match tokio::time::timeout_at(d, conn.next()).await {
                Ok(item) => item,
                Err(_) => return ReadEnd::Done,
            },
        };
        let Some(item) = item else {
            return ReadEnd::Done;
        };
        conn.last_seen.set(now_micros());
        let open = deadline.is_none() && !conn.close_sent.get();
        let verdict = match item {
            Ok(Message::Text(t)) if open => {
                metrics.messages_in.inc();
                metrics.frame_size.observe(t.len() as f64);
                handler.on_text(Bytes::from(t)).await
            }
            Ok(Message::Binary(b)) if open => {
                metrics.messages_in.inc();
                metrics.frame_size.observe(b.len() as f64);
                handler.on_binary(b).await
            }
            Ok(Message::Pong(p)) => {
                if let Ok(raw) = <[u8; 8]>::try_from(p.as_ref()) {
                    let sent = u64::from_be_bytes(raw);
                    let now = now_micros();
                    if sent <= now {
                        metrics
                            .heartbeat_rtt
                            .observe(Duration::from_micros(now - sent).as_secs_f64());
                    }
                }
                Ok(())
            }
            Ok(Message::Close(frame)) => {
                // tungstenite queues the close reply; keep polling to flush it.
                conn.peer_close
                    .set(Some(frame.map_or(1005, |f| u16::from(f.code))));
                if conn.close_sent.get() {
                    // The reply to our close: the handshake is complete.
                    return ReadEnd::Done;
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => {
                let Some(code) = error_close(&e) else {
                    return ReadEnd::Done;
                };
                metrics.failed(match code {
                    CloseCode::TooBig => "too_big",
                    CloseCode::InvalidPayload => "invalid_utf8",
                    _ => "protocol",
                });
                // Frames answered before the bad one still go out, then the
                // close (bounded by `close_timeout`); the stream is unusable now.
                outbox.close(code, true);
                return ReadEnd::Broken;
            }
        };
        if let Err(code) = verdict {
            // Replies already queued (e.g. the last `error`) go out before the close.
            outbox.close(code, true);
            deadline = Some(tokio::time::Instant::now() + limits.close_timeout * 2);
        }
    }
}

/// What the writer needs besides the socket and the outbox.
struct WriteSide<'a> {
    wire: Option<Arc<dyn WireFormat>>,
    deliveries: DeliveryMetrics,
    limits: TransportLimits,
    metrics: &'a Metrics,
}

/// The writer: the outbox to the socket, heartbeats and zombie detection,
/// until a close frame is sent, the peer is found silent or the socket fails.
/// Everything queued is taken at once and written as one batch (one flush);
/// each batch's `on_written` hooks run after its flush.
async fn write<S>(conn: &Conn<S>, outbox: &Outbox, side: WriteSide<'_>) -> WriteEnd
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let WriteSide {
        wire,
        deliveries,
        limits,
        metrics,
    } = side;
    let mut drain = Drain::new(deliveries);
    let start = tokio::time::Instant::now() + limits.heartbeat_interval;
    let mut tick = tokio::time::interval_at(start, limits.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = outbox.ready() => {}
            _ = tick.tick() => {
                let silent = now_micros().saturating_sub(conn.last_seen.get());
                if Duration::from_micros(silent) > limits.idle_timeout {
                    return WriteEnd::Zombie;
                }
                let ping = Message::Ping(Bytes::copy_from_slice(&now_micros().to_be_bytes()));
                if conn.send(ping).await.is_err() {
                    return WriteEnd::Failed;
                }
                if let Some(frame) = wire.as_ref().and_then(|w| w.keepalive())
                    && conn.send(to_message(frame)).await.is_err()
                {
                    return WriteEnd::Failed;
                }
                continue;
            }
        }
        // Coalescing: one scheduler pass before taking the batch. The other
        // tasks that are ready in this wake-up (the readers whose frames fan
        // out to this socket) queue theirs first, so under load one write
        // carries many frames; when nothing else is ready the pass costs a
        // re-poll and no wait. Measured (50-editor Yjs room,
        // docs/benchmarks.md): 2.7× fewer writes, 100 vs 127 µs of server CPU
        // per update.
        tokio::task::yield_now().await;
        loop {
            let close = drain.take(outbox);
            if drain.is_empty() && close.is_none() {
                break;
            }
            if !drain.is_empty() {
                let written = async {
                    for frame in drain.frames() {
                        let frame = match &wire {
                            None => frame,
                            Some(w) => match w.outgoing(frame) {
                                Some(f) => f,
                                None => continue,
                            },
                        };
                        conn.feed(to_message(frame)).await?;
                    }
                    conn.flush().await
                };
                tokio::select! {
                    r = written => {
                        if r.is_err() {
                            return WriteEnd::Failed;
                        }
                        drain.written(metrics);
                        metrics.socket_writes.inc();
                    }
                    () = outbox.closed() => {
                        // A close without flushing: what is left is dropped.
                        drain.discard();
                        continue;
                    }
                }
            }
            if let Some(CloseRequest { code, .. }) = close {
                conn.close_sent.set(true);
                let reason = outbox.close_reason();
                let reason = reason.as_deref().unwrap_or(code.reason());
                let send = conn.send(close_message(code.code(), reason));
                let sent = tokio::time::timeout(limits.close_timeout, send).await;
                tracing::debug!(code = code.code(), sent = ?sent.as_ref().map(|r| r.is_ok()), "close frame");
                return WriteEnd::Closed(code.code());
            }
        }
    }
}

/// Runs a connection to its end: the [`read`]er and the [`write`]r side by
/// side in this task, then the close phase (the handshake's other half,
/// bounded by `close_timeout`; the linger after a read error). The handler
/// is dropped when this returns. The socket is borrowed, not moved: the
/// connection's task keeps it in one place (an async fn's by-value argument
/// would be stored twice in the task, see "Idle memory" in docs/benchmarks.md).
pub async fn drive<S, H>(
    ws: &mut S,
    mut handler: H,
    limits: TransportLimits,
    metrics: &Metrics,
) -> Ended
where
    S: Stream<Item = Result<Message, WsError>>
        + Sink<Message, Error = WsError>
        + RawInput
        + Send
        + Unpin,
    H: Handler,
{
    let outbox = handler.outbox().clone();
    let wire = handler.wire();
    let deliveries = metrics.deliveries(
        wire.as_ref().map_or("ws", |w| w.transport()),
        handler.tenant_label().as_deref().map(String::as_str),
    );
    let conn = Conn::new(ws);
    let side = WriteSide {
        wire,
        deliveries,
        limits,
        metrics,
    };
    // `linger`: our close frame is out but the stream broke, so the rest of
    // the input can only be read raw.
    let (ended, linger) = {
        let reader = read(&conn, &mut handler, &outbox, limits, metrics);
        let writer = write(&conn, &outbox, side);
        tokio::pin!(reader, writer);
        tokio::select! {
            end = &mut reader => match (conn.peer_close.get(), end) {
                (Some(code), _) => (Ended::Closed(code), false),
                // Reader hit a protocol error and asked for a close: let the writer send it.
                (None, ReadEnd::Broken) => {
                    match tokio::time::timeout(limits.close_timeout, &mut writer).await {
                        Ok(WriteEnd::Closed(c)) => (Ended::Closed(c), true),
                        _ => (Ended::Dropped, false),
                    }
                }
                (None, ReadEnd::Done) => (Ended::Dropped, false),
            },
            end = &mut writer => match end {
                WriteEnd::Closed(code) => {
                    // Wait (bounded) for the peer's close reply, reading to the end.
                    let r = tokio::time::timeout(limits.close_timeout, &mut reader).await;
                    tracing::debug!(code, reply = ?r, "close handshake");
                    (Ended::Closed(code), r == Ok(ReadEnd::Broken))
                }
                WriteEnd::Zombie => {
                    metrics.zombies.inc();
                    (Ended::Zombie, false)
                }
                WriteEnd::Failed => match conn.peer_close.get() {
                    Some(c) => (Ended::Closed(c), false),
                    None => (Ended::Dropped, false),
                },
            }
        }
    };
    if linger {
        // Not dropped with input unread (a reset could cost the peer our
        // close frame): EOF, or at most LINGER / LINGER_BYTES.
        let ws = conn.ws.into_inner();
        let bound = limits.close_timeout.min(LINGER);
        let discarded = tokio::time::timeout(bound, ws.discard_input(LINGER_BYTES)).await;
        tracing::debug!(?discarded, "input discarded after close");
    }
    ended
}

/// Convenience for tests and the echo endpoint: the handler's outbox.
pub fn outbox_of<H: Handler>(h: &H) -> Arc<Outbox> {
    h.outbox().clone()
}

#[cfg(test)]
mod tests {
    //! The transport over an in-memory duplex pipe: no sockets involved.
    use super::*;
    use crate::echo::Echo;
    use switchyard_core::backpressure::Outgoing;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    fn limits(hb_ms: u64, idle_ms: u64) -> TransportLimits {
        TransportLimits {
            heartbeat_interval: Duration::from_millis(hb_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            close_timeout: Duration::from_millis(500),
        }
    }

    async fn pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (server, client)
    }

    #[tokio::test]
    async fn echoes_and_closes_on_request() {
        let (mut server, mut client) = pair().await;
        let metrics = Metrics::new();
        let run = tokio::spawn(async move {
            let m = Metrics::new();
            drive(&mut server, Echo::new(16), limits(10_000, 20_000), &m).await
        });
        client.send(Message::text("hi")).await.expect("send");
        assert_eq!(
            client.next().await.expect("msg").expect("ok"),
            Message::text("hi")
        );
        client
            .send(Message::binary(vec![1u8, 2]))
            .await
            .expect("send");
        assert_eq!(
            client.next().await.expect("msg").expect("ok"),
            Message::binary(vec![1u8, 2])
        );
        client.close(None).await.expect("close");
        while let Some(Ok(_)) = client.next().await {}
        assert_eq!(run.await.expect("join"), Ended::Closed(1005));
        drop(metrics);
    }

    /// Hands every inbound text frame to the test; sends nothing itself.
    struct Reporting {
        outbox: Arc<Outbox>,
        seen: tokio::sync::mpsc::UnboundedSender<Bytes>,
    }

    impl Handler for Reporting {
        async fn on_text(&mut self, text: Bytes) -> Result<(), CloseCode> {
            let _ = self.seen.send(text);
            Ok(())
        }

        async fn on_binary(&mut self, _: Bytes) -> Result<(), CloseCode> {
            Ok(())
        }

        fn outbox(&self) -> &Arc<Outbox> {
            &self.outbox
        }
    }

    /// The reader and the writer share the socket without holding it across
    /// a wait: a writer stuck on a peer that reads nothing does not stop the
    /// reader.
    #[tokio::test]
    async fn a_blocked_writer_does_not_stop_the_reader() {
        use tokio::io::AsyncWriteExt;
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let outbox = Arc::new(Outbox::new(16));
        // 1 MiB queued for a pipe of 64 KiB whose other end is never read:
        // the writer's first batch can never be flushed.
        for _ in 0..4 {
            outbox
                .push_frame(Frame::binary(Bytes::from(vec![0u8; 256 * 1024])))
                .expect("queued");
        }
        let (seen, mut inbound) = tokio::sync::mpsc::unbounded_channel();
        let handler = Reporting {
            outbox: outbox.clone(),
            seen,
        };
        let run = tokio::spawn(async move {
            let m = Metrics::new();
            drive(&mut server, handler, limits(10_000, 20_000), &m).await
        });
        let (_rx, mut tx) = tokio::io::split(b);
        for _ in 0..10 {
            // A masked text frame "hi" (zero mask key).
            tx.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'])
                .await
                .expect("write");
        }
        for i in 0..10 {
            let got = tokio::time::timeout(Duration::from_secs(10), inbound.recv())
                .await
                .unwrap_or_else(|_| panic!("frame {i} never reached the handler"));
            assert_eq!(got.as_deref(), Some(&b"hi"[..]));
        }
        assert!(!run.is_finished(), "the connection is still open");
        run.abort();
    }

    #[tokio::test]
    async fn pings_and_terminates_a_silent_peer() {
        let (mut server, client) = pair().await;
        let m = Metrics::new();
        // The client never polls, so it never answers pings.
        let ended = drive(&mut server, Echo::new(16), limits(20, 100), &m).await;
        assert_eq!(ended, Ended::Zombie);
        assert_eq!(m.zombies.get(), 1);
        drop(client);
    }

    #[tokio::test]
    async fn slow_consumer_close_is_sent_with_4008() {
        let (mut server, mut client) = pair().await;
        let echo = Echo::new(4);
        let outbox = echo.outbox().clone();
        let run = tokio::spawn(async move {
            let m = Metrics::new();
            drive(&mut server, echo, limits(10_000, 20_000), &m).await
        });
        // Deliveries (not replies, which never overflow) beyond the capacity.
        for _ in 0..5 {
            let _ = outbox.push(Outgoing::frame(Frame::from_static("x")));
        }
        let mut code = None;
        while let Some(Ok(m)) = client.next().await {
            if let Message::Close(f) = m {
                code = f.map(|f| u16::from(f.code));
            }
        }
        assert_eq!(code, Some(4008));
        assert_eq!(run.await.expect("join"), Ended::Closed(4008));
    }

    #[tokio::test]
    async fn draining_flushes_queue_before_1001() {
        let (mut server, mut client) = pair().await;
        let echo = Echo::new(16);
        let outbox = echo.outbox().clone();
        let run = tokio::spawn(async move {
            let m = Metrics::new();
            drive(&mut server, echo, limits(10_000, 20_000), &m).await
        });
        outbox.push_frame(Frame::from_static("a")).expect("a");
        outbox.push_frame(Frame::from_static("b")).expect("b");
        outbox.close(CloseCode::GoingAway, true);
        let mut got = Vec::new();
        while let Some(Ok(m)) = client.next().await {
            got.push(m);
        }
        assert_eq!(got[0], Message::text("a"));
        assert_eq!(got[1], Message::text("b"));
        assert!(matches!(&got[2], Message::Close(Some(f)) if u16::from(f.code) == 1001));
        assert_eq!(run.await.expect("join"), Ended::Closed(1001));
    }

    #[tokio::test]
    async fn an_oversized_frame_is_read_to_its_end_after_close_1009() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
        let (a, b) = tokio::io::duplex(64 * 1024);
        let config = WebSocketConfig::default()
            .max_frame_size(Some(1024))
            .max_message_size(Some(1024));
        let mut server = WebSocketStream::from_raw_socket(a, Role::Server, Some(config)).await;
        let run = tokio::spawn(async move {
            let m = Metrics::new();
            drive(&mut server, Echo::new(16), limits(10_000, 20_000), &m).await
        });
        let (mut rx, mut tx) = tokio::io::split(b);
        // A masked binary frame of 1 MiB (64-bit length, zero mask key): far
        // more than the pipe holds, so it is written only if the server reads it.
        let len: u64 = 1 << 20;
        let write = tokio::spawn(async move {
            let mut head = vec![0x82, 0xFF];
            head.extend_from_slice(&len.to_be_bytes());
            head.extend_from_slice(&[0; 4]);
            tx.write_all(&head).await?;
            tx.write_all(&vec![0u8; 1 << 20]).await?;
            tx.shutdown().await
        });
        let mut close = [0u8; 4];
        rx.read_exact(&mut close).await.expect("a close frame");
        assert_eq!(close[0], 0x88, "{close:?}");
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1009);
        write
            .await
            .expect("join")
            .expect("the server read the whole frame after its close");
        assert_eq!(run.await.expect("join"), Ended::Closed(1009));
        let mut rest = Vec::new();
        rx.read_to_end(&mut rest)
            .await
            .expect("EOF after the close frame");
    }

    #[tokio::test]
    async fn protocol_error_still_sends_earlier_replies_then_1002() {
        use tokio::io::AsyncWriteExt;
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let mut server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        // A valid masked text frame "hi" (zero mask key), then the same frame
        // with RSV2 set, which no negotiated extension allows (Autobahn 3.2).
        let mut raw = vec![0x81, 0x82, 0, 0, 0, 0, b'h', b'i'];
        raw.extend_from_slice(&[0xA1, 0x82, 0, 0, 0, 0, b'h', b'i']);
        b.write_all(&raw).await.expect("write");
        let run = tokio::spawn(async move {
            let m = Metrics::new();
            drive(&mut server, Echo::new(16), limits(10_000, 20_000), &m).await
        });
        let mut client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let mut got = Vec::new();
        while let Some(Ok(m)) = client.next().await {
            got.push(m);
        }
        assert_eq!(got.first(), Some(&Message::text("hi")), "{got:?}");
        assert!(
            matches!(got.get(1), Some(Message::Close(Some(f))) if u16::from(f.code) == 1002),
            "{got:?}"
        );
        assert_eq!(run.await.expect("join"), Ended::Closed(1002));
    }
}
