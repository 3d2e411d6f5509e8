//! The last-writer-wins map (pure logic, tested natively).
//!
//! Wire format (DESIGN §2b, the same as the gateway's built-in): an update is
//! a JSON object; each key is set to its value, `null` deletes it. Every write
//! is stamped with the document's Lamport clock (one tick per update, the
//! gateway applies updates in its log order); a key keeps its stamp, a delete
//! keeps a tombstone, and a write only wins over a lower stamp. A snapshot is
//! the plain object of live keys.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use switchyard_sdk::MergeError;

/// One key's value (`Null` = tombstone) and the clock tick that wrote it.
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    value: Value,
    ts: u64,
}

/// The document.
#[derive(Debug, Default)]
pub struct Lww {
    keys: BTreeMap<String, Slot>,
    live: usize,
    clock: u64,
    max_keys: usize,
}

fn object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, MergeError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(MergeError::Invalid(format!("{what} must be a JSON object"))),
        Err(e) => Err(MergeError::Invalid(format!("{what}: {e}"))),
    }
}

impl Lww {
    /// From a snapshot (empty = new document).
    pub fn open(snapshot: &[u8], max_keys: usize) -> Result<Self, MergeError> {
        let mut d = Self {
            max_keys,
            ..Self::default()
        };
        if snapshot.is_empty() {
            return Ok(d);
        }
        for (k, value) in object(snapshot, "snapshot")? {
            if value.is_null() {
                continue;
            }
            d.keys.insert(k, Slot { value, ts: 0 });
            d.live += 1;
        }
        if d.live > max_keys {
            return Err(MergeError::Invalid(format!(
                "snapshot has more than {max_keys} keys"
            )));
        }
        Ok(d)
    }

    /// Merges an update; returns the keys whose visible value changed, or `None`.
    pub fn apply(&mut self, update: &[u8]) -> Result<Option<Vec<u8>>, MergeError> {
        let patch = object(update, "delta")?;
        let ts = self.clock + 1;
        // Check the key limit first: all or nothing.
        let added = patch
            .iter()
            .filter(|(k, v)| !v.is_null() && self.keys.get(*k).is_none_or(|s| s.value.is_null()))
            .count();
        let removed = patch
            .iter()
            .filter(|(k, v)| v.is_null() && self.keys.get(*k).is_some_and(|s| !s.value.is_null()))
            .count();
        if self.live + added - removed.min(self.live + added) > self.max_keys {
            return Err(MergeError::Invalid(format!(
                "document is full ({} keys at most)",
                self.max_keys
            )));
        }
        let mut changed = Map::new();
        for (k, value) in patch {
            let old = self.keys.get(&k);
            if old.is_some_and(|s| s.ts >= ts) {
                continue;
            }
            let visible = match old {
                Some(s) => s.value != value,
                None => !value.is_null(),
            };
            // A set that changes nothing visible is not stored: it is not broadcast, so
            // no other replica would store it (e.g. 0.0 over -0.0).
            if !visible && !value.is_null() {
                continue;
            }
            match (old.map(|s| s.value.is_null()), value.is_null()) {
                (None | Some(true), false) => self.live += 1,
                (Some(false), true) => self.live -= 1,
                _ => {}
            }
            self.keys.insert(
                k.clone(),
                Slot {
                    value: value.clone(),
                    ts,
                },
            );
            if visible {
                changed.insert(k, value);
            }
        }
        self.clock = ts;
        if changed.is_empty() {
            return Ok(None);
        }
        serde_json::to_vec(&changed)
            .map(Some)
            .map_err(|e| MergeError::Other(e.to_string()))
    }

    /// The live keys as one JSON object.
    pub fn snapshot(&self) -> Vec<u8> {
        let m: Map<String, Value> = self
            .keys
            .iter()
            .filter(|(_, s)| !s.value.is_null())
            .map(|(k, s)| (k.clone(), s.value.clone()))
            .collect();
        serde_json::to_vec(&m).unwrap_or_else(|_| b"{}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn j(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    fn apply(d: &mut Lww, v: Value) -> Option<Value> {
        d.apply(v.to_string().as_bytes()).unwrap().map(|b| j(&b))
    }

    #[test]
    fn sets_deletes_and_broadcasts_only_changes() {
        let mut d = Lww::open(br#"{"a":1}"#, 100).unwrap();
        assert_eq!(apply(&mut d, json!({"a": 1})), None, "no change");
        assert_eq!(
            apply(&mut d, json!({"a": 2, "b": null, "c": 3})),
            Some(json!({"a": 2, "c": 3}))
        );
        assert_eq!(apply(&mut d, json!({"a": null})), Some(json!({"a": null})));
        assert_eq!(j(&d.snapshot()), json!({"c": 3}));
        assert_eq!(apply(&mut d, json!({})), None, "empty update");
    }

    #[test]
    fn snapshot_reopens_to_the_same_state() {
        let mut d = Lww::open(b"", 100).unwrap();
        apply(&mut d, json!({"a": {"deep": [1, 2]}, "b": "x"}));
        apply(&mut d, json!({"b": null}));
        let e = Lww::open(&d.snapshot(), 100).unwrap();
        assert_eq!(j(&e.snapshot()), json!({"a": {"deep": [1, 2]}}));
    }

    #[test]
    fn malformed_input_and_limits() {
        let mut d = Lww::open(b"", 2).unwrap();
        for bad in [&b"[1]"[..], b"1", b"\"s\"", b"nope", b"", b"\xff"] {
            assert!(
                matches!(d.apply(bad), Err(MergeError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(Lww::open(b"[]", 2).is_err());
        apply(&mut d, json!({"a": 1, "b": 2}));
        assert!(matches!(
            d.apply(br#"{"c": 3, "a": 9}"#),
            Err(MergeError::Invalid(_))
        ));
        assert_eq!(
            j(&d.snapshot()),
            json!({"a": 1, "b": 2}),
            "refused: unchanged"
        );
        assert!(
            apply(&mut d, json!({"a": 9})).is_some(),
            "existing keys writable"
        );
        assert!(
            apply(&mut d, json!({"a": null, "c": 3})).is_some(),
            "a delete makes room"
        );
    }
}
