//! Ocelot 25's built-in quality of service (`QoSOptions`): a circuit breaker
//! per route and a per-request timeout (`src/QualityOfService/
//! CircuitBreakerDelegatingHandler.cs`, `src/Infrastructure/DesignPatterns/
//! CircuitBreaker.cs`).
//!
//! The breaker is a pure state machine over an injectable [`Clock`]; the
//! proxy asks it for a [`Permit`] before calling the downstream service and
//! reports the outcome through that permit. Breakers live in a
//! [`BreakerStore`] keyed by route identity and options, so a reload that
//! leaves a route unchanged keeps its breaker (and its open circuit).

use ocelot_compat::model::FileQoSOptions;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub(crate) struct QosMetrics {
    /// Times a circuit opened (closed or half-open → open).
    pub(crate) circuits_opened: AtomicU64,
}

static METRICS: QosMetrics = QosMetrics {
    circuits_opened: AtomicU64::new(0),
};

/// Exports the QoS counters (breaker rejections and QoS timeouts are
/// counted per route as refusals).
pub(crate) fn export_metrics() {
    crate::metrics::export_counter(
        "gateway_qos_circuits_opened_total",
        "Times a circuit breaker opened",
        &METRICS.circuits_opened,
    );
}

// Ocelot's bounds and fall-back defaults (CircuitBreakerDelegatingHandler).
const LOW_BREAK_DURATION_MS: i64 = 500;
const DEFAULT_BREAK_DURATION_MS: i64 = 5_000;
const LOW_MINIMUM_THROUGHPUT: i64 = 2;
const DEFAULT_MINIMUM_THROUGHPUT: i64 = 100;
const DEFAULT_FAILURE_RATIO: f64 = 0.5;
const LOW_SAMPLING_DURATION_MS: i64 = 500;
const DEFAULT_SAMPLING_DURATION_MS: i64 = 10_000;
const LOW_TIMEOUT_MS: i64 = 10;
const DEFAULT_TIMEOUT_MS: i64 = 30_000;
const HIGH_TIMEOUT_MS: i64 = 86_400_000;

/// How the breaker decides to open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BreakerMode {
    /// Open after `minimum_throughput` consecutive failures.
    Count,
    /// Open when, within the last `sampling`, at least `minimum_throughput`
    /// requests were seen and the failed share is at least `ratio`.
    Ratio { ratio: f64, sampling: Duration },
}

/// A route's breaker settings with Ocelot's fall-backs applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BreakerConfig {
    pub(crate) mode: BreakerMode,
    pub(crate) minimum_throughput: u32,
    pub(crate) break_duration: Duration,
}

fn ms(value: i64) -> Duration {
    Duration::from_millis(value.max(0) as u64)
}

/// The QoS part of a compiled route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct QosPolicy {
    pub(crate) breaker: BreakerConfig,
    /// The QoS `Timeout` (already defaulted when out of range), if any.
    pub(crate) timeout: Option<Duration>,
    /// The raw `Timeout` value, which Ocelot compares with the route timeout.
    raw_timeout_ms: Option<i64>,
}

impl QosPolicy {
    /// `None` unless QoS is "on": `MinimumThroughput`, `Timeout` or
    /// `FailureRatio` positive (Ocelot's `QoSOptions.UseQos`).
    pub(crate) fn from_options(o: &FileQoSOptions) -> Option<QosPolicy> {
        let on = o.minimum_throughput.is_some_and(|v| v > 0)
            || o.timeout.is_some_and(|v| v > 0)
            || o.failure_ratio.is_some_and(|v| v > 0.0);
        if !on {
            return None;
        }
        let break_ms = o
            .break_duration
            .filter(|v| *v > LOW_BREAK_DURATION_MS)
            .unwrap_or(DEFAULT_BREAK_DURATION_MS);
        let minimum = o
            .minimum_throughput
            .filter(|v| *v >= LOW_MINIMUM_THROUGHPUT)
            .unwrap_or(DEFAULT_MINIMUM_THROUGHPUT);
        let mode = match o.failure_ratio {
            Some(ratio) if ratio > 0.0 => BreakerMode::Ratio {
                ratio: if ratio <= 1.0 {
                    ratio
                } else {
                    DEFAULT_FAILURE_RATIO
                },
                sampling: ms(o
                    .sampling_duration
                    .filter(|v| *v > LOW_SAMPLING_DURATION_MS)
                    .unwrap_or(DEFAULT_SAMPLING_DURATION_MS)),
            },
            _ => BreakerMode::Count,
        };
        let timeout = o.timeout.filter(|v| *v > 0).map(|v| {
            if v > LOW_TIMEOUT_MS && v < HIGH_TIMEOUT_MS {
                v
            } else {
                DEFAULT_TIMEOUT_MS
            }
        });
        Some(QosPolicy {
            breaker: BreakerConfig {
                mode,
                minimum_throughput: u32::try_from(minimum).unwrap_or(u32::MAX),
                break_duration: ms(break_ms),
            },
            timeout: timeout.map(ms),
            raw_timeout_ms: o.timeout.filter(|v| *v > 0),
        })
    }

