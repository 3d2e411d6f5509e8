//! A consumed Kafka record as a channel publication: the channel from the
//! consume entry's template, the message JSON (the envelope below) and the
//! `msgId` that makes a redelivered record a duplicate, not a second message.
//!
//! The envelope every subscriber gets:
//! `{"topic","partition","offset","key","value","meta"}` where `value` is the
//! record's value as JSON when it is JSON, else a JSON string when it is
//! UTF-8 (`value_base64` instead when neither; `null` for a tombstone); `key`
//! is the record key (`null` when absent); `meta` holds the headers
//! (UTF-8 values as strings, others under `meta_base64`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Why a record is not published (counted, committed past: a poison record
/// must not stop its partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unpublishable {
    /// The template needs `{key}` and the record has none, or the key is not
    /// UTF-8 text a channel name may hold.
    #[error("the record key does not make a valid channel name")]
    BadChannel,
    /// The envelope is over `limits.max_message_bytes`.
    #[error("the record is larger than limits.max_message_bytes")]
    TooLarge,
}

impl Unpublishable {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Unpublishable::BadChannel => "bad_channel",
            Unpublishable::TooLarge => "too_large",
        }
    }
}

/// The parts of a record the bridge reads.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, if any.
    pub key: Option<&'a [u8]>,
    /// Value, if any (`None`: a tombstone).
    pub value: Option<&'a [u8]>,
}

/// What one record publishes.
#[derive(Debug)]
pub struct Publication {
    /// Channel (before routing).
    pub channel: String,
    /// Message JSON.
    pub data: Box<RawValue>,
    /// Dedupe id: the same record twice is one message.
    pub msg_id: String,
}

/// `template` with each `{key}` replaced by the record key, validated.
pub fn channel(template: &str, key: Option<&[u8]>) -> Result<String, Unpublishable> {
    let name = if template.contains("{key}") {
        let key = key
            .and_then(|k| std::str::from_utf8(k).ok())
            .filter(|k| !k.is_empty())
            .ok_or(Unpublishable::BadChannel)?;
        template.replace("{key}", key)
    } else {
        template.to_owned()
    };
    switchyard_core::channel::validate(&name).map_err(|_| Unpublishable::BadChannel)?;
    Ok(name)
}

/// The `msgId` of a record: its coordinates, hashed down when a long topic
/// name would make it longer than a `msgId` may be.
pub fn msg_id(topic: &str, partition: i32, offset: i64) -> String {
    let id = format!("kafka:{topic}:{partition}:{offset}");
    if id.len() <= switchyard_core::protocol::MAX_MSG_ID_LEN {
        return id;
    }
    // FNV-1a over the topic: stable across processes and releases.
    let h = topic.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("kafka:{h:016x}:{partition}:{offset}")
}

