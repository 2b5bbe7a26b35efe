//! Ocelot's rate limiting (`RateLimitOptions`, `src/RateLimiting/*`).
//!
//! Per route, a compiled [`RouteRule`] (built once per configuration
//! snapshot); per request, [`RateLimiter::check`] identifies the client by its
//! `ClientIdHeader`, skips whitelisted clients, counts the request for the
//! (client, route) pair and answers either "go on, with these response
//! headers" or the quota-exceeded response.
//!
//! Two behaviours, chosen by the gateway setting
//! `rate_limiting.ocelot_compat_version`:
//! * **25** (default; everything from 24.1 on): route/global merging with
//!   `RouteKeys`, `Oc-Client`, 503 for unidentified clients, `Wait`,
//!   `X-RateLimit-*` headers, per (client, route) counters.
//! * **24.0 and older**: route-level `EnableRateLimiting` (default off),
//!   global `ClientIdHeader` (default `ClientId`), `PeriodTimespan` ban,
//!   `X-Rate-Limit-*` headers, per (client, method, path) counters, and
//!   clients without the header sharing one bucket.
//!
//! Counters live in a [`local::LocalStore`] (exact, bounded, per process) or,
//! with `redis_url`, in Redis ([`redis::RedisStore`]) so that replicas share
//! one limit.

pub mod algorithm;
pub mod format;
pub mod local;
pub mod redis;

use algorithm::{current, legacy, Counter, SECOND};
use format::{dotnet_double, dotnet_format, round_trip_date};
use local::{LocalStore, Stored};
use ocelot_compat::model::{FileGlobalConfiguration, FileRoute};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// What to do with a request while Redis cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Let it through, uncounted and without rate-limit headers.
    #[default]
    Open,
    /// Refuse it with 503 and an empty body.
    Closed,
}

/// An Ocelot version, as `23`, `24.0`, `"24.1"` or `"23.4.3"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CompatVersion {
    pub major: u32,
    pub minor: u32,
}

impl Default for CompatVersion {
    fn default() -> Self {
        CompatVersion {
            major: 25,
            minor: 0,
        }
    }
}

impl CompatVersion {
    /// Parses `25`, `24.0`, `23.4.3`.
    pub fn parse(text: &str) -> Option<CompatVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
        parts
            .all(|p| p.parse::<u32>().is_ok())
            .then_some(CompatVersion { major, minor })
    }

    /// Whether rate limiting follows Ocelot 24.0 and older.
    pub fn legacy_rate_limiting(&self) -> bool {
        *self
            < CompatVersion {
                major: 24,
                minor: 1,
            }
    }
}

impl<'de> Deserialize<'de> for CompatVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Float(f64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Int(i) => i.to_string(),
            Raw::Float(f) => format!("{f}"),
            Raw::Text(t) => t,
        };
        CompatVersion::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "'{text}' is not a version such as 25, 24.0 or 23.4.3"
            ))
        })
    }
}

/// The `rate_limiting` section of the gateway settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Ocelot version whose rate limiting to reproduce (default 25; 24.0 or
    /// lower selects the legacy behaviour).
    pub ocelot_compat_version: CompatVersion,
    /// Count in Redis, shared by every replica (`redis://host:port/db`).
    pub redis_url: Option<String>,
    /// Longest time one Redis call may take.
    pub redis_timeout_ms: u64,
    /// After a failed call, how long to apply the failure policy before
    /// trying Redis again.
    pub redis_retry_ms: u64,
    /// What to do while Redis is unreachable: `open` or `closed`.
    pub failure_policy: FailurePolicy,
    /// Exact counters kept in memory (per process, without Redis).
    pub max_counters: usize,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            ocelot_compat_version: CompatVersion::default(),
            redis_url: None,
            redis_timeout_ms: 100,
            redis_retry_ms: 1000,
            failure_policy: FailurePolicy::Open,
            max_counters: 200_000,
        }
    }
}

