//! A bounded per-URL cache with a time to live and ETag revalidation, so that a reposted link costs nothing.
//!
//! Entries are fresh for the caller's time to live. An expired entry that came with an `ETag` is kept as
//! stale: the next fetch sends `If-None-Match`, and a `304 Not Modified` makes it fresh again without
//! downloading anything ([`Cache::refresh`]). When the cache is full, the least recently used entry goes.
//! Capacity and time to live are passed in on every call, as all limits are.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V> {
    /// A fresh entry: use it, fetch nothing.
    Fresh(V),
    /// An expired entry that can be revalidated with `If-None-Match: etag`.
    Stale {
        /// The entity tag the entry was stored with.
        etag: String,
    },
    /// Nothing usable.
    Miss,
}

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Entry<V> {
    key: String,
    value: V,
    stored: Instant,
    etag: Option<String>,
    /// Neighbours in recency order (towards the most recent, towards the least), or [`NIL`].
    newer: usize,
    older: usize,
}

/// A bounded least-recently-used cache of values by key (URL plus whatever else decides the value). Every
/// operation is O(1): the entries live in a slab, linked by index from the most recently used (`newest`) to
/// the least (`oldest`), and a map finds an entry's index by key.
#[derive(Debug)]
pub struct Cache<V> {
    index: HashMap<String, usize>,
    slab: Vec<Option<Entry<V>>>,
    free: Vec<usize>,
    newest: usize,
    oldest: usize,
}

impl<V> Default for Cache<V> {
    fn default() -> Self {
        Cache {
            index: HashMap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            newest: NIL,
            oldest: NIL,
        }
    }
}

