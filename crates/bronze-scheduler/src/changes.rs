//! What each commit changed, remembered for a while: a watch that resumes
//! from an index gets the keys changed since (their current values are read
//! from the snapshot), or is told to start over from a snapshot when the
//! log no longer reaches that far back.

use std::collections::VecDeque;

use parking_lot::Mutex;

use crate::state::Key;

/// Commits remembered.
const KEEP: usize = 4096;

#[derive(Default)]
pub struct ChangeLog {
    entries: Mutex<VecDeque<(u64, Vec<Key>)>>,
}

pub enum Since {
    /// Keys changed after the index, with the index that changed each.
    Changes(Vec<(u64, Key)>),
    /// The log does not reach back that far.
    TooOld,
}

impl ChangeLog {
    pub fn push(&self, index: u64, keys: Vec<Key>) {
        let mut e = self.entries.lock();
        e.push_back((index, keys));
        while e.len() > KEEP {
            e.pop_front();
        }
    }

    /// Changes after `index`, up to and including `upto`.
    pub fn since(&self, index: u64, upto: u64) -> Since {
        let e = self.entries.lock();
        match e.front() {
            Some((first, _)) if *first > index + 1 => return Since::TooOld,
            None if index < upto => return Since::TooOld,
            _ => {}
        }
        let mut out = Vec::new();
        for (i, keys) in e.iter() {
            if *i > index && *i <= upto {
                out.extend(keys.iter().map(|k| (*i, k.clone())));
            }
        }
        Since::Changes(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_or_says_too_old() {
        let log = ChangeLog::default();
        assert!(matches!(log.since(0, 0), Since::Changes(c) if c.is_empty()));
        assert!(matches!(log.since(0, 3), Since::TooOld));
        log.push(1, vec![Key::Task("a".into())]);
        log.push(2, vec![Key::Task("b".into()), Key::Node("n".into())]);
        let Since::Changes(c) = log.since(1, 2) else {
            panic!("resumable")
        };
        assert_eq!(c.len(), 2);
        for i in 3..(KEEP as u64 + 10) {
            log.push(i, vec![]);
        }
        assert!(matches!(log.since(1, KEEP as u64 + 9), Since::TooOld));
    }
}
