//! Who the client really is, and how much one address may do.
//!
//! - [`real_ip`]: the peer address, unless the peer is a trusted proxy
//!   (`server.trusted_proxies`, CIDRs): then the nearest untrusted address in
//!   `X-Forwarded-For`, else `Forwarded: for=`, else `X-Real-IP`. Headers from
//!   an untrusted peer are never believed (anyone can send them).
//! - [`PerIp`]: `limits.max_connections_per_ip` open connections (WebSocket
//!   and fallback sessions) and `limits.handshakes_per_ip_per_sec` new ones
//!   (token bucket, burst twice the rate) per address; over either → 429
//!   before the upgrade. Its tables are bounded.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use http::HeaderMap;
use parking_lot::Mutex;
use switchyard_core::backpressure::TokenBucket;

/// Addresses remembered for the handshake rate at most; beyond, refilled
/// buckets are dropped first, then the table is cleared (fail open).
const MAX_TRACKED: usize = 100_000;

/// An address range `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address (a single host).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0-{max}"))?
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn trusted(ip: IpAddr, proxies: &[Cidr]) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// One address from a forwarding header element (`1.2.3.4`, `1.2.3.4:5`,
/// `[::1]:5`, `"[::1]"`).
fn parse_forwarded_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip())
}

/// The client's address as the gateway should see it.
pub fn real_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> IpAddr {
    if !trusted(peer, proxies) {
        return peer;
    }
    // X-Forwarded-For: client, proxy1, proxy2 — walk from the nearest hop back.
    let xff: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(parse_forwarded_addr)
        .collect();
    if let Some(first_untrusted) = xff.iter().rev().find(|ip| !trusted(**ip, proxies)) {
        return *first_untrusted;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|elem| {
            elem.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_forwarded_addr(v))?
            })
        })
        .collect();
    if let Some(ip) = forwarded.iter().rev().find(|ip| !trusted(**ip, proxies)) {
        return *ip;
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_forwarded_addr)
        .unwrap_or(peer)
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections_per_ip` reached.
    Connections,
    /// `handshakes_per_ip_per_sec` exceeded.
    Handshakes,
}

/// Per-address connection counts and handshake buckets.
#[derive(Debug)]
pub struct PerIp {
    max_connections: usize,
    handshake_rate: u32,
    conns: Arc<DashMap<IpAddr, usize>>,
    buckets: Mutex<std::collections::HashMap<IpAddr, TokenBucket>>,
}

/// Holds one connection slot of an address; released on drop.
#[derive(Debug)]
pub struct IpSlot {
    ip: IpAddr,
    conns: Option<Arc<DashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some(conns) = &self.conns {
            conns.remove_if_mut(&self.ip, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }
}

impl PerIp {
    /// Limits: `0` = off.
    pub fn new(max_connections: usize, handshake_rate: u32) -> Self {
        Self {
            max_connections,
            handshake_rate,
            conns: Arc::new(DashMap::new()),
            buckets: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Admits one new connection from `ip`, or says why not. The slot must be
    /// kept for the connection's life.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<IpSlot, Refusal> {
        if self.handshake_rate > 0 {
            let mut b = self.buckets.lock();
            if b.len() >= MAX_TRACKED && !b.contains_key(&ip) {
                b.retain(|_, t| !t.is_full(now));
                if b.len() >= MAX_TRACKED {
                    b.clear();
                }
            }
            let rate = self.handshake_rate;
            let bucket = b
                .entry(ip)
                .or_insert_with(|| TokenBucket::new(rate, rate.saturating_mul(2), now));
            if !bucket.try_take(now, 1) {
                return Err(Refusal::Handshakes);
            }
        }
        if self.max_connections == 0 {
            return Ok(IpSlot { ip, conns: None });
        }
        let mut n = self.conns.entry(ip).or_insert(0);
        if *n >= self.max_connections {
            return Err(Refusal::Connections);
        }
        *n += 1;
        Ok(IpSlot {
            ip,
            conns: Some(self.conns.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn cidrs_match_their_ranges() {
        let c = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "v4-mapped");
        assert!(Cidr::parse("::1").expect("host").contains(ip("::1")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("all")
                .contains(ip("8.8.8.8"))
        );
        for bad in ["10.0.0.0/33", "nope", "1.2.3.4/x", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proxy_headers_are_believed_only_from_trusted_peers() {
        let proxies = [Cidr::parse("10.0.0.0/8").expect("cidr")];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.7, 10.0.0.5".parse().expect("v"),
        );
        assert_eq!(real_ip(ip("10.0.0.1"), &h, &proxies), ip("203.0.113.7"));
        assert_eq!(
            real_ip(ip("198.51.100.1"), &h, &proxies),
            ip("198.51.100.1"),
            "an untrusted peer's header is ignored"
        );
        // A client-supplied first hop does not win over the proxy's own append.
        h.insert(
            "x-forwarded-for",
            "1.1.1.1, 203.0.113.8".parse().expect("v"),
        );
        assert_eq!(real_ip(ip("10.0.0.1"), &h, &proxies), ip("203.0.113.8"));
        let mut f = HeaderMap::new();
        f.insert(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https".parse().expect("v"),
        );
        assert_eq!(real_ip(ip("10.0.0.1"), &f, &proxies), ip("2001:db8::1"));
        let mut r = HeaderMap::new();
        r.insert("x-real-ip", "192.0.2.4".parse().expect("v"));
        assert_eq!(real_ip(ip("10.0.0.1"), &r, &proxies), ip("192.0.2.4"));
        let mut junk = HeaderMap::new();
        junk.insert("x-forwarded-for", "not an ip".parse().expect("v"));
        assert_eq!(real_ip(ip("10.0.0.1"), &junk, &proxies), ip("10.0.0.1"));
    }

    #[test]
    fn per_ip_connection_slots_and_handshake_rate() {
        let now = Instant::now();
        let p = PerIp::new(2, 0);
        let a = p.admit(ip("192.0.2.1"), now).expect("1");
        let _b = p.admit(ip("192.0.2.1"), now).expect("2");
        assert_eq!(
            p.admit(ip("192.0.2.1"), now).err(),
            Some(Refusal::Connections)
        );
        assert!(p.admit(ip("192.0.2.2"), now).is_ok(), "another address");
        drop(a);
        assert!(p.admit(ip("192.0.2.1"), now).is_ok(), "a slot was freed");
        let r = PerIp::new(0, 1);
        assert!(r.admit(ip("192.0.2.9"), now).is_ok());
        assert!(
            r.admit(ip("192.0.2.9"), now).is_ok(),
            "burst is twice the rate"
        );
        assert_eq!(
            r.admit(ip("192.0.2.9"), now).err(),
            Some(Refusal::Handshakes)
        );
        let later = now + std::time::Duration::from_secs(1);
        assert!(r.admit(ip("192.0.2.9"), later).is_ok(), "refilled");
    }
}