/// Builds the publication of `r`, consumed by a `template` entry, with these
/// headers (name, value), within `max_bytes`.
pub fn publication<'a>(
    r: RecordRef<'a>,
    template: &str,
    headers: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>,
    max_bytes: usize,
) -> Result<Publication, Unpublishable> {
    let channel = channel(template, r.key)?;
    let mut env = Map::new();
    env.insert("topic".into(), r.topic.into());
    env.insert("partition".into(), r.partition.into());
    env.insert("offset".into(), r.offset.into());
    env.insert(
        "key".into(),
        match r.key {
            None => Value::Null,
            Some(k) => match std::str::from_utf8(k) {
                Ok(s) => s.into(),
                Err(_) => BASE64.encode(k).into(),
            },
        },
    );
    // The value's JSON is kept as it is (no tree is built for it).
    let raw_value: Option<&RawValue> = r
        .value
        .and_then(|v| serde_json::from_slice::<&RawValue>(v).ok());
    match (r.value, raw_value) {
        (None, _) => {
            env.insert("value".into(), Value::Null);
        }
        (Some(_), Some(_)) => {} // appended as it is, below
        (Some(v), None) => match std::str::from_utf8(v) {
            Ok(s) => {
                env.insert("value".into(), s.into());
            }
            Err(_) => {
                env.insert("value_base64".into(), BASE64.encode(v).into());
            }
        },
    }
    let mut meta = Map::new();
    let mut meta_b64 = Map::new();
    for (name, value) in headers {
        match value.map(std::str::from_utf8) {
            None => {
                meta.insert(name.to_owned(), Value::Null);
            }
            Some(Ok(s)) => {
                meta.insert(name.to_owned(), s.into());
            }
            Some(Err(_)) => {
                meta_b64.insert(
                    name.to_owned(),
                    BASE64.encode(value.unwrap_or_default()).into(),
                );
            }
        }
    }
    env.insert("meta".into(), Value::Object(meta));
    if !meta_b64.is_empty() {
        env.insert("meta_base64".into(), Value::Object(meta_b64));
    }
    let mut text = serde_json::to_string(&env).map_err(|_| Unpublishable::TooLarge)?;
    if let Some(raw) = raw_value {
        // The object's closing brace gives way to the raw value's member.
        text.pop();
        text.push_str(",\"value\":");
        text.push_str(raw.get());
        text.push('}');
    }
    if text.len() > max_bytes {
        return Err(Unpublishable::TooLarge);
    }
    let data = RawValue::from_string(text).map_err(|_| Unpublishable::TooLarge)?;
    Ok(Publication {
        channel,
        data,
        msg_id: msg_id(r.topic, r.partition, r.offset),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> RecordRef<'a> {
        RecordRef {
            topic: "orders",
            partition: 2,
            offset: 41,
            key,
            value,
        }
    }

    fn env(p: &Publication) -> Value {
        serde_json::from_str(p.data.get()).expect("json")
    }

    #[test]
    fn the_key_fills_the_channel_template() {
        assert_eq!(
            channel("orders:{key}", Some(b"eu-7")),
            Ok("orders:eu-7".into())
        );
        assert_eq!(channel("orders:all", None), Ok("orders:all".into()));
        for bad in [None, Some(&b""[..]), Some(b"a b"), Some(&[0xff, 0xfe][..])] {
            assert_eq!(
                channel("orders:{key}", bad),
                Err(Unpublishable::BadChannel),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_json_value_is_kept_as_it_is_and_headers_become_meta() {
        let headers = [
            ("trace", Some(&b"abc"[..])),
            ("bin", Some(&[0xff][..])),
            ("nil", None),
        ];
        let p = publication(
            rec(Some(b"k1"), Some(br#"{"n": 1.50, "s":"x"}"#)),
            "orders:{key}",
            headers.into_iter(),
            65536,
        )
        .expect("publication");
        assert_eq!(p.channel, "orders:k1");
        assert_eq!(p.msg_id, "kafka:orders:2:41");
        assert!(
            p.data.get().contains(r#"{"n": 1.50, "s":"x"}"#),
            "raw: {}",
            p.data.get()
        );
        let v = env(&p);
        assert_eq!(v["key"], "k1");
        assert_eq!(
            (
                v["topic"].as_str(),
                v["partition"].as_i64(),
                v["offset"].as_i64()
            ),
            (Some("orders"), Some(2), Some(41))
        );
        assert_eq!(v["value"]["s"], "x");
        assert_eq!(v["meta"], serde_json::json!({"trace": "abc", "nil": null}));
        assert_eq!(v["meta_base64"]["bin"], "/w==");
    }

    #[test]
    fn text_binary_and_tombstone_values() {
        let v = env(&publication(
            rec(Some(b"k"), Some(b"plain text")),
            "a:{key}",
            std::iter::empty(),
            1024,
        )
        .expect("text"));
        assert_eq!(v["value"], "plain text");
        let v = env(&publication(
            rec(Some(b"k"), Some(&[0, 0xff])),
            "a:{key}",
            std::iter::empty(),
            1024,
        )
        .expect("bin"));
        assert_eq!(v["value_base64"], "AP8=");
        assert!(v.get("value").is_none());
        let v =
            env(&publication(rec(None, None), "a:b", std::iter::empty(), 1024).expect("tombstone"));
        assert!(v["value"].is_null() && v["key"].is_null());
    }

    #[test]
    fn a_record_over_the_message_limit_is_refused() {
        let big = vec![b'x'; 200];
        let r = publication(
            rec(Some(b"k"), Some(&big)),
            "a:{key}",
            std::iter::empty(),
            128,
        );
        assert_eq!(r.err(), Some(Unpublishable::TooLarge));
    }

    #[test]
    fn a_long_topic_still_makes_a_short_stable_msg_id() {
        let topic = "t".repeat(249);
        let id = msg_id(&topic, 3, 9);
        assert!(
            id.len() <= switchyard_core::protocol::MAX_MSG_ID_LEN,
            "{id}"
        );
        assert_eq!(id, msg_id(&topic, 3, 9));
        assert_ne!(id, msg_id(&"u".repeat(249), 3, 9));
    }
}
