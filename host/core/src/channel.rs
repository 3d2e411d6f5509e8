//! Channel names (`namespace:name`) and the tenant-scoped channel key.

use std::fmt;
use std::sync::Arc;

/// Longest channel name accepted.
pub const MAX_CHANNEL_LEN: usize = 200;

/// A channel within a tenant. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    /// Tenant id.
    pub tenant: Arc<str>,
    /// Channel name, `namespace:name`.
    pub channel: Arc<str>,
}

impl ChannelKey {
    /// Builds a key; the channel name must already be validated.
    pub fn new(tenant: impl Into<Arc<str>>, channel: impl Into<Arc<str>>) -> Self {
        Self {
            tenant: tenant.into(),
            channel: channel.into(),
        }
    }

    /// The namespace part (before the first `:`).
    pub fn namespace(&self) -> &str {
        namespace(&self.channel)
    }
}

impl fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.channel)
    }
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.channel)
    }
}

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// Empty or too long.
    #[error("channel name must be 1-{MAX_CHANNEL_LEN} bytes")]
    Length,
    /// Not of the form `namespace:name`.
    #[error("channel name must be namespace:name")]
    Shape,
    /// A character outside `[A-Za-z0-9_.:@=/-]`.
    #[error("channel name may only contain letters, digits and _ - . : @ = /")]
    Character,
}

/// Validates a `namespace:name` channel name.
pub fn validate(name: &str) -> Result<(), ChannelNameError> {
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelNameError::Length);
    }
    if !name.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'=' | b'/')
    }) {
        return Err(ChannelNameError::Character);
    }
    match name.split_once(':') {
        Some((ns, rest)) if !ns.is_empty() && !rest.is_empty() => Ok(()),
        _ => Err(ChannelNameError::Shape),
    }
}

/// The namespace of a channel name (text before the first `:`).
pub fn namespace(name: &str) -> &str {
    name.split_once(':').map_or(name, |(ns, _)| ns)
}

/// Whether `id` is an acceptable tenant id.
pub fn valid_tenant(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Glob match with `*` (any run) used by channel permission patterns such as `room:*`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ni;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert!(validate("room:1").is_ok());
        assert!(validate("chat:a/b@c=d.e-f_g").is_ok());
        assert_eq!(validate(""), Err(ChannelNameError::Length));
        assert_eq!(validate("room"), Err(ChannelNameError::Shape));
        assert_eq!(validate(":x"), Err(ChannelNameError::Shape));
        assert_eq!(validate("room:"), Err(ChannelNameError::Shape));
        assert_eq!(validate("room: x"), Err(ChannelNameError::Character));
        assert_eq!(validate(&"a:".repeat(200)), Err(ChannelNameError::Length));
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("room:*", "room:1"));
        assert!(pattern_matches("*", "x:y"));
        assert!(pattern_matches("a:*:c", "a:b:c"));
        assert!(!pattern_matches("room:*", "lobby:1"));
        assert!(pattern_matches("room:1", "room:1"));
        assert!(!pattern_matches("room:1", "room:12"));
    }
}
