//! Ocelot's load balancers (`src/LoadBalancer/*`) on `pingora-load-balancing`.
//!
//! Every route owns a [`Pool`]: a Pingora `LoadBalancer` whose backends come
//! from [`HostDiscovery`], which resolves the route's `DownstreamHostAndPorts`
//! off the worker threads and keeps the last good address of a host whose
//! lookup fails. Pingora keeps the backends and their health (`health.rs`);
//! Ocelot's balancers (`NoLoadBalancer`, `RoundRobin`, `LeastConnection`,
//! `CookieStickySessions`) pick among the ready ones.

use async_trait::async_trait;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_limits::inflight::{Guard, Inflight};
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, Backends, HealthRegistry, LoadBalancer};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Which balancer a route asked for (`LoadBalancerOptions.Type`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BalancerKind {
    NoLoadBalancer,
    RoundRobin,
    LeastConnection,
    CookieStickySessions {
        cookie: String,
        expiry: Duration,
    },
    /// Ocelot looks balancers up by exact name and answers 500 when none fits.
    Unknown(String),
}

impl BalancerKind {
    /// From the effective options; defaults as in Ocelot (`NoLoadBalancer`,
    /// sticky cookie `.AspNetCore.Session`, expiry 20 minutes).
    pub(crate) fn from_options(
        kind: Option<&str>,
        key: Option<&str>,
        expiry_ms: Option<i64>,
    ) -> BalancerKind {
        match kind.unwrap_or("") {
            "" | "NoLoadBalancer" => BalancerKind::NoLoadBalancer,
            "RoundRobin" => BalancerKind::RoundRobin,
            "LeastConnection" => BalancerKind::LeastConnection,
            "CookieStickySessions" => BalancerKind::CookieStickySessions {
                cookie: key
                    .filter(|k| !k.is_empty())
                    .unwrap_or(".AspNetCore.Session")
                    .to_string(),
                expiry: Duration::from_millis(
                    expiry_ms.filter(|e| *e > 0).unwrap_or(1_200_000) as u64
                ),
            },
            other => BalancerKind::Unknown(other.to_string()),
        }
    }
}

/// What a backend is besides its address: its place in the route's list (for
/// "the first one" semantics) and the authority to send as `Host` and SNI.
#[derive(Debug, Clone)]
pub(crate) struct BackendMeta {
    pub(crate) index: usize,
    /// Host name (IPv6 in brackets).
    pub(crate) host: Arc<str>,
    /// `host:port`.
    pub(crate) authority: Arc<str>,
    /// `host` is an IP address: no SNI.
    pub(crate) host_is_ip: bool,
    /// `host` and `authority` as header values, made once rather than per
    /// request; `None` when the name cannot be one.
    pub(crate) host_value: Option<http::HeaderValue>,
    pub(crate) authority_value: Option<http::HeaderValue>,
}

impl BackendMeta {
    /// `host` as written in the route or the registry (an IPv6 address with
    /// or without brackets).
    pub(crate) fn new(index: usize, host: &str, port: u16) -> BackendMeta {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let authority = format!("{host}:{port}");
        let value = |s: &str| http::HeaderValue::from_str(s).ok();
        BackendMeta {
            index,
            host_is_ip: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok(),
            host_value: value(&host),
            authority_value: value(&authority),
            authority: authority.into(),
            host: host.into(),
        }
    }
}

/// One `DownstreamHostAndPorts` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// Resolves the route's targets. A failed lookup keeps the last good address,
/// so a DNS hiccup never empties a pool that was working.
pub(crate) struct HostDiscovery {
    targets: Vec<Target>,
    last_good: Mutex<HashMap<usize, SocketAddr>>,
}

impl HostDiscovery {
    pub(crate) fn new(targets: Vec<Target>) -> Self {
        HostDiscovery {
            targets,
            last_good: Mutex::new(HashMap::new()),
        }
    }

    async fn resolve(target: &Target) -> std::io::Result<SocketAddr> {
        if let Ok(ip) = target
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(SocketAddr::new(ip, target.port));
        }
        // tokio runs getaddrinfo on its blocking pool, so no worker thread waits.
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await?
            .collect();
        // Ocelot treats an entry as one service; when a name has several
        // addresses ("localhost" → ::1 and 127.0.0.1) prefer IPv4, which is
        // what services listening on 0.0.0.0 are reachable on.
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
    }
}

