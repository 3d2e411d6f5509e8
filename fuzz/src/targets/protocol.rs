//! `protocol::parse_command` and `ParseError::recover_id` on text frames:
//! random text, grammar-built JSON, mutated commands, and round trips of
//! commands built from generated fields (including the expected errors).
//! A publish that parses is also relayed through `encode::message`, whose
//! output must be JSON carrying the same data.

use std::collections::HashMap;

use serde_json::value::RawValue;
use switchyard_core::protocol::{self, Command, ErrorCode, MAX_MSG_ID_LEN, ParseError};

use crate::inputs::{self, json_string, ws};
use crate::{Rng, Target};

const KINDS: &[&str] = &["subscribe", "unsubscribe", "publish", "ping", "presence"];

const DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud83d",
    b":",
    b",",
    b"null",
    b"true",
    b"1e999",
    b"-",
    b"\"type\"",
    b"\"id\"",
    b"\"channel\"",
    b"\"since\"",
    b"\"data\"",
    b"\"msgId\"",
    b"\"stateVector\"",
    b"\"publish\"",
    b"\"subscribe\"",
    b"\"epoch\"",
    b"\"seq\"",
    b"\"version\"",
    b"\xc3",
    b"\xe2\x80",
    b"\xf0\x9f\x98",
    b"\xff",
];

/// What parsing a built command must give.
#[derive(Debug, Clone)]
pub enum Expect {
    /// These fields.
    Command {
        /// `type`.
        kind: &'static str,
        /// Raw text of `id`, if any.
        id: Option<String>,
        /// `channel`.
        channel: Option<String>,
        /// `since` as (epoch, seq).
        since: Option<(String, u64)>,
        /// Raw text of `data`.
        data: Option<String>,
        /// `msgId`.
        msg_id: Option<String>,
        /// `stateVector`.
        state_vector: Option<String>,
    },
    /// `MissingType`.
    MissingType,
    /// `UnknownType` with the type cut to 64 bytes.
    UnknownType(String),
    /// `Invalid` (bad id shape, missing channel or data, bad msgId length).
    Invalid,
}

/// One text frame, with what it must parse to when it was built from fields.
#[derive(Debug, Clone)]
pub struct Input {
    /// The frame.
    pub text: String,
    /// The expected result, for built commands.
    pub expect: Option<Expect>,
}

/// The target.
#[derive(Debug, Default)]
pub struct Protocol;

fn id_text(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => rng.below(1_000_000).to_string(),
        1 => inputs::json_number(rng),
        2 => format!("-{}", rng.below(1000)),
        _ => {
            let s = inputs::string(rng, 16);
            json_string(rng, &s)
        }
    }
}

