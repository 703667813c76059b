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

#[derive(Debug)]
struct Entry<V> {
    value: V,
    stored: Instant,
    etag: Option<String>,
    used: u64,
}

/// A bounded least-recently-used cache of values by key (URL plus whatever else decides the value).
#[derive(Debug)]
pub struct Cache<V> {
    entries: HashMap<String, Entry<V>>,
    clock: u64,
}

impl<V> Default for Cache<V> {
    fn default() -> Self {
        Cache {
            entries: HashMap::new(),
            clock: 0,
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
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks `key` up: fresh when stored less than `ttl` before `now`; expired entries without an ETag are
    /// dropped.
    pub fn lookup(&mut self, key: &str, ttl: Duration, now: Instant) -> Lookup<V> {
        self.clock += 1;
        let clock = self.clock;
        let Some(entry) = self.entries.get_mut(key) else {
            return Lookup::Miss;
        };
        entry.used = clock;
        if now.saturating_duration_since(entry.stored) < ttl {
            return Lookup::Fresh(entry.value.clone());
        }
        match entry.etag.clone() {
            Some(etag) => Lookup::Stale { etag },
            None => {
                self.entries.remove(key);
                Lookup::Miss
            }
        }
    }

    /// Stores `value` under `key`, evicting the least recently used entries to stay within `capacity` (0
    /// stores nothing).
    pub fn insert(&mut self, key: String, value: V, etag: Option<String>, capacity: usize, now: Instant) {
        self.clock += 1;
        if capacity == 0 {
            self.entries.clear();
            return;
        }
        self.entries.remove(&key);
        while self.entries.len() >= capacity {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.entries.insert(
            key,
            Entry {
                value,
                stored: now,
                etag,
                used: self.clock,
            },
        );
    }

    /// After a `304 Not Modified`: makes the entry fresh again as of `now` and returns its value, or `None`
    /// when it was evicted meanwhile.
    pub fn refresh(&mut self, key: &str, now: Instant) -> Option<V> {
        self.clock += 1;
        let entry = self.entries.get_mut(key)?;
        entry.stored = now;
        entry.used = self.clock;
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
}
