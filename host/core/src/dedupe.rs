//! Bounded `msgId` dedupe window: remembers the last N ids of a channel and the
//! seq each was assigned, so a repeat is acknowledged again instead of delivered.

use std::collections::{HashMap, VecDeque};

/// FIFO window of message ids.
#[derive(Debug, Default)]
pub struct DedupeWindow {
    order: VecDeque<Box<str>>,
    seen: HashMap<Box<str>, u64>,
    capacity: usize,
}

impl DedupeWindow {
    /// A window remembering at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::new(),
            seen: HashMap::new(),
            capacity,
        }
    }

    /// The seq previously assigned to `id`, if still remembered.
    pub fn get(&self, id: &str) -> Option<u64> {
        self.seen.get(id).copied()
    }

    /// Remembers `id` → `seq`, forgetting the oldest beyond capacity.
    pub fn insert(&mut self, id: &str, seq: u64) {
        if self.capacity == 0 || self.seen.contains_key(id) {
            return;
        }
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        let key: Box<str> = id.into();
        self.seen.insert(key.clone(), seq);
        self.order.push_back(key);
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_forgets() {
        let mut w = DedupeWindow::new(2);
        w.insert("a", 1);
        w.insert("b", 2);
        assert_eq!(w.get("a"), Some(1));
        w.insert("a", 9);
        assert_eq!(w.get("a"), Some(1), "first seq wins");
        w.insert("c", 3);
        assert_eq!(w.get("a"), None);
        assert_eq!(w.get("c"), Some(3));
        assert_eq!(w.len(), 2);
    }
}
