//! The WebSocket upgrade validator `handshake::validate` and its helpers
//! `percent_decode`, `query_param`, `valid_client_id`, `bearer_token` on
//! generated requests: random methods, header sets built from valid and
//! mutated upgrade headers plus random names and values (obs-text bytes via
//! `HeaderValue::from_bytes`), repeated headers, hostile query strings.
//! Properties: an accepted upgrade is a GET whose accept key is the RFC 6455
//! hash of the trimmed key; the subprotocol is chosen only when offered;
//! `percent_decode` inverts percent-encoding; `query_param` finds the first
//! matching pair; `valid_client_id` is exactly its documented rule.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use switchyard_server::handshake::{
    accept_key, bearer_token, percent_decode, query_param, valid_client_id, validate,
};

use crate::inputs;
use crate::{Rng, Target};

const NAMES: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-version",
    "sec-websocket-key",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "authorization",
    "origin",
    "host",
    "x-client-id",
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
    "cookie",
    "content-length",
];

/// A generated request.
#[derive(Debug, Clone)]
pub struct Input {
    /// Method bytes (invalid ones fall back to GET).
    pub method: Vec<u8>,
    /// Header name and value bytes, in order (invalid ones are skipped).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The query string.
    pub query: String,
    /// A client id candidate.
    pub client_id: String,
    /// A string and its percent-encoding.
    pub encoded: (String, String),
    /// Query pairs, the parameter looked up, and the query built from them.
    pub pairs: (Vec<(String, String)>, String, String),
}

/// The target.
#[derive(Debug, Default)]
pub struct Handshake;

/// A `Sec-WebSocket-Key` candidate: base64 of (usually) 16 bytes.
fn key16(rng: &mut Rng) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let n = if rng.chance(70) { 16 } else { rng.len(40) };
    let raw = rng.bytes(n);
    let mut s = String::new();
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    if rng.chance(10) {
        s.push_str(rng.pick::<&str>(&["=", "==", "!", " ", "\t", "%"]));
    }
    s
}

fn value_for(rng: &mut Rng, name: &str) -> Vec<u8> {
    if rng.chance(25) {
        // Arbitrary bytes; HeaderValue::from_bytes keeps the valid ones
        // (visible ASCII, space, tab and obs-text 0x80-0xff).
        let n = rng.len(40);
        return rng.bytes(n);
    }
    let v: String = match name {
        "connection" => (*rng.pick(&[
            "Upgrade",
            "upgrade",
            "keep-alive, Upgrade",
            "UPGRADE",
            " upgrade ,",
            ",",
            "close",
            "Upgrade\u{0}",
        ]))
        .to_owned(),
        "upgrade" => (*rng.pick(&[
            "websocket",
            "WebSocket",
            "h2c, websocket",
            "websocket/13",
            "",
            " websocket ",
        ]))
        .to_owned(),
        "sec-websocket-version" => {
            (*rng.pick(&["13", " 13 ", "8", "13, 8", "", "013", "1\u{3}3"])).to_owned()
        }
        "sec-websocket-key" => key16(rng),
        "sec-websocket-protocol" => {
            let offers: Vec<&str> = (0..rng.range(0, 4))
                .map(|_| {
                    *rng.pick(&[
                        "switchyard.v1",
                        "chat",
                        "",
                        " ",
                        "switchyard.v2",
                        "SWITCHYARD.V1",
                        "switchyard.v1 ",
                    ])
                })
                .collect();
            offers.join(*rng.pick(&[",", ", ", " ,", ",,"]))
        }
        "authorization" => {
            let scheme = *rng.pick(&[
                "Bearer ",
                "bearer ",
                "BEARER  ",
                "Basic ",
                "Bearer",
                " Bearer\t",
                "",
            ]);
            let token = inputs::word(rng, 40);
            let tail = *rng.pick(&["", " ", "\t", " extra"]);
            format!("{scheme}{token}{tail}")
        }
        _ => inputs::string(rng, 40),
    };
    v.into_bytes()
}

