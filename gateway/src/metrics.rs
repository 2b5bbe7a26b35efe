//! Prometheus metrics, served by the admin listener at `/metrics`. Routes are
//! labelled by their upstream template (or `Key`), never by the raw path, so
//! cardinality is bounded by the configuration.

use once_cell::sync::Lazy;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Every metric the gateway exports.
pub struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) requests: IntCounterVec,
    pub(crate) request_duration: HistogramVec,
    pub(crate) upstream_duration: HistogramVec,
    pub(crate) upstream_connect_errors: IntCounterVec,
    pub(crate) rate_limited: IntCounterVec,
    pub(crate) breaker_rejected: IntCounterVec,
    pub(crate) refused: IntCounterVec,
    pub(crate) retries: IntCounterVec,
    pub(crate) retry_budget_exhausted: IntCounterVec,
    pub(crate) breaker_open: IntGaugeVec,
    pub(crate) backend_healthy: IntGaugeVec,
    pub(crate) config_reloads: IntCounterVec,
    pub(crate) settings_reloads: IntCounterVec,
    pub(crate) config_hash: IntGaugeVec,
    pub(crate) config_routes: IntGauge,
    pub(crate) build_info: IntGaugeVec,
    pub(crate) certificate_reloads: IntCounterVec,
    pub(crate) certificate_not_after: IntGaugeVec,
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    // Registration fails only for a duplicate name, a programming error caught by the tests.
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let metric = HistogramVec::new(opts, labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    metric
}

/// The process-wide metrics.
pub static METRICS: Lazy<Metrics> = Lazy::new(|| {
    let registry = Registry::new();
    let config_routes = IntGauge::new(
        "gateway_config_routes",
        "Routes in the loaded configuration",
    )
    .unwrap_or_else(|e| panic!("metric gateway_config_routes: {e}"));
    registry
        .register(Box::new(config_routes.clone()))
        .unwrap_or_else(|e| panic!("metric gateway_config_routes: {e}"));
    #[cfg(target_os = "linux")]
    {
        let process = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = registry.register(Box::new(process)) {
            log::warn!("process metrics unavailable: {e}");
        }
    }
    let m = Metrics {
        requests: counter(
            &registry,
            "gateway_requests_total",
            "Requests by route, method and status class",
            &["route", "method", "status_class"],
        ),
        request_duration: histogram(
            &registry,
            "gateway_request_duration_seconds",
            "Whole request latency",
            &["route"],
        ),
        upstream_duration: histogram(
            &registry,
            "gateway_upstream_duration_seconds",
            "Upstream latency until the response header",
            &["route"],
        ),
        upstream_connect_errors: counter(
            &registry,
            "gateway_upstream_connect_errors_total",
            "Failed upstream connections",
            &["route"],
        ),
        rate_limited: counter(
            &registry,
            "gateway_rate_limited_total",
            "Requests refused by rate limiting",
            &["route"],
        ),
        breaker_rejected: counter(
            &registry,
            "gateway_breaker_rejected_total",
            "Requests refused by an open circuit breaker",
            &["route"],
        ),
        refused: counter(
            &registry,
            "gateway_refused_requests_total",
            "Requests the gateway answered itself instead of sending them on, by route and reason",
            &["route", "reason"],
        ),
        retries: counter(
            &registry,
            "gateway_retries_total",
            "Downstream attempts tried again, by route and the outcome retried",
            &["route", "outcome"],
        ),
        retry_budget_exhausted: counter(
            &registry,
            "gateway_retry_budget_exhausted_total",
            "Retries not made because the route's retry budget was spent",
            &["route"],
        ),
        breaker_open: gauge(
            &registry,
            "gateway_breaker_open",
            "1 while a route's circuit breaker is open",
            &["route"],
        ),
        backend_healthy: gauge(
            &registry,
            "gateway_backend_healthy",
            "1 while a backend passes its health checks",
            &["route", "backend"],
        ),
        config_reloads: counter(
            &registry,
            "gateway_config_reloads_total",
            "Configuration reloads by result",
            &["result"],
        ),
        settings_reloads: counter(
            &registry,
            "gateway_settings_reloads_total",
            "Settings file reloads by result",
            &["result"],
        ),
        config_hash: gauge(
            &registry,
            "gateway_config_hash",
            "1 for the hash of the configuration being served",
            &["hash"],
        ),
        config_routes,
        build_info: gauge(
            &registry,
            "gateway_build_info",
            "Build information",
            &["version"],
        ),
        certificate_reloads: counter(
            &registry,
            "gateway_tls_certificate_reloads_total",
            "Changed certificate files of a TLS listener, by result",
            &["listener", "result"],
        ),
        certificate_not_after: gauge(
            &registry,
            "gateway_tls_certificate_not_after_seconds",
            "Expiry (Unix time) of the certificate a TLS listener serves",
            &["listener"],
        ),
        registry,
    };
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    // Export both outcomes from the start, so the first failure is a visible
    // increase rather than a series appearing out of nowhere.
    for result in ["success", "failure"] {
        m.config_reloads.with_label_values(&[result]);
        m.settings_reloads.with_label_values(&[result]);
    }
    m
});