impl<V: Clone> Cache<V> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries, fresh or stale.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn entry(&mut self, i: usize) -> &mut Entry<V> {
        self.slab[i].as_mut().expect("linked slot is occupied")
    }

    /// Takes entry `i` out of the recency list.
    fn unlink(&mut self, i: usize) {
        let (newer, older) = {
            let e = self.entry(i);
            (e.newer, e.older)
        };
        match newer {
            NIL => self.newest = older,
            n => self.entry(n).older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.entry(o).newer = newer,
        }
    }

    /// Puts entry `i` at the most recent end of the list.
    fn push_newest(&mut self, i: usize) {
        let old_newest = self.newest;
        {
            let e = self.entry(i);
            e.newer = NIL;
            e.older = old_newest;
        }
        match old_newest {
            NIL => self.oldest = i,
            n => self.entry(n).newer = i,
        }
        self.newest = i;
    }

    fn remove_at(&mut self, i: usize) {
        self.unlink(i);
        if let Some(e) = self.slab[i].take() {
            self.index.remove(&e.key);
        }
        self.free.push(i);
    }

    /// Drops the entry under `key`, if any.
    pub fn remove(&mut self, key: &str) {
        if let Some(&i) = self.index.get(key) {
            self.remove_at(i);
        }
    }

    /// Looks `key` up: fresh when stored less than `ttl` before `now`; expired entries without an ETag are
    /// dropped.
    pub fn lookup(&mut self, key: &str, ttl: Duration, now: Instant) -> Lookup<V> {
        let Some(&i) = self.index.get(key) else {
            return Lookup::Miss;
        };
        self.unlink(i);
        self.push_newest(i);
        let entry = self.entry(i);
        if now.saturating_duration_since(entry.stored) < ttl {
            return Lookup::Fresh(entry.value.clone());
        }
        match entry.etag.clone() {
            Some(etag) => Lookup::Stale { etag },
            None => {
                self.remove_at(i);
                Lookup::Miss
            }
        }
    }

    /// Stores `value` under `key`, evicting the least recently used entries to stay within `capacity` (0
    /// stores nothing).
    pub fn insert(&mut self, key: String, value: V, etag: Option<String>, capacity: usize, now: Instant) {
        if capacity == 0 {
            *self = Cache::default();
            return;
        }
        self.remove(&key);
        while self.index.len() >= capacity && self.oldest != NIL {
            self.remove_at(self.oldest);
        }
        let entry = Entry {
            key: key.clone(),
            value,
            stored: now,
            etag,
            newer: NIL,
            older: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i] = Some(entry);
                i
            }
            None => {
                self.slab.push(Some(entry));
                self.slab.len() - 1
            }
        };
        self.index.insert(key, i);
        self.push_newest(i);
    }

    /// After a `304 Not Modified`: makes the entry fresh again as of `now` and returns its value, or `None`
    /// when it was evicted meanwhile.
    pub fn refresh(&mut self, key: &str, now: Instant) -> Option<V> {
        let &i = self.index.get(key)?;
        self.unlink(i);
        self.push_newest(i);
        let entry = self.entry(i);
        entry.stored = now;
        Some(entry.value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn a_fresh_entry_is_returned() {
        let now = Instant::now();
        let mut cache = Cache::new();
        cache.insert("u".into(), 1, None, 10, now);
        assert_eq!(
            Lookup::Fresh(1),
            cache.lookup("u", TTL, now + Duration::from_secs(59))
        );
        assert_eq!(Lookup::Miss, cache.lookup("other", TTL, now));
    }

    #[test]
    fn an_expired_entry_without_etag_is_dropped() {
        let now = Instant::now();
        let mut cache = Cache::new();
        cache.insert("u".into(), 1, None, 10, now);
        assert_eq!(Lookup::Miss, cache.lookup("u", TTL, now + TTL));
        assert!(cache.is_empty());
    }

    #[test]
    fn an_expired_entry_with_etag_is_revalidated() {
        let now = Instant::now();
        let later = now + TTL * 2;
        let mut cache = Cache::new();
        cache.insert("u".into(), 1, Some("\"v1\"".into()), 10, now);
        assert_eq!(
            Lookup::Stale {
                etag: "\"v1\"".into()
            },
            cache.lookup("u", TTL, later)
        );
        assert_eq!(Some(1), cache.refresh("u", later));
        assert_eq!(
            Lookup::Fresh(1),
            cache.lookup("u", TTL, later + Duration::from_secs(1))
        );
        assert_eq!(None, cache.refresh("gone", later));
    }

    #[test]
    fn the_least_recently_used_entry_is_evicted() {
        let now = Instant::now();
        let mut cache = Cache::new();
        cache.insert("a".into(), 1, None, 2, now);
        cache.insert("b".into(), 2, None, 2, now);
        assert_eq!(Lookup::Fresh(1), cache.lookup("a", TTL, now)); // a is now more recent than b
        cache.insert("c".into(), 3, None, 2, now);
        assert_eq!(2, cache.len());
        assert_eq!(Lookup::Miss, cache.lookup("b", TTL, now));
        assert_eq!(Lookup::Fresh(1), cache.lookup("a", TTL, now));
        assert_eq!(Lookup::Fresh(3), cache.lookup("c", TTL, now));
    }

    #[test]
    fn a_smaller_capacity_shrinks_the_cache_and_zero_disables_it() {
        let now = Instant::now();
        let mut cache = Cache::new();
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            cache.insert(k.to_string(), i, None, 10, now);
        }
        cache.insert("e".into(), 4, None, 2, now);
        assert_eq!(2, cache.len());
        cache.insert("f".into(), 5, None, 0, now);
        assert!(cache.is_empty());
    }

    #[test]
    fn replacing_a_key_keeps_one_entry() {
        let now = Instant::now();
        let mut cache = Cache::new();
        cache.insert("a".into(), 1, None, 1, now);
        cache.insert("a".into(), 2, None, 1, now);
        assert_eq!(1, cache.len());
        assert_eq!(Lookup::Fresh(2), cache.lookup("a", TTL, now));
    }

    #[test]
    fn eviction_follows_use_over_many_entries_and_reuses_slots() {
        let now = Instant::now();
        let mut cache = Cache::new();
        for i in 0..1000 {
            cache.insert(i.to_string(), i, None, 100, now);
            if i >= 1 {
                // keep "0" the most recently used
                assert_eq!(Lookup::Fresh(0), cache.lookup("0", TTL, now));
            }
        }
        assert_eq!(100, cache.len());
        assert!(cache.slab.len() <= 101);
        assert_eq!(Lookup::Fresh(0), cache.lookup("0", TTL, now));
        assert_eq!(Lookup::Miss, cache.lookup("1", TTL, now));
        assert_eq!(Lookup::Fresh(999), cache.lookup("999", TTL, now));
        assert_eq!(Lookup::Fresh(901), cache.lookup("901", TTL, now));
        assert_eq!(Lookup::Miss, cache.lookup("900", TTL, now));
        cache.remove("0");
        assert_eq!(99, cache.len());
        assert_eq!(Lookup::Miss, cache.lookup("0", TTL, now));
    }
}