fn truncate64(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn build(rng: &mut Rng) -> Input {
    let mut fields: Vec<(String, String)> = Vec::new();
    let kind = *rng.pick(KINDS);
    let mut id = None;
    let mut channel = None;
    let mut since = None;
    let mut data = None;
    let mut msg_id = None;
    let mut state_vector = None;
    let mut expect_err = None;

    match rng.below(12) {
        0 => expect_err = Some(Expect::MissingType),
        1 => {
            let mut t = inputs::string(rng, 40);
            if rng.chance(30) {
                let n = rng.range(60, 300);
                t = inputs::string_of_bytes(rng, n);
            }
            if KINDS.contains(&t.as_str()) {
                t.push('!');
            }
            expect_err = Some(Expect::UnknownType(truncate64(&t)));
            fields.push(("type".into(), json_string(rng, &t)));
        }
        _ => fields.push(("type".into(), json_string(rng, kind))),
    }
    // id: number, string, null (= none), or a shape that is refused.
    match rng.below(6) {
        0 | 1 => {}
        2 => fields.push(("id".into(), "null".into())),
        3 if expect_err.is_none() => {
            let bad = (*rng.pick(&["true", "false", "{}", "[1]", "{\"x\":1}", "[]"])).to_owned();
            fields.push(("id".into(), bad));
            expect_err = Some(Expect::Invalid);
        }
        _ => {
            let t = id_text(rng);
            id = Some(t.clone());
            fields.push(("id".into(), t));
        }
    }
    let needs_channel = kind != "ping";
    if needs_channel && rng.chance(5) && expect_err.is_none() {
        expect_err = Some(Expect::Invalid);
    } else if needs_channel || rng.chance(30) {
        let c = if rng.chance(50) {
            inputs::word(rng, 40)
        } else {
            inputs::string(rng, 40)
        };
        fields.push(("channel".into(), json_string(rng, &c)));
        if needs_channel {
            channel = Some(c);
        }
    }
    if kind == "subscribe" {
        if rng.chance(50) {
            let epoch = inputs::string(rng, 16);
            let seq = rng.interesting_u64();
            let seq_key = if rng.chance(50) { "seq" } else { "version" };
            let text = format!(
                "{{{}{}:{}{},{}:{}{}}}",
                ws(rng),
                json_string(rng, "epoch"),
                json_string(rng, &epoch),
                ws(rng),
                json_string(rng, seq_key),
                seq,
                ws(rng)
            );
            fields.push(("since".into(), text));
            since = Some((epoch, seq));
        }
        if rng.chance(40) {
            let sv = inputs::string(rng, 32);
            fields.push(("stateVector".into(), json_string(rng, &sv)));
            state_vector = Some(sv);
        }
    }
    if kind == "publish" {
        if rng.chance(5) && expect_err.is_none() {
            expect_err = Some(Expect::Invalid);
        } else {
            // `"data": null` is refused as missing data (serde reads a null
            // Option as None), so the round trip sends any other value.
            let mut v = inputs::json_value(rng, 3);
            if v.is_null() {
                v = serde_json::Value::Bool(false);
            }
            let text = serde_json::to_string(&v).unwrap_or_else(|_| "null".into());
            fields.push(("data".into(), text.clone()));
            data = Some(text);
        }
        match rng.below(4) {
            0 => {}
            1 if expect_err.is_none() => {
                // Empty or over the limit: refused.
                let m = if rng.chance(30) {
                    String::new()
                } else {
                    let n = rng.range(MAX_MSG_ID_LEN + 1, 400);
                    inputs::string_of_bytes(rng, n)
                };
                fields.push(("msgId".into(), json_string(rng, &m)));
                expect_err = Some(Expect::Invalid);
            }
            _ => {
                let n = rng.range(1, MAX_MSG_ID_LEN);
                let m = inputs::string_of_bytes(rng, n);
                fields.push(("msgId".into(), json_string(rng, &m)));
                msg_id = Some(m);
            }
        }
    }
    // Unknown fields are ignored.
    for _ in 0..rng.len(3) {
        let k = format!("x_{}", inputs::string(rng, 8));
        fields.push((json_key(&k), inputs::json_text(rng, 3, false)));
    }
    // Shuffle, then write with random whitespace and escapes.
    for i in (1..fields.len()).rev() {
        let j = rng.below(i + 1);
        fields.swap(i, j);
    }
    let mut text = String::new();
    text.push_str(ws(rng));
    text.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(ws(rng));
        if k.starts_with('"') {
            text.push_str(k);
        } else {
            text.push_str(&json_string(rng, k));
        }
        text.push_str(ws(rng));
        text.push(':');
        text.push_str(ws(rng));
        text.push_str(v);
        text.push_str(ws(rng));
    }
    text.push('}');
    text.push_str(ws(rng));
    let expect = expect_err.unwrap_or(Expect::Command {
        kind,
        id,
        channel,
        since,
        data,
        msg_id,
        state_vector,
    });
    Input {
        text,
        expect: Some(expect),
    }
}

fn json_key(k: &str) -> String {
    serde_json::to_string(k).unwrap_or_else(|_| "\"x_\"".into())
}

fn compare(cmd: &Command, e: &Expect) -> Result<(), String> {
    let Expect::Command {
        kind,
        id,
        channel,
        since,
        data,
        msg_id,
        state_vector,
    } = e
    else {
        return Err(format!("parsed as {cmd:?}, expected {e:?}"));
    };
    let got_id = cmd.id().map(|r| r.get().to_owned());
    if &got_id != id {
        return Err(format!("id {got_id:?}, expected {id:?}"));
    }
    let ok = match (cmd, *kind) {
        (
            Command::Subscribe {
                channel: c,
                since: s,
                state_vector: sv,
                ..
            },
            "subscribe",
        ) => {
            Some(c) == channel.as_ref()
                && s.as_ref().map(|p| (p.epoch.clone(), p.seq)) == *since
                && sv == state_vector
        }
        (Command::Unsubscribe { channel: c, .. }, "unsubscribe")
        | (Command::Presence { channel: c, .. }, "presence") => Some(c) == channel.as_ref(),
        (
            Command::Publish {
                channel: c,
                data: d,
                msg_id: m,
                ..
            },
            "publish",
        ) => Some(c) == channel.as_ref() && Some(d.get()) == data.as_deref() && m == msg_id,
        (Command::Ping { .. }, "ping") => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("parsed as {cmd:?}, expected {e:?}"))
    }
}

