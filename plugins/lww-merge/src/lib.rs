//! `lww-merge`: a last-writer-wins JSON map with a timestamp per key, as the
//! merge role's `document` resource.
//!
//! Update (and snapshot) format, JSON: an object mapping each key to an entry
//! `{"value": <any JSON>, "ts": <u64>, "by": "<writer id>"}`. `value: null`
//! deletes the key (a tombstone is kept so older writes stay beaten). An entry
//! wins over the stored one when `(ts, by)` is greater (ties on both: the greater
//! JSON text of the value, so every replica converges). `ts` may be omitted: the
//! document then stamps it with its Lamport clock (highest `ts` seen + 1), and
//! `by` defaults to `""`. `apply` returns the entries that won, stamped — or
//! nothing when none did. State vector: `{"max_ts": N}`; diff: the entries with
//! `ts > N`. Config: `max_keys` (default 10000).

mod lww;

use serde::Deserialize;
use switchyard_sdk::{Document, MergeError, host};

use crate::lww::Lww;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_max_keys")]
    max_keys: usize,
}

fn default_max_keys() -> usize {
    10_000
}

/// The exported document: the map plus its key limit.
struct LwwDocument(Lww);

impl Document for LwwDocument {
    fn open(snapshot: &[u8]) -> Result<Self, MergeError> {
        let cfg = host::config_cached::<Config>()
            .map_err(|e| MergeError::Other(format!("lww-merge is misconfigured: {e}")))?;
        Lww::open(snapshot, cfg.max_keys).map(LwwDocument)
    }

    fn apply(&mut self, update: &[u8]) -> Result<Option<Vec<u8>>, MergeError> {
        self.0.apply(update)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot()
    }

    fn state_vector(&self) -> Vec<u8> {
        self.0.state_vector()
    }

    fn diff(&self, state_vector: &[u8]) -> Result<Vec<u8>, MergeError> {
        self.0.diff(state_vector)
    }
}

switchyard_sdk::export_merge!(LwwDocument);
