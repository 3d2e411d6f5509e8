//! `jwt-auth`: authenticates connections with a JWT (HS256 or RS256) and
//! authorizes subscribe/publish from a claim listing channel patterns.
//!
//! Config: `hs256_secret`, `rs256_public_key_pem` (SPKI or PKCS#1 PEM), `audience`,
//! `issuer`, `leeway_secs` (default 30), `require_exp` (default true),
//! `channels_claim` (default `"channels"`, e.g. `["room:*", "user:alice"]`).

mod jwt;

use std::cell::RefCell;
use std::rc::Rc;

use switchyard_sdk::{Auth, ConnectRequest, Denial, Principal, host, matches_any};

use crate::jwt::{Verifier, granted_channels};

struct JwtAuth;

fn verifier() -> Result<Rc<Verifier>, Denial> {
    host::config_cached::<Verifier>()
        .map_err(|e| Denial::Other(format!("jwt-auth is misconfigured: {e}")))
}

thread_local! {
    /// The last principal's claims text and the patterns it grants (one entry:
    /// a connection's subscribe/publish calls repeat the same claims).
    static GRANTS: RefCell<Option<(String, Rc<Vec<String>>)>> = const { RefCell::new(None) };
}

/// Channel patterns granted to `who`, parsed once per distinct claims text.
fn grants(who: &Principal, claim: &str) -> Rc<Vec<String>> {
    if let Some(hit) = GRANTS.with_borrow(|g| {
        g.as_ref()
            .filter(|(text, _)| *text == who.claims_json)
            .map(|(_, v)| v.clone())
    }) {
        return hit;
    }
    let patterns = match serde_json::from_str(&who.claims_json) {
        Ok(serde_json::Value::Object(claims)) => granted_channels(&claims, claim),
        _ => Vec::new(),
    };
    let patterns = Rc::new(patterns);
    GRANTS.set(Some((who.claims_json.clone(), patterns.clone())));
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
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Denial::unauthorized("missing token"))?;
        let now = host::now_ms() / 1000;
        let ok = v
            .verify(token, now)
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