#[async_trait]
impl ServiceDiscovery for HostDiscovery {
    async fn discover(&self) -> pingora_error::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut backends = BTreeSet::new();
        for (index, target) in self.targets.iter().enumerate() {
            let resolved = match HostDiscovery::resolve(target).await {
                Ok(addr) => {
                    if let Ok(mut last) = self.last_good.lock() {
                        last.insert(index, addr);
                    }
                    Some(addr)
                }
                Err(e) => {
                    let fallback = self
                        .last_good
                        .lock()
                        .ok()
                        .and_then(|last| last.get(&index).copied());
                    log::warn!(
                        "cannot resolve downstream host {}:{}: {e}{}",
                        target.host,
                        target.port,
                        if fallback.is_some() {
                            "; keeping its last address"
                        } else {
                            ""
                        }
                    );
                    fallback
                }
            };
            if let Some(addr) = resolved {
                let mut backend = Backend {
                    addr: PingoraAddr::Inet(addr),
                    weight: 1,
                    ext: Default::default(),
                };
                backend
                    .ext
                    .insert(BackendMeta::new(index, &target.host, target.port));
                backends.insert(backend);
            }
        }
        Ok((backends, HashMap::new()))
    }
}

/// A chosen backend. Holding it counts as one in-flight request for
/// `LeastConnection`; dropping it ends that.
pub(crate) struct Selected {
    pub(crate) addr: SocketAddr,
    pub(crate) meta: BackendMeta,
    _inflight: Option<Guard>,
}

/// Cookie → backend map for `CookieStickySessions`, shared by every route (and
/// every config reload): routes that use the same cookie name share stickiness,
/// as in Ocelot.
#[derive(Default)]
pub struct StickySessions {
    entries: Mutex<HashMap<String, (SocketAddr, Instant)>>,
}

/// Bounds the sticky map so a flood of distinct cookie values cannot grow memory
/// without limit; past it, new sessions are balanced but not remembered.
const STICKY_CAPACITY: usize = 100_000;

impl StickySessions {
    fn lookup(&self, key: &str, now: Instant) -> Option<SocketAddr> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(addr, _)| *addr)
    }

    fn remember(&self, key: String, addr: SocketAddr, expires: Instant) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= STICKY_CAPACITY && !entries.contains_key(&key) {
            let now = Instant::now();
            entries.retain(|_, (_, exp)| *exp > now);
            if entries.len() >= STICKY_CAPACITY {
                return;
            }
        }
        entries.insert(key, (addr, expires));
    }
}

/// Where a pool fed by service discovery takes its backends from (the
/// `discovery` module implements it), and when they are due again.
pub(crate) trait DiscoveredService: Send + Sync {
    /// The `ServiceDiscovery` to give Pingora's `Backends`.
    fn boxed(self: Arc<Self>) -> Box<dyn ServiceDiscovery + Send + Sync>;
    /// Whether the pool should be rebuilt now.
    fn needs_refresh(&self, now: std::time::Instant) -> bool;
    /// When the next refresh is due, if known.
    fn next_due(&self) -> Option<std::time::Instant>;
}

/// A route's backends and its balancer.
pub struct Pool {
    pub(crate) kind: BalancerKind,
    lb: LoadBalancer<RoundRobin>,
    /// In-flight counts for `LeastConnection`, made on first use: an
    /// `Inflight` is 256 KiB (4 × 8192 counters), too much for every route.
    inflight: OnceLock<Inflight>,
    /// `RoundRobin`'s position: whose turn is next.
    turn: AtomicUsize,
    /// The registry behind the pool when its backends come from service
    /// discovery (`ServiceName`), for the refresher to know when to rebuild.
    discovery: Option<Arc<dyn DiscoveredService>>,
}

