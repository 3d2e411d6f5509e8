//! The key-value store a plugin gets through `host.kv-*`: one per plugin+tenant,
//! shared by every instance (and every version) of that plugin for that tenant,
//! bounded in entries, key size, value size and total bytes.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::buckets::Buckets;

/// Longest key accepted (bytes).
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value accepted (bytes).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Total key + value bytes one store may hold.
pub const MAX_TOTAL_BYTES: usize = 64 << 20;

/// A bounded, thread-safe key-value store, with the plugin's token buckets.
#[derive(Debug)]
pub struct KvStore {
    inner: Mutex<Inner>,
    max_entries: usize,
    /// `host.take-tokens` buckets (as many at most as entries).
    pub buckets: Buckets,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Vec<u8>>,
    bytes: usize,
}

/// Why a `kv-set` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Key longer than [`MAX_KEY_BYTES`].
    #[error("key longer than {MAX_KEY_BYTES} bytes")]
    KeyTooLong,
    /// Value larger than [`MAX_VALUE_BYTES`].
    #[error("value larger than {MAX_VALUE_BYTES} bytes")]
    ValueTooLarge,
    /// Entry or byte budget exhausted.
    #[error("store full")]
    Full,
}

impl KvStore {
    /// An empty store holding at most `max_entries` entries.
    pub fn new(max_entries: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_entries,
            buckets: Buckets::new(max_entries),
        }
    }

    /// A copy of the value under `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.lock().map.get(key).cloned()
    }

    /// Stores `value` under `key` (replacing any previous value).
    pub fn set(&self, key: String, value: Vec<u8>) -> Result<(), KvError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::KeyTooLong);
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::ValueTooLarge);
        }
        let mut inner = self.inner.lock();
        let old = inner.map.get(&key).map(|v| key.len() + v.len());
        if old.is_none() && inner.map.len() >= self.max_entries {
            return Err(KvError::Full);
        }
        let bytes = inner.bytes - old.unwrap_or(0) + key.len() + value.len();
        if bytes > MAX_TOTAL_BYTES {
            return Err(KvError::Full);
        }
        inner.bytes = bytes;
        inner.map.insert(key, value);
        Ok(())
    }

    /// Removes `key`.
    pub fn delete(&self, key: &str) {
        let mut inner = self.inner.lock();
        if let Some(v) = inner.map.remove(key) {
            inner.bytes -= key.len() + v.len();
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded() {
        let kv = KvStore::new(2);
        kv.set("a".into(), vec![1]).expect("a");
        kv.set("b".into(), vec![2]).expect("b");
        assert_eq!(kv.set("c".into(), vec![3]), Err(KvError::Full));
        kv.set("a".into(), vec![9, 9]).expect("replace keeps count");
        assert_eq!(kv.get("a"), Some(vec![9, 9]));
        kv.delete("b");
        kv.set("c".into(), vec![3]).expect("room again");
        assert_eq!(kv.len(), 2);
        assert_eq!(
            kv.set("k".repeat(MAX_KEY_BYTES + 1), vec![]),
            Err(KvError::KeyTooLong)
        );
        assert_eq!(
            kv.set("v".into(), vec![0; MAX_VALUE_BYTES + 1]),
            Err(KvError::ValueTooLarge)
        );
    }
}
