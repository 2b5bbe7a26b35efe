//! The in-memory storage behind the output cache: a `pingora-cache`
//! [`Storage`] bounded by size, with Ocelot's regions.
//!
//! Why not `pingora_cache::MemCache`: it is marked "for testing only", does
//! not count response headers towards any bound, and its miss handler
//! panics when an entry is purged while a response for the same key is still
//! being written. This store keeps complete responses only (concurrent misses
//! each go to the service, as in Ocelot), counts every stored byte, and never
//! panics.
//!
//! Bounds: stored entries (body, serialized headers and a fixed overhead)
//! never exceed `max_bytes`, least recently used first out; responses still
//! being received are buffered only while the sum of all such buffers stays
//! under `max_bytes` too, and one response only up to `max_object_bytes`.
//! Expired entries are dropped when they are next looked up or when space is
//! needed, whichever comes first.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::{HandleHit, HandleMiss, MissFinishType};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{
    CacheKey, CacheMeta, HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_error::Result;
use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

/// Bytes an entry costs besides its body and headers: map slots, the region
/// index, the LRU order (a generous estimate, so the bound holds).
const ENTRY_OVERHEAD: usize = 256;

/// One cached response.
struct Entry {
    /// `CacheMeta::serialize()`: internal metadata and the response header.
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
    region: Box<str>,
    fresh_until: SystemTime,
    /// What the entry counts against `max_bytes`.
    size: usize,
    /// Position in the LRU order.
    tick: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<HashBinary, Entry>,
    /// Least recently used first.
    order: BTreeMap<u64, HashBinary>,
    next_tick: u64,
    used: usize,
    /// Keys by region, for purges through the admin API.
    regions: HashMap<Box<str>, HashSet<HashBinary>>,
}

impl Inner {
    fn touch(&mut self, key: &HashBinary) {
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some(entry) = self.entries.get_mut(key) {
            self.order.remove(&entry.tick);
            entry.tick = tick;
            self.order.insert(tick, *key);
        }
    }

    fn remove(&mut self, key: &HashBinary) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.order.remove(&entry.tick);
        self.used -= entry.size;
        if let Some(keys) = self.regions.get_mut(&entry.region) {
            keys.remove(key);
            if keys.is_empty() {
                self.regions.remove(&entry.region);
            }
        }
        Some(entry)
    }

    fn insert(&mut self, key: HashBinary, mut entry: Entry, max_bytes: usize) {
        self.remove(&key);
        while self.used + entry.size > max_bytes {
            let Some(oldest) = self.order.values().next().copied() else {
                break;
            };
            if self.remove(&oldest).is_none() {
                // Cannot happen (`order` and `entries` change together), but
                // never loop on it.
                self.order.retain(|_, k| *k != oldest);
            }
        }
        entry.tick = self.next_tick;
        self.next_tick += 1;
        self.used += entry.size;
        self.order.insert(entry.tick, key);
        self.regions
            .entry(entry.region.clone())
            .or_default()
            .insert(key);
        self.entries.insert(key, entry);
    }
}

/// A size-bounded in-memory cache store with regions.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    max_bytes: usize,
    max_object_bytes: usize,
    /// Bytes buffered by responses still being received.
    pending: AtomicUsize,
}

impl MemoryStore {
    /// A store holding at most `max_bytes`, each response at most `max_object_bytes`.
    pub(crate) fn new(max_bytes: usize, max_object_bytes: usize) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            max_bytes,
            max_object_bytes: max_object_bytes.min(max_bytes),
            pending: AtomicUsize::new(0),
        }
    }

    /// The largest response body that is cached.
    pub(crate) fn max_object_bytes(&self) -> usize {
        self.max_object_bytes
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in
        // a way that matters more than losing the cache would.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes every entry of `region`; returns how many there were.
    pub(crate) fn purge_region(&self, region: &str) -> usize {
        let mut inner = self.lock();
        let Some(keys) = inner.regions.remove(region) else {
            return 0;
        };
        let count = keys.len();
        for key in keys {
            inner.remove(&key);
        }
        count
    }

    #[cfg(test)]
    /// (entries, bytes) currently stored.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.used)
    }

    fn release(&self, bytes: usize) {
        self.pending.fetch_sub(bytes, Ordering::Relaxed);
    }
}