const DEFAULT_CLIENT_HEADER: &str = "Oc-Client";
const LEGACY_CLIENT_HEADER: &str = "ClientId";
const DEFAULT_QUOTA_MESSAGE: &str = "API calls quota exceeded! Maximum admitted {0} per {1}.";
const DEFAULT_KEY_PREFIX: &str = "Ocelot.RateLimiting";
const LEGACY_KEY_PREFIX: &str = "ocelot";
const DEFAULT_PERIOD: &str = "1s";
const ZERO_WAIT: &str = "0ms";

/// Ocelot's `RateLimitRule.ParseTimespan`: a number with an optional unit
/// `ms`, `s`, `m`, `h`, `d` (any case); no unit means milliseconds; empty
/// means zero. Returns microseconds.
pub fn parse_timespan(text: &str) -> Option<i64> {
    let t = text.trim();
    if t.is_empty() {
        return Some(0);
    }
    let end = t.rfind(|c: char| c.is_ascii_digit() || c == '.')? + 1;
    let (number, unit) = t.split_at(end);
    let value: f64 = number.trim().parse::<f64>().ok()?.abs();
    let micros_per_unit = match unit.trim().to_ascii_lowercase().as_str() {
        "d" => 86_400.0 * 1e6,
        "h" => 3_600.0 * 1e6,
        "m" => 60.0 * 1e6,
        "s" => 1e6,
        "ms" | "" => 1e3,
        _ => return None,
    };
    let micros = (value * micros_per_unit).round();
    (micros.is_finite() && micros < i64::MAX as f64).then_some(micros as i64)
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|v| !v.is_empty())
}

/// How the counter key and algorithm are chosen for a rule.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Algorithm {
    Current(current::Window),
    Legacy(legacy::Window),
}

/// A route's rate limiting, compiled.
pub struct RouteRule {
    route_name: String,
    route_key: String,
    client_header: http::HeaderName,
    whitelist: Vec<String>,
    enable_headers: bool,
    status: u16,
    quota_body: String,
    key_prefix: String,
    rule_text: String,
    period_text: String,
    limit: u64,
    algorithm: Algorithm,
}

impl std::fmt::Debug for RouteRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteRule")
            .field("route", &self.route_name)
            .field("rule", &self.rule_text)
            .field("client_header", &self.client_header)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl RouteRule {
    /// `{Limit}/{Period}/w{Wait}`, as Ocelot logs and reports a rule.
    pub fn rule_text(&self) -> &str {
        &self.rule_text
    }

    fn period(&self) -> i64 {
        match self.algorithm {
            Algorithm::Current(w) => w.period,
            Algorithm::Legacy(w) => w.period,
        }
    }
}

fn header_name(name: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("ClientIdHeader '{name}' is not a valid header name"))
}

/// Wall-clock now in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on; add these headers to the response (possibly none).
    Allow(Vec<(&'static str, String)>),
    /// The client used up its quota: answer with this response.
    Reject(Rejection),
    /// The client sent no usable `ClientIdHeader`: answer with this response.
    Unidentified(Rejection),
    /// The counter store cannot be reached and the failure policy refuses.
    Unavailable,
}

/// A response that ends the request: status, headers, body (no
/// `Content-Type`, as in Ocelot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// What the request looks like to the limiter.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// The limiter: settings plus the counter store(s), shared by every snapshot.
pub struct RateLimiter {
    legacy: bool,
    local: LocalStore,
    redis: Option<redis::RedisStore>,
    policy: FailurePolicy,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            legacy: false,
            local: LocalStore::new(RateLimitSettings::default().max_counters),
            redis: None,
            policy: FailurePolicy::Open,
        }
    }
}

impl RateLimiter {
    /// Builds the limiter; errors name the bad setting.
    pub fn new(settings: &RateLimitSettings) -> Result<RateLimiter, String> {
        if settings.max_counters == 0 {
            return Err("rate_limiting.max_counters: must be greater than 0".into());
        }
        let redis = match &settings.redis_url {
            Some(url) => Some(redis::RedisStore::new(
                url,
                Duration::from_millis(settings.redis_timeout_ms.max(1)),
                Duration::from_millis(settings.redis_retry_ms),
            )?),
            None => None,
        };
        Ok(RateLimiter {
            legacy: settings.ocelot_compat_version.legacy_rate_limiting(),
            local: LocalStore::new(settings.max_counters),
            redis,
            policy: settings.failure_policy,
        })
    }