    /// The route timeout Ocelot really uses: when QoS has a `Timeout` and the
    /// route timeout is not above it, the route timeout becomes twice the
    /// QoS timeout (`MessageInvokerPool.EnsureRouteTimeoutIsGreaterThanQosOne`).
    pub(crate) fn route_timeout(&self, route_timeout: Duration) -> Duration {
        match self.raw_timeout_ms {
            Some(raw) if route_timeout.as_millis() <= raw as u128 => {
                log::warn!(
                    "QoS Timeout ({raw} ms) is not below the route timeout ({} ms); the route timeout becomes {} ms, as in Ocelot",
                    route_timeout.as_millis(),
                    2 * raw
                );
                ms(raw.saturating_mul(2))
            }
            _ => route_timeout,
        }
    }

    /// The timeout of the downstream call: the QoS `Timeout` when it is the
    /// shorter one, else the route timeout as Ocelot adjusts it.
    pub(crate) fn downstream_timeout(&self, route_timeout: Duration) -> Duration {
        let route_timeout = self.route_timeout(route_timeout);
        self.timeout.map_or(route_timeout, |t| t.min(route_timeout))
    }

    /// Whether a timeout after `elapsed`-bounded waiting is the QoS one: it is
    /// whenever the QoS timeout is the shorter of the two.
    pub(crate) fn timeout_is_qos(&self, route_timeout: Duration) -> bool {
        self.timeout.is_some_and(|t| t <= route_timeout)
    }
}

/// A route's QoS: its policy and its circuit breaker (shared by every
/// snapshot that has the same route).
pub(crate) struct RouteQos {
    pub(crate) policy: QosPolicy,
    pub(crate) breaker: Arc<CircuitBreaker>,
}

/// Which downstream statuses the breaker counts as failures: 500–508.
pub(crate) fn is_failure_status(status: u16) -> bool {
    (500..=508).contains(&status)
}

/// Time source, injectable so the state machine is tested without sleeping.
pub(crate) trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Breaker state, as Ocelot's `CircuitState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
    failures: u32,
    window: VecDeque<(Instant, bool)>,
    window_failures: u32,
}

/// One route's circuit breaker.
pub(crate) struct CircuitBreaker {
    config: BreakerConfig,
    name: String,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

/// What a granted request is: a normal one, or the single half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PermitKind {
    Normal,
    Probe,
}

