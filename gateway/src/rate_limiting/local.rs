//! Per-process counter storage with bounded memory.
//!
//! Counters are exact (Ocelot's algorithm runs on them unchanged) and live in
//! a fixed number of slots, `max_counters`, split over shards. A counter key
//! is stored as a 128-bit keyed hash, so a client id of any length costs the
//! same, and an expired counter (Ocelot's storage expiry) is free to reuse.
//!
//! When every slot of a shard holds a live counter (a flood of distinct
//! client ids), a new key has to take the slot of another one:
//! * the victim is the least-used of a few slots sampled at random (fewest
//!   requests counted), so clients that are actually being limited keep their
//!   counters and one-off ids replace each other;
//! * the new key gets the slot only if it is used more than the victim, by
//!   the estimate of a count-min sketch from `pingora-limits`
//!   ([`Estimator`], TinyLFU-style admission, aged by periodic resets).
//!
//! A request whose key is not admitted is let through uncounted, as the first
//! request of a window would be: under a flood of distinct ids every id is
//! new anyway, and refusing unknown clients would let a flood lock everybody
//! out. A key that keeps coming is admitted after a few requests and then
//! counted exactly. Memory is about 100 bytes per counter in use, at most
//! `max_counters` of them, plus a 1 MiB sketch once the store first fills,
//! whatever arrives.

use super::algorithm::{current, legacy, Counter};
use super::store::{Counted, CounterKey, CounterStore, Stored, Unavailable};
use pingora_limits::estimator::Estimator;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

const SHARDS: usize = 64;
/// Slots sampled to choose a victim.
const SAMPLES: usize = 8;
/// Sketch size: 4 rows of 32768 counters (1 MiB).
const SKETCH_HASHES: usize = 4;
const SKETCH_SLOTS: usize = 32_768;

/// A 128-bit key: collisions between two live keys are out of reach.
pub(crate) type Key = u128;

/// Hashes counter keys with process-random keys, so clients cannot aim
/// collisions at each other.
pub(crate) struct KeyHasher {
    a: RandomState,
    b: RandomState,
}

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher {
            a: RandomState::new(),
            b: RandomState::new(),
        }
    }
}

impl KeyHasher {
    pub(crate) fn key(&self, text: &str) -> Key {
        (u128::from(self.a.hash_one(text)) << 64) | u128::from(self.b.hash_one(text))
    }
}

/// The keys are already uniformly random: use their low bits as the hash.
#[derive(Default)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// A stored counter; `exceeded` is `i64::MIN` for "not yet".
#[derive(Clone, Copy)]
struct Slot {
    key: Key,
    started: i64,
    exceeded: i64,
    total: u64,
    expires: i64,
}

impl Slot {
    fn counter(&self) -> Counter {
        Counter {
            started: self.started,
            exceeded: (self.exceeded != i64::MIN).then_some(self.exceeded),
            total: self.total,
        }
    }
}

struct Shard {
    index: HashMap<Key, u32, BuildHasherDefault<Passthrough>>,
    slots: Vec<Slot>,
    /// xorshift state for sampling victims.
    rng: u64,
}

impl Shard {
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// The least valuable of a few sampled slots: an expired one if found,
    /// else the one with the fewest requests (then the soonest to expire).
    fn victim(&mut self, now: i64) -> usize {
        let len = self.slots.len() as u64;
        let mut best = (self.next_random() % len) as usize;
        for _ in 1..SAMPLES {
            if self.slots[best].expires < now {
                break;
            }
            let i = (self.next_random() % len) as usize;
            let (a, b) = (&self.slots[i], &self.slots[best]);
            if a.expires < now || (a.total, a.expires) < (b.total, b.expires) {
                best = i;
            }
        }
        best
    }
}

/// The bounded store.
pub(crate) struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: KeyHasher,
    /// Made when the store first fills up: until then nothing needs it, and
    /// it is the store's largest allocation.
    sketch: OnceLock<Estimator>,
    sketch_events: AtomicU64,
    sketch_reset_every: u64,
    last_full_log: AtomicI64,
}