impl Pool {
    #[cfg(test)]
    pub(crate) fn new(kind: BalancerKind, targets: Vec<Target>) -> Pool {
        let backends = Backends::new(Box::new(HostDiscovery::new(targets)));
        Pool {
            kind,
            lb: LoadBalancer::from_backends(backends),
            inflight: OnceLock::new(),
            turn: AtomicUsize::new(0),
            discovery: None,
        }
    }

    /// A pool whose backends report to a shared health registry, so active
    /// health checks apply and health outlives configuration snapshots.
    pub(crate) fn with_health_registry(
        kind: BalancerKind,
        targets: Vec<Target>,
        registry: Arc<HealthRegistry>,
    ) -> Pool {
        let backends =
            Backends::new_with_health_registry(Box::new(HostDiscovery::new(targets)), registry);
        Pool {
            kind,
            lb: LoadBalancer::from_backends(backends),
            inflight: OnceLock::new(),
            turn: AtomicUsize::new(0),
            discovery: None,
        }
    }

    /// A pool fed by service discovery instead of `DownstreamHostAndPorts`.
    pub(crate) fn with_discovery(
        kind: BalancerKind,
        discovery: Arc<dyn DiscoveredService>,
        registry: Arc<HealthRegistry>,
    ) -> Pool {
        let backends = Backends::new_with_health_registry(discovery.clone().boxed(), registry);
        Pool {
            kind,
            lb: LoadBalancer::from_backends(backends),
            inflight: OnceLock::new(),
            turn: AtomicUsize::new(0),
            discovery: Some(discovery),
        }
    }

    /// The service discovery behind the pool, if any.
    pub(crate) fn discovery(&self) -> Option<&Arc<dyn DiscoveredService>> {
        self.discovery.as_ref()
    }

    /// Re-runs discovery (DNS) and rebuilds the selector.
    pub(crate) async fn refresh(&self) {
        if let Err(e) = self.lb.update().await {
            log::warn!("refreshing backends failed: {e}");
        }
    }

    /// Every backend with whether it may take requests now (health checks and
    /// passive marks), for the metrics.
    pub(crate) fn backend_health(&self) -> Vec<(String, bool)> {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .map(|b| (b.addr.to_string(), backends.ready(b)))
            .collect()
    }

    pub(crate) fn backend_count(&self) -> usize {
        self.lb.backends().get_backend().len()
    }

