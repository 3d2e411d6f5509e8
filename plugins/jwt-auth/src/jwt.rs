//! JWT verification (HS256, RS256) and claim checks (exp, nbf, aud, iss), pure
//! logic with no host calls so it is unit-tested natively.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

/// Longest token accepted (bytes); anything bigger is refused before decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The plugin's config as the tenant wrote it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hs256_secret: Option<String>,
    rs256_public_key_pem: Option<String>,
    audience: Option<String>,
    issuer: Option<String>,
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    #[serde(default = "default_true")]
    require_exp: bool,
    #[serde(default = "default_channels_claim")]
    channels_claim: String,
}

fn default_leeway() -> u64 {
    30
}
fn default_true() -> bool {
    true
}
fn default_channels_claim() -> String {
    "channels".into()
}

/// A verifier built once from the config (the RSA key is parsed here, not per call).
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Verifier {
    hs256: Option<Vec<u8>>,
    rs256: Option<rsa::pkcs1v15::VerifyingKey<Sha256>>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway_secs: u64,
    require_exp: bool,
    /// Claim holding the channel patterns the principal may use.
    pub channels_claim: String,
}

impl TryFrom<RawConfig> for Verifier {
    type Error = String;

    fn try_from(c: RawConfig) -> Result<Self, String> {
        let hs256 = c
            .hs256_secret
            .filter(|s| !s.is_empty())
            .map(String::into_bytes);
        let rs256 = match c.rs256_public_key_pem.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(pem) => {
                let key = rsa::RsaPublicKey::from_public_key_pem(pem)
                    .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem))
                    .map_err(|e| format!("rs256_public_key_pem: not an RSA public key: {e}"))?;
                Some(rsa::pkcs1v15::VerifyingKey::new(key))
            }
        };
        if hs256.is_none() && rs256.is_none() {
            return Err("set hs256_secret or rs256_public_key_pem".into());
        }
        Ok(Self {
            hs256,
            rs256,
            audience: c.audience,
            issuer: c.issuer,
            leeway_secs: c.leeway_secs,
            require_exp: c.require_exp,
            channels_claim: c.channels_claim,
        })
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported or unconfigured algorithm {0:?}")]
    Algorithm(String),
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token has no exp claim")]
    MissingExp,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("token has no sub claim")]
    MissingSub,
}

/// A verified token's subject and claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub sub: String,
    pub claims: Map<String, Value>,
}

impl Verifier {
    /// Verifies `token` at `now_secs` (Unix seconds).
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Verified, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("expected three dot-separated parts"));
        };
        let header: Map<String, Value> =
            decode_json(h, "header is not base64url", "header is not a JSON object")?;
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        match header.get("alg").and_then(Value::as_str) {
            Some("HS256") if self.hs256.is_some() => {
                let secret = self.hs256.as_deref().unwrap_or_default();
                let mut mac = Hmac::<Sha256>::new_from_slice(secret)
                    .map_err(|_| JwtError::Algorithm("HS256".into()))?;
                mac.update(signed);
                mac.verify_slice(&sig).map_err(|_| JwtError::BadSignature)?;
            }
            Some("RS256") if self.rs256.is_some() => {
                let key = self.rs256.as_ref().ok_or(JwtError::BadSignature)?;
                let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice())
                    .map_err(|_| JwtError::BadSignature)?;
                key.verify(signed, &sig)
                    .map_err(|_| JwtError::BadSignature)?;
            }
            other => return Err(JwtError::Algorithm(other.unwrap_or("none").to_owned())),
        }
        let claims: Map<String, Value> = decode_json(
            p,
            "payload is not base64url",
            "payload is not a JSON object",
        )?;
        self.check_claims(&claims, now_secs)?;
        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(JwtError::MissingSub),
        };
        Ok(Verified { sub, claims })
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<(), JwtError> {
        let now = now as f64;
        let leeway = self.leeway_secs as f64;
        match claims.get("exp").map(Value::as_f64) {
            Some(Some(exp)) if now >= exp + leeway => return Err(JwtError::Expired),
            Some(Some(_)) => {}
            Some(None) => return Err(JwtError::Malformed("exp is not a number")),
            None if self.require_exp => return Err(JwtError::MissingExp),
            None => {}
        }
        match claims.get("nbf").map(Value::as_f64) {
            Some(Some(nbf)) if now + leeway < nbf => return Err(JwtError::NotYetValid),
            Some(None) => return Err(JwtError::Malformed("nbf is not a number")),
            _ => {}
        }
        if let Some(want) = &self.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => a == want,
                Some(Value::Array(a)) => a.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(JwtError::WrongAudience);
            }
        }
        if let Some(want) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(want.as_str())
        {
            return Err(JwtError::WrongIssuer);
        }
        Ok(())
    }
}

fn decode_json(
    part: &str,
    not_base64: &'static str,
    not_object: &'static str,
) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(not_base64))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed(not_object)),
    }
}

/// The channel patterns a claims object grants: the claim may be an array of
/// strings or one string of space-separated patterns; anything else grants nothing.
pub fn granted_channels(claims: &Map<String, Value>, claim: &str) -> Vec<String> {
    match claims.get(claim) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}
