//! The one error type of the crate.

use std::time::Duration;

/// What went wrong: a refusal from the gateway, a connection problem, or a
/// frame the client could not understand. Cloneable, so it can travel in
/// [`Event::Error`](crate::Event::Error) as well as in a `Result`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The gateway answered a command with `{"type":"error","code":…}`
    /// (`forbidden`, `rate_limited`, `invalid`, `conflict`, `unavailable`, …).
    #[error("gateway error {code}: {message}")]
    Server {
        /// The protocol's error code.
        code: String,
        /// Human-readable text from the gateway.
        message: String,
    },
    /// The WebSocket could not be opened (refused, DNS, TLS, handshake, no
    /// `welcome`). The client retries these with backoff.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The gateway refused the upgrade with 401 or 403, or closed with 4001 or
    /// 4003: retrying cannot help, the client stops.
    #[error("refused by the gateway ({code}): {reason}")]
    Refused {
        /// HTTP status (401, 403) or close code (4001, 4003).
        code: u16,
        /// The response body or close reason.
        reason: String,
    },
    /// A frame from the gateway that is not valid protocol v1 (never a panic).
    #[error("bad frame from the gateway: {0}")]
    BadFrame(String),
    /// The command needs a live connection and there is none, or the
    /// connection was lost before the reply.
    #[error("not connected")]
    Disconnected,
    /// No reply in time.
    #[error("timed out after {after:?}: {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// [`Client::close`](crate::Client::close) was called (or every handle was dropped).
    #[error("client closed")]
    Closed,
    /// The reconnect budget ([`Backoff::max_retries`](crate::Backoff::max_retries))
    /// is spent: the client stopped.
    #[error("gave up after {0} failed reconnect attempts")]
    GaveUp(u32),
    /// A bad argument (a channel opened both ways, a non-object LWW delta, …).
    #[error("invalid: {0}")]
    Invalid(String),
}

impl Error {
    /// The gateway's error code for [`Error::Server`], else `None`.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn bad_frame(what: impl Into<String>) -> Error {
        Error::BadFrame(what.into())
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