    #[cfg(test)]
    /// Picks a backend by the route's balancer, or `None` when no backend is
    /// available. `cookies` is the request's `Cookie` header values.
    pub(crate) fn select<'a>(
        &self,
        cookies: impl Iterator<Item = &'a [u8]>,
        sticky: &StickySessions,
    ) -> Option<Selected> {
        self.select_where(cookies, sticky, |_| true)
    }

    /// Whether some backend is healthy and accepted by `accept`, without
    /// selecting it (no round-robin step, no stickiness recorded).
    pub(crate) fn has_ready(&self, accept: impl Fn(&SocketAddr) -> bool) -> bool {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .any(|b| backends.ready(b) && b.addr.as_inet().is_some_and(&accept))
    }

    /// [`Pool::select`] among the healthy backends `accept` also agrees to
    /// (passive health, a backend a retry must avoid).
    ///
    /// Picks by reference into the pool's current set: cloning a Pingora
    /// `Backend` copies its extensions map, three allocations per request.
    pub(crate) fn select_where<'a>(
        &self,
        cookies: impl Iterator<Item = &'a [u8]>,
        sticky: &StickySessions,
        accept: impl Fn(&SocketAddr) -> bool,
    ) -> Option<Selected> {
        let backends = self.lb.backends();
        let set = backends.get_backend();
        let ok = |b: &Backend| b.addr.as_inet().is_some_and(&accept) && backends.ready(b);
        let backend = match &self.kind {
            BalancerKind::NoLoadBalancer => set
                .iter()
                .filter(|b| ok(b))
                .min_by_key(|b| Pool::index_of(b)),
            BalancerKind::RoundRobin => self.round_robin(&set, ok),
            BalancerKind::LeastConnection => set.iter().filter(|b| ok(b)).min_by_key(|b| {
                let load = b
                    .addr
                    .as_inet()
                    .map_or(0, |addr| self.inflight().incr(*addr, 0).1);
                (load, Pool::index_of(b))
            }),
            BalancerKind::CookieStickySessions { cookie, expiry } => {
                let value = cookie_value(cookies, cookie.as_bytes()).unwrap_or_default();
                // Ocelot keys stickiness by cookie value; clients without the
                // cookie all share the empty value.
                let key = format!("{cookie}:{value}");
                let now = Instant::now();
                let remembered = sticky.lookup(&key, now).and_then(|addr| {
                    set.iter()
                        .find(|b| b.addr.as_inet() == Some(&addr) && ok(b))
                });
                let chosen = remembered.or_else(|| self.round_robin(&set, ok))?;
                if let Some(addr) = chosen.addr.as_inet() {
                    // Sliding expiry: every request renews the session.
                    sticky.remember(key, *addr, now + *expiry);
                }
                Some(chosen)
            }
            BalancerKind::Unknown(_) => None,
        }?;
        self.selected(backend)
    }

    /// Ocelot's `RoundRobin`: the next backend in turn. One not accepted
    /// uses up its turn, as in Pingora's `RoundRobin`, so the others share
    /// its requests evenly rather than the one after it taking them all.
    fn round_robin<'s>(
        &self,
        set: &'s BTreeSet<Backend>,
        ok: impl Fn(&Backend) -> bool,
    ) -> Option<&'s Backend> {
        let n = set.len();
        if n == 0 {
            return None;
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        let (skipped, chosen) = set
            .iter()
            .cycle()
            .skip(start)
            .take(n)
            .enumerate()
            .find(|(_, b)| ok(b))?;
        if skipped > 0 {
            self.turn.fetch_add(skipped, Ordering::Relaxed);
        }
        Some(chosen)
    }

    fn selected(&self, backend: &Backend) -> Option<Selected> {
        let addr = *backend.addr.as_inet()?;
        let meta = backend.ext.get::<BackendMeta>()?.clone();
        let guard = match self.kind {
            BalancerKind::LeastConnection => Some(self.inflight().incr(addr, 1).0),
            _ => None,
        };
        Some(Selected {
            addr,
            meta,
            _inflight: guard,
        })
    }

    fn inflight(&self) -> &Inflight {
        self.inflight.get_or_init(Inflight::new)
    }

    fn index_of(backend: &Backend) -> usize {
        backend
            .ext
            .get::<BackendMeta>()
            .map_or(usize::MAX, |m| m.index)
    }
}