fn good_headers(rng: &mut Rng) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut h: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"connection".to_vec(), b"Upgrade".to_vec()),
        (b"upgrade".to_vec(), b"websocket".to_vec()),
        (b"sec-websocket-version".to_vec(), b"13".to_vec()),
        (
            b"sec-websocket-key".to_vec(),
            b"dGhlIHNhbXBsZSBub25jZQ==".to_vec(),
        ),
    ];
    if rng.chance(50) {
        h.push((
            b"sec-websocket-protocol".to_vec(),
            b"switchyard.v1".to_vec(),
        ));
    }
    h
}

/// Percent-encodes every byte outside the unreserved set (space as `+` or `%20`).
fn encode(rng: &mut Rng, s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' if rng.chance(50) => out.push('+'),
            _ if rng.chance(50) => out.push_str(&format!("%{b:02X}")),
            _ => out.push_str(&format!("%{b:02x}")),
        }
    }
    out
}

fn query(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => inputs::string(rng, 60),
        1 => {
            let n = rng.len(60);
            String::from_utf8_lossy(&rng.bytes(n)).into_owned()
        }
        _ => {
            let parts: Vec<String> = (0..rng.range(0, 5))
                .map(|_| {
                    let k = *rng.pick(&["token", "client_id", "tok%65n", "token%", "%", "t", ""]);
                    let v = match rng.below(4) {
                        0 => inputs::word(rng, 20),
                        1 => inputs::string(rng, 20),
                        2 => (*rng.pick(&[
                            "%", "%4", "%zz", "%%41", "%ff%fe", "%c3%a9", "%e2%82", "+", "%00",
                        ]))
                        .to_owned(),
                        _ => String::new(),
                    };
                    if rng.chance(10) {
                        k.to_owned()
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect();
            parts.join("&")
        }
    }
}

fn spec_client_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn first_param(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

impl Target for Handshake {
    type Input = Input;

    fn name(&self) -> &'static str {
        "handshake"
    }

    fn about(&self) -> &'static str {
        "handshake::validate + percent_decode, query_param, valid_client_id, bearer_token"
    }

    fn full_iters(&self) -> u64 {
        2_000_000
    }

    fn short_iters(&self) -> u64 {
        40_000
    }

    fn generate(&self, rng: &mut Rng) -> Input {
        let method = match rng.below(10) {
            0..=5 => b"GET".to_vec(),
            6 => rng
                .pick(&[&b"POST"[..], b"get", b"HEAD", b"CONNECT", b"OPTIONS"])
                .to_vec(),
            7 => inputs::word(rng, 12).into_bytes(),
            _ => {
                let n = rng.len(12);
                rng.bytes(n)
            }
        };
        let mut headers = if rng.chance(60) {
            good_headers(rng)
        } else {
            Vec::new()
        };
        for _ in 0..rng.len(8) {
            let at = rng.below(headers.len() + 1);
            match rng.below(6) {
                0 if !headers.is_empty() => {
                    let i = rng.below(headers.len());
                    headers.remove(i);
                }
                1 if !headers.is_empty() => {
                    // Mutate a value in place.
                    let i = rng.below(headers.len());
                    inputs::mutate_bytes(
                        rng,
                        &mut headers[i].1,
                        &[b",", b" ", b"\t", b"\xff", b"="],
                    );
                }
                2 => {
                    let name = if rng.chance(50) {
                        inputs::word(rng, 20).into_bytes()
                    } else {
                        let n = rng.len(20);
                        rng.bytes(n)
                    };
                    let v = value_for(rng, "");
                    headers.insert(at, (name, v));
                }
                _ => {
                    let name = *rng.pick(NAMES);
                    let mut n = name.as_bytes().to_vec();
                    if rng.chance(20) {
                        n.make_ascii_uppercase();
                    }
                    let v = value_for(rng, name);
                    headers.insert(at, (n, v));
                }
            }
        }
        let plain = inputs::string(rng, 40);
        let enc = encode(rng, &plain);
        let pairs: Vec<(String, String)> = (0..rng.range(0, 4))
            .map(|_| {
                let k = if rng.chance(60) {
                    (*rng.pick(&["token", "client_id", "a b", "k=&"])).to_owned()
                } else {
                    inputs::string(rng, 8)
                };
                (k, inputs::string(rng, 16))
            })
            .collect();
        // Never empty: an empty name matches the empty pair of an empty query.
        let name = if rng.chance(70) {
            (*rng.pick(&["token", "client_id"])).to_owned()
        } else {
            format!("n{}", inputs::string(rng, 6))
        };
        let built = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(rng, k), encode(rng, v)))
            .collect::<Vec<_>>()
            .join("&");
        let client_id = match rng.below(4) {
            0 => inputs::word(rng, 140),
            1 => {
                let n = rng.range(126, 130);
                inputs::string_of_bytes(rng, n)
            }
            _ => inputs::string(rng, 30),
        };
        Input {
            method,
            headers,
            query: query(rng),
            client_id,
            encoded: (plain, enc),
            pairs: (pairs, name, built),
        }
    }

    fn bytes(&self, input: &Input) -> Vec<u8> {
        let mut b = input.method.clone();
        b.extend_from_slice(b" /ws?");
        b.extend_from_slice(input.query.as_bytes());
        b.extend_from_slice(b" HTTP/1.1\r\n");
        for (n, v) in &input.headers {
            b.extend_from_slice(n);
            b.extend_from_slice(b": ");
            b.extend_from_slice(v);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"\r\n");
        b
    }

    fn check(&self, input: &Input) -> Result<(), String> {
        let method = Method::from_bytes(&input.method).unwrap_or(Method::GET);
        let mut headers = HeaderMap::new();
        for (n, v) in &input.headers {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
                headers.append(n, v);
            }
        }
        match validate(&method, &headers) {
            Ok(up) => {
                if method != Method::GET {
                    return Err(format!("accepted method {method}"));
                }
                let key = headers
                    .get(http::header::SEC_WEBSOCKET_KEY)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .ok_or("accepted without a key")?;
                if up.accept != accept_key(key.as_bytes()) || up.accept.len() != 28 {
                    return Err(format!("accept {:?} for key {key:?}", up.accept));
                }
                let offered = headers
                    .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|s| s.split(','))
                    .any(|p| p.trim() == "switchyard.v1");
                if up.subprotocol.is_some() != offered {
                    return Err(format!(
                        "subprotocol {:?}, offered: {offered}",
                        up.subprotocol
                    ));
                }
            }
            Err(e) => {
                let _ = (e.status(), e.reason(), e.to_string());
            }
        }
        for q in [&input.query, &input.pairs.2] {
            if let Some(t) = bearer_token(&headers, q)
                && t.is_empty()
            {
                return Err("empty bearer token".into());
            }
            let _ = query_param(q, "token");
            let _ = query_param(q, "client_id");
            let _ = percent_decode(q);
        }
        let (plain, enc) = &input.encoded;
        let decoded = percent_decode(enc);
        if &decoded != plain {
            return Err(format!(
                "percent_decode({enc:?}) = {decoded:?}, expected {plain:?}"
            ));
        }
        let (pairs, name, built) = &input.pairs;
        let got = query_param(built, name);
        let want = first_param(pairs, name);
        if got != want {
            return Err(format!(
                "query_param({built:?}, {name:?}) = {got:?}, expected {want:?}"
            ));
        }
        if valid_client_id(&input.client_id) != spec_client_id(&input.client_id) {
            return Err(format!("valid_client_id({:?})", input.client_id));
        }
        Ok(())
    }
}