    /// Whether the 24.0 behaviour is selected.
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// Whether Redis is configured and currently answering.
    pub fn redis_up(&self) -> Option<bool> {
        self.redis.as_ref().map(|r| r.is_up())
    }

    /// Exact counters held in memory.
    pub fn local_counters(&self) -> usize {
        self.local.len()
    }

    /// Compiles a route's rule. `route_key` identifies the route for counters
    /// (stable across reloads and replicas); `route_name` is how messages
    /// name it. `Ok(None)`: not rate limited.
    pub fn compile(
        &self,
        route: &FileRoute,
        global: &FileGlobalConfiguration,
        route_key: &str,
        route_name: &str,
    ) -> Result<Option<RouteRule>, String> {
        if self.legacy {
            compile_legacy(route, global, route_key, route_name)
        } else {
            compile_current(route, global, route_key, route_name)
        }
    }

    /// Ocelot's `RateLimitingMiddleware` for one request.
    pub async fn check(&self, rule: &RouteRule, req: &RequestView<'_>) -> Decision {
        let values = req.headers.get_all(&rule.client_header);
        let client = match rule.algorithm {
            // StringValues → string joins repeated headers with commas.
            Algorithm::Current(_) => values
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
                .collect::<Vec<_>>()
                .join(","),
            // 24.0 took the first value, and "client" for everyone without one.
            Algorithm::Legacy(_) => match values.iter().next() {
                Some(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
                None => "client".to_string(),
            },
        };
        if rule.whitelist.contains(&client) {
            return Decision::Allow(Vec::new());
        }
        if client.is_empty() {
            if let Algorithm::Current(_) = rule.algorithm {
                METRICS.unidentified.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "Rate limiting client could not be identified for the route '{}' due to a missing or unknown client ID header required by rule '{}'!",
                    rule.route_name,
                    rule.rule_text
                );
                return Decision::Unidentified(Rejection {
                    status: 503,
                    headers: if rule.enable_headers { vec![("Retry-After", "-1".to_string())] } else { Vec::new() },
                    body: format!(
                        "Rate limiting client could not be identified for the route '{}' due to a missing or unknown client ID header required by rule '{}'!",
                        rule.route_name, rule.rule_text
                    ),
                });
            }
        }
        let now = now_micros();
        match rule.algorithm {
            Algorithm::Current(w) => {
                let key = format!(
                    "{}_{}:{}_{}",
                    rule.key_prefix, client, rule.route_key, rule.rule_text
                );
                let stored = match self.redis.as_ref() {
                    Some(redis) => match redis
                        .process_current(&redis_key(&rule.key_prefix, &key), &w, now)
                        .await
                    {
                        Ok((counter, redis_now)) => Ok((Stored::Exact(counter), redis_now)),
                        Err(_) => Err(()),
                    },
                    None => {
                        let k = self.local.key(&key);
                        let stored = self.local.update(k, now, |entry| {
                            (current::process(entry, &w, now), current::ttl(&w))
                        });
                        Ok((stored, now))
                    }
                };
                match stored {
                    Ok((stored, now)) => self.decide_current(rule, &w, &client, stored, now),
                    Err(()) => self.unavailable(rule),
                }
            }
            Algorithm::Legacy(w) => {
                if w.limit == 0 {
                    return self.allow(rule, legacy_headers(rule, None, now));
                }
                let key = format!(
                    "{}_{}_{}_{}_{}",
                    rule.key_prefix,
                    client,
                    rule.period_text,
                    req.method.to_ascii_lowercase(),
                    req.path.to_lowercase()
                );
                let stored = match self.redis.as_ref() {
                    Some(redis) => match redis
                        .process_legacy(&redis_key(&rule.key_prefix, &key), &w, now)
                        .await
                    {
                        Ok((counter, redis_now)) => Ok((Stored::Exact(counter), redis_now)),
                        Err(_) => Err(()),
                    },
                    None => {
                        let k = self.local.key(&key);
                        let stored = self
                            .local
                            .update(k, now, |entry| legacy::process(entry, &w, now));
                        Ok((stored, now))
                    }
                };
                match stored {
                    Ok((stored, now)) => self.decide_legacy(rule, &w, &client, stored, now),
                    Err(()) => self.unavailable(rule),
                }
            }
        }
    }

