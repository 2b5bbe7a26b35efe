//! Ocelot's rate limiting (`RateLimitOptions`; Ocelot's `src/RateLimiting/`).
//!
//! Per route, a compiled [`RouteRule`] (`rule.rs`, built once per
//! configuration snapshot); per request, [`RateLimiter::check`]
//! (`limiter.rs`) identifies the client by its `ClientIdHeader`, skips
//! whitelisted clients, counts the request for the (client, route) pair and
//! answers either "go on, with these response headers" (`headers.rs`) or the
//! quota-exceeded response.
//!
//! Two behaviours, chosen by the gateway setting
//! `rate_limiting.ocelot_compat_version` (`settings.rs`):
//! * **25** (default; everything from 24.1 on): route/global merging with
//!   `RouteKeys`, `Oc-Client`, 503 for unidentified clients, `Wait`,
//!   `X-RateLimit-*` headers, per (client, route) counters.
//! * **24.0 and older**: route-level `EnableRateLimiting` (default off),
//!   global `ClientIdHeader` (default `ClientId`), `PeriodTimespan` ban,
//!   `X-Rate-Limit-*` headers, per (client, method, path) counters, and
//!   clients without the header sharing one bucket.
//!
//! Ocelot's counting is in `algorithm.rs`, as pure functions. Counters live
//! behind one [`CounterStore`](store::CounterStore) trait (`store.rs`): a
//! [`local::LocalStore`] (exact, bounded, per process) or, with `redis_url`,
//! Redis ([`redis::RedisStore`]) so that replicas share one limit.

pub mod algorithm;
pub mod format;
mod headers;
mod limiter;
pub mod local;
pub mod redis;
mod rule;
mod settings;
pub mod store;

pub use limiter::{now_micros, Decision, RateLimiter, Rejection, RequestView};
pub use rule::{parse_timespan, RouteRule};
pub use settings::{CompatVersion, FailurePolicy, RateLimitSettings};

use std::sync::atomic::AtomicU64;

/// Counters for the metrics endpoint.
#[derive(Debug)]
pub struct RateLimitMetrics {
    /// Requests counted and let through.
    pub allowed: AtomicU64,
    /// Requests answered with the quota-exceeded status.
    pub rejected: AtomicU64,
    /// Requests answered 503 for lack of a client id.
    pub unidentified: AtomicU64,
    /// Requests let through uncounted because every counter slot was held
    /// by a busier client (`max_counters` reached).
    pub untracked: AtomicU64,
    /// Redis calls that failed or timed out.
    pub redis_errors: AtomicU64,
    /// 1 while Redis is considered unreachable, else 0.
    pub redis_down: AtomicU64,
    /// Requests let through uncounted because Redis was unreachable.
    pub failed_open: AtomicU64,
    /// Requests refused with 503 because Redis was unreachable.
    pub failed_closed: AtomicU64,
}

pub(crate) static METRICS: RateLimitMetrics = RateLimitMetrics {
    allowed: AtomicU64::new(0),
    rejected: AtomicU64::new(0),
    unidentified: AtomicU64::new(0),
    untracked: AtomicU64::new(0),
    redis_errors: AtomicU64::new(0),
    redis_down: AtomicU64::new(0),
    failed_open: AtomicU64::new(0),
    failed_closed: AtomicU64::new(0),
};

/// The process-wide rate-limiting counters.
pub fn metrics() -> &'static RateLimitMetrics {
    &METRICS
}
