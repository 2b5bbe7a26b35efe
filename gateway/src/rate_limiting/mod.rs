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
//! [`local::LocalStore`] (exact, bounded, per process) or Redis
//! ([`redis::RedisStore`]) so that replicas share one limit: one server
//! (`redis_url`), the master Sentinel names (`redis_sentinel`) or a Cluster
//! (`redis_cluster`), in `topology.rs`.

pub(crate) mod algorithm;
pub(crate) mod format;
mod headers;
mod limiter;
pub(crate) mod local;
pub(crate) mod redis;
mod rule;
mod settings;
pub(crate) mod store;
mod topology;

pub(crate) use limiter::{Decision, RateLimiter, Rejection, RequestView};
pub(crate) use rule::RouteRule;
pub(crate) use settings::{ClientIdentity, RateLimitSettings};

use std::sync::atomic::AtomicU64;

/// Counters for the metrics endpoint.
#[derive(Debug)]
pub(crate) struct RateLimitMetrics {
    /// Requests counted and let through.
    pub(crate) allowed: AtomicU64,
    /// Requests answered with the quota-exceeded status.
    pub(crate) rejected: AtomicU64,
    /// Requests answered 503 for lack of a client id.
    pub(crate) unidentified: AtomicU64,
    /// Requests let through uncounted because every counter slot was held
    /// by a busier client (`max_counters` reached).
    pub(crate) untracked: AtomicU64,
    /// Redis calls that failed or timed out.
    pub(crate) redis_errors: AtomicU64,
    /// 1 while Redis is considered unreachable, else 0.
    pub(crate) redis_down: AtomicU64,
    /// Times Redis became unreachable.
    pub(crate) redis_outages: AtomicU64,
    /// Times Redis answered again after an outage.
    pub(crate) redis_recoveries: AtomicU64,
    /// Requests let through uncounted because Redis was unreachable.
    pub(crate) failed_open: AtomicU64,
    /// Requests refused with 503 because Redis was unreachable.
    pub(crate) failed_closed: AtomicU64,
}

pub(crate) static METRICS: RateLimitMetrics = RateLimitMetrics {
    allowed: AtomicU64::new(0),
    rejected: AtomicU64::new(0),
    unidentified: AtomicU64::new(0),
    untracked: AtomicU64::new(0),
    redis_errors: AtomicU64::new(0),
    redis_down: AtomicU64::new(0),
    redis_outages: AtomicU64::new(0),
    redis_recoveries: AtomicU64::new(0),
    failed_open: AtomicU64::new(0),
    failed_closed: AtomicU64::new(0),
};

/// Exports the rate-limiting counters (rejections are also counted per
/// route as refusals).
pub(crate) fn export_metrics() {
    use crate::metrics::{export_counter, export_gauge};
    let counters: [(&str, &str, &'static AtomicU64); 9] = [
        (
            "gateway_rate_limit_allowed_total",
            "Requests counted by a rate limit and let through",
            &METRICS.allowed,
        ),
        (
            "gateway_rate_limit_rejected_total",
            "Requests over their quota",
            &METRICS.rejected,
        ),
        (
            "gateway_rate_limit_unidentified_total",
            "Requests without a usable ClientIdHeader",
            &METRICS.unidentified,
        ),
        (
            "gateway_rate_limit_untracked_total",
            "Requests let through uncounted because every local counter slot was held (max_counters)",
            &METRICS.untracked,
        ),
        (
            "gateway_rate_limit_redis_errors_total",
            "Redis calls of the rate limiter that failed or timed out",
            &METRICS.redis_errors,
        ),
        (
            "gateway_rate_limit_redis_outages_total",
            "Times the rate limiter found Redis unreachable and began applying the failure policy",
            &METRICS.redis_outages,
        ),
        (
            "gateway_rate_limit_redis_recoveries_total",
            "Times Redis answered the rate limiter again after an outage",
            &METRICS.redis_recoveries,
        ),
        (
            "gateway_rate_limit_failed_open_total",
            "Requests let through uncounted while Redis was unreachable (failure_policy: open)",
            &METRICS.failed_open,
        ),
        (
            "gateway_rate_limit_failed_closed_total",
            "Requests refused while Redis was unreachable (failure_policy: closed)",
            &METRICS.failed_closed,
        ),
    ];
    for (name, help, source) in counters {
        export_counter(name, help, source);
    }
    export_gauge(
        "gateway_rate_limit_redis_down",
        "1 while the rate limiter considers Redis unreachable",
        &METRICS.redis_down,
    );
}
