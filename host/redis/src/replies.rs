//! Parsing of script replies. Redis is trusted to follow the scripts, but a bad
//! reply (e.g. a key written by something else) is an error, never a panic.

use std::sync::Arc;

use redis::Value;
use serde_json::value::RawValue;
use switchyard_core::broker::BrokerError;

fn bad(what: &str) -> BrokerError {
    BrokerError::Internal(format!("unexpected redis reply: {what}"))
}

/// A reply value as text.
pub fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A reply value as an unsigned integer.
pub fn uint(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other).and_then(|s| s.parse().ok()),
    }
}

/// Reply of the publish script.
#[derive(Debug)]
pub struct PublishReply {
    /// Channel epoch.
    pub epoch: String,
    /// Seq assigned (or first assigned, for a duplicate).
    pub seq: u64,
    /// The msgId was seen before.
    pub duplicate: bool,
    /// Over the channel's limit: retry after this many ms.
    pub limited: Option<u64>,
}

/// Parses `{epoch, seq, dup}`.
pub fn publish(v: &Value) -> Result<PublishReply, BrokerError> {
    let Value::Array(items) = v else {
        return Err(bad("publish"));
    };
    match items.as_slice() {
        [e, s, d] => Ok(PublishReply {
            epoch: text(e).ok_or_else(|| bad("publish epoch"))?.to_owned(),
            seq: uint(s).ok_or_else(|| bad("publish seq"))?,
            duplicate: uint(d) == Some(1),
            limited: None,
        }),
        [e, _, d, retry] if uint(d) == Some(2) => Ok(PublishReply {
            epoch: text(e).ok_or_else(|| bad("publish epoch"))?.to_owned(),
            seq: 0,
            duplicate: false,
            limited: Some(uint(retry).unwrap_or(1000)),
        }),
        _ => Err(bad("publish arity")),
    }
}

/// One history entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Seq (the stream id's first part).
    pub seq: u64,
    /// Publish time, ms since the Unix epoch.
    pub published_ms: u64,
    /// Data.
    pub data: Arc<RawValue>,
}

/// Reply of the recover script.
#[derive(Debug)]
pub struct RecoverReply {
    /// Epoch; empty when the channel does not exist (and was not created).
    pub epoch: String,
    /// Latest seq.
    pub seq: u64,
    /// Whether `entries` holds everything after `since`.
    pub recovered: bool,
    /// The entries after `since`.
    pub entries: Vec<Entry>,
}

/// Parses `{epoch, seq, recovered, entries}`.
pub fn recover(v: &Value) -> Result<RecoverReply, BrokerError> {
    let Value::Array(items) = v else {
        return Err(bad("recover"));
    };
    let [e, s, r, list] = items.as_slice() else {
        return Err(bad("recover arity"));
    };
    let mut entries = Vec::new();
    if let Value::Array(list) = list {
        entries.reserve(list.len());
        for item in list {
            entries.push(entry(item)?);
        }
    }
    Ok(RecoverReply {
        epoch: text(e).ok_or_else(|| bad("recover epoch"))?.to_owned(),
        seq: uint(s).ok_or_else(|| bad("recover seq"))?,
        recovered: uint(r) == Some(1),
        entries,
    })
}

/// Parses one stream entry `{id, {field, value, …}}`.
fn entry(v: &Value) -> Result<Entry, BrokerError> {
    let Value::Array(pair) = v else {
        return Err(bad("stream entry"));
    };
    let [id, Value::Array(fields)] = pair.as_slice() else {
        return Err(bad("stream entry shape"));
    };
    let seq = text(id)
        .and_then(|id| id.split_once('-'))
        .and_then(|(ms, _)| ms.parse().ok())
        .ok_or_else(|| bad("stream id"))?;
    let (mut data, mut ts) = (None, 0);
    for kv in fields.chunks(2) {
        if let [k, val] = kv {
            match text(k) {
                Some("d") => data = text(val),
                Some("t") => ts = uint(val).unwrap_or(0),
                _ => {}
            }
        }
    }
    let data = data.ok_or_else(|| bad("stream entry without data"))?;
    let data = RawValue::from_string(data.to_owned()).map_err(|_| bad("stream data not JSON"))?;
    Ok(Entry {
        seq,
        published_ms: ts,
        data: Arc::from(data),
    })
}

/// A flat list of texts (e.g. directory nodes, presence triples).
pub fn texts(v: &Value) -> Result<Vec<String>, BrokerError> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| text(i).map(str::to_owned).ok_or_else(|| bad("text list")))
            .collect(),
        Value::Nil => Ok(Vec::new()),
        _ => Err(bad("text list")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_recover_and_rejects_garbage() {
        let v = Value::Array(vec![
            bulk("e1"),
            Value::Int(3),
            Value::Int(1),
            Value::Array(vec![Value::Array(vec![
                bulk("3-0"),
                Value::Array(vec![bulk("d"), bulk("{\"x\":1}"), bulk("t"), bulk("17")]),
            ])]),
        ]);
        let r = recover(&v).expect("ok");
        assert_eq!((r.epoch.as_str(), r.seq, r.recovered), ("e1", 3, true));
        assert_eq!((r.entries[0].seq, r.entries[0].published_ms), (3, 17));
        assert!(recover(&Value::Int(1)).is_err());
        let bad_data = Value::Array(vec![
            bulk("e1"),
            Value::Int(3),
            Value::Int(1),
            Value::Array(vec![Value::Array(vec![
                bulk("3-0"),
                Value::Array(vec![bulk("d"), bulk("{nope")]),
            ])]),
        ]);
        assert!(recover(&bad_data).is_err());
        assert!(
            publish(&Value::Array(vec![
                bulk("e"),
                Value::Int(-1),
                Value::Int(0)
            ]))
            .is_err()
        );
    }
}
