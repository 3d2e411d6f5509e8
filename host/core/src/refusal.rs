//! Every refusal the gateway makes, mapped to the outside in one place.
//!
//! A refusal is named once, by what went wrong ([`Refusal`]); the table here
//! says what each transport shows for it: the HTTP status and JSON `error`
//! name (HTTP API, admin API, fallbacks, upgrade refusals), the protocol
//! `error` code (WebSocket and fallback sessions) and the close code (when
//! the refusal ends a connection). The error types of the places that refuse
//! ([`crate::publish::PublishError`], [`crate::document::DocError`],
//! [`Denial`], [`BrokerError`], the server's handshake and admin errors) each
//! say which refusal they are and nothing more, so the same refusal reads the
//! same everywhere.

use crate::broker::BrokerError;
use crate::policy::Denial;
use crate::protocol::{CloseCode, ErrorCode};

/// What went wrong, independent of the transport that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Malformed request or command (bad JSON, a missing or bad field).
    BadRequest,
    /// A channel name that is not valid.
    BadChannel,
    /// A malformed or refused document patch, or a JSON publish to a document.
    Invalid,
    /// No or bad credentials.
    Unauthorized,
    /// Credentials fine, the action is not allowed (policy, origin, CSRF).
    Forbidden,
    /// No such thing (tenant, session, client, document channel).
    NotFound,
    /// The path exists with other methods.
    MethodNotAllowed,
    /// The resource is busy or the change conflicts.
    Conflict,
    /// Over a size limit.
    TooBig,
    /// Over a rate or count limit.
    RateLimited,
    /// An upgrade request that is not a WebSocket upgrade (or not version 13).
    UpgradeRequired,
    /// Not now: the broker or log cannot be reached, the node is full or
    /// draining.
    Unavailable,
    /// Anything else on the server side.
    Internal,
}

impl Refusal {
    /// Every refusal (table tests).
    pub const ALL: [Refusal; 13] = [
        Refusal::BadRequest,
        Refusal::BadChannel,
        Refusal::Invalid,
        Refusal::Unauthorized,
        Refusal::Forbidden,
        Refusal::NotFound,
        Refusal::MethodNotAllowed,
        Refusal::Conflict,
        Refusal::TooBig,
        Refusal::RateLimited,
        Refusal::UpgradeRequired,
        Refusal::Unavailable,
        Refusal::Internal,
    ];

    /// HTTP status.
    pub fn http_status(self) -> u16 {
        match self {
            Refusal::BadRequest | Refusal::BadChannel | Refusal::Invalid => 400,
            Refusal::Unauthorized => 401,
            Refusal::Forbidden => 403,
            Refusal::NotFound => 404,
            Refusal::MethodNotAllowed => 405,
            Refusal::Conflict => 409,
            Refusal::TooBig => 413,
            Refusal::UpgradeRequired => 426,
            Refusal::RateLimited => 429,
            Refusal::Internal => 500,
            Refusal::Unavailable => 503,
        }
    }

    /// The `error` name of an HTTP JSON error body.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::BadChannel => "bad_channel",
            Refusal::Invalid => "invalid",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Forbidden => "forbidden",
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::Conflict => "conflict",
            Refusal::TooBig => "too_big",
            Refusal::RateLimited => "rate_limited",
            Refusal::UpgradeRequired => "upgrade_required",
            Refusal::Unavailable => "unavailable",
            Refusal::Internal => "internal",
        }
    }

    /// The protocol `error` code (DESIGN §2). The protocol has no
    /// `unauthorized` (a session is authenticated at connect: a later
    /// refusal is `forbidden`) and no `not_found`; refusals it has no code
    /// for are `internal`.
    pub fn error_code(self) -> ErrorCode {
        match self {
            Refusal::BadRequest
            | Refusal::MethodNotAllowed
            | Refusal::UpgradeRequired
            | Refusal::TooBig => ErrorCode::BadRequest,
            Refusal::BadChannel => ErrorCode::BadChannel,
            Refusal::Invalid => ErrorCode::Invalid,
            Refusal::Unauthorized | Refusal::Forbidden => ErrorCode::Forbidden,
            Refusal::Conflict => ErrorCode::Conflict,
            Refusal::RateLimited => ErrorCode::RateLimited,
            Refusal::Unavailable => ErrorCode::Unavailable,
            Refusal::NotFound | Refusal::Internal => ErrorCode::Internal,
        }
    }

    /// The close code when the refusal ends a connection (DESIGN §2).
    pub fn close_code(self) -> CloseCode {
        match self {
            Refusal::Unauthorized => CloseCode::Unauthorized,
            Refusal::Forbidden => CloseCode::Forbidden,
            Refusal::RateLimited => CloseCode::RateLimited,
            Refusal::TooBig => CloseCode::TooBig,
            Refusal::Unavailable => CloseCode::TryLater,
            Refusal::Internal => CloseCode::Internal,
            Refusal::BadRequest
            | Refusal::BadChannel
            | Refusal::Invalid
            | Refusal::NotFound
            | Refusal::MethodNotAllowed
            | Refusal::Conflict
            | Refusal::UpgradeRequired => CloseCode::Policy,
        }
    }
}

impl From<&Denial> for Refusal {
    /// A policy's refusal: unauthorized, rate limited, or else forbidden (a
    /// failed policy under `on_error = deny` refuses as forbidden).
    fn from(d: &Denial) -> Self {
        match d {
            Denial::Unauthorized(_) => Refusal::Unauthorized,
            Denial::RateLimited { .. } => Refusal::RateLimited,
            _ => Refusal::Forbidden,
        }
    }
}

impl From<&BrokerError> for Refusal {
    fn from(e: &BrokerError) -> Self {
        match e {
            BrokerError::Unavailable(_) => Refusal::Unavailable,
            BrokerError::NotFound => Refusal::NotFound,
            BrokerError::Internal(_) => Refusal::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_is_an_http_error() {
        for r in Refusal::ALL {
            assert!((400..600).contains(&r.http_status()), "{r:?}");
        }
    }

    #[test]
    fn names_are_distinct() {
        let mut names: Vec<_> = Refusal::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Refusal::ALL.len());
    }

    #[test]
    fn a_refusal_the_protocol_names_keeps_its_name() {
        for r in Refusal::ALL {
            let code = r.error_code().as_str();
            if code != "internal" && code != "bad_request" && code != "forbidden" {
                assert_eq!(code, r.name(), "{r:?}");
            }
        }
    }

    #[test]
    fn close_codes_are_the_documented_ones() {
        assert_eq!(Refusal::Unauthorized.close_code().code(), 4001);
        assert_eq!(Refusal::Forbidden.close_code().code(), 4003);
        assert_eq!(Refusal::RateLimited.close_code().code(), 4029);
        assert_eq!(Refusal::Unavailable.close_code().code(), 1013);
        assert_eq!(Refusal::TooBig.close_code().code(), 1009);
    }

    #[test]
    fn policy_denials_refuse_by_kind() {
        assert_eq!(
            Refusal::from(&Denial::Unauthorized("x".into())),
            Refusal::Unauthorized
        );
        assert_eq!(
            Refusal::from(&Denial::RateLimited { retry_after_ms: 5 }),
            Refusal::RateLimited
        );
        assert_eq!(
            Refusal::from(&Denial::Failed("x".into())),
            Refusal::Forbidden
        );
        assert_eq!(
            Refusal::from(&BrokerError::Unavailable("down".into())),
            Refusal::Unavailable
        );
    }
}
