//! Backend health, beyond Ocelot (its users ask for it in issues #782, #1041,
//! #1071, #1114):
//!
//! * **Active** checks from `pingora-load-balancing` (`HttpHealthCheck`,
//!   `TcpHealthCheck`), configured per downstream service (`host:port` as
//!   written in `DownstreamHostAndPorts`) in the gateway settings and off
//!   unless configured, so Ocelot behaviour is unchanged by default. All
//!   route pools share one `HealthRegistry`, so a backend used by several
//!   routes is probed once, and its health survives configuration reloads.
//! * **Passive**: a backend that refused or timed out a connection is skipped
//!   for a short time ([`PassiveHealth`]); the proxy retries a request that
//!   was never sent once on another backend.

use crate::balancing::BackendMeta;
use async_trait::async_trait;
use pingora_core::connectors::http::Connector as HttpConnector;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::{Backend, HealthRegistry};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub(crate) struct HealthMetrics {
    /// Backends that active checks turned unhealthy.
    pub(crate) became_unhealthy: AtomicU64,
    /// Backends that active checks turned healthy again.
    pub(crate) became_healthy: AtomicU64,
    /// Connect failures that took a backend out passively.
    pub(crate) passive_marks: AtomicU64,
    /// Requests retried on another backend after a connect failure.
    pub(crate) retries: AtomicU64,
}

static METRICS: HealthMetrics = HealthMetrics {
    became_unhealthy: AtomicU64::new(0),
    became_healthy: AtomicU64::new(0),
    passive_marks: AtomicU64::new(0),
    retries: AtomicU64::new(0),
};

/// The process-wide health counters.
#[cfg(test)]
fn metrics() -> &'static HealthMetrics {
    &METRICS
}

/// A request retried on another backend after a connect failure.
pub(crate) fn count_retry() {
    METRICS.retries.fetch_add(1, Ordering::Relaxed);
}

/// Exports the health counters (requests refused because every backend was
/// down are counted per route as refusals).
pub(crate) fn export_metrics() {
    use crate::metrics::export_counter;
    export_counter(
        "gateway_health_became_unhealthy_total",
        "Backends that active health checks took out",
        &METRICS.became_unhealthy,
    );
    export_counter(
        "gateway_health_became_healthy_total",
        "Backends that active health checks brought back",
        &METRICS.became_healthy,
    );
    export_counter(
        "gateway_health_passive_marks_total",
        "Connection failures that took a backend out for a while (passive health)",
        &METRICS.passive_marks,
    );
    export_counter(
        "gateway_health_retries_total",
        "Requests retried on another backend after a connection failure",
        &METRICS.retries,
    );
}

/// Kind of active check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CheckKind {
    /// `GET path`, healthy when the status is one of `expected_status`.
    #[default]
    Http,
    /// Healthy when a TCP connection (TLS too with `tls: true`) opens.
    Tcp,
}

/// One status or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(crate) enum StatusList {
    One(u16),
    Many(Vec<u16>),
}

impl Default for StatusList {
    fn default() -> Self {
        StatusList::One(200)
    }
}

impl StatusList {
    fn to_vec(&self) -> Vec<u16> {
        match self {
            StatusList::One(s) => vec![*s],
            StatusList::Many(v) => v.clone(),
        }
    }
}

fn default_path() -> String {
    "/".to_string()
}

fn default_check_timeout_ms() -> u64 {
    1000
}

/// The active check of one downstream service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceCheck {
    #[serde(rename = "type", default)]
    pub(crate) kind: CheckKind,
    /// Path (and query) of the HTTP check.
    #[serde(default = "default_path")]
    pub(crate) path: String,
    /// Status(es) that mean healthy (default 200).
    #[serde(default)]
    pub(crate) expected_status: StatusList,
    /// Connect and response timeout of one check.
    #[serde(default = "default_check_timeout_ms")]
    pub(crate) timeout_ms: u64,
    /// `Host` header of the HTTP check (default: the service's host).
    #[serde(default)]
    pub(crate) host: Option<String>,
    /// Check over TLS (HTTPS, or a TLS handshake for `tcp`).
    #[serde(default)]
    pub(crate) tls: bool,
}

/// The `health_checks` section of the gateway settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HealthCheckSettings {
    /// Time between two active checks of a backend.
    pub(crate) interval_ms: u64,
    /// Consecutive passed checks that bring an unhealthy backend back.
    pub(crate) healthy_threshold: usize,
    /// Consecutive failed checks that take a healthy backend out.
    pub(crate) unhealthy_threshold: usize,
    /// How long a connect failure keeps a backend out of rotation; 0 turns
    /// passive health (and the retry on another backend) off.
    pub(crate) passive_down_ms: u64,
    /// Active checks by downstream service, `host:port` as in `DownstreamHostAndPorts`.
    pub(crate) services: BTreeMap<String, ServiceCheck>,
}