impl CircuitBreaker {
    /// A closed breaker; `name` is how logs call the route.
    pub(crate) fn new(
        config: BreakerConfig,
        name: impl Into<String>,
        clock: Arc<dyn Clock>,
    ) -> CircuitBreaker {
        CircuitBreaker {
            config,
            name: name.into(),
            clock,
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                opened_at: None,
                probe_in_flight: false,
                failures: 0,
                window: VecDeque::new(),
                window_failures: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is always consistent between statements, so a panic
        // elsewhere while holding the lock leaves nothing half-done.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn maybe_half_open(&self, inner: &mut Inner, now: Instant) {
        if inner.state == CircuitState::Open
            && inner
                .opened_at
                .is_none_or(|at| now.saturating_duration_since(at) >= self.config.break_duration)
        {
            inner.state = CircuitState::HalfOpen;
            inner.probe_in_flight = false;
            log::info!("circuit breaker for route {} is half-open", self.name);
        }
    }

    /// The current state (an open circuit whose break is over reads half-open).
    pub(crate) fn state(&self) -> CircuitState {
        let mut inner = self.lock();
        self.maybe_half_open(&mut inner, self.clock.now());
        inner.state
    }

    /// Ocelot's `CanExecute`: always when closed, never when open, and once
    /// (the probe) when half-open until that probe reports back.
    pub(crate) fn try_acquire(&self) -> Option<PermitKind> {
        let mut inner = self.lock();
        self.maybe_half_open(&mut inner, self.clock.now());
        match inner.state {
            CircuitState::Closed => Some(PermitKind::Normal),
            CircuitState::HalfOpen if !inner.probe_in_flight => {
                inner.probe_in_flight = true;
                Some(PermitKind::Probe)
            }
            _ => None,
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        let was = inner.state;
        inner.state = CircuitState::Open;
        inner.opened_at = Some(now);
        METRICS.circuits_opened.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "circuit breaker for route {} is open for {} ms (was {:?})",
            self.name,
            self.config.break_duration.as_millis(),
            was
        );
    }

    fn purge(&self, inner: &mut Inner, now: Instant, sampling: Duration) {
        while let Some((at, failed)) = inner.window.front().copied() {
            if now.saturating_duration_since(at) <= sampling {
                break;
            }
            inner.window.pop_front();
            if failed {
                inner.window_failures = inner.window_failures.saturating_sub(1);
            }
        }
    }

    /// Ocelot's `RecordSuccess`.
    pub(crate) fn record_success(&self) {
        let now = self.clock.now();
        let mut inner = self.lock();
        match self.config.mode {
            BreakerMode::Count => {
                if inner.state != CircuitState::Closed {
                    log::info!("circuit breaker for route {} is closed", self.name);
                }
                inner.failures = 0;
                inner.probe_in_flight = false;
                inner.state = CircuitState::Closed;
            }
            BreakerMode::Ratio { sampling, .. } => {
                if inner.state == CircuitState::HalfOpen {
                    log::info!("circuit breaker for route {} is closed", self.name);
                    inner.state = CircuitState::Closed;
                    inner.probe_in_flight = false;
                    inner.window.clear();
                    inner.window_failures = 0;
                } else {
                    self.purge(&mut inner, now, sampling);
                    inner.window.push_back((now, false));
                }
            }
        }
    }

    /// Ocelot's `RecordFailure`.
    pub(crate) fn record_failure(&self) {
        let now = self.clock.now();
        let mut inner = self.lock();
        let minimum = self.config.minimum_throughput;
        if minimum == 0 {
            return;
        }
        match self.config.mode {
            BreakerMode::Count => {
                inner.failures = inner.failures.saturating_add(1);
                if inner.state == CircuitState::HalfOpen
                    || (inner.state == CircuitState::Closed && inner.failures >= minimum)
                {
                    self.open(&mut inner, now);
                }
            }
            BreakerMode::Ratio { ratio, sampling } => {
                self.purge(&mut inner, now, sampling);
                inner.window.push_back((now, true));
                inner.window_failures = inner.window_failures.saturating_add(1);
                if inner.state == CircuitState::HalfOpen {
                    self.open(&mut inner, now);
                    return;
                }
                let total = inner.window.len() as u32;
                if inner.state == CircuitState::Closed
                    && total >= minimum
                    && f64::from(inner.window_failures) / f64::from(total) >= ratio
                {
                    self.open(&mut inner, now);
                }
            }
        }
    }

    /// A probe that ended without an outcome (the client went away): let the
    /// next request probe instead of leaving the circuit stuck half-open.
    fn release_probe(&self) {
        let mut inner = self.lock();
        if inner.state == CircuitState::HalfOpen {
            inner.probe_in_flight = false;
        }
    }
}

/// Permission to call the downstream service once. Report how it went with
/// [`Permit::success`] or [`Permit::failure`]; dropping it unreported (client
/// cancelled) records nothing, as Ocelot ignores cancellations.
pub(crate) struct Permit {
    breaker: Arc<CircuitBreaker>,
    kind: PermitKind,
    done: bool,
}

impl Permit {
    /// Asks `breaker` for a permit; `None` means the circuit is open.
    pub(crate) fn acquire(breaker: &Arc<CircuitBreaker>) -> Option<Permit> {
        breaker.try_acquire().map(|kind| Permit {
            breaker: breaker.clone(),
            kind,
            done: false,
        })
    }

