//! `jwt-auth`: authenticates connections with a JWT (HS256 or RS256) and
//! authorizes subscribe/publish from a claim listing channel patterns.
//!
//! Config: `hs256_secret`, `rs256_public_key_pem` (SPKI or PKCS#1 PEM), `audience`,
//! `issuer`, `leeway_secs` (default 30), `require_exp` (default true),
//! `channels_claim` (default `"channels"`, e.g. `["room:*", "user:alice"]`).

mod jwt;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use switchyard_sdk::{Auth, ConnectRequest, Denial, Principal, host, matches_any};

use crate::jwt::{Verifier, granted_channels};

struct JwtAuth;

fn verifier() -> Result<Rc<Verifier>, Denial> {
    host::config_cached::<Verifier>()
        .map_err(|e| Denial::Other(format!("jwt-auth is misconfigured: {e}")))
}

/// Distinct claims texts whose grants are kept (a pooled instance serves many
/// connections; past this the cache starts over).
const GRANT_CACHE_ENTRIES: usize = 256;

thread_local! {
    /// Claims text -> the patterns it grants, keyed by a word-wise hash of the text.
    static GRANTS: RefCell<HashMap<u64, (String, Rc<Vec<String>>)>> = RefCell::new(HashMap::new());
}

/// 8 bytes at a time: byte loops (`memcmp`, SipHash) are slow in wasm and the
/// claims text is compared on every call.
fn words(s: &str) -> (impl Iterator<Item = u64> + '_, &[u8]) {
    let chunks = s.as_bytes().chunks_exact(8);
    let tail = chunks.remainder();
    (
        chunks.map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())),
        tail,
    )
}

fn claims_hash(s: &str) -> u64 {
    let (ws, tail) = words(s);
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    let h = ws.fold(s.len() as u64, mix);
    tail.iter().fold(h, |h, &b| mix(h, u64::from(b)))
}

fn same_text(a: &str, b: &str) -> bool {
    a.len() == b.len() && {
        let ((wa, ta), (wb, tb)) = (words(a), words(b));
        wa.eq(wb) && ta == tb
    }
}

/// Channel patterns granted to `who`, parsed once per distinct claims text.
fn grants(who: &Principal, claim: &str) -> Rc<Vec<String>> {
    let key = claims_hash(&who.claims_json);
    if let Some(hit) = GRANTS.with_borrow(|g| {
        g.get(&key)
            .filter(|(text, _)| same_text(text, &who.claims_json))
            .map(|(_, v)| v.clone())
    }) {
        return hit;
    }
    let patterns = match serde_json::from_str(&who.claims_json) {
        Ok(serde_json::Value::Object(claims)) => granted_channels(&claims, claim),
        _ => Vec::new(),
    };
    let patterns = Rc::new(patterns);
    GRANTS.with_borrow_mut(|g| {
        if g.len() >= GRANT_CACHE_ENTRIES {
            g.clear();
        }
        g.insert(key, (who.claims_json.clone(), patterns.clone()));
    });
    patterns
}

fn authorize(who: &Principal, channel: &str, action: &str) -> Result<(), Denial> {
    let v = verifier()?;
    if matches_any(&grants(who, &v.channels_claim), channel) {
        Ok(())
    } else {
        Err(Denial::forbidden(format!(
            "claim {:?} does not allow {action} on {channel:?}",
            v.channels_claim
        )))
    }
}

impl Auth for JwtAuth {
    fn authenticate(req: &ConnectRequest) -> Result<Principal, Denial> {
        let v = verifier()?;
        let token = req
            .token()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Denial::unauthorized("missing token"))?;
        let now = host::now_ms() / 1000;
        let ok = v
            .verify(&token, now)
            .map_err(|e| Denial::unauthorized(format!("invalid token: {e}")))?;
        let claims = serde_json::to_string(&ok.claims).map_err(|e| Denial::Other(e.to_string()))?;
        Ok(Principal::new(ok.sub, claims))
    }

    fn authorize_subscribe(who: &Principal, channel: &str) -> Result<(), Denial> {
        authorize(who, channel, "subscribe")
    }

    fn authorize_publish(who: &Principal, channel: &str, _data_json: &str) -> Result<(), Denial> {
        authorize(who, channel, "publish")
    }
}

switchyard_sdk::export_auth!(JwtAuth);

#[cfg(test)]
mod tests;