impl LocalStore {
    /// A store for at most `max_counters` counters.
    pub(crate) fn new(max_counters: usize) -> LocalStore {
        let per_shard = max_counters.div_ceil(SHARDS).max(1);
        let seed = RandomState::new().hash_one(0u8) | 1;
        let shards = (0..SHARDS as u64)
            .map(|i| {
                // Tables grow with use: a reservation for every slot would be
                // touched (hash table control bytes) at start-up, idle or not.
                // Growing one shard at a time briefly holds two copies of that
                // shard's table only, 1/64 of the store.
                Mutex::new(Shard {
                    index: HashMap::default(),
                    slots: Vec::new(),
                    rng: seed.rotate_left(i as u32) | 1,
                })
            })
            .collect();
        LocalStore {
            shards,
            per_shard,
            hasher: KeyHasher::default(),
            sketch: OnceLock::new(),
            sketch_events: AtomicU64::new(0),
            // Aging: forget old frequencies after ten times the capacity in
            // admissions, so the sketch reflects recent use.
            sketch_reset_every: (per_shard * SHARDS * 10) as u64,
            last_full_log: AtomicI64::new(i64::MIN),
        }
    }

    pub(crate) fn key(&self, text: &str) -> Key {
        self.hasher.key(text)
    }

    /// Counters held (live or expired, not yet reused).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.slots.len()))
            .sum()
    }

    /// Estimated recent use of `key` (counting this request).
    fn frequency(&self, key: Key) -> u64 {
        let sketch = self
            .sketch
            .get_or_init(|| Estimator::new(SKETCH_HASHES, SKETCH_SLOTS));
        if self.sketch_events.fetch_add(1, Ordering::Relaxed) % self.sketch_reset_every
            == self.sketch_reset_every - 1
        {
            sketch.reset();
        }
        u64::try_from(sketch.incr(key, 1)).unwrap_or(0)
    }

    /// Runs `process` on the key's counter atomically and keeps the result
    /// for `ttl` (as returned by `process`) after `now`.
    pub(crate) fn update(
        &self,
        key: Key,
        now: i64,
        process: impl FnOnce(Option<Counter>) -> (Counter, i64),
    ) -> Stored {
        let shard = &self.shards[(key >> 64) as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let slot = match shard.index.get(&key).copied() {
            Some(i) => i as usize,
            None if shard.slots.len() < self.per_shard => {
                let i = shard.slots.len();
                shard.slots.push(Slot {
                    key,
                    started: 0,
                    exceeded: i64::MIN,
                    total: 0,
                    expires: i64::MIN,
                });
                shard.index.insert(key, i as u32);
                i
            }
            None => {
                let victim = shard.victim(now);
                let v = shard.slots[victim];
                if v.expires >= now && self.frequency(key) <= v.total {
                    self.note_full(now);
                    return Stored::Untracked;
                }
                shard.index.remove(&v.key);
                shard.index.insert(key, victim as u32);
                shard.slots[victim] = Slot {
                    key,
                    started: 0,
                    exceeded: i64::MIN,
                    total: 0,
                    expires: i64::MIN,
                };
                victim
            }
        };
        let current = &mut shard.slots[slot];
        let existing = (current.expires >= now).then(|| current.counter());
        let (counter, ttl) = process(existing);
        *current = Slot {
            key,
            started: counter.started,
            exceeded: counter.exceeded.unwrap_or(i64::MIN),
            total: counter.total,
            expires: now.saturating_add(ttl.max(0)),
        };
        Stored::Exact(counter)
    }

    fn note_full(&self, now: i64) {
        super::METRICS.untracked.fetch_add(1, Ordering::Relaxed);
        // One line a minute tells operators the bound was reached.
        let last = self.last_full_log.load(Ordering::Relaxed);
        if now.saturating_sub(last) > 60_000_000
            && self
                .last_full_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "rate limiting: all {} counters are in use by busier clients; new clients pass uncounted until they are (raise rate_limiting.max_counters)",
                self.shards.len() * self.per_shard
            );
        }
    }
}

