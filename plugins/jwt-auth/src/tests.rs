//! Native tests of the plugin logic, with the SDK's stand-in host.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::{Value, json};
use sha2::Sha256;
use switchyard_sdk::{RequestParts, testing};

use super::*;

const NOW: u64 = 1_800_000_000;
const PRIVATE_PEM: &str = include_str!("../testdata/rs256-private.pem");
const PUBLIC_PEM: &str = include_str!("../testdata/rs256-public.pem");

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn hs256(claims: Value, secret: &str) -> String {
    let input = format!(
        "{}.{}",
        b64(&json!({"alg":"HS256","typ":"JWT"})),
        b64(&claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn rs256(claims: Value) -> String {
    let input = format!(
        "{}.{}",
        b64(&json!({"alg":"RS256","typ":"JWT"})),
        b64(&claims)
    );
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(PRIVATE_PEM).unwrap();
    let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key);
    let sig = signer.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

fn setup(config: Value) {
    testing::reset();
    testing::set_config(&config.to_string());
    testing::set_now_ms(Some(NOW * 1000));
}

fn connect(token: Option<String>) -> Result<Principal, Denial> {
    JwtAuth::authenticate(&ConnectRequest::new(RequestParts {
        token,
        ..Default::default()
    }))
}

fn demo() -> Value {
    json!({"hs256_secret": "s3cret", "audience": "demo", "issuer": "https://issuer.test", "leeway_secs": 5})
}

fn good_claims() -> Value {
    json!({"sub": "alice", "aud": "demo", "iss": "https://issuer.test", "exp": NOW + 60, "nbf": NOW - 1, "channels": ["room:*"]})
}

fn reason(d: Denial) -> String {
    match d {
        Denial::Unauthorized(r) => r,
        other => panic!("expected unauthorized, got {other:?}"),
    }
}

#[test]
fn hs256_valid_token_gives_sub_and_claims() {
    setup(demo());
    let p = connect(Some(hs256(good_claims(), "s3cret"))).unwrap();
    assert_eq!(p.id, "alice");
    let claims: Value = serde_json::from_str(&p.claims_json).unwrap();
    assert_eq!(claims, good_claims());
}

#[test]
fn refusals_are_unauthorized_with_a_reason() {
    setup(demo());
    assert_eq!(reason(connect(None).unwrap_err()), "missing token");
    let bad_sig = hs256(good_claims(), "other-secret");
    assert!(reason(connect(Some(bad_sig)).unwrap_err()).contains("bad signature"));

    let mut c = good_claims();
    c["exp"] = json!(NOW - 5); // exactly at the leeway boundary: expired
    assert!(reason(connect(Some(hs256(c, "s3cret"))).unwrap_err()).contains("expired"));
    let mut c = good_claims();
    c["exp"] = json!(NOW - 4); // within leeway
    assert!(connect(Some(hs256(c, "s3cret"))).is_ok());

    let mut c = good_claims();
    c["nbf"] = json!(NOW + 10);
    assert!(reason(connect(Some(hs256(c, "s3cret"))).unwrap_err()).contains("not valid yet"));

    let mut c = good_claims();
    c["aud"] = json!("other");
    assert!(reason(connect(Some(hs256(c, "s3cret"))).unwrap_err()).contains("audience"));
    let mut c = good_claims();
    c["aud"] = json!(["other", "demo"]);
    assert!(
        connect(Some(hs256(c, "s3cret"))).is_ok(),
        "aud array containing ours"
    );

    let mut c = good_claims();
    c["iss"] = json!("https://evil.test");
    assert!(reason(connect(Some(hs256(c, "s3cret"))).unwrap_err()).contains("issuer"));

    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("exp");
    assert!(reason(connect(Some(hs256(c, "s3cret"))).unwrap_err()).contains("no exp"));

    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("sub");
    assert!(reason(connect(Some(hs256(c, "s3cret"))).unwrap_err()).contains("no sub"));

    for junk in ["", "a.b", "a.b.c.d", "!!!.###.$$$", &"x".repeat(9000)] {
        assert!(connect(Some(junk.to_owned())).is_err(), "{junk:.20}");
    }
}

#[test]
fn alg_none_and_alg_confusion_are_refused() {
    setup(demo());
    let unsigned = format!("{}.{}.", b64(&json!({"alg":"none"})), b64(&good_claims()));
    assert!(reason(connect(Some(unsigned)).unwrap_err()).contains("algorithm"));
    // RS256 token while only an HS256 secret is configured.
    assert!(reason(connect(Some(rs256(good_claims()))).unwrap_err()).contains("algorithm"));
}

#[test]
fn rs256_valid_and_tampered() {
    setup(json!({"rs256_public_key_pem": PUBLIC_PEM, "audience": "demo"}));
    let token = rs256(good_claims());
    assert_eq!(connect(Some(token.clone())).unwrap().id, "alice");
    // Swap the payload: signature no longer matches.
    let mut c = good_claims();
    c["sub"] = json!("mallory");
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
    assert!(reason(connect(Some(forged)).unwrap_err()).contains("bad signature"));
    // HS256 token signed with the public key text (classic confusion attack).
    assert!(connect(Some(hs256(good_claims(), PUBLIC_PEM))).is_err());
}

#[test]
fn misconfiguration_is_reported() {
    setup(json!({"audience": "demo"}));
    assert!(
        matches!(connect(Some("x".into())), Err(Denial::Other(r)) if r.contains("hs256_secret"))
    );
    setup(json!({"hs256_secret": "x", "rs256_public_key_pem": "not a pem"}));
    assert!(matches!(connect(None), Err(Denial::Other(_))));
    setup(json!({"hs256_secret": "x", "typo": 1}));
    assert!(matches!(connect(None), Err(Denial::Other(r)) if r.contains("typo")));
}

#[test]
fn channel_permissions_from_the_claim() {
    setup(demo());
    let p = connect(Some(hs256(good_claims(), "s3cret"))).unwrap();
    assert!(JwtAuth::authorize_subscribe(&p, "room:lobby").is_ok());
    assert!(JwtAuth::authorize_publish(&p, "room:lobby", "1").is_ok());
    assert!(matches!(
        JwtAuth::authorize_subscribe(&p, "admin:x"),
        Err(Denial::Forbidden(_))
    ));
    assert!(matches!(
        JwtAuth::authorize_publish(&p, "roomx", "1"),
        Err(Denial::Forbidden(_))
    ));
    // No claim, or the anonymous principal: nothing granted.
    assert!(JwtAuth::authorize_subscribe(&Principal::anonymous(), "room:1").is_err());
    // A custom claim name holding a space-separated string.
    setup(json!({"hs256_secret": "s3cret", "channels_claim": "scope", "require_exp": false}));
    let p = connect(Some(hs256(
        json!({"sub": "bob", "scope": "news:* user:bob"}),
        "s3cret",
    )))
    .unwrap();
    assert!(JwtAuth::authorize_subscribe(&p, "user:bob").is_ok());
    assert!(JwtAuth::authorize_subscribe(&p, "user:alice").is_err());
}

#[test]
fn grants_are_cached_per_claims_text() {
    setup(demo());
    // Interleaved principals whose claims differ only late in the text (same
    // length): each keeps its own grants.
    let a = Principal::new("a", r#"{"channels":["room:a*"],"pad":"xxxxxxxx1"}"#);
    let b = Principal::new("b", r#"{"channels":["room:b*"],"pad":"xxxxxxxx2"}"#);
    for _ in 0..3 {
        assert!(JwtAuth::authorize_subscribe(&a, "room:a1").is_ok());
        assert!(JwtAuth::authorize_subscribe(&a, "room:b1").is_err());
        assert!(JwtAuth::authorize_subscribe(&b, "room:b1").is_ok());
        assert!(JwtAuth::authorize_publish(&b, "room:a1", "{}").is_err());
    }
    assert!(same_text("0123456789abcdefX", "0123456789abcdefX"));
    assert!(!same_text("0123456789abcdefX", "0123456789abcdefY"));
    assert!(!same_text("01234567", "01234568"));
    assert_ne!(claims_hash("ab"), claims_hash("ba"));
    // Past the bound the cache starts over and stays correct.
    for i in 0..(GRANT_CACHE_ENTRIES + 10) {
        let p = Principal::new("p", format!(r#"{{"channels":["n:{i}"]}}"#));
        assert!(JwtAuth::authorize_subscribe(&p, &format!("n:{i}")).is_ok());
    }
    assert!(GRANTS.with_borrow(|g| g.len()) <= GRANT_CACHE_ENTRIES);
}
