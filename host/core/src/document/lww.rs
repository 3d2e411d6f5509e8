//! The built-in merge policy: a last-writer-wins JSON map (DESIGN §2b).
//!
//! An update is a JSON object; each key is set to its value and `null` deletes
//! it. Each key remembers the `(lamport, client_id)` stamp of its last write; a
//! write wins only over a lower stamp, and a delete leaves a tombstone with its
//! stamp, so a concurrent set with a lower stamp does not bring the key back.
//! The gateway sequences every change through one log and stamps them in log
//! order, so replicas converge either way; the stamps also make the map right
//! when entries meet it out of order. A snapshot is the plain object of live
//! keys (tombstones are dropped: every later write has a higher stamp).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::policy::{MergeDocument, MergeError, Stamp};

/// One key: its value (`Null` = tombstone) and the stamp of its last write.
#[derive(Debug, Clone)]
struct Slot {
    value: Value,
    lamport: u64,
    client: String,
}

/// The built-in LWW document.
#[derive(Debug, Default)]
pub struct LwwDocument {
    keys: BTreeMap<String, Slot>,
    /// Bytes of the live keys' JSON text, kept as changes land.
    bytes: usize,
}

fn slot_bytes(key: &str, value: &Value) -> usize {
    // "key":value, — close enough to the snapshot's text for the size limit.
    key.len() + 4 + json_len(value)
}

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len())
}

impl LwwDocument {
    /// From a snapshot: a JSON object (empty bytes = a new document).
    pub fn from_snapshot(snapshot: &[u8]) -> Result<Self, MergeError> {
        if snapshot.is_empty() {
            return Ok(Self::default());
        }
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(snapshot) else {
            return Err(MergeError::Invalid("snapshot must be a JSON object".into()));
        };
        let mut doc = Self::default();
        for (k, v) in map {
            if v.is_null() {
                continue;
            }
            doc.bytes += slot_bytes(&k, &v);
            doc.keys.insert(
                k,
                Slot {
                    value: v,
                    lamport: 0,
                    client: String::new(),
                },
            );
        }
        Ok(doc)
    }

    /// The live keys as a JSON object.
    pub fn to_object(&self) -> Map<String, Value> {
        self.keys
            .iter()
            .filter(|(_, s)| !s.value.is_null())
            .map(|(k, s)| (k.clone(), s.value.clone()))
            .collect()
    }
}

impl MergeDocument for LwwDocument {
    fn apply(&mut self, update: &[u8], stamp: &Stamp<'_>) -> Result<Option<Vec<u8>>, MergeError> {
        let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(update) else {
            return Err(MergeError::Invalid(
                "delta must be a UTF-8 JSON object".into(),
            ));
        };
        let mut changed = Map::new();
        for (k, v) in patch {
            let wins = self
                .keys
                .get(&k)
                .is_none_or(|s| (stamp.lamport, stamp.client_id) > (s.lamport, s.client.as_str()));
            if !wins {
                continue;
            }
            let old = self.keys.get(&k).map(|s| &s.value);
            let visible = match old {
                Some(o) => *o != v,
                None => !v.is_null(),
            };
            // A set that changes nothing visible is not stored either: it is
            // not broadcast, so no other replica would store it (e.g. 0.0 over -0.0).
            if !visible && !v.is_null() {
                continue;
            }
            if let Some(o) = old
                && !o.is_null()
            {
                self.bytes -= slot_bytes(&k, o).min(self.bytes);
            }
            if !v.is_null() {
                self.bytes += slot_bytes(&k, &v);
            }
            self.keys.insert(
                k.clone(),
                Slot {
                    value: v.clone(),
                    lamport: stamp.lamport,
                    client: stamp.client_id.to_owned(),
                },
            );
            if visible {
                changed.insert(k, v);
            }
        }
        if changed.is_empty() {
            return Ok(None);
        }
        serde_json::to_vec(&changed)
            .map(Some)
            .map_err(|e| MergeError::Failed(e.to_string()))
    }

    fn snapshot(&self) -> Result<Vec<u8>, MergeError> {
        serde_json::to_vec(&self.to_object()).map_err(|e| MergeError::Failed(e.to_string()))
    }

    fn size(&self) -> Option<usize> {
        Some(self.bytes + 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(lamport: u64, client_id: &str) -> Stamp<'_> {
        Stamp { lamport, client_id }
    }

    fn obj(b: &[u8]) -> Value {
        serde_json::from_slice(b).expect("json")
    }

    #[test]
    fn sets_deletes_and_reports_only_changes() {
        let mut d = LwwDocument::from_snapshot(b"{\"a\":1}").expect("open");
        assert_eq!(d.apply(b"{\"a\":1}", &st(1, "x")).expect("ok"), None);
        let out = d
            .apply(b"{\"a\":2,\"b\":null,\"c\":3}", &st(2, "x"))
            .expect("ok")
            .expect("changed");
        assert_eq!(obj(&out), serde_json::json!({"a":2,"c":3}));
        assert_eq!(
            obj(&d.snapshot().expect("snap")),
            serde_json::json!({"a":2,"c":3})
        );
        let out = d.apply(b"{\"a\":null}", &st(3, "x")).expect("ok");
        assert_eq!(obj(&out.expect("changed")), serde_json::json!({"a":null}));
        assert_eq!(
            obj(&d.snapshot().expect("snap")),
            serde_json::json!({"c":3})
        );
    }

    #[test]
    fn higher_stamp_wins_whatever_the_order() {
        let writes: [(&[u8], u64, &str); 3] = [
            (b"{\"k\":\"a\"}", 5, "a"),
            (b"{\"k\":\"b\"}", 5, "b"),
            (b"{\"k\":\"old\"}", 4, "z"),
        ];
        let mut results = Vec::new();
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut d = LwwDocument::default();
            for i in order {
                let (u, l, c) = writes[i];
                d.apply(u, &st(l, c)).expect("ok");
            }
            results.push(obj(&d.snapshot().expect("snap")));
        }
        assert!(results.iter().all(|r| *r == serde_json::json!({"k":"b"})));
    }

    #[test]
    fn a_tombstone_beats_a_lower_stamped_set() {
        let mut d = LwwDocument::default();
        d.apply(b"{\"k\":1}", &st(1, "a")).expect("ok");
        d.apply(b"{\"k\":null}", &st(3, "a")).expect("ok");
        assert_eq!(d.apply(b"{\"k\":2}", &st(2, "b")).expect("ok"), None);
        assert_eq!(obj(&d.snapshot().expect("snap")), serde_json::json!({}));
    }

    #[test]
    fn non_objects_are_invalid_and_change_nothing() {
        let mut d = LwwDocument::from_snapshot(b"{\"a\":1}").expect("open");
        for bad in [&b"[1]"[..], b"1", b"\xff", b"{", b""] {
            assert!(matches!(
                d.apply(bad, &st(9, "x")),
                Err(MergeError::Invalid(_))
            ));
        }
        assert_eq!(
            obj(&d.snapshot().expect("snap")),
            serde_json::json!({"a":1})
        );
        assert!(LwwDocument::from_snapshot(b"[]").is_err());
    }

    #[test]
    fn size_follows_the_live_keys() {
        let mut d = LwwDocument::default();
        let empty = d.size().expect("size");
        d.apply(b"{\"key\":\"0123456789\"}", &st(1, "x"))
            .expect("ok");
        let one = d.size().expect("size");
        assert!(one >= d.snapshot().expect("snap").len(), "{one}");
        d.apply(b"{\"key\":null}", &st(2, "x")).expect("ok");
        assert_eq!(d.size(), Some(empty));
    }
}
