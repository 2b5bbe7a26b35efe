//! Where counters live, behind one trait so the limiter asks "count this
//! request" the same way whichever store the settings chose: the bounded
//! per-process [`LocalStore`] or the shared [`RedisStore`].
//!
//! A store runs Ocelot's whole read-count-write for one key atomically (the
//! algorithms are in `algorithm.rs`) and answers with the counter after the
//! request, or that it cannot count now; what to do then is the limiter's
//! failure policy (`limiter.rs`), not the store's.

use super::algorithm::{current, legacy, Counter};
use super::local::LocalStore;
use super::redis::RedisStore;

/// What the store did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Counted exactly: the counter after the current request.
    Exact(Counter),
    /// Not counted: every slot holds a busier client (local store only).
    Untracked,
}

/// A counted request: what was stored, and the store's clock when it was
/// (Redis counts on its own clock so that replicas share one window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counted {
    pub(crate) stored: Stored,
    pub(crate) now: i64,
}

/// Why a store gave no counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// A recent call failed; not retried until the retry interval is over.
    Backoff,
    /// This call failed or took longer than the timeout.
    Failed(String),
}

/// A counter's key: the rule's `KeyPrefix`, which route and rule it counts
/// for, and the whole key, which starts with the prefix (Ocelot's
/// `GetStorageKey` input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CounterKey<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) route: &'a str,
    pub(crate) rule: &'a str,
    pub(crate) text: String,
}

/// The operations the limiter needs from a store: one per algorithm, each
/// counting the current request at `now` (microseconds since the epoch).
pub(crate) trait CounterStore {
    /// Ocelot 24.1+ (`algorithm::current`).
    async fn count_current(
        &self,
        key: &CounterKey<'_>,
        window: &current::Window,
        now: i64,
    ) -> Result<Counted, Unavailable>;

    /// Ocelot 24.0 and older (`algorithm::legacy`).
    async fn count_legacy(
        &self,
        key: &CounterKey<'_>,
        window: &legacy::Window,
        now: i64,
    ) -> Result<Counted, Unavailable>;
}

/// The store a limiter counts in, chosen once from the settings. An enum
/// rather than a trait object so a request costs no boxed future.
pub(crate) enum Store {
    Local(LocalStore),
    Redis(Box<RedisStore>),
}

impl CounterStore for Store {
    async fn count_current(
        &self,
        key: &CounterKey<'_>,
        window: &current::Window,
        now: i64,
    ) -> Result<Counted, Unavailable> {
        match self {
            Store::Local(s) => s.count_current(key, window, now).await,
            Store::Redis(s) => s.count_current(key, window, now).await,
        }
    }

    async fn count_legacy(
        &self,
        key: &CounterKey<'_>,
        window: &legacy::Window,
        now: i64,
    ) -> Result<Counted, Unavailable> {
        match self {
            Store::Local(s) => s.count_legacy(key, window, now).await,
            Store::Redis(s) => s.count_legacy(key, window, now).await,
        }
    }
}
