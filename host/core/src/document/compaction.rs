//! When a replica takes a new base snapshot (compaction).
//!
//! A snapshot costs in proportion to the whole document, an update in
//! proportion to itself, and the snapshot runs under the document's lock:
//! every update of the room waits behind it. Compacting every fixed number of
//! versions makes a large document's cost per update grow with its size (a
//! 3 MB Yjs text snapshotted every 500 keystrokes spends most of its time
//! snapshotting). So the rule is relative:
//!
//! 1. Never before `log_len / 2` versions since the base: the log keeps what a
//!    resume by version needs, and a small document compacts as often as this.
//! 2. Past that, compact once the entries since the base weigh at least half
//!    the base snapshot: the snapshot's cost is then spread over updates worth
//!    half of it, so the cost per update stays flat whatever the size.
//!
//! What this bounds: the entries held since the base weigh at most
//! `max(base / 2, log_len / 2 entries)` plus one entry; the base itself is at
//! most `limits.document_max_bytes`, so a replica's log stays within about half
//! the document limit on top of `log_len` entries.

use super::log::Entry;

/// What an entry costs beyond its delta (the `Entry`, its `Arc`, the client
/// id's allocation): counted so that tiny updates still weigh something.
const ENTRY_OVERHEAD: usize = 64;

/// The weight of one entry in the log-since-base budget.
pub(super) fn weight(e: &Entry) -> usize {
    e.delta.len() + e.client_id.len() + e.msg_id.as_ref().map_or(0, |m| m.len()) + ENTRY_OVERHEAD
}

/// Whether a replica `versions` past its base, holding entries of total
/// [`weight`] `bytes` since it, should take a new base of a document whose
/// last base snapshot was `base_bytes` long.
pub(super) fn due(versions: u64, bytes: usize, base_bytes: usize, log_len: usize) -> bool {
    let every = (log_len / 2).max(1) as u64;
    versions >= every && bytes >= base_bytes / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    #[test]
    fn never_before_half_the_log() {
        assert!(!due(499, usize::MAX, 0, 1000));
        assert!(due(500, 0, 0, 1000));
    }

    #[test]
    fn a_small_document_compacts_every_half_log() {
        // A 2 KB document and 500 updates of ~100 bytes: due at once.
        assert!(due(500, 500 * 100, 2_000, 1000));
    }

    #[test]
    fn a_large_document_waits_until_the_updates_weigh_half_of_it() {
        let base = 3_000_000;
        assert!(!due(10_000, base / 2 - 1, base, 1000));
        assert!(due(10_000, base / 2, base, 1000));
    }

    #[test]
    fn a_log_of_one_compacts_every_version() {
        assert!(due(1, 0, 0, 1));
        assert!(due(1, 0, 0, 0));
    }

    #[test]
    fn tiny_entries_still_weigh_something() {
        let e = Entry {
            version: 1,
            delta: Bytes::new(),
            client_id: Arc::from(""),
            lamport: 1,
            msg_id: None,
        };
        assert_eq!(weight(&e), ENTRY_OVERHEAD);
        let e = Entry {
            delta: Bytes::from_static(b"abc"),
            client_id: Arc::from("c1"),
            msg_id: Some(Arc::from("m")),
            ..e
        };
        assert_eq!(weight(&e), ENTRY_OVERHEAD + 6);
    }
}
