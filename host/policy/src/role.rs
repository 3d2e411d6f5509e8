//! Policy roles, one WIT world each.

/// A policy role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// `auth-plugin`: authenticate connections, authorize subscribe/publish.
    Auth,
    /// `router-plugin`: map a publish to channels.
    Router,
    /// `rate-limit-plugin`: allow / reject / delay.
    RateLimit,
    /// `merge-plugin`: state documents.
    Merge,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Auth, Role::Router, Role::RateLimit, Role::Merge];

    /// Name as in config (`rate_limit`) and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Auth => "auth",
            Role::Router => "router",
            Role::RateLimit => "rate_limit",
            Role::Merge => "merge",
        }
    }
}

impl Role {
    /// The WIT world a plugin of this role exports.
    pub fn world(self) -> &'static str {
        match self {
            Role::Auth => "auth-plugin",
            Role::Router => "router-plugin",
            Role::RateLimit => "rate-limit-plugin",
            Role::Merge => "merge-plugin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