fn hash_of(key: &CacheKey) -> HashBinary {
    key.combined_bin()
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = hash_of(key);
        let found = {
            let mut inner = self.lock();
            let expired = match inner.entries.get(&hash) {
                None => return Ok(None),
                Some(e) => e.fresh_until <= SystemTime::now(),
            };
            if expired {
                // Ocelot's entries expire absolutely: a stale one is a plain miss,
                // never revalidated.
                inner.remove(&hash);
                return Ok(None);
            }
            inner.touch(&hash);
            inner
                .entries
                .get(&hash)
                .map(|e| (e.meta.clone(), e.body.clone()))
        };
        let Some(((internal, header), body)) = found else {
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(&internal, &header)?;
        Ok(Some((meta, Box::new(Hit { body: Some(body) }))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Miss {
            store: self,
            key: hash_of(key),
            region: key.user_tag.as_str().into(),
            meta: meta.serialize()?,
            fresh_until: meta.fresh_until(),
            body: BytesMut::new(),
            reserved: 0,
            abandoned: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let hash = target.key().combined_bin();
        Ok(match self.lock().remove(&hash) {
            Some(_) => PurgeOutcome::Purged(None),
            None => PurgeOutcome::NotFound,
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let serialized = meta.serialize()?;
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(&hash_of(key)) else {
            return Ok(false);
        };
        let old = entry.meta.0.len() + entry.meta.1.len();
        let new = serialized.0.len() + serialized.1.len();
        entry.meta = serialized;
        entry.fresh_until = meta.fresh_until();
        entry.size = entry.size + new - old;
        inner.used = inner.used + new - old;
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A cache hit: the whole body at once.
struct Hit {
    body: Option<Bytes>,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        Ok(self.body.take())
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A response being received for the cache.
struct Miss {
    store: &'static MemoryStore,
    key: HashBinary,
    region: Box<str>,
    meta: (Vec<u8>, Vec<u8>),
    fresh_until: SystemTime,
    body: BytesMut,
    /// Bytes counted in the store's `pending`.
    reserved: usize,
    /// Too large, or no room while it is received: served, not cached.
    abandoned: bool,
}

impl Miss {
    fn abandon(&mut self) {
        self.abandoned = true;
        self.body = BytesMut::new();
        self.store.release(std::mem::take(&mut self.reserved));
    }
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.abandoned || data.is_empty() {
            return Ok(());
        }
        if self.body.len() + data.len() > self.store.max_object_bytes {
            self.abandon();
            return Ok(());
        }
        let pending = self.store.pending.fetch_add(data.len(), Ordering::Relaxed) + data.len();
        self.reserved += data.len();
        if pending > self.store.max_bytes {
            self.abandon();
            return Ok(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        if self.abandoned {
            return Ok(MissFinishType::Created(0));
        }
        let body = std::mem::take(&mut self.body).freeze();
        let meta = std::mem::take(&mut self.meta);
        let size = body.len() + meta.0.len() + meta.1.len() + self.region.len() + ENTRY_OVERHEAD;
        if size <= self.store.max_bytes {
            let entry = Entry {
                meta,
                body,
                region: std::mem::take(&mut self.region),
                fresh_until: self.fresh_until,
                size,
                tick: 0,
            };
            self.store
                .lock()
                .insert(self.key, entry, self.store.max_bytes);
        }
        self.store.release(std::mem::take(&mut self.reserved));
        Ok(MissFinishType::Created(size))
    }
}

impl Drop for Miss {
    fn drop(&mut self) {
        // A response that was never finished (client gone, upstream error).
        self.store.release(std::mem::take(&mut self.reserved));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::trace::Span;
    use pingora_http::ResponseHeader;
    use std::time::Duration;

    fn store(max: usize) -> &'static MemoryStore {
        Box::leak(Box::new(MemoryStore::new(max, max)))
    }

    fn meta(ttl: Duration) -> CacheMeta {
        let now = SystemTime::now();
        CacheMeta::new(
            now + ttl,
            now,
            0,
            0,
            ResponseHeader::build(200, None).unwrap(),
        )
    }

    async fn put(s: &'static MemoryStore, key: &CacheKey, body: &[u8], ttl: Duration) {
        let span = Span::inactive().handle();
        let mut miss = s.get_miss_handler(key, &meta(ttl), &span).await.unwrap();
        miss.write_body(Bytes::copy_from_slice(body), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
    }

    async fn get(s: &'static MemoryStore, key: &CacheKey) -> Option<Bytes> {
        let (_, mut hit) = s.lookup(key, &Span::inactive().handle()).await.unwrap()?;
        hit.read_body().await.unwrap()
    }

    #[tokio::test]
    async fn hit_expiry_and_regions() {
        let s = store(1 << 20);
        let a = CacheKey::new("GET-a", "r1");
        let b = CacheKey::new("GET-b", "r2");
        put(s, &a, b"alpha", Duration::from_secs(60)).await;
        put(s, &b, b"beta", Duration::from_millis(1)).await;
        assert_eq!(get(s, &a).await.as_deref(), Some(&b"alpha"[..]));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(get(s, &b).await, None, "expired");
        assert_eq!(s.usage().0, 1);
        assert_eq!(s.purge_region("r1"), 1);
        assert_eq!(get(s, &a).await, None);
        assert_eq!(s.usage(), (0, 0));
    }

    #[tokio::test]
    async fn least_recently_used_goes_first_and_bytes_stay_bounded() {
        let s = store(4 * 1024);
        let keys: Vec<CacheKey> = (0..4)
            .map(|i| CacheKey::new(format!("k{i}"), "r"))
            .collect();
        for k in &keys[..3] {
            put(s, k, &[7u8; 900], Duration::from_secs(60)).await;
        }
        // Touch k0 so k1 is the oldest.
        assert!(get(s, &keys[0]).await.is_some());
        put(s, &keys[3], &[7u8; 900], Duration::from_secs(60)).await;
        assert!(s.usage().1 <= 4 * 1024);
        assert!(
            get(s, &keys[1]).await.is_none(),
            "the least recently used is evicted"
        );
        assert!(get(s, &keys[0]).await.is_some());
        assert!(get(s, &keys[3]).await.is_some());
        // Larger than the whole store: served but never stored.
        put(
            s,
            &CacheKey::new("huge", "r"),
            &[1u8; 8192],
            Duration::from_secs(60),
        )
        .await;
        assert!(get(s, &CacheKey::new("huge", "r")).await.is_none());
        assert_eq!(s.pending.load(Ordering::Relaxed), 0);
    }
}
