//! The live pub/sub payload: `seq \n epoch \n publish-ms \n data`, written by the
//! publish script and decoded by every node. A traced publish puts an optional
//! header line `tp:<traceparent>` before the data (JSON never starts with `t`
//! followed by `p`, so a payload without it reads as before). A `"skipSelf"`
//! publish puts `sk:<session> <node>\n` there too (the publishing connection,
//! which its node leaves out). A payload starting `p\n` is not a message but
//! a presence [`Delta`](switchyard_core::presence::Delta) of one node.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use switchyard_core::history::Message;
use switchyard_core::telemetry::TraceParent;

/// Why a payload was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Missing fields or a bad number.
    #[error("malformed live payload")]
    Malformed,
    /// The data part is not JSON.
    #[error("live payload data is not JSON")]
    Data,
}

/// A decoded live message (the epoch borrows the payload: it rarely changes,
/// so the reader allocates it only when it does).
#[derive(Debug, Clone)]
pub struct LiveMessage<'a> {
    /// Channel seq.
    pub seq: u64,
    /// Channel epoch.
    pub epoch: &'a str,
    /// Publish time, milliseconds since the Unix epoch (Redis clock).
    pub published_ms: u64,
    /// Raw JSON data.
    pub data: Arc<RawValue>,
    /// The publish span's context (the optional `tp:` header), when valid.
    pub trace: Option<TraceParent>,
    /// The publishing connection to leave out (`sk:` header): session, node.
    pub skip: Option<(u64, &'a str)>,
}

/// Prefix of the optional sender-exclusion header line.
pub const SKIP_HEADER: &str = "sk:";

/// Prefix of a presence delta payload on the live channel.
pub const PRESENCE_PREFIX: &[u8] = b"p\n";

/// The sender-exclusion header line for session `session` of `node`
/// (`""` when the node id cannot be carried on one line).
pub fn skip_header(session: u64, node: &str) -> String {
    if node.contains('\n') {
        return String::new();
    }
    format!("{SKIP_HEADER}{session} {node}\n")
}

/// Prefix of the optional trace header line.
pub const TRACE_HEADER: &str = "tp:";

/// The trace header argument of the publish script: `""` without a trace.
pub fn trace_header(trace: Option<TraceParent>) -> String {
    match trace {
        Some(tp) => format!("{TRACE_HEADER}{}\n", tp.header()),
        None => String::new(),
    }
}

/// Decodes a payload. Hostile bytes give an error, never a panic.
pub fn decode(payload: &[u8]) -> Result<LiveMessage<'_>, DecodeError> {
    let text = std::str::from_utf8(payload).map_err(|_| DecodeError::Malformed)?;
    let mut parts = text.splitn(4, '\n');
    let seq = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(DecodeError::Malformed)?;
    let epoch = parts
        .next()
        .filter(|e| !e.is_empty())
        .ok_or(DecodeError::Malformed)?;
    let published_ms = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(DecodeError::Malformed)?;
    let mut data = parts.next().ok_or(DecodeError::Malformed)?;
    let mut trace = None;
    let mut skip = None;
    loop {
        if let Some(rest) = data.strip_prefix(TRACE_HEADER) {
            let (header, body) = rest.split_once('\n').ok_or(DecodeError::Malformed)?;
            // An invalid header is ignored: the message is still delivered.
            trace = TraceParent::parse(header);
            data = body;
        } else if let Some(rest) = data.strip_prefix(SKIP_HEADER) {
            let (header, body) = rest.split_once('\n').ok_or(DecodeError::Malformed)?;
            skip = header
                .split_once(' ')
                .and_then(|(s, n)| Some((s.parse().ok()?, n)));
            data = body;
        } else {
            break;
        }
    }
    let data = RawValue::from_string(data.to_owned()).map_err(|_| DecodeError::Data)?;
    Ok(LiveMessage {
        seq,
        epoch,
        published_ms,
        data: Arc::from(data),
        trace,
        skip,
    })
}

/// Converts a wall-clock publish time into a local `Instant` (clamped to now).
pub fn instant_of(published_ms: u64) -> Instant {
    let now = Instant::now();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let age = Duration::from_millis(wall.saturating_sub(published_ms));
    now.checked_sub(age).unwrap_or(now)
}

impl LiveMessage<'_> {
    /// As a hub message, sharing `epoch`.
    pub fn into_message(self, epoch: Arc<str>) -> Message {
        Message {
            seq: self.seq,
            epoch,
            data: self.data,
            published_at: instant_of(self.published_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_rejects() {
        let m = decode(b"42\nabc\n1700000000000\n{\"a\":\"x\\ny\"}").expect("ok");
        assert_eq!(
            (m.seq, m.epoch, m.published_ms),
            (42, "abc", 1_700_000_000_000)
        );
        assert_eq!(m.data.get(), "{\"a\":\"x\\ny\"}");
        assert_eq!(decode(b"x\ne\n1\n1").unwrap_err(), DecodeError::Malformed);
        assert_eq!(decode(b"1\n\n1\n1").unwrap_err(), DecodeError::Malformed);
        assert_eq!(decode(b"1\ne\n1").unwrap_err(), DecodeError::Malformed);
        assert_eq!(decode(b"1\ne\n1\n{oops").unwrap_err(), DecodeError::Data);
        assert_eq!(decode(&[0xff, 0xfe]).unwrap_err(), DecodeError::Malformed);
        assert!(m.trace.is_none());
    }

    #[test]
    fn decodes_the_trace_header() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(tp);
        let header = trace_header(parsed);
        assert_eq!(header, format!("tp:{tp}\n"));
        let payload = format!("7\ne\n1\n{header}{{\"a\":\"tp:x\\n\"}}");
        let m = decode(payload.as_bytes()).expect("ok");
        assert_eq!(m.trace, parsed);
        assert_eq!(m.data.get(), "{\"a\":\"tp:x\\n\"}");
        // A bad header is ignored, a header without data is malformed.
        let m = decode(b"7\ne\n1\ntp:nonsense\n[1]").expect("ok");
        assert_eq!((m.trace, m.data.get()), (None, "[1]"));
        assert_eq!(
            decode(b"7\ne\n1\ntp:x").unwrap_err(),
            DecodeError::Malformed
        );
        assert_eq!(trace_header(None), "");
    }

    #[test]
    fn decodes_the_skip_header() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let header = format!(
            "{}{}",
            trace_header(TraceParent::parse(tp)),
            skip_header(7, "node a")
        );
        let payload = format!("3\ne\n1\n{header}{{\"sk\":1}}");
        let m = decode(payload.as_bytes()).expect("ok");
        assert_eq!(m.skip, Some((7, "node a")));
        assert!(m.trace.is_some());
        assert_eq!(m.data.get(), "{\"sk\":1}");
        let m = decode(b"3\ne\n1\nsk:x n\n1").expect("ok");
        assert_eq!((m.skip, m.data.get()), (None, "1"));
        assert!(decode(b"3\ne\n1\n1").expect("ok").skip.is_none());
        assert_eq!(skip_header(1, "a\nb"), "");
    }
}
