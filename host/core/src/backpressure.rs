//! Per-connection bounded outbound queue ([`Outbox`]) and inbound token bucket.
//!
//! Producers (fan-out, command replies, direct sends) never block: a push onto a
//! full queue drops the queue and asks the transport to close with 4008. The
//! transport's writer takes everything queued in one go and writes it as one
//! batch, so a busy socket gets one flush for many messages.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::protocol::{CloseCode, Frame};

/// Called once a frame has been written to the socket (e.g. to XACK a directed message).
pub type WrittenHook = std::sync::Arc<dyn Fn() + Send + Sync>;

/// One queued outbound frame.
#[derive(Clone)]
pub struct Outgoing {
    /// Encoded frame (shared with other subscribers).
    pub frame: Frame,
    /// When the message was published, for publish-to-deliver latency.
    pub published_at: Option<Instant>,
    /// Run after the frame was flushed to the socket.
    pub on_written: Option<WrittenHook>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("frame", &self.frame)
            .field("published_at", &self.published_at)
            .finish_non_exhaustive()
    }
}

impl Outgoing {
    /// A frame with no publish time and no hook.
    pub fn frame(frame: Frame) -> Self {
        Self {
            frame,
            published_at: None,
            on_written: None,
        }
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The queue was full: it was dropped and a 4008 close requested.
    #[error("send queue full")]
    Full,
    /// The connection is closing; nothing more is accepted.
    #[error("connection closing")]
    Closed,
}

/// A close the transport should perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseRequest {
    /// Close code.
    pub code: CloseCode,
    /// Write what is queued before closing (drain) or drop it (slow consumer, errors).
    pub flush: bool,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Outgoing>,
    close: Option<CloseRequest>,
    /// Bytes of all queued frames.
    bytes: usize,
    /// Of the queued frames, replies and their bytes.
    replies: usize,
    reply_bytes: usize,
    /// Frames handed to the transport so far (messages out).
    taken: u64,
    /// The close frame's reason when the closer gave one ([`Outbox::close_with_reason`]).
    reason: Option<Arc<str>>,
}

/// Bounded outbound queue of one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    close_notify: Notify,
    drained: Notify,
    capacity: usize,
    max_bytes: usize,
    overflows: AtomicU32,
    /// Inbound frames the session handled (messages in).
    received: AtomicU64,
    /// The tenant's in/out counters, once the session set them.
    tenant: std::sync::OnceLock<crate::metrics::TenantMetrics>,
}

impl Outbox {
    /// A queue holding at most `capacity` delivered frames (no byte bound).
    pub fn new(capacity: usize) -> Self {
        Self::with_bytes(capacity, usize::MAX)
    }

