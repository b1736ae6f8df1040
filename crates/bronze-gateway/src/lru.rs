//! A map of bounded size that makes room by forgetting its least recently
//! used entry, as nginx's shared dictionaries do when full (Kong keeps its
//! rate-limiting counters in one). Entries sit in one vector linked in use
//! order (most recent first) by index; the hash map points into it, so a
//! lookup, a use and an eviction are each O(1) and a full map allocates
//! nothing more.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// No entry (the ends of the use order).
const NONE: u32 = u32::MAX;

struct Node<K, V> {
    key: K,
    value: V,
    /// More recently used neighbour.
    prev: u32,
    /// Less recently used neighbour.
    next: u32,
}

pub struct Lru<K, V, S> {
    index: HashMap<K, u32, S>,
    nodes: Vec<Node<K, V>>,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next to go.
    tail: u32,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V, S: BuildHasher> Lru<K, V, S> {
    /// A map of at most `capacity` entries (at least one, fewer than
    /// `u32::MAX`).
    pub fn with_hasher(capacity: usize, hasher: S) -> Self {
        Self {
            index: HashMap::with_hasher(hasher),
            nodes: Vec::new(),
            head: NONE,
            tail: NONE,
            capacity: capacity.clamp(1, NONE as usize - 1),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The value of `key`, now the most recently used.
    pub fn get(&mut self, key: &K) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.touch(i);
        Some(&mut self.nodes[i as usize].value)
    }

    /// The value of `key`, made by `make` if absent; full, the least
    /// recently used entry gives its place. Either way the most recently
    /// used now.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if let Some(&i) = self.index.get(&key) {
            self.touch(i);
            return &mut self.nodes[i as usize].value;
        }
        let i = if self.nodes.len() < self.capacity {
            let i = self.nodes.len() as u32;
            self.nodes.push(Node {
                key: key.clone(),
                value: make(),
                prev: NONE,
                next: NONE,
            });
            i
        } else {
            let i = self.tail;
            self.unlink(i);
            let node = &mut self.nodes[i as usize];
            self.index.remove(&node.key);
            node.key = key.clone();
            node.value = make();
            i
        };
        self.index.insert(key, i);
        self.push_front(i);
        &mut self.nodes[i as usize].value
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next)
        };
        match prev {
            NONE => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NONE => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let n = &mut self.nodes[i as usize];
            n.prev = NONE;
            n.next = old;
        }
        match old {
            NONE => self.tail = i,
            o => self.nodes[o as usize].prev = i,
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    fn lru(capacity: usize) -> Lru<u32, u32, std::hash::RandomState> {
        Lru::with_hasher(capacity, std::hash::RandomState::new())
    }

    #[test]
    fn full_it_forgets_the_least_recently_used() {
        let mut m = lru(3);
        for k in 1..=3 {
            *m.get_or_insert_with(k, || 0) += k;
        }
        // 1 is used again: 2 is now the least recent, and goes for 4.
        assert_eq!(m.get(&1).copied(), Some(1));
        m.get_or_insert_with(4, || 40);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&2), None);
        assert_eq!(m.get(&1).copied(), Some(1));
        assert_eq!(m.get(&3).copied(), Some(3));
        assert_eq!(m.get(&4).copied(), Some(40));
        // A value present is not made again.
        assert_eq!(*m.get_or_insert_with(3, || 99), 3);
    }

    #[test]
    fn a_flood_of_new_keys_never_grows_it() {
        let mut m = lru(100);
        for k in 0..100_000 {
            m.get_or_insert_with(k, || k);
            assert!(m.len() <= 100);
        }
        // What is left is the last hundred, in full.
        for k in 99_900..100_000 {
            assert_eq!(m.get(&k).copied(), Some(k));
        }
        assert_eq!(m.get(&99_899), None);
        // A capacity of one works too.
        let mut one = lru(1);
        one.get_or_insert_with(1, || 1);
        one.get_or_insert_with(2, || 2);
        assert_eq!(one.get(&1), None);
        assert_eq!(one.get(&2).copied(), Some(2));
    }
}
