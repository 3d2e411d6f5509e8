//! `lww-merge`: the last-writer-wins JSON map of DESIGN §2b as the merge
//! role's `document` resource — the same wire format and results as the
//! gateway's built-in merge policy, so a tenant can swap one for the other.
//!
//! Update: a JSON object; each key is set to its value, `null` deletes it.
//! `apply` returns the keys whose value changed (nothing when none did). A
//! snapshot is the whole object. There are no state vectors: `diff` refuses,
//! and the gateway sends a snapshot instead. Config: `max_keys` (default 10000).

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
        Vec::new()
    }

    fn diff(&self, _state_vector: &[u8]) -> Result<Vec<u8>, MergeError> {
        Err(MergeError::Invalid(
            "lww-merge has no state vectors; subscribe without one for a snapshot".into(),
        ))
    }
}

switchyard_sdk::export_merge!(LwwDocument);