    #[cfg(test)]
    pub(crate) fn kind(&self) -> PermitKind {
        self.kind
    }

    /// Records the downstream status: 500–508 are failures, the rest success.
    pub(crate) fn status(self, status: u16) {
        if is_failure_status(status) {
            self.failure();
        } else {
            self.success();
        }
    }

    pub(crate) fn success(mut self) {
        self.done = true;
        self.breaker.record_success();
    }

    pub(crate) fn failure(mut self) {
        self.done = true;
        self.breaker.record_failure();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.kind == PermitKind::Probe {
            self.breaker.release_probe();
        }
    }
}

/// Breakers by route identity, outliving configuration snapshots. Entries
/// are weak: a breaker lives as long as some snapshot's route holds it, so a
/// reload that keeps a route (same identity and options) gets the same
/// breaker back, and removed routes free theirs.
pub(crate) struct BreakerStore {
    clock: Arc<dyn Clock>,
    breakers: Mutex<HashMap<String, Weak<CircuitBreaker>>>,
}

impl Default for BreakerStore {
    fn default() -> Self {
        BreakerStore::with_clock(Arc::new(SystemClock))
    }
}

impl BreakerStore {
    pub(crate) fn with_clock(clock: Arc<dyn Clock>) -> BreakerStore {
        BreakerStore {
            clock,
            breakers: Mutex::new(HashMap::new()),
        }
    }