    fn unavailable(&self, rule: &RouteRule) -> Decision {
        match self.policy {
            FailurePolicy::Open => {
                METRICS.failed_open.fetch_add(1, Ordering::Relaxed);
                log::debug!("rate limiting: Redis unavailable; letting a request to {} through (failure_policy: open)", rule.route_name);
                Decision::Allow(Vec::new())
            }
            FailurePolicy::Closed => {
                METRICS.failed_closed.fetch_add(1, Ordering::Relaxed);
                log::debug!("rate limiting: Redis unavailable; refusing a request to {} (failure_policy: closed)", rule.route_name);
                Decision::Unavailable
            }
        }
    }

    fn allow(&self, rule: &RouteRule, headers: Vec<(&'static str, String)>) -> Decision {
        METRICS.allowed.fetch_add(1, Ordering::Relaxed);
        Decision::Allow(if rule.enable_headers {
            headers
        } else {
            Vec::new()
        })
    }

    fn reject(&self, rule: &RouteRule, client: &str, total: u64, retry_after: f64) -> Decision {
        METRICS.rejected.fetch_add(1, Ordering::Relaxed);
        crate::metrics::METRICS
            .rate_limited
            .with_label_values(&[&rule.route_name])
            .inc();
        log::info!(
            "Blocked request from client {}({client}) to route '{}': quota {} exceeded by {total}",
            rule.client_header,
            rule.route_name,
            rule.rule_text
        );
        Decision::Reject(Rejection {
            status: rule.status,
            headers: if rule.enable_headers {
                vec![("Retry-After", dotnet_double(retry_after))]
            } else {
                Vec::new()
            },
            body: rule.quota_body.clone(),
        })
    }

    fn decide_current(
        &self,
        rule: &RouteRule,
        w: &current::Window,
        client: &str,
        stored: Stored,
        now: i64,
    ) -> Decision {
        match stored {
            Stored::Exact(c) if c.total > w.limit => {
                self.reject(rule, client, c.total, current::retry_after(&c, w, now))
            }
            Stored::Exact(c) => self.allow(rule, current_headers(w, &c)),
            // Uncounted: answered as the first request of a window would be.
            Stored::Untracked => self.allow(rule, current_headers(w, &Counter::start(now))),
        }
    }

    fn decide_legacy(
        &self,
        rule: &RouteRule,
        w: &legacy::Window,
        client: &str,
        stored: Stored,
        now: i64,
    ) -> Decision {
        match stored {
            Stored::Exact(c) if c.total > w.limit => {
                self.reject(rule, client, c.total, legacy::retry_after(&c, w, now))
            }
            Stored::Exact(c) => self.allow(rule, legacy_headers(rule, Some(&c), now)),
            Stored::Untracked => {
                self.allow(rule, legacy_headers(rule, Some(&Counter::start(now)), now))
            }
        }
    }
}

/// The Redis key: the prefix for operators, then the SHA-1 of the counter
/// key (as Ocelot's `GetStorageKey`), so keys are short whatever the client id.
fn redis_key(prefix: &str, key: &str) -> String {
    format!("{prefix}:{}", sha1_smol::Sha1::from(key).digest())
}

/// `X-RateLimit-*` of Ocelot 24.1+.
fn current_headers(w: &current::Window, c: &Counter) -> Vec<(&'static str, String)> {
    vec![
        ("X-RateLimit-Limit", w.limit.to_string()),
        (
            "X-RateLimit-Remaining",
            (i128::from(w.limit) - i128::from(c.total)).to_string(),
        ),
        (
            "X-RateLimit-Reset",
            round_trip_date(c.started.saturating_add(w.period)),
        ),
    ]
}

/// `X-Rate-Limit-*` of Ocelot 24.0: the "limit" header carries the period.
fn legacy_headers(rule: &RouteRule, c: Option<&Counter>, now: i64) -> Vec<(&'static str, String)> {
    let (remaining, started) = match c {
        Some(c) => (i128::from(rule.limit) - i128::from(c.total), c.started),
        None => (i128::from(rule.limit), now),
    };
    vec![
        ("X-Rate-Limit-Limit", rule.period_text.clone()),
        ("X-Rate-Limit-Remaining", remaining.to_string()),
        (
            "X-Rate-Limit-Reset",
            round_trip_date(started.saturating_add(rule.period())),
        ),
    ]
}

fn compile_current(
    route: &FileRoute,
    global: &FileGlobalConfiguration,
    route_key: &str,
    route_name: &str,
) -> Result<Option<RouteRule>, String> {
    let Some(o) = ocelot_compat::effective::rate_limiting(route, global) else {
        return Ok(None);
    };
    if o.enable_rate_limiting == Some(false) {
        return Ok(None);
    }
    let period_text = non_empty(&o.period).unwrap_or(DEFAULT_PERIOD).to_string();
    let wait_text = non_empty(&o.wait).unwrap_or(ZERO_WAIT).to_string();
    let period = parse_timespan(&period_text).ok_or_else(|| {
        format!("RateLimitOptions.Period: '{period_text}' is not a period such as 1s")
    })?;
    let wait = parse_timespan(&wait_text).ok_or_else(|| {
        format!("RateLimitOptions.Wait: '{wait_text}' is not a duration such as 500ms")
    })?;
    let limit = o.limit.unwrap_or(0).unsigned_abs();
    let quota = non_empty(&o.quota_message).unwrap_or(DEFAULT_QUOTA_MESSAGE);
    let client_header =
        header_name(non_empty(&o.client_id_header).unwrap_or(DEFAULT_CLIENT_HEADER))?;
    let status = o.status_code.unwrap_or(429);
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| format!("RateLimitOptions.StatusCode: {status} is not an HTTP status"))?;
    Ok(Some(RouteRule {
        route_name: route_name.to_string(),
        route_key: route_key.to_string(),
        client_header,
        whitelist: o.client_whitelist.clone().unwrap_or_default(),
        enable_headers: o.enable_headers.unwrap_or(true),
        status,
        quota_body: dotnet_format(quota, &[&limit.to_string(), &period_text]),
        key_prefix: non_empty(&o.key_prefix)
            .unwrap_or(DEFAULT_KEY_PREFIX)
            .to_string(),
        rule_text: format!("{limit}/{period_text}/w{wait_text}"),
        period_text,
        limit,
        algorithm: Algorithm::Current(current::Window {
            limit,
            period,
            wait,
        }),
    }))
}

