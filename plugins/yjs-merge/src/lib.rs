//! `yjs-merge`: a Yjs document (the yrs CRDT) as the merge role's `document`
//! resource, for editors that sync with Yjs (y-websocket, y-prosemirror, …).
//!
//! Updates, snapshots and diffs are Yjs **v1** updates (`Y.encodeStateAsUpdate`,
//! the `update` event); a state vector is `Y.encodeStateVector`'s. `apply`
//! broadcasts the incoming update as-is when it changed the document (including
//! an update kept pending until its dependencies arrive), nothing when it did
//! not (already applied, the empty update). Malformed input is refused as
//! `invalid`. Config: `max_update_bytes` (default 1 MiB).

mod v1;
mod yjs;

use serde::Deserialize;
use switchyard_sdk::{Document, MergeError, host};

use crate::yjs::Yjs;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_max_update_bytes")]
    max_update_bytes: usize,
}

fn default_max_update_bytes() -> usize {
    1 << 20
}

/// The exported document.
struct YjsDocument(Yjs);

impl Document for YjsDocument {
    fn open(snapshot: &[u8]) -> Result<Self, MergeError> {
        let cfg = host::config_cached::<Config>()
            .map_err(|e| MergeError::Other(format!("yjs-merge is misconfigured: {e}")))?;
        if cfg.max_update_bytes == 0 {
            return Err(MergeError::Other(
                "yjs-merge is misconfigured: max_update_bytes must be at least 1".into(),
            ));
        }
        Yjs::open(snapshot, cfg.max_update_bytes).map(YjsDocument)
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

switchyard_sdk::export_merge!(YjsDocument);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::testing;

    #[test]
    fn config_is_validated() {
        testing::reset();
        testing::set_config(r#"{"max_update_bytes": 4}"#);
        let mut d = YjsDocument::open(b"").unwrap();
        assert!(matches!(
            d.apply(&[1, 1, 1, 0, 4, 1, 1, b't', 1, b'x', 0]),
            Err(MergeError::Invalid(_))
        ));
        assert_eq!(d.apply(&[0, 0]).unwrap(), None);
        for bad in [
            r#"{"max_update_bytes": 0}"#,
            r#"{"max_update_bytes": -1}"#,
            r#"{"max_bytes": 10}"#,
            "nope",
        ] {
            testing::set_config(bad);
            assert!(
                matches!(YjsDocument::open(b""), Err(MergeError::Other(_))),
                "{bad}"
            );
        }
        testing::set_config("");
        let mut d = YjsDocument::open(b"").unwrap();
        let u = [1, 1, 1, 0, 4, 1, 1, b't', 1, b'x', 0];
        assert_eq!(d.apply(&u).unwrap(), Some(u.to_vec()));
        assert_eq!(d.state_vector(), [1, 1, 1]);
        assert_eq!(d.diff(&[1, 1, 1]).unwrap(), d.0.diff(&[1, 1, 1]).unwrap());
        testing::reset();
    }
}