/// The top-level fields of a JSON object, each kept as raw text. Syntax only:
/// JSON puts no bound on numbers, so `1e400` is valid (and is relayed as sent).
fn fields(text: &str) -> Result<HashMap<String, Box<RawValue>>, String> {
    serde_json::from_str(text).map_err(|e| format!("not a JSON object ({e}): {text}"))
}

fn check_relay(cmd: &Command) -> Result<(), String> {
    if let Command::Publish { channel, data, .. } = cmd {
        let frame = protocol::encode::message(channel, 7, "ep", data);
        let f = fields(frame.as_str())?;
        let same_channel = f
            .get("channel")
            .and_then(|c| serde_json::from_str::<String>(c.get()).ok())
            .is_some_and(|c| c == *channel);
        if f.get("data").map(|d| d.get()) != Some(data.get()) || !same_channel {
            return Err(format!("relayed message differs: {}", frame.as_str()));
        }
    }
    if let Some(id) = cmd.id() {
        let frame = protocol::encode::error(Some(id), ErrorCode::BadRequest, "x\"\u{0}");
        let f = fields(frame.as_str())?;
        if f.get("id").map(|i| i.get()) != Some(id.get()) {
            return Err(format!("error reply lost the id: {}", frame.as_str()));
        }
    }
    Ok(())
}

impl Target for Protocol {
    type Input = Input;

    fn name(&self) -> &'static str {
        "protocol"
    }

    fn about(&self) -> &'static str {
        "protocol::parse_command + ParseError::recover_id (text frames), round trips, encode::message relay"
    }

    fn full_iters(&self) -> u64 {
        2_000_000
    }

    fn short_iters(&self) -> u64 {
        60_000
    }

    fn generate(&self, rng: &mut Rng) -> Input {
        match rng.below(10) {
            0 => {
                let n = rng.len(64);
                let b = rng.bytes(n);
                Input {
                    text: String::from_utf8_lossy(&b).into_owned(),
                    expect: None,
                }
            }
            1..=3 => Input {
                text: {
                    let broken = rng.chance(30);
                    inputs::json_text(rng, 4, broken)
                },
                expect: None,
            },
            4..=6 => {
                let mut b = build(rng).text.into_bytes();
                inputs::mutate_n(rng, &mut b, DICT, 6);
                Input {
                    text: String::from_utf8_lossy(&b).into_owned(),
                    expect: None,
                }
            }
            _ => build(rng),
        }
    }

    fn bytes(&self, input: &Input) -> Vec<u8> {
        input.text.as_bytes().to_vec()
    }

    fn check(&self, input: &Input) -> Result<(), String> {
        let text = input.text.as_str();
        let parsed = protocol::parse_command(text);
        let recovered = ParseError::recover_id(text);
        match &parsed {
            Ok(cmd) => {
                if let Some(id) = cmd.id() {
                    let first = id.get().as_bytes().first().copied();
                    if !matches!(first, Some(b'0'..=b'9' | b'-' | b'"')) {
                        return Err(format!("accepted id {:?}", id.get()));
                    }
                }
                check_relay(cmd)?;
            }
            Err(e) => {
                let _ = e.to_string();
                if let ParseError::UnknownType(t) = e
                    && t.len() > 64
                {
                    return Err(format!("UnknownType longer than 64 bytes: {}", t.len()));
                }
                if let Some(id) = &recovered {
                    let frame = protocol::encode::error(Some(id), ErrorCode::BadRequest, "bad");
                    fields(frame.as_str())?;
                }
            }
        }
        let Some(expect) = &input.expect else {
            return Ok(());
        };
        match (&parsed, expect) {
            (Ok(cmd), e) => compare(cmd, e),
            (Err(ParseError::MissingType), Expect::MissingType)
            | (Err(ParseError::Invalid(_)), Expect::Invalid) => Ok(()),
            (Err(ParseError::UnknownType(t)), Expect::UnknownType(want)) if t == want => Ok(()),
            (Err(err), e) => Err(format!("error {err:?}, expected {e:?}")),
        }
    }
}