/// Never unavailable: a key that finds no slot is [`Stored::Untracked`].
impl CounterStore for LocalStore {
    async fn count_current(
        &self,
        key: &CounterKey<'_>,
        w: &current::Window,
        now: i64,
    ) -> Result<Counted, Unavailable> {
        let stored = self.update(self.key(&key.text), now, |entry| {
            (current::process(entry, w, now), current::ttl(w))
        });
        Ok(Counted { stored, now })
    }

    async fn count_legacy(
        &self,
        key: &CounterKey<'_>,
        w: &legacy::Window,
        now: i64,
    ) -> Result<Counted, Unavailable> {
        let stored = self.update(self.key(&key.text), now, |entry| {
            legacy::process(entry, w, now)
        });
        Ok(Counted { stored, now })
    }
}

#[cfg(test)]
mod tests {
    use super::super::algorithm::SECOND;
    use super::*;

    fn w() -> current::Window {
        current::Window {
            limit: 3,
            period: SECOND,
            wait: 0,
        }
    }

    fn hit(store: &LocalStore, key: Key, now: i64) -> Stored {
        let w = w();
        store.update(key, now, |e| {
            (current::process(e, &w, now), current::ttl(&w))
        })
    }

    fn total(s: Stored) -> u64 {
        match s {
            Stored::Exact(c) => c.total,
            Stored::Untracked => panic!("untracked"),
        }
    }

    #[test]
    fn counts_exactly_per_key() {
        let store = LocalStore::new(1000);
        let (a, b) = (store.key("a"), store.key("b"));
        assert_ne!(a, b);
        for i in 1..=5 {
            assert_eq!(total(hit(&store, a, 10 * i)), i as u64);
        }
        assert_eq!(total(hit(&store, b, 100)), 1);
    }

    fn same_shard_keys(store: &LocalStore, n: usize) -> Vec<Key> {
        let first = store.key("seed");
        (0u128..).map(|i| first ^ i).take(n).collect()
    }

    #[test]
    fn expired_counters_start_over_and_give_their_slot_away() {
        let store = LocalStore::new(SHARDS); // one slot per shard
        let keys = same_shard_keys(&store, 2);
        hit(&store, keys[0], 0);
        assert_eq!(total(hit(&store, keys[0], SECOND)), 2, "same window");
        assert_eq!(
            total(hit(&store, keys[0], 5 * SECOND)),
            1,
            "expired: a new window"
        );
        // Its counter lives until 7 s; then the slot goes to another key.
        assert_eq!(total(hit(&store, keys[1], 8 * SECOND)), 1);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn busy_clients_keep_their_counters_through_a_flood() {
        let store = LocalStore::new(SHARDS * 16);
        let heavy = store.key("heavy");
        for i in 0..3 {
            hit(&store, heavy, i);
        }
        let mut untracked = 0;
        for i in 0..200_000u32 {
            if hit(&store, store.key(&format!("client-{i}")), 10) == Stored::Untracked {
                untracked += 1;
            }
        }
        assert!(store.len() <= SHARDS * 16);
        assert_eq!(
            total(hit(&store, heavy, 20)),
            4,
            "not evicted by one-off ids"
        );
        assert!(
            untracked < 200_000,
            "one-off ids replace each other: {untracked}"
        );
    }

    #[test]
    fn a_key_that_keeps_coming_is_admitted() {
        let store = LocalStore::new(SHARDS);
        let keys = same_shard_keys(&store, 2);
        for _ in 0..5 {
            hit(&store, keys[0], 0); // total 5 in the only slot
        }
        let results: Vec<Stored> = (0..10).map(|_| hit(&store, keys[1], 0)).collect();
        assert_eq!(results[0], Stored::Untracked);
        assert!(
            results.iter().any(|r| matches!(r, Stored::Exact(_))),
            "{results:?}"
        );
    }
}