/// The value of cookie `name` in any of the `Cookie` headers.
pub(crate) fn cookie_value<'a>(
    headers: impl Iterator<Item = &'a [u8]>,
    name: &[u8],
) -> Option<String> {
    for header in headers {
        for pair in header.split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            if let Some(rest) = pair.strip_prefix(name) {
                if let Some(value) = rest.strip_prefix(b"=") {
                    return std::str::from_utf8(value).ok().map(str::to_string);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(kind: BalancerKind, ports: &[u16]) -> Pool {
        let targets = ports
            .iter()
            .map(|p| Target {
                host: "127.0.0.1".into(),
                port: *p,
            })
            .collect();
        Pool::new(kind, targets)
    }

    fn pick(p: &Pool, sticky: &StickySessions, cookie: Option<&str>) -> Selected {
        let cookies: Vec<&[u8]> = cookie.map(|c| c.as_bytes()).into_iter().collect();
        p.select(cookies.into_iter(), sticky).expect("a backend")
    }

    #[tokio::test]
    async fn no_load_balancer_takes_the_first_entry() {
        let p = pool(BalancerKind::NoLoadBalancer, &[9003, 9001, 9002]);
        p.refresh().await;
        let s = StickySessions::default();
        for _ in 0..3 {
            assert_eq!(pick(&p, &s, None).addr.port(), 9003);
        }
    }

    #[tokio::test]
    async fn round_robin_rotates() {
        let p = pool(BalancerKind::RoundRobin, &[9001, 9002]);
        p.refresh().await;
        let s = StickySessions::default();
        let ports: Vec<u16> = (0..4).map(|_| pick(&p, &s, None).addr.port()).collect();
        assert_ne!(ports[0], ports[1]);
        assert_eq!(ports[0], ports[2]);
        assert_eq!(ports[1], ports[3]);
    }

    #[tokio::test]
    async fn round_robin_skips_a_refused_backend_and_keeps_its_turns() {
        let p = pool(BalancerKind::RoundRobin, &[9001, 9002, 9003]);
        p.refresh().await;
        let s = StickySessions::default();
        let not_9002 = |a: &SocketAddr| a.port() != 9002;
        let ports: Vec<u16> = (0..6)
            .map(|_| {
                p.select_where(std::iter::empty(), &s, not_9002)
                    .expect("a backend")
                    .addr
                    .port()
            })
            .collect();
        assert!(!ports.contains(&9002), "{ports:?}");
        assert_eq!(ports.iter().filter(|p| **p == 9001).count(), 3, "{ports:?}");
        let none = |_: &SocketAddr| false;
        assert!(p.select_where(std::iter::empty(), &s, none).is_none());
    }

    #[test]
    fn backend_meta_names_the_host_as_host_and_sni_need_it() {
        let m = BackendMeta::new(0, "::1", 8080);
        assert_eq!((&*m.host, &*m.authority), ("[::1]", "[::1]:8080"));
        assert!(m.host_is_ip);
        assert_eq!(m.authority_value.as_ref().expect("value"), "[::1]:8080");
        let m = BackendMeta::new(1, "[::1]", 80);
        assert_eq!(&*m.host, "[::1]");
        let m = BackendMeta::new(2, "orders.svc", 443);
        assert!(!m.host_is_ip);
        assert_eq!(m.host_value.as_ref().expect("value"), "orders.svc");
        assert_eq!(m.authority_value.as_ref().expect("value"), "orders.svc:443");
        let m = BackendMeta::new(3, "bad\nhost", 80);
        assert!(m.host_value.is_none() && m.authority_value.is_none());
    }

    #[tokio::test]
    async fn least_connection_avoids_the_busy_backend() {
        let p = pool(BalancerKind::LeastConnection, &[9001, 9002]);
        p.refresh().await;
        let s = StickySessions::default();
        let first = pick(&p, &s, None);
        assert_eq!(first.addr.port(), 9001);
        let second = pick(&p, &s, None);
        assert_eq!(second.addr.port(), 9002);
        drop(first);
        assert_eq!(pick(&p, &s, None).addr.port(), 9001);
    }

    #[tokio::test]
    async fn sticky_sessions_follow_the_cookie() {
        let kind =
            BalancerKind::from_options(Some("CookieStickySessions"), Some("sid"), Some(60_000));
        let p = pool(kind, &[9001, 9002, 9003]);
        p.refresh().await;
        let s = StickySessions::default();
        let a = pick(&p, &s, Some("x=1; sid=alice")).addr;
        let b = pick(&p, &s, Some("sid=bob")).addr;
        for _ in 0..5 {
            assert_eq!(pick(&p, &s, Some("sid=alice; y=2")).addr, a);
            assert_eq!(pick(&p, &s, Some("sid=bob")).addr, b);
        }
    }

    #[tokio::test]
    async fn unresolvable_hosts_leave_an_empty_pool_not_a_panic() {
        let p = Pool::new(
            BalancerKind::RoundRobin,
            vec![Target {
                host: "no-such-host.invalid".into(),
                port: 80,
            }],
        );
        p.refresh().await;
        assert_eq!(p.backend_count(), 0);
        assert!(p
            .select(std::iter::empty(), &StickySessions::default())
            .is_none());
    }

    #[test]
    fn cookie_parsing() {
        let h: Vec<&[u8]> = vec![b"a=1; session=xyz; b=2"];
        assert_eq!(
            cookie_value(h.into_iter(), b"session").as_deref(),
            Some("xyz")
        );
        let h: Vec<&[u8]> = vec![b"sessionx=1"];
        assert_eq!(cookie_value(h.into_iter(), b"session"), None);
    }
}
