//! The last-writer-wins map (pure logic, tested natively).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_sdk::MergeError;

/// One key's current value and who wrote it when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// `null` = deleted (tombstone).
    pub value: Value,
    pub ts: u64,
    pub by: String,
}

/// An entry as received: `ts` and `by` may be omitted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming {
    #[serde(default)]
    value: Value,
    ts: Option<u64>,
    #[serde(default)]
    by: String,
}

impl Entry {
    /// Total order deciding which write wins.
    fn order(&self, other: &Entry) -> Ordering {
        (self.ts, &self.by)
            .cmp(&(other.ts, &other.by))
            .then_with(|| self.value.to_string().cmp(&other.value.to_string()))
    }
}

/// The document.
#[derive(Debug, Default)]
pub struct Lww {
    entries: BTreeMap<String, Entry>,
    max_ts: u64,
    max_keys: usize,
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, MergeError> {
    serde_json::from_slice(bytes).map_err(|e| MergeError::Invalid(format!("{what}: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec())
}

impl Lww {
    /// From a snapshot (empty = new document).
    pub fn open(snapshot: &[u8], max_keys: usize) -> Result<Self, MergeError> {
        let entries: BTreeMap<String, Entry> = if snapshot.is_empty() {
            BTreeMap::new()
        } else {
            parse(snapshot, "snapshot")?
        };
        if entries.len() > max_keys {
            return Err(MergeError::Invalid(format!(
                "snapshot has more than {max_keys} keys"
            )));
        }
        let max_ts = entries.values().map(|e| e.ts).max().unwrap_or(0);
        Ok(Self {
            entries,
            max_ts,
            max_keys,
        })
    }

    /// Merges an update; returns the entries that won (JSON), or `None`.
    pub fn apply(&mut self, update: &[u8]) -> Result<Option<Vec<u8>>, MergeError> {
        let incoming: BTreeMap<String, Incoming> = parse(update, "update")?;
        // Stamp first, then check the key limit, then commit: all or nothing.
        let mut clock = self.max_ts;
        let stamped: Vec<(String, Entry)> = incoming
            .into_iter()
            .map(|(k, i)| {
                let ts = i.ts.unwrap_or_else(|| {
                    clock = clock.saturating_add(1);
                    clock
                });
                clock = clock.max(ts);
                (
                    k,
                    Entry {
                        value: i.value,
                        ts,
                        by: i.by,
                    },
                )
            })
            .collect();
        let new_keys = stamped
            .iter()
            .filter(|(k, _)| !self.entries.contains_key(k))
            .count();
        if self.entries.len() + new_keys > self.max_keys {
            return Err(MergeError::Conflict(format!(
                "document is full ({} keys at most)",
                self.max_keys
            )));
        }
        let mut won = BTreeMap::new();
        for (k, e) in stamped {
            let wins = self
                .entries
                .get(&k)
                .is_none_or(|old| e.order(old) == Ordering::Greater);
            if wins {
                self.max_ts = self.max_ts.max(e.ts);
                self.entries.insert(k.clone(), e.clone());
                won.insert(k, e);
            }
        }
        Ok((!won.is_empty()).then(|| encode(&won)))
    }

    /// Every entry, tombstones included (the update format).
    pub fn snapshot(&self) -> Vec<u8> {
        encode(&self.entries)
    }

    /// `{"max_ts": N}`.
    pub fn state_vector(&self) -> Vec<u8> {
        encode(&serde_json::json!({ "max_ts": self.max_ts }))
    }

    /// Entries newer than a state vector (empty = everything).
    pub fn diff(&self, state_vector: &[u8]) -> Result<Vec<u8>, MergeError> {
        if state_vector.is_empty() {
            return Ok(self.snapshot());
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Sv {
            max_ts: u64,
        }
        let sv: Sv = parse(state_vector, "state vector")?;
        let newer: BTreeMap<&String, &Entry> = self
            .entries
            .iter()
            .filter(|(_, e)| e.ts > sv.max_ts)
            .collect();
        Ok(encode(&newer))
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
    fn newer_wins_older_loses_equal_is_no_change() {
        let mut d = Lww::open(b"", 100).unwrap();
        let out = apply(
            &mut d,
            json!({"title": {"value": "a", "ts": 5, "by": "c1"}}),
        );
        assert_eq!(
            out,
            Some(json!({"title": {"value": "a", "ts": 5, "by": "c1"}}))
        );
        assert_eq!(
            apply(
                &mut d,
                json!({"title": {"value": "old", "ts": 4, "by": "c9"}})
            ),
            None
        );
        assert_eq!(
            apply(
                &mut d,
                json!({"title": {"value": "a", "ts": 5, "by": "c1"}})
            ),
            None,
            "replay"
        );
        // Same ts: the writer id breaks the tie.
        assert!(
            apply(
                &mut d,
                json!({"title": {"value": "b", "ts": 5, "by": "c2"}})
            )
            .is_some()
        );
        assert_eq!(j(&d.snapshot())["title"]["value"], json!("b"));
        // Only the winning keys are broadcast.
        let out = apply(
            &mut d,
            json!({
                "title": {"value": "z", "ts": 1, "by": "c3"},
                "done": {"value": true, "ts": 6, "by": "c3"}
            }),
        );
        assert_eq!(
            out,
            Some(json!({"done": {"value": true, "ts": 6, "by": "c3"}}))
        );
    }

    #[test]
    fn lamport_stamps_and_tombstones() {
        let mut d = Lww::open(b"", 100).unwrap();
        let out = apply(&mut d, json!({"a": {"value": 1}, "b": {"value": 2}})).unwrap();
        assert_eq!(out["a"]["ts"], json!(1));
        assert_eq!(out["b"]["ts"], json!(2));
        let out = apply(&mut d, json!({"a": {"value": null}})).unwrap();
        assert_eq!(out, json!({"a": {"value": null, "ts": 3, "by": ""}}));
        // An older write to the deleted key loses against the tombstone.
        assert_eq!(
            apply(&mut d, json!({"a": {"value": 9, "ts": 2, "by": "zz"}})),
            None
        );
        assert_eq!(j(&d.state_vector()), json!({"max_ts": 3}));
    }

    #[test]
    fn replicas_converge_whatever_the_order() {
        let updates = [
            json!({"k": {"value": "x", "ts": 3, "by": "a"}}),
            json!({"k": {"value": "y", "ts": 3, "by": "a"}}),
            json!({"k": {"value": "w", "ts": 2, "by": "b"}, "m": {"value": 1, "ts": 1, "by": "b"}}),
        ];
        let mut snaps = Vec::new();
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut d = Lww::open(b"", 100).unwrap();
            for i in order {
                apply(&mut d, updates[i].clone());
            }
            snaps.push(j(&d.snapshot()));
        }
        assert!(snaps.windows(2).all(|w| w[0] == w[1]), "{snaps:?}");
        assert_eq!(snaps[0]["k"]["value"], json!("y"));
    }

    #[test]
    fn snapshot_diff_and_reopen() {
        let mut d = Lww::open(b"", 100).unwrap();
        apply(
            &mut d,
            json!({"a": {"value": 1, "ts": 1, "by": ""}, "b": {"value": 2, "ts": 5, "by": ""}}),
        );
        let sv_old = br#"{"max_ts": 1}"#;
        assert_eq!(
            j(&d.diff(sv_old).unwrap()),
            json!({"b": {"value": 2, "ts": 5, "by": ""}})
        );
        assert_eq!(j(&d.diff(&d.state_vector()).unwrap()), json!({}));
        assert_eq!(j(&d.diff(b"").unwrap()), j(&d.snapshot()));
        let mut e = Lww::open(&d.snapshot(), 100).unwrap();
        assert_eq!(j(&e.snapshot()), j(&d.snapshot()));
        // The reopened clock continues after the snapshot's highest ts.
        assert_eq!(
            apply(&mut e, json!({"c": {"value": 3}})).unwrap()["c"]["ts"],
            json!(6)
        );
    }

    #[test]
    fn malformed_input_and_limits() {
        let mut d = Lww::open(b"", 2).unwrap();
        for bad in [
            &b"[1]"[..],
            b"{\"a\": 1}",
            b"{\"a\": {\"value\": 1, \"ts\": -1}}",
            b"nope",
            b"",
        ] {
            assert!(
                matches!(d.apply(bad), Err(MergeError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(Lww::open(b"[]", 2).is_err());
        assert!(d.diff(b"{\"ts\": 1}").is_err());
        assert_eq!(
            apply(&mut d, json!({})),
            None,
            "empty update, nothing to broadcast"
        );
        apply(&mut d, json!({"a": {"value": 1}, "b": {"value": 2}}));
        assert!(matches!(
            d.apply(br#"{"c": {"value": 3}, "a": {"value": 9}}"#),
            Err(MergeError::Conflict(_))
        ));
        assert_eq!(
            j(&d.snapshot())["a"]["value"],
            json!(1),
            "a refused update changes nothing"
        );
        assert!(
            apply(&mut d, json!({"a": {"value": 9}})).is_some(),
            "existing keys still writable"
        );
    }
}