    /// The breaker for route `identity` with `config`, reused when one is alive.
    pub(crate) fn breaker(
        &self,
        identity: &str,
        name: &str,
        config: BreakerConfig,
    ) -> Arc<CircuitBreaker> {
        // Options are part of the key: changed QoS options start a fresh breaker.
        let key = format!("{identity}\u{0}{config:?}");
        let mut map = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        map.retain(|_, weak| weak.strong_count() > 0);
        let breaker = Arc::new(CircuitBreaker::new(config, name, self.clock.clone()));
        map.insert(key, Arc::downgrade(&breaker));
        breaker
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocelot_compat::model::from_value;
    use serde_json::json;

    /// A clock the test moves by hand.
    struct ManualClock {
        base: Instant,
        offset: Mutex<Duration>,
    }

    impl ManualClock {
        fn new() -> Arc<ManualClock> {
            Arc::new(ManualClock {
                base: Instant::now(),
                offset: Mutex::new(Duration::ZERO),
            })
        }
        fn advance(&self, by: Duration) {
            *self.offset.lock().expect("clock") += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.base + *self.offset.lock().expect("clock")
        }
    }

    fn policy(v: serde_json::Value) -> Option<QosPolicy> {
        let (c, d) = from_value(&json!({"Routes": [{"QoSOptions": v}]}));
        assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
        QosPolicy::from_options(&ocelot_compat::effective::qos(&c.routes[0], &c.global))
    }

    fn count_breaker(min: u32, break_ms: u64, clock: Arc<ManualClock>) -> Arc<CircuitBreaker> {
        let config = BreakerConfig {
            mode: BreakerMode::Count,
            minimum_throughput: min,
            break_duration: Duration::from_millis(break_ms),
        };
        Arc::new(CircuitBreaker::new(config, "/test", clock))
    }

    #[test]
    fn qos_is_on_only_with_a_positive_trigger() {
        assert_eq!(policy(json!({})), None);
        assert_eq!(
            policy(json!({"BreakDuration": 1000, "SamplingDuration": 1000})),
            None
        );
        assert_eq!(policy(json!({"MinimumThroughput": 0, "Timeout": 0})), None);
        assert!(policy(json!({"MinimumThroughput": 3})).is_some());
        assert!(policy(json!({"Timeout": 100})).is_some());
        assert!(policy(json!({"FailureRatio": 0.3})).is_some());
    }

    #[test]
    fn out_of_range_values_fall_back_like_ocelot() {
        let p = policy(json!({"MinimumThroughput": 1, "BreakDuration": 500, "Timeout": 10}))
            .expect("on");
        assert_eq!(p.breaker.minimum_throughput, 100);
        assert_eq!(p.breaker.break_duration, Duration::from_millis(5000));
        assert_eq!(p.timeout, Some(Duration::from_millis(30_000)));
        let p = policy(json!({"MinimumThroughput": 2, "BreakDuration": 501, "Timeout": 11}))
            .expect("on");
        assert_eq!(p.breaker.minimum_throughput, 2);
        assert_eq!(p.breaker.break_duration, Duration::from_millis(501));
        assert_eq!(p.timeout, Some(Duration::from_millis(11)));
        assert_eq!(
            policy(json!({"Timeout": 86_400_000})).expect("on").timeout,
            Some(Duration::from_millis(30_000))
        );
        // Only a timeout: the breaker still runs with 100 / 5 s.
        let p = policy(json!({"Timeout": 500})).expect("on");
        assert_eq!(
            (p.breaker.minimum_throughput, p.breaker.mode),
            (100, BreakerMode::Count)
        );
        let p =
            policy(json!({"FailureRatio": 1.5, "SamplingDuration": 100, "MinimumThroughput": 4}))
                .expect("on");
        assert_eq!(
            p.breaker.mode,
            BreakerMode::Ratio {
                ratio: 0.5,
                sampling: Duration::from_millis(10_000)
            }
        );
    }

    #[test]
    fn legacy_names_win_over_current_ones() {
        let p = policy(json!({"ExceptionsAllowedBeforeBreaking": 3, "MinimumThroughput": 9, "DurationOfBreak": 1000, "BreakDuration": 2000, "TimeoutValue": 700, "Timeout": 800}))
            .expect("on");
        assert_eq!(p.breaker.minimum_throughput, 3);
        assert_eq!(p.breaker.break_duration, Duration::from_millis(1000));
        assert_eq!(p.timeout, Some(Duration::from_millis(700)));
    }

    #[test]
    fn global_options_merge_by_route_keys() {
        let (c, _) = from_value(&json!({
            "Routes": [{"Key": "a"}, {"Key": "b"}, {"Key": "a", "QoSOptions": {"Timeout": 250}}],
            "GlobalConfiguration": {"QoSOptions": {"MinimumThroughput": 4, "Timeout": 900, "RouteKeys": ["a"]}}
        }));
        let p = |i: usize| {
            QosPolicy::from_options(&ocelot_compat::effective::qos(&c.routes[i], &c.global))
        };
        assert_eq!(p(0).expect("global").breaker.minimum_throughput, 4);
        assert_eq!(p(1), None, "not in the group");
        let merged = p(2).expect("merged");
        assert_eq!(
            (merged.breaker.minimum_throughput, merged.timeout),
            (4, Some(Duration::from_millis(250)))
        );
    }

    #[test]
    fn route_timeout_is_doubled_when_not_above_the_qos_one() {
        let p = policy(json!({"Timeout": 3000})).expect("on");
        assert_eq!(
            p.route_timeout(Duration::from_secs(90)),
            Duration::from_secs(90)
        );
        assert_eq!(
            p.route_timeout(Duration::from_secs(3)),
            Duration::from_secs(6)
        );
        assert_eq!(
            p.route_timeout(Duration::from_secs(2)),
            Duration::from_secs(6)
        );
        assert!(p.timeout_is_qos(Duration::from_secs(6)));
        // An out-of-range QoS timeout defaults to 30 s and a shorter route timeout fires first.
        let p = policy(json!({"Timeout": 5})).expect("on");
        assert_eq!(
            p.route_timeout(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert!(!p.timeout_is_qos(Duration::from_secs(5)));
    }

    #[test]
    fn failure_statuses() {
        for s in 500..=508 {
            assert!(is_failure_status(s));
        }
        for s in [200, 204, 301, 400, 404, 429, 499, 509, 511] {
            assert!(!is_failure_status(s), "{s}");
        }
    }

    #[test]
    fn count_mode_opens_after_consecutive_failures_and_half_opens() {
        let clock = ManualClock::new();
        let b = count_breaker(3, 1000, clock.clone());
        let fail = |b: &Arc<CircuitBreaker>| Permit::acquire(b).expect("closed").failure();
        fail(&b);
        fail(&b);
        Permit::acquire(&b).expect("closed").success(); // resets the count
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), CircuitState::Closed);
        fail(&b);
        assert_eq!(b.state(), CircuitState::Open);
        assert!(Permit::acquire(&b).is_none());
        clock.advance(Duration::from_millis(999));
        assert!(Permit::acquire(&b).is_none(), "still breaking");
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let probe = Permit::acquire(&b).expect("one probe");
        assert_eq!(probe.kind(), PermitKind::Probe);
        assert!(Permit::acquire(&b).is_none(), "only one probe at a time");
        probe.failure();
        assert_eq!(b.state(), CircuitState::Open, "a failed probe reopens");
        clock.advance(Duration::from_millis(1000));
        Permit::acquire(&b).expect("probe").status(200);
        assert_eq!(b.state(), CircuitState::Closed);
        // 4xx are successes.
        for _ in 0..5 {
            Permit::acquire(&b).expect("closed").status(404);
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let clock = ManualClock::new();
        let b = count_breaker(2, 600, clock.clone());
        Permit::acquire(&b).expect("closed").failure();
        Permit::acquire(&b).expect("closed").failure();
        clock.advance(Duration::from_millis(600));
        drop(Permit::acquire(&b).expect("probe"));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(
            Permit::acquire(&b).expect("another probe").kind(),
            PermitKind::Probe
        );
    }

    #[test]
    fn ratio_mode_needs_throughput_and_ratio_in_the_window() {
        let clock = ManualClock::new();
        let config = BreakerConfig {
            mode: BreakerMode::Ratio {
                ratio: 0.5,
                sampling: Duration::from_millis(1000),
            },
            minimum_throughput: 4,
            break_duration: Duration::from_millis(2000),
        };
        let b = Arc::new(CircuitBreaker::new(config, "/ratio", clock.clone()));
        let ok = |b: &Arc<CircuitBreaker>| Permit::acquire(b).expect("closed").success();
        let fail = |b: &Arc<CircuitBreaker>| Permit::acquire(b).expect("closed").failure();
        fail(&b);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), CircuitState::Closed, "3 < minimum throughput");
        // Old samples leave the window.
        clock.advance(Duration::from_millis(1500));
        ok(&b);
        ok(&b);
        fail(&b);
        assert_eq!(b.state(), CircuitState::Closed, "1/3 and below throughput");
        fail(&b);
        assert_eq!(b.state(), CircuitState::Open, "2/4 >= 0.5");
        clock.advance(Duration::from_millis(2000));
        Permit::acquire(&b).expect("probe").success();
        assert_eq!(b.state(), CircuitState::Closed);
        // The window restarted: three failures are below the throughput again.
        fail(&b);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn store_keeps_breakers_across_snapshots() {
        let store = BreakerStore::default();
        let config = policy(json!({"MinimumThroughput": 2})).expect("on").breaker;
        let a = store.breaker("GET|/a", "/a", config);
        Permit::acquire(&a).expect("closed").failure();
        Permit::acquire(&a).expect("closed").failure();
        let again = store.breaker("GET|/a", "/a", config);
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(again.state(), CircuitState::Open);
        let other = policy(json!({"MinimumThroughput": 3})).expect("on").breaker;
        assert!(
            !Arc::ptr_eq(&a, &store.breaker("GET|/a", "/a", other)),
            "changed options: new breaker"
        );
        drop((a, again));
        assert_eq!(
            store.breaker("GET|/a", "/a", config).state(),
            CircuitState::Closed,
            "nobody held it"
        );
    }
}