fn compile_legacy(
    route: &FileRoute,
    global: &FileGlobalConfiguration,
    route_key: &str,
    route_name: &str,
) -> Result<Option<RouteRule>, String> {
    let Some(o) = ocelot_compat::effective::rate_limiting_legacy(route, global) else {
        return Ok(None);
    };
    let period_text = o.period.clone().unwrap_or_default();
    let period = parse_timespan(&period_text).ok_or_else(|| {
        format!("RateLimitOptions.Period: '{period_text}' is not a period such as 1s")
    })?;
    let ban_seconds = o.period_timespan.unwrap_or(0.0);
    let ban = (ban_seconds * SECOND as f64).round();
    let ban = if ban.is_finite() {
        ban.clamp(0.0, i64::MAX as f64) as i64
    } else {
        0
    };
    // A 24.0 Limit of 0 or less counts nothing (the headers are still sent).
    let limit = u64::try_from(o.limit.unwrap_or(0)).unwrap_or(0);
    let quota_body = match non_empty(&o.quota_message) {
        Some(message) => message.to_string(),
        None => format!("API calls quota exceeded! maximum admitted {limit} per {period_text}."),
    };
    let status = o.status_code.unwrap_or(429);
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| {
            format!("RateLimitOptions.HttpStatusCode: {status} is not an HTTP status")
        })?;
    Ok(Some(RouteRule {
        route_name: route_name.to_string(),
        route_key: route_key.to_string(),
        client_header: header_name(non_empty(&o.client_id_header).unwrap_or(LEGACY_CLIENT_HEADER))?,
        whitelist: o.client_whitelist.clone().unwrap_or_default(),
        enable_headers: o.enable_headers.unwrap_or(true),
        status,
        quota_body,
        key_prefix: non_empty(&o.key_prefix)
            .unwrap_or(LEGACY_KEY_PREFIX)
            .to_string(),
        rule_text: format!("{limit}/{period_text}/w{ban_seconds}s"),
        period_text,
        limit,
        algorithm: Algorithm::Legacy(legacy::Window { limit, period, ban }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocelot_compat::model::from_value;
    use serde_json::json;

    fn config(v: serde_json::Value) -> ocelot_compat::model::FileConfiguration {
        let (c, d) = from_value(&v);
        assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
        c
    }

    fn limiter(legacy: bool) -> RateLimiter {
        let mut s = RateLimitSettings::default();
        if legacy {
            s.ocelot_compat_version = CompatVersion {
                major: 23,
                minor: 0,
            };
        }
        RateLimiter::new(&s).expect("settings")
    }

    fn rule(l: &RateLimiter, v: serde_json::Value, i: usize) -> Option<RouteRule> {
        let c = config(v);
        l.compile(
            &c.routes[i],
            &c.global,
            &format!("route-{i}"),
            c.routes[i].upstream_path_template.as_deref().unwrap_or("?"),
        )
        .expect("compiles")
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    async fn send(l: &RateLimiter, r: &RouteRule, h: &[(&str, &str)]) -> Decision {
        let h = headers(h);
        l.check(
            r,
            &RequestView {
                method: "GET",
                path: "/api/Values",
                headers: &h,
            },
        )
        .await
    }

    fn header<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
        let list = match d {
            Decision::Allow(h) => h,
            Decision::Reject(r) | Decision::Unidentified(r) => &r.headers,
            Decision::Unavailable => return None,
        };
        list.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn versions() {
        let v = |s: &str| {
            serde_yaml::from_str::<RateLimitSettings>(s)
                .expect("yaml")
                .ocelot_compat_version
        };
        assert_eq!(
            v("{}"),
            CompatVersion {
                major: 25,
                minor: 0
            }
        );
        assert!(v("ocelot_compat_version: 23").legacy_rate_limiting());
        assert!(v("ocelot_compat_version: 24.0").legacy_rate_limiting());
        assert!(v("ocelot_compat_version: '23.4.3'").legacy_rate_limiting());
        assert!(!v("ocelot_compat_version: 24.1").legacy_rate_limiting());
        assert!(!v("ocelot_compat_version: 25").legacy_rate_limiting());
        assert!(serde_yaml::from_str::<RateLimitSettings>("ocelot_compat_version: new").is_err());
        assert!(serde_yaml::from_str::<RateLimitSettings>("failure_policy: maybe").is_err());
        assert_eq!(
            serde_yaml::from_str::<RateLimitSettings>("failure_policy: closed")
                .expect("yaml")
                .failure_policy,
            FailurePolicy::Closed
        );
    }

    #[test]
    fn timespans() {
        assert_eq!(parse_timespan("1s"), Some(SECOND));
        assert_eq!(parse_timespan("1S"), Some(SECOND));
        assert_eq!(parse_timespan("500ms"), Some(500_000));
        assert_eq!(parse_timespan("250"), Some(250_000));
        assert_eq!(parse_timespan("1.5m"), Some(90 * SECOND));
        assert_eq!(parse_timespan("2h"), Some(7200 * SECOND));
        assert_eq!(parse_timespan("1d"), Some(86_400 * SECOND));
        assert_eq!(parse_timespan(""), Some(0));
        assert_eq!(parse_timespan("1w"), None);
        assert_eq!(parse_timespan("s"), None);
    }

    #[tokio::test]
    async fn three_pass_then_429_with_ocelot_body_and_headers() {
        let l = limiter(false);
        let r = rule(&l, json!({"Routes": [{"UpstreamPathTemplate": "/api/{x}", "RateLimitOptions": {"Limit": 3, "Period": "1m"}}]}), 0).expect("on");
        assert_eq!(r.rule_text(), "3/1m/w0ms");
        for remaining in ["2", "1", "0"] {
            let d = send(&l, &r, &[("Oc-Client", "alice")]).await;
            assert!(matches!(d, Decision::Allow(_)), "{d:?}");
            assert_eq!(header(&d, "X-RateLimit-Limit"), Some("3"));
            assert_eq!(header(&d, "X-RateLimit-Remaining"), Some(remaining));
            assert!(
                header(&d, "X-RateLimit-Reset").is_some_and(|v| v.ends_with('Z') && v.len() == 28),
                "{d:?}"
            );
        }
        let d = send(&l, &r, &[("oc-client", "alice")]).await;
        let Decision::Reject(rej) = &d else {
            panic!("{d:?}")
        };
        assert_eq!(rej.status, 429);
        assert_eq!(
            rej.body,
            "API calls quota exceeded! Maximum admitted 3 per 1m."
        );
        let retry: f64 = header(&d, "Retry-After")
            .expect("Retry-After")
            .parse()
            .expect("number");
        assert!(retry > 59.0 && retry <= 60.0, "{retry}");
        assert_eq!(
            header(&d, "X-RateLimit-Limit"),
            None,
            "no X-RateLimit on blocked responses"
        );
        // Another client has its own counter.
        assert!(matches!(
            send(&l, &r, &[("Oc-Client", "bob")]).await,
            Decision::Allow(_)
        ));
    }

    #[tokio::test]
    async fn unidentified_clients_get_503_and_whitelisted_ones_pass() {
        let l = limiter(false);
        let v = json!({"Routes": [{"UpstreamPathTemplate": "/ClientRateLimit", "RateLimitOptions": {"Limit": 3, "Period": "1s", "PeriodTimespan": 1, "ClientWhitelist": ["vip"]}}]});
        let r = rule(&l, v, 0).expect("on");
        let d = send(&l, &r, &[("bla-bla-header", "spy")]).await;
        assert_eq!(
            d,
            Decision::Unidentified(Rejection {
                status: 503,
                headers: vec![("Retry-After", "-1".to_string())],
                body: "Rate limiting client could not be identified for the route '/ClientRateLimit' due to a missing or unknown client ID header required by rule '3/1s/w1s'!".into(),
            })
        );
        assert!(matches!(
            send(&l, &r, &[("Oc-Client", "")]).await,
            Decision::Unidentified(Rejection { status: 503, .. })
        ));
        for _ in 0..10 {
            assert_eq!(
                send(&l, &r, &[("Oc-Client", "vip")]).await,
                Decision::Allow(Vec::new())
            );
        }
    }

    #[tokio::test]
    async fn headers_can_be_disabled_and_messages_customised() {
        let l = limiter(false);
        let v = json!({"Routes": [{"RateLimitOptions": {"Limit": 1, "Period": "10s", "EnableHeaders": false, "StatusCode": 418, "QuotaMessage": "{0} per {1}, calm down", "ClientIdHeader": "X-Api-Key"}}]});
        let r = rule(&l, v, 0).expect("on");
        assert_eq!(
            send(&l, &r, &[("X-Api-Key", "k")]).await,
            Decision::Allow(Vec::new())
        );
        let d = send(&l, &r, &[("X-Api-Key", "k")]).await;
        assert_eq!(
            d,
            Decision::Reject(Rejection {
                status: 418,
                headers: Vec::new(),
                body: "1 per 10s, calm down".into()
            })
        );
    }

    #[test]
    fn global_options_and_route_keys() {
        let l = limiter(false);
        let v = json!({
            "Routes": [
                {"UpstreamPathTemplate": "/a", "Key": "R2"},
                {"UpstreamPathTemplate": "/b"},
                {"UpstreamPathTemplate": "/c", "Key": "R2", "RateLimitOptions": {"Limit": 9}},
                {"UpstreamPathTemplate": "/d", "Key": "R2", "RateLimitOptions": {"EnableRateLimiting": false}},
            ],
            "GlobalConfiguration": {"RateLimitOptions": {"RouteKeys": ["R2"], "Limit": 3, "Period": "1s", "Wait": "500ms", "QuotaMessage": "Exceeding!", "ClientIdHeader": "Who"}}
        });
        let a = rule(&l, v.clone(), 0).expect("global applies");
        assert_eq!(
            (
                a.rule_text(),
                a.quota_body.as_str(),
                a.client_header.as_str()
            ),
            ("3/1s/w500ms", "Exceeding!", "who")
        );
        assert!(rule(&l, v.clone(), 1).is_none(), "not in the group");
        let c = rule(&l, v.clone(), 2).expect("merged");
        assert_eq!(c.rule_text(), "9/1s/w500ms");
        assert!(rule(&l, v, 3).is_none(), "route switched it off");
        let off = json!({"Routes": [{"RateLimitOptions": {"Limit": 1}}], "GlobalConfiguration": {"RateLimitOptions": {"EnableRateLimiting": false}}});
        assert!(rule(&l, off, 0).is_none(), "global switched it off");
    }

    #[tokio::test]
    async fn legacy_behaviour() {
        let l = limiter(true);
        let v = json!({
            "Routes": [
                {"UpstreamPathTemplate": "/api/{x}", "RateLimitOptions": {"EnableRateLimiting": true, "Period": "1m", "PeriodTimespan": 30, "Limit": 2}},
                {"UpstreamPathTemplate": "/off", "RateLimitOptions": {"Period": "1s", "Limit": 1}},
            ],
            "GlobalConfiguration": {"RateLimitOptions": {"HttpStatusCode": 418}}
        });
        assert!(
            rule(&l, v.clone(), 1).is_none(),
            "24.0: EnableRateLimiting defaults to false"
        );
        let r = rule(&l, v, 0).expect("on");
        // No ClientId header: everyone shares the "client" bucket, no 503.
        let d = send(&l, &r, &[]).await;
        assert_eq!(header(&d, "X-Rate-Limit-Limit"), Some("1m"));
        assert_eq!(header(&d, "X-Rate-Limit-Remaining"), Some("1"));
        assert!(matches!(
            send(&l, &r, &[("Oc-Client", "ignored")]).await,
            Decision::Allow(_)
        ));
        let d = send(&l, &r, &[]).await;
        let Decision::Reject(rej) = &d else {
            panic!("{d:?}")
        };
        assert_eq!(
            (rej.status, rej.body.as_str()),
            (418, "API calls quota exceeded! maximum admitted 2 per 1m.")
        );
        let retry: f64 = header(&d, "Retry-After")
            .expect("retry")
            .parse()
            .expect("number");
        assert!(retry > 29.0 && retry <= 30.0, "{retry}");
        // Its own bucket for a ClientId.
        assert!(matches!(
            send(&l, &r, &[("ClientId", "alice")]).await,
            Decision::Allow(_)
        ));
    }

    #[tokio::test]
    async fn legacy_zero_limit_only_sends_headers() {
        let l = limiter(true);
        let v = json!({"Routes": [{"RateLimitOptions": {"EnableRateLimiting": true, "Period": "1s", "Limit": 0}}]});
        let r = rule(&l, v, 0).expect("on");
        for _ in 0..3 {
            let d = send(&l, &r, &[("ClientId", "a")]).await;
            assert_eq!(header(&d, "X-Rate-Limit-Remaining"), Some("0"), "{d:?}");
        }
    }

    #[test]
    fn bad_rules_are_errors() {
        let l = limiter(false);
        let c = config(
            json!({"Routes": [{"RateLimitOptions": {"Limit": 1, "ClientIdHeader": "bad header"}}]}),
        );
        assert!(l.compile(&c.routes[0], &c.global, "k", "n").is_err());
    }

    #[test]
    fn redis_unavailable_applies_the_failure_policy() {
        for (policy, open) in [(FailurePolicy::Open, true), (FailurePolicy::Closed, false)] {
            let s = RateLimitSettings {
                redis_url: Some("redis://127.0.0.1:6379".into()),
                failure_policy: policy,
                ..RateLimitSettings::default()
            };
            let l = RateLimiter::new(&s).expect("settings");
            let r = rule(
                &l,
                json!({"Routes": [{"RateLimitOptions": {"Limit": 1}}]}),
                0,
            )
            .expect("on");
            let d = l.unavailable(&r);
            if open {
                assert_eq!(
                    d,
                    Decision::Allow(Vec::new()),
                    "served, uncounted, no headers"
                );
            } else {
                assert_eq!(d, Decision::Unavailable);
            }
        }
    }
}