impl Default for HealthCheckSettings {
    fn default() -> Self {
        HealthCheckSettings {
            interval_ms: 2000,
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            passive_down_ms: 5000,
            services: BTreeMap::new(),
        }
    }
}

/// Backends taken out after a connect failure, until their time is up.
#[derive(Debug)]
pub(crate) struct PassiveHealth {
    down_for: Duration,
    /// Entry count, read without the lock: the common case is "nobody is down".
    count: AtomicUsize,
    down: RwLock<HashMap<SocketAddr, Instant>>,
}

impl PassiveHealth {
    pub(crate) fn new(down_for: Duration) -> PassiveHealth {
        PassiveHealth {
            down_for,
            count: AtomicUsize::new(0),
            down: RwLock::new(HashMap::new()),
        }
    }

    /// Whether passive health (and the retry) is on.
    pub(crate) fn enabled(&self) -> bool {
        !self.down_for.is_zero()
    }

    /// Takes `addr` out for the configured time.
    pub(crate) fn mark_down(&self, addr: SocketAddr, now: Instant) {
        if !self.enabled() {
            return;
        }
        let mut down = self.down.write().unwrap_or_else(|p| p.into_inner());
        down.retain(|_, until| *until > now);
        if down.insert(addr, now + self.down_for).is_none() {
            METRICS.passive_marks.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "backend {addr} refused a connection; skipping it for {} ms",
                self.down_for.as_millis()
            );
        }
        self.count.store(down.len(), Ordering::Relaxed);
    }

    /// Whether `addr` is out now; reads the clock only when some backend is
    /// marked, which on a healthy gateway is never.
    pub(crate) fn is_down_now(&self, addr: &SocketAddr) -> bool {
        self.count.load(Ordering::Relaxed) != 0 && self.is_down(addr, Instant::now())
    }

    /// Whether `addr` is still out at `now`.
    pub(crate) fn is_down(&self, addr: &SocketAddr, now: Instant) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let down = self.down.read().unwrap_or_else(|p| p.into_inner());
        down.get(addr).is_some_and(|until| *until > now)
    }
}

/// Dispatches the registry's checks to the check configured for each
/// backend's service; backends of unconfigured services always pass.
struct ServiceChecks {
    by_service: HashMap<String, Box<dyn HealthCheck + Send + Sync>>,
    healthy_threshold: usize,
    unhealthy_threshold: usize,
}

impl ServiceChecks {
    fn lookup(&self, target: &Backend) -> Option<&(dyn HealthCheck + Send + Sync)> {
        let by_name = target
            .ext
            .get::<BackendMeta>()
            .and_then(|m| self.by_service.get(&*m.authority));
        let by_addr = || {
            target
                .addr
                .as_inet()
                .and_then(|a| self.by_service.get(&a.to_string()))
        };
        by_name.or_else(by_addr).map(|b| b.as_ref())
    }
}

fn describe(target: &Backend) -> String {
    match target.ext.get::<BackendMeta>() {
        Some(meta) => format!("backend {} ({})", meta.authority, target.addr),
        None => format!("backend {}", target.addr),
    }
}

#[async_trait]
impl HealthCheck for ServiceChecks {
    async fn check(&self, target: &Backend) -> Result<()> {
        match self.lookup(target) {
            Some(check) => check.check(target).await,
            None => Ok(()),
        }
    }