impl Metrics {
    /// Records the configuration now being served.
    pub fn config_loaded(&self, hash: &str, routes: usize) {
        self.config_hash.reset();
        self.config_hash.with_label_values(&[hash]).set(1);
        self.config_routes.set(routes as i64);
    }
}

/// Counters that features keep as plain atomics (no label, no lock on the
/// request path), copied into their Prometheus counters at each scrape.
static EXPORTED: std::sync::Mutex<Vec<(IntCounter, &'static AtomicU64)>> =
    std::sync::Mutex::new(Vec::new());

/// Exports `source` as the counter `name`. Once per name: a second export
/// of the same name is ignored.
pub(crate) fn export_counter(name: &str, help: &str, source: &'static AtomicU64) {
    let Ok(mut exported) = EXPORTED.lock() else {
        return;
    };
    let Ok(counter) = IntCounter::new(name, help) else {
        log::error!("metric {name}: invalid name");
        return;
    };
    if METRICS.registry.register(Box::new(counter.clone())).is_ok() {
        exported.push((counter, source));
    }
}

/// Gauges kept as plain atomics, likewise copied at each scrape.
static EXPORTED_GAUGES: std::sync::Mutex<Vec<(IntGauge, &'static AtomicU64)>> =
    std::sync::Mutex::new(Vec::new());

/// Exports `source` as the gauge `name` (once per name).
pub(crate) fn export_gauge(name: &str, help: &str, source: &'static AtomicU64) {
    let Ok(mut exported) = EXPORTED_GAUGES.lock() else {
        return;
    };
    let Ok(gauge) = IntGauge::new(name, help) else {
        log::error!("metric {name}: invalid name");
        return;
    };
    if METRICS.registry.register(Box::new(gauge.clone())).is_ok() {
        exported.push((gauge, source));
    }
}

fn sync_exported() {
    if let Ok(gauges) = EXPORTED_GAUGES.lock() {
        for (gauge, source) in gauges.iter() {
            gauge.set(i64::try_from(source.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        }
    }
    if let Ok(exported) = EXPORTED.lock() {
        for (counter, source) in exported.iter() {
            let now = source.load(Ordering::Relaxed);
            let shown = counter.get();
            if now > shown {
                counter.inc_by(now - shown);
            }
        }
    }
}

/// The text exposition format of every metric.
pub(crate) fn render() -> Vec<u8> {
    sync_exported();
    let mut out = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out) {
        log::error!("cannot encode metrics: {e}");
    }
    out
}

/// One route's handles into the labelled request metrics, kept in the
/// compiled route so that a request skips `with_label_values` (label hashing,
/// a lock and a map lookup per metric). Each handle is made on first use, so
/// `/metrics` shows the same series as before; handles point at the same
/// children as `with_label_values`, so counts carry over across reloads.
#[derive(Default)]
pub(crate) struct RouteMetrics {
    request_duration: OnceLock<Histogram>,
    upstream_duration: OnceLock<Histogram>,
    /// `gateway_requests_total` by common method × status class.
    requests: OnceLock<Box<[[OnceLock<IntCounter>; 6]; 7]>>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics").finish_non_exhaustive()
    }
}

const COMMON_METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

impl RouteMetrics {
    /// Records one finished request of the route named `route`.
    pub(crate) fn record(
        &self,
        route: &str,
        method: &str,
        status: u16,
        elapsed: Duration,
        upstream: Option<Duration>,
    ) {
        let class = status_class(status);
        let class_index = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        match COMMON_METHODS.iter().position(|m| *m == method) {
            Some(m) => self.requests.get_or_init(Default::default)[m][class_index]
                .get_or_init(|| METRICS.requests.with_label_values(&[route, method, class]))
                .inc(),
            None => METRICS
                .requests
                .with_label_values(&[route, method, class])
                .inc(),
        }
        self.request_duration
            .get_or_init(|| METRICS.request_duration.with_label_values(&[route]))
            .observe(elapsed.as_secs_f64());
        if let Some(upstream) = upstream {
            self.upstream_duration
                .get_or_init(|| METRICS.upstream_duration.with_label_values(&[route]))
                .observe(upstream.as_secs_f64());
        }
    }
}

/// `2xx`, `4xx`… for a status code; `none` when no response was sent.
pub(crate) fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        METRICS
            .requests
            .with_label_values(&["/a/{id}", "GET", "2xx"])
            .inc();
        METRICS.config_loaded("abc", 3);
        let text = String::from_utf8(render()).expect("utf8");
        assert!(
            text.contains(
                "gateway_requests_total{method=\"GET\",route=\"/a/{id}\",status_class=\"2xx\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("gateway_config_hash{hash=\"abc\"} 1"),
            "{text}"
        );
        assert!(text.contains("gateway_build_info"), "{text}");
    }
}