    /// A queue holding at most `capacity` delivered frames and `max_bytes` bytes of them.
    pub fn with_bytes(capacity: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            close_notify: Notify::new(),
            drained: Notify::new(),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            overflows: AtomicU32::new(0),
            received: AtomicU64::new(0),
            tenant: std::sync::OnceLock::new(),
        }
    }

    /// Queues a delivery. Beyond `capacity` deliveries or `max_bytes` bytes of
    /// them the queue is dropped and close 4008 requested.
    pub fn push(&self, item: Outgoing) -> Result<(), PushError> {
        let mut st = self.state.lock();
        if st.close.is_some() {
            return Err(PushError::Closed);
        }
        let len = item.frame.len();
        let deliveries = st.frames.len() - st.replies;
        let delivery_bytes = st.bytes - st.reply_bytes;
        if deliveries >= self.capacity || delivery_bytes.saturating_add(len) > self.max_bytes {
            st.frames = VecDeque::new();
            st.bytes = 0;
            st.replies = 0;
            st.reply_bytes = 0;
            st.close = Some(CloseRequest {
                code: CloseCode::SlowConsumer,
                flush: false,
            });
            drop(st);
            self.overflows.fetch_add(1, Ordering::Relaxed);
            self.notify.notify_one();
            self.close_notify.notify_one();
            return Err(PushError::Full);
        }
        let was_empty = st.frames.is_empty();
        st.bytes += len;
        st.frames.push_back(item);
        drop(st);
        if was_empty {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Queues a reply to the connection's own command (or a replay it asked
    /// for). Never overflows; the reader waits in [`Outbox::replies_drained`].
    pub fn push_reply(&self, item: Outgoing) -> Result<(), PushError> {
        let mut st = self.state.lock();
        if st.close.is_some() {
            return Err(PushError::Closed);
        }
        let len = item.frame.len();
        let was_empty = st.frames.is_empty();
        st.bytes += len;
        st.replies += 1;
        st.reply_bytes += len;
        st.frames.push_back(item);
        drop(st);
        if was_empty {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Queues a reply frame ([`Outbox::push_reply`]).
    pub fn push_frame(&self, frame: Frame) -> Result<(), PushError> {
        self.push_reply(Outgoing::frame(frame))
    }

    /// Returns once at most half the limits' worth of replies is queued (or
    /// the connection is closing): the transport's reader awaits this before
    /// it reads the next command.
    pub async fn replies_drained(&self) {
        let (most, most_bytes) = ((self.capacity / 2).max(1), (self.max_bytes / 2).max(1));
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let st = self.state.lock();
                if st.close.is_some() || (st.replies <= most && st.reply_bytes <= most_bytes) {
                    return;
                }
            }
            drained.await;
        }
    }

    /// Requests a close. The first request wins, except that an immediate close
    /// overrides a pending flushing one. A non-flushing close drops the queue.
    pub fn close(&self, code: CloseCode, flush: bool) {
        self.close_inner(code, flush, None);
    }

    /// Like [`Outbox::close`], with the reason the close frame carries instead
    /// of the code's own ([`Outbox::close_reason`]).
    pub fn close_with_reason(&self, code: CloseCode, flush: bool, reason: &str) {
        self.close_inner(code, flush, Some(Arc::from(reason)));
    }

    fn close_inner(&self, code: CloseCode, flush: bool, reason: Option<Arc<str>>) {
        let mut st = self.state.lock();
        match st.close {
            Some(CloseRequest { flush: false, .. }) => return,
            Some(CloseRequest { flush: true, .. }) if flush => return,
            _ => {}
        }
        // Re-requesting the same code (a flushing close made immediate) keeps its reason.
        let same = st.close.is_some_and(|c| c.code == code);
        st.close = Some(CloseRequest { code, flush });
        if reason.is_some() || !same {
            st.reason = reason;
        }
        if !flush {
            st.frames = VecDeque::new();
            st.bytes = 0;
            st.replies = 0;
            st.reply_bytes = 0;
        }
        drop(st);
        self.notify.notify_one();
        self.drained.notify_waiters();
        if !flush {
            self.close_notify.notify_one();
        }
    }

    /// Waits until an immediate (non-flushing) close is requested, so a writer
    /// blocked on a stalled socket can abandon its batch.
    pub async fn closed(&self) {
        loop {
            if matches!(
                self.state.lock().close,
                Some(CloseRequest { flush: false, .. })
            ) {
                return;
            }
            self.close_notify.notified().await;
        }
    }

    /// Whether a close was requested.
    pub fn is_closing(&self) -> bool {
        self.state.lock().close.is_some()
    }

    /// Moves everything queued into `out` (which should be empty) and reports a
    /// pending close. A flushing close is reported only once the queue is empty.
    pub fn take(&self, out: &mut VecDeque<Outgoing>) -> Option<CloseRequest> {
        let mut st = self.state.lock();
        std::mem::swap(&mut st.frames, out);
        st.taken += out.len() as u64;
        if !out.is_empty()
            && let Some(t) = self.tenant.get()
        {
            t.messages_out.inc_by(out.len() as u64);
        }
        st.bytes = 0;
        st.replies = 0;
        st.reply_bytes = 0;
        if !out.is_empty() {
            self.drained.notify_waiters();
        }
        match st.close {
            Some(c) if !c.flush => {
                st.taken -= out.len() as u64;
                out.clear();
                Some(c)
            }
            Some(c) if out.is_empty() => Some(c),
            _ => None,
        }
    }

    /// Waits until something was pushed or a close requested.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }

    /// Times this queue overflowed (0 or 1 in practice).
    pub fn overflows(&self) -> u32 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// The reason given with the close request, if any.
    pub fn close_reason(&self) -> Option<Arc<str>> {
        self.state.lock().reason.clone()
    }

    /// The tenant's series this queue counts for, if set.
    pub fn tenant_metrics(&self) -> Option<&crate::metrics::TenantMetrics> {
        self.tenant.get()
    }

    /// Counts frames for the tenant's series from now on (set once).
    pub fn count_for(&self, tenant: crate::metrics::TenantMetrics) {
        let _ = self.tenant.set(tenant);
    }

    /// Counts one inbound frame handled for this connection.
    pub fn note_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.tenant.get() {
            t.messages_in.inc();
        }
    }

    /// Inbound frames counted by [`Outbox::note_received`].
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Frames handed to the transport by [`Outbox::take`] so far.
    pub fn sent(&self) -> u64 {
        self.state.lock().taken
    }

    /// Frames currently queued.
    pub fn len(&self) -> usize {
        self.state.lock().frames.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Inbound token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: now,
        }
    }

    /// Whether the bucket is full again at `now` (nothing worth remembering).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    /// Takes `cost` tokens if available.
    pub fn try_take(&mut self, now: Instant, cost: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let cost = f64::from(cost);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// Counts offences within a sliding window; `hit` says when the limit is reached.
#[derive(Debug, Clone)]
pub struct Strikes {
    count: u32,
    window_start: Instant,
    window: Duration,
    limit: u32,
}

impl Strikes {
    /// A counter allowing `limit` strikes per `window`.
    pub fn new(limit: u32, window: Duration, now: Instant) -> Self {
        Self {
            count: 0,
            window_start: now,
            window,
            limit,
        }
    }

    /// Records one strike; true when the limit is reached.
    pub fn hit(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window_start) > self.window {
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        self.count >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &'static str) -> Outgoing {
        Outgoing::frame(Frame::from_static(s))
    }

    #[test]
    fn counts_frames_and_keeps_the_closers_reason() {
        let o = Outbox::new(8);
        o.push(f("a")).expect("a");
        o.push_frame(Frame::from_static("b")).expect("b");
        o.note_received();
        let mut out = VecDeque::new();
        assert_eq!(o.take(&mut out), None);
        assert_eq!((o.sent(), o.received()), (2, 1));
        o.close_with_reason(CloseCode::Application(4100), false, "moved");
        // A later close does not replace the first one or its reason.
        o.close(CloseCode::GoingAway, false);
        out.clear();
        let c = o.take(&mut out).expect("close");
        assert_eq!(c.code.code(), 4100);
        assert_eq!(o.close_reason().as_deref(), Some("moved"));
        assert_eq!(
            CloseCode::from_code(4100),
            Some(CloseCode::Application(4100))
        );
        assert_eq!(CloseCode::from_code(4003), Some(CloseCode::Forbidden));
        assert_eq!(CloseCode::from_code(3000), None);
    }

    #[test]
    fn overflow_drops_queue_and_requests_4008() {
        let o = Outbox::new(2);
        o.push(f("a")).expect("a");
        o.push(f("b")).expect("b");
        assert_eq!(o.push(f("c")), Err(PushError::Full));
        assert_eq!(o.push(f("d")), Err(PushError::Closed));
        let mut buf = VecDeque::new();
        let close = o.take(&mut buf).expect("close");
        assert_eq!(close.code, CloseCode::SlowConsumer);
        assert!(buf.is_empty(), "queue dropped");
        assert_eq!(o.overflows(), 1);
    }

    #[test]
    fn deliveries_overflow_by_bytes_too() {
        let o = Outbox::with_bytes(100, 5);
        o.push(f("abc")).expect("3 bytes");
        assert_eq!(o.push(f("abc")), Err(PushError::Full), "6 > 5 bytes");
        assert_eq!(o.overflows(), 1);
    }

    #[test]
    fn replies_never_overflow_and_do_not_count_against_deliveries() {
        let o = Outbox::with_bytes(2, 4);
        for _ in 0..100 {
            o.push_frame(Frame::from_static("reply"))
                .expect("a reply is kept");
        }
        o.push(f("ab")).expect("deliveries have their own limits");
        o.push(f("cd")).expect("two deliveries, 4 bytes");
        assert_eq!(o.push(f("e")), Err(PushError::Full));
    }

    #[tokio::test]
    async fn the_reader_waits_until_replies_drain() {
        let o = std::sync::Arc::new(Outbox::with_bytes(4, 1 << 20));
        o.replies_drained().await; // nothing queued: returns at once
        for _ in 0..3 {
            o.push_frame(Frame::from_static("r")).expect("reply");
        }
        let o2 = o.clone();
        let waiting = tokio::spawn(async move { o2.replies_drained().await });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "3 replies > half of 4: the reader waits"
        );
        let mut buf = VecDeque::new();
        o.take(&mut buf);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the writer's take")
            .expect("join");
    }

    #[test]
    fn flushing_close_waits_for_queue() {
        let o = Outbox::new(8);
        o.push(f("a")).expect("a");
        o.close(CloseCode::GoingAway, true);
        let mut buf = VecDeque::new();
        assert!(o.take(&mut buf).is_none(), "queued frames go first");
        assert_eq!(buf.len(), 1);
        buf.clear();
        assert_eq!(
            o.take(&mut buf).expect("then close").code,
            CloseCode::GoingAway
        );
        // an immediate close overrides a pending flushing one
        o.close(CloseCode::SlowConsumer, false);
        assert_eq!(
            o.take(&mut buf).expect("close").code,
            CloseCode::SlowConsumer
        );
        o.close(CloseCode::Normal, false);
        assert_eq!(
            o.take(&mut buf).expect("close").code,
            CloseCode::SlowConsumer
        );
    }

    #[tokio::test]
    async fn ready_wakes_on_push() {
        let o = std::sync::Arc::new(Outbox::new(4));
        let o2 = o.clone();
        let h = tokio::spawn(async move { o2.ready().await });
        tokio::task::yield_now().await;
        o.push(f("x")).expect("push");
        tokio::time::timeout(Duration::from_secs(1), h)
            .await
            .expect("woken")
            .expect("join");
    }

    #[test]
    fn token_bucket_limits_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        let taken = (0..20).filter(|_| b.try_take(t0, 1)).count();
        assert_eq!(taken, 5, "burst");
        assert!(!b.try_take(t0 + Duration::from_millis(50), 1));
        assert!(b.try_take(t0 + Duration::from_millis(150), 1), "refilled 1");
        let later = t0 + Duration::from_secs(100);
        let taken = (0..20).filter(|_| b.try_take(later, 1)).count();
        assert_eq!(taken, 5, "capped at burst");
    }

    #[test]
    fn strikes_window() {
        let t0 = Instant::now();
        let mut s = Strikes::new(3, Duration::from_secs(1), t0);
        assert!(!s.hit(t0));
        assert!(!s.hit(t0));
        assert!(s.hit(t0));
        let mut s = Strikes::new(3, Duration::from_secs(1), t0);
        assert!(!s.hit(t0));
        assert!(!s.hit(t0));
        assert!(!s.hit(t0 + Duration::from_secs(2)), "window reset");
    }
}