    async fn health_status_change(&self, _target: &Backend, healthy: bool) {
        let counter = if healthy {
            &METRICS.became_healthy
        } else {
            &METRICS.became_unhealthy
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn backend_summary(&self, target: &Backend) -> String {
        describe(target)
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy_threshold.max(1)
        } else {
            self.unhealthy_threshold.max(1)
        }
    }
}

fn split_service(service: &str) -> Option<(&str, u16)> {
    let (host, port) = service.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some(())?;
    Some((host, port.parse().ok()?))
}

/// Pingora's checks verify TLS against the system roots unless given a
/// connector: the one for a check over TLS trusts `upstream_ca_file` too, as
/// the proxy does, or a backend signed by a private CA would never be healthy.
fn connector_options(upstream_ca_file: Option<&Path>) -> Option<ConnectorOptions> {
    upstream_ca_file.map(|ca| {
        let mut options = ConnectorOptions::new(0);
        options.ca_file = Some(ca.to_string_lossy().into_owned());
        options
    })
}

fn build_check(
    service: &str,
    c: &ServiceCheck,
    upstream_ca_file: Option<&Path>,
) -> std::result::Result<Box<dyn HealthCheck + Send + Sync>, String> {
    let (host, _) = split_service(service)
        .ok_or_else(|| format!("health_checks.services: '{service}' is not host:port"))?;
    let timeout = Duration::from_millis(c.timeout_ms.max(1));
    let options = if c.tls {
        connector_options(upstream_ca_file)
    } else {
        None
    };
    match c.kind {
        CheckKind::Tcp => {
            let mut check = if c.tls {
                TcpHealthCheck::new_tls(host)
            } else {
                TcpHealthCheck::new()
            };
            check.set_connector(TransportConnector::new(options));
            check.peer_template.options.connection_timeout = Some(timeout);
            Ok(check)
        }
        CheckKind::Http => {
            let host_header = c.host.clone().unwrap_or_else(|| host.to_string());
            let mut check =
                HttpHealthCheck::new_custom(&host_header, c.tls, HttpConnector::new(options));
            if !c.path.starts_with('/') {
                return Err(format!(
                    "health_checks.services.{service}.path: '{}' must start with /",
                    c.path
                ));
            }
            let mut req = RequestHeader::build("GET", c.path.as_bytes(), None)
                .map_err(|e| format!("health_checks.services.{service}.path: '{}': {e}", c.path))?;
            req.append_header("Host", host_header.as_str())
                .map_err(|e| format!("health_checks.services.{service}.host: {e}"))?;
            req.append_header("User-Agent", "gateway-health-check")
                .map_err(|e| format!("health_checks.services.{service}: {e}"))?;
            check.req = req;
            let expected = c.expected_status.to_vec();
            if expected.is_empty() || expected.iter().any(|s| !(100..=599).contains(s)) {
                return Err(format!("health_checks.services.{service}.expected_status: {expected:?} is not a list of HTTP statuses"));
            }
            check.validator = Some(Box::new(move |resp: &ResponseHeader| {
                let status = resp.status.as_u16();
                if expected.contains(&status) {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::CustomCode("unexpected health check status", status),
                        format!("status {status}"),
                    )
                }
            }));
            check.peer_template.options.connection_timeout = Some(timeout);
            check.peer_template.options.total_connection_timeout = Some(timeout);
            check.peer_template.options.read_timeout = Some(timeout);
            check.peer_template.options.write_timeout = Some(timeout);
            Ok(Box::new(check))
        }
    }
}

/// Health state shared by every snapshot: the registry all route pools
/// report their backends to, the active checks, and passive marks.
pub struct HealthState {
    registry: Arc<HealthRegistry>,
    passive: PassiveHealth,
    interval: Duration,
    active: bool,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            registry: Arc::new(HealthRegistry::new()),
            passive: PassiveHealth::new(Duration::from_millis(
                HealthCheckSettings::default().passive_down_ms,
            )),
            interval: Duration::from_millis(HealthCheckSettings::default().interval_ms),
            active: false,
        }
    }
}

impl HealthState {
    /// Compiles the settings; errors name the offending key. Checks over TLS
    /// trust `upstream_ca_file` besides the system roots.
    pub(crate) fn new(
        settings: &HealthCheckSettings,
        upstream_ca_file: Option<&Path>,
    ) -> std::result::Result<HealthState, String> {
        let registry = HealthRegistry::new();
        let active = !settings.services.is_empty();
        if active {
            let mut by_service = HashMap::new();
            for (service, check) in &settings.services {
                by_service.insert(
                    service.clone(),
                    build_check(service, check, upstream_ca_file)?,
                );
            }
            registry.set_health_check(Box::new(ServiceChecks {
                by_service,
                healthy_threshold: settings.healthy_threshold,
                unhealthy_threshold: settings.unhealthy_threshold,
            }));
        }
        if settings.interval_ms == 0 {
            return Err("health_checks.interval_ms: must be greater than 0".into());
        }
        Ok(HealthState {
            registry: Arc::new(registry),
            passive: PassiveHealth::new(Duration::from_millis(settings.passive_down_ms)),
            interval: Duration::from_millis(settings.interval_ms),
            active,
        })
    }

    /// The registry route pools register their backends with.
    pub(crate) fn registry(&self) -> Arc<HealthRegistry> {
        self.registry.clone()
    }

    pub(crate) fn passive(&self) -> &PassiveHealth {
        &self.passive
    }

    #[cfg(test)]
    /// Whether any active check is configured.
    pub(crate) fn active(&self) -> bool {
        self.active
    }

    /// One pass of active checks over every registered backend (used once
    /// before serving, so no request reaches a backend already known dead).
    pub async fn check_now(&self) {
        if self.active {
            self.registry.run_health_check(true).await;
        }
    }
}

/// Runs the active checks every `interval_ms` (a Pingora background service).
pub struct HealthChecker {
    pub health: Arc<HealthState>,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.health.active {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.health.interval) => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = self.health.registry.run_health_check(true) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancing::{BalancerKind, Pool, StickySessions, Target};

    fn settings(yaml: &str) -> HealthCheckSettings {
        serde_yaml::from_str(yaml).expect("yaml")
    }

    #[test]
    fn settings_defaults_and_shapes() {
        let s = settings("{}");
        assert_eq!(s, HealthCheckSettings::default());
        assert!(!HealthState::new(&s, None).expect("ok").active());
        let s = settings(
            "interval_ms: 500\nservices:\n  'orders:80': {path: /healthz, expected_status: [200, 204]}\n  '10.0.0.1:9000': {type: tcp}\n",
        );
        assert_eq!(
            s.services["orders:80"].expected_status.to_vec(),
            vec![200, 204]
        );
        assert_eq!(s.services["10.0.0.1:9000"].kind, CheckKind::Tcp);
        assert_eq!(
            s.services["10.0.0.1:9000"].expected_status.to_vec(),
            vec![200]
        );
        assert!(HealthState::new(&s, None).expect("ok").active());
        assert!(
            serde_yaml::from_str::<HealthCheckSettings>("services: {'a:1': {pth: /}}").is_err(),
            "typo"
        );
    }

    #[test]
    fn invalid_checks_are_errors() {
        for bad in [
            "services: {'nohost': {}}",
            "services: {'a:1': {path: health}}",
            "services: {'a:1': {expected_status: []}}",
            "services: {'a:1': {expected_status: 999}}",
            "interval_ms: 0",
        ] {
            assert!(HealthState::new(&settings(bad), None).is_err(), "{bad}");
        }
    }

    #[test]
    fn passive_marks_expire() {
        let p = PassiveHealth::new(Duration::from_millis(100));
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let now = Instant::now();
        assert!(!p.is_down(&addr, now));
        p.mark_down(addr, now);
        assert!(p.is_down(&addr, now + Duration::from_millis(99)));
        assert!(!p.is_down(&addr, now + Duration::from_millis(100)));
        let off = PassiveHealth::new(Duration::ZERO);
        off.mark_down(addr, now);
        assert!(!off.enabled() && !off.is_down(&addr, now));
    }

    /// A check that fails for one port, without any network.
    struct FailsFor(u16);

    #[async_trait]
    impl HealthCheck for FailsFor {
        async fn check(&self, target: &Backend) -> Result<()> {
            match target.addr.as_inet() {
                Some(a) if a.port() == self.0 => {
                    Error::e_explain(ErrorType::ConnectRefused, "down")
                }
                _ => Ok(()),
            }
        }
        fn health_threshold(&self, _success: bool) -> usize {
            1
        }
    }

    #[tokio::test]
    async fn failing_backends_leave_the_pool_until_they_pass_again() {
        let registry = Arc::new(HealthRegistry::new());
        let mut by_service: HashMap<String, Box<dyn HealthCheck + Send + Sync>> = HashMap::new();
        by_service.insert("10.9.9.9:2".into(), Box::new(FailsFor(2)));
        registry.set_health_check(Box::new(ServiceChecks {
            by_service,
            healthy_threshold: 2,
            unhealthy_threshold: 1,
        }));
        let targets = [1, 2]
            .iter()
            .map(|p| Target {
                host: "10.9.9.9".into(),
                port: *p,
            })
            .collect();
        let pool = Pool::with_health_registry(BalancerKind::RoundRobin, targets, registry.clone());
        pool.refresh().await; // IP literals: no lookup
        let sticky = StickySessions::default();
        registry.run_health_check(false).await;
        for _ in 0..4 {
            let picked = pool
                .select(std::iter::empty(), &sticky)
                .expect("one healthy backend");
            assert_eq!(picked.addr.port(), 1);
        }
        assert!(pool.has_ready(|a| a.port() == 1) && !pool.has_ready(|a| a.port() == 2));
        // The pool sees whatever the shared registry decides, across snapshots.
        let later = Pool::with_health_registry(
            BalancerKind::NoLoadBalancer,
            vec![Target {
                host: "10.9.9.9".into(),
                port: 2,
            }],
            registry,
        );
        later.refresh().await;
        assert!(
            later.select(std::iter::empty(), &sticky).is_none(),
            "still unhealthy"
        );
        assert!(metrics().became_unhealthy.load(Ordering::Relaxed) >= 1);
    }
}
