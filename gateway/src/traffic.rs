//! Traffic policy of a route (issue 3): IP security, rate limiting, QoS, and
//! the process-wide state behind them that outlives configuration snapshots
//! (circuit breakers, rate-limit counters, backend health).
//!
//! [`Traffic`] is built once from the gateway settings and installed for the
//! process; [`Traffic::compile`] turns a route's options into a
//! [`TrafficPolicy`] when a snapshot is built, so requests only look things up.

use crate::balancing::{Selected, StickySessions};
use crate::health::{self, HealthCheckSettings, HealthState};
use crate::qos::{self, BreakerStore, CircuitBreaker, Permit, QosPolicy};
use crate::ratelimit::{Decision, RateLimitSettings, RateLimiter, RequestView, RouteRule};
use crate::routing::CompiledRoute;
use crate::security::{self, IpPolicy, TrustedProxies, TrustedProxiesSettings};
use bytes::Bytes;
use http::header;
use ocelot_compat::effective;
use ocelot_compat::model::{FileConfiguration, FileRoute};
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, Session};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The process-wide traffic state.
pub struct Traffic {
    pub breakers: BreakerStore,
    pub limiter: RateLimiter,
    pub health: Arc<HealthState>,
    pub trusted_proxies: TrustedProxies,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            breakers: BreakerStore::default(),
            limiter: RateLimiter::default(),
            health: Arc::new(HealthState::default()),
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

static CURRENT: OnceLock<Arc<Traffic>> = OnceLock::new();

/// A route's compiled traffic policy.
#[derive(Default)]
pub struct TrafficPolicy {
    /// Identity of the route for shared state, as Ocelot's load-balancer key
    /// (`RouteKeyCreator`): same for the same route on every replica and
    /// across reloads.
    pub identity: String,
    /// How Ocelot names the route in messages (`DownstreamRoute.Name()`).
    pub name: String,
    pub security: Option<IpPolicy>,
    pub rate_limit: Option<RouteRule>,
    pub qos: Option<QosPolicy>,
    pub breaker: Option<Arc<CircuitBreaker>>,
    /// Problems Ocelot would silently ignore, as (field, message), for the
    /// configuration's warnings.
    pub warnings: Vec<(String, String)>,
}

impl std::fmt::Debug for TrafficPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficPolicy")
            .field("identity", &self.identity)
            .field("security", &self.security.is_some())
            .field("rate_limit", &self.rate_limit)
            .field("qos", &self.qos)
            .finish()
    }
}

impl TrafficPolicy {
    /// The timeout to put on the downstream call: the QoS `Timeout` when it is
    /// the shorter one, else the route timeout (itself doubled when not above
    /// the QoS one, as in Ocelot).
    pub fn downstream_timeout(&self, route_timeout: Duration) -> Duration {
        match &self.qos {
            Some(q) => {
                let route_timeout = q.route_timeout(route_timeout);
                q.timeout.map_or(route_timeout, |t| t.min(route_timeout))
            }
            None => route_timeout,
        }
    }

    /// Whether a timeout of the downstream call is the QoS one (503 with a
    /// body, counted by the breaker) rather than the route one (503, empty).
    pub fn timeout_is_qos(&self, route_timeout: Duration) -> bool {
        self.qos
            .as_ref()
            .is_some_and(|q| q.timeout_is_qos(q.route_timeout(route_timeout)))
    }
}

/// Ocelot's `RouteKeyCreator.Create` for a static route.
pub fn route_identity(route: &FileRoute, config: &FileConfiguration) -> String {
    let lb = effective::load_balancer(route, &config.global);
    let lb_type = lb.r#type.as_deref().filter(|t| !t.is_empty());
    let lb_key = lb.key.as_deref().filter(|k| !k.is_empty());
    if lb_type.is_some_and(|t| t.eq_ignore_ascii_case("CookieStickySessions")) {
        if let Some(key) = lb_key {
            return format!("CookieStickySessions:{key}");
        }
    }
    let hosts: Vec<String> = route
        .downstream_host_and_ports
        .iter()
        .map(|h| format!("{}:{}", h.host, h.port))
        .collect();
    let or = |v: Option<&str>, default: &'static str| {
        v.filter(|s| !s.is_empty()).unwrap_or(default).to_string()
    };
    [
        route.upstream_http_method.join(","),
        route.upstream_path_template.clone().unwrap_or_default(),
        or(route.upstream_host.as_deref(), "no-host"),
        or(Some(hosts.join(",").as_str()), "no-host-and-port"),
        or(route.service_namespace.as_deref(), "no-svc-ns"),
        or(route.service_name.as_deref(), "no-svc-name"),
        or(lb_type, "no-lb-type"),
        or(lb_key, "no-lb-key"),
    ]
    .join("|")
}

/// Ocelot's `DownstreamRoute.Name()`: the upstream template (else the
/// downstream one), prefixed by `namespace:service:` with service discovery.
pub fn route_name(route: &FileRoute) -> String {
    let path = route
        .upstream_path_template
        .as_deref()
        .filter(|t| !t.is_empty())
        .or(route
            .downstream_path_template
            .as_deref()
            .filter(|t| !t.is_empty()))
        .unwrap_or("?");
    match route.service_name.as_deref().filter(|s| !s.is_empty()) {
        Some(service) => format!(
            "{}:{service}:{path}",
            route.service_namespace.as_deref().unwrap_or("")
        ),
        None => path.to_string(),
    }
}

impl Traffic {
    /// Builds the traffic state from the gateway settings.
    pub fn from_settings(
        rate: &RateLimitSettings,
        health: &HealthCheckSettings,
        trusted: &TrustedProxiesSettings,
        upstream_ca_file: Option<&std::path::Path>,
    ) -> Result<Traffic, String> {
        Ok(Traffic {
            breakers: BreakerStore::default(),
            limiter: RateLimiter::new(rate)?,
            health: Arc::new(HealthState::new(health, upstream_ca_file)?),
            trusted_proxies: TrustedProxies::from_settings(trusted)?,
        })
    }

    /// Makes this the process-wide state (once; later calls keep the first).
    pub fn install(self) -> Arc<Traffic> {
        let installed = CURRENT.get_or_init(|| Arc::new(self));
        installed.clone()
    }

    /// The installed state, or defaults (nothing configured) if none was.
    pub fn current() -> &'static Arc<Traffic> {
        CURRENT.get_or_init(|| Arc::new(Traffic::default()))
    }

    /// Compiles a route's policy.
    pub fn compile(&self, route: &FileRoute, config: &FileConfiguration) -> TrafficPolicy {
        let mut warnings = Vec::new();
        let identity = route_identity(route, config);
        let name = route_name(route);
        let (security, invalid) = IpPolicy::for_route(
            route.security_options.as_ref(),
            config.global.security_options.as_ref(),
        );
        if !invalid.is_empty() {
            warnings.push((
                "SecurityOptions".to_string(),
                format!(
                    "not an address, range or CIDR, ignored as Ocelot does: {}",
                    invalid.join(", ")
                ),
            ));
        }
        let rate_limit = match self
            .limiter
            .compile(route, &config.global, &identity, &name)
        {
            Ok(rule) => rule,
            Err(e) => {
                warnings.push((
                    "RateLimitOptions".to_string(),
                    format!("{e}; rate limiting is off for this route"),
                ));
                None
            }
        };
        let qos = QosPolicy::from_options(&qos::merged_options(route, &config.global));
        let breaker = qos
            .as_ref()
            .map(|q| self.breakers.breaker(&identity, &name, q.breaker));
        TrafficPolicy {
            identity,
            name,
            security,
            rate_limit,
            qos,
            breaker,
            warnings,
        }
    }

    /// The client address for IP security: the socket peer, or what a
    /// trusted proxy says in `X-Forwarded-For`.
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        self.trusted_proxies.client_ip(peer, forwarded)
    }
}

/// Per-request traffic state, kept in the proxy's request context.
#[derive(Default)]
pub struct RequestTraffic {
    /// `X-RateLimit-*` headers for the response.
    rate_limit_headers: Vec<(&'static str, String)>,
    /// The breaker's permission for this request's downstream call.
    permit: Option<Permit>,
    /// Backends that refused this request's connection.
    tried: Vec<SocketAddr>,
    retried: bool,
}

impl RequestTraffic {
    /// Whether the balancer may pick `addr` for this request: not passively
    /// down, and not already refused this request.
    pub fn may_use(&self, addr: &SocketAddr, now: Instant) -> bool {
        !self.tried.contains(addr) && !Traffic::current().health.passive().is_down(addr, now)
    }
}

/// Whether the request has a body that answering early would leave unread.
fn has_body(session: &Session) -> bool {
    let headers = &session.req_header().headers;
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Headers the proxy adds to every response of its own (CORS).
pub type ExtraHeaders = [(http::HeaderName, http::HeaderValue)];

/// A response of the gateway's own: status, reason phrase, headers, body.
struct Answer<'a> {
    status: u16,
    reason: Option<&'a str>,
    headers: &'a [(&'static str, String)],
    content_type: Option<&'a str>,
    body: &'a str,
}

/// Writes a complete response of the gateway's own.
async fn respond(session: &mut Session, answer: Answer<'_>, extra: &ExtraHeaders) -> Result<()> {
    let Answer {
        status,
        reason,
        headers,
        content_type,
        body,
    } = answer;
    if has_body(session) {
        // The unread body would be taken for the next request.
        session.set_keepalive(None);
    }
    let mut resp = ResponseHeader::build(status, Some(headers.len() + extra.len() + 2))?;
    if reason.is_some() {
        resp.set_reason_phrase(reason)?;
    }
    for (name, value) in headers {
        resp.insert_header(*name, value.as_str())?;
    }
    for (name, value) in extra {
        resp.append_header(name.clone(), value.clone())?;
    }
    if let Some(content_type) = content_type {
        resp.insert_header(header::CONTENT_TYPE, content_type)?;
    }
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    session
        .write_response_header(Box::new(resp), body.is_empty())
        .await?;
    if !body.is_empty() {
        session
            .write_response_body(Some(Bytes::copy_from_slice(body.as_bytes())), true)
            .await?;
    }
    Ok(())
}

/// Ocelot's security then rate-limiting middlewares, right after the route is
/// found (WebSocket upgrades: security only, as in Ocelot). `Ok(true)`: a
/// response (403, 429, 503) was written.
pub async fn request_filter(
    session: &mut Session,
    route: &CompiledRoute,
    state: &mut RequestTraffic,
    extra: &ExtraHeaders,
) -> Result<bool> {
    let policy = &route.traffic;
    if policy.security.is_none() && policy.rate_limit.is_none() {
        return Ok(false);
    }
    let traffic = Traffic::current();
    if let Some(ip_policy) = &policy.security {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        // Without an IP address (a Unix socket) there is nothing to check, as
        // Ocelot skips the check without a RemoteIpAddress.
        if let Some(peer) = peer {
            let client = traffic.client_ip(peer, &session.req_header().headers);
            if !ip_policy.permits(client) {
                security::DENIED_TOTAL.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "route {}: client IP {client} is denied by SecurityOptions",
                    policy.name
                );
                let answer = Answer {
                    status: 403,
                    reason: None,
                    headers: &[],
                    content_type: None,
                    body: "",
                };
                respond(session, answer, extra).await?;
                return Ok(true);
            }
        }
    }
    // Ocelot's WebSocket pipeline has no rate limiting (nor QoS).
    let rate_limit = policy
        .rate_limit
        .as_ref()
        .filter(|_| !session.is_upgrade_req());
    if let Some(rule) = rate_limit {
        let decision = {
            let req = session.req_header();
            let view = RequestView {
                method: req.method.as_str(),
                path: req.uri.path(),
                headers: &req.headers,
            };
            traffic.limiter.check(rule, &view).await
        };
        match decision {
            Decision::Allow(headers) => state.rate_limit_headers = headers,
            Decision::Reject(r) => {
                let answer = Answer {
                    status: r.status,
                    reason: None,
                    headers: &r.headers,
                    content_type: None,
                    body: &r.body,
                };
                respond(session, answer, extra).await?;
                return Ok(true);
            }
        }
    }
    Ok(false)
}

const QOS_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// The circuit breaker, just before the downstream call. `Ok(false)`: the
/// circuit is open and the 503 was written.
pub async fn proxy_upstream_filter(
    session: &mut Session,
    route: &CompiledRoute,
    state: &mut RequestTraffic,
    extra: &ExtraHeaders,
) -> Result<bool> {
    let Some(breaker) = route
        .traffic
        .breaker
        .as_ref()
        .filter(|_| !session.is_upgrade_req())
    else {
        return Ok(true);
    };
    if let Some(permit) = Permit::acquire(breaker) {
        state.permit = Some(permit);
        return Ok(true);
    }
    crate::metrics::METRICS
        .breaker_rejected
        .with_label_values(&[&route.name])
        .inc();
    log::debug!(
        "circuit breaker is open for route {}; answering 503",
        route.traffic.name
    );
    let body = format!(
        "Circuit breaker is open for route -> {}",
        route.traffic.name
    );
    let answer = Answer {
        status: 503,
        reason: Some("Circuit breaker is open"),
        headers: &state.rate_limit_headers,
        content_type: Some(QOS_CONTENT_TYPE),
        body: &body,
    };
    respond(session, answer, extra).await?;
    Ok(false)
}

/// Picks a backend, skipping passively-down ones and those this request
/// already tried. `Err`: every backend is down (503 at once); `Ok(None)`: the
/// pool has no backend at all (the caller's usual answer).
pub fn select_backend<'a>(
    route: &CompiledRoute,
    state: &RequestTraffic,
    cookies: impl Iterator<Item = &'a [u8]>,
    sticky: &StickySessions,
) -> Result<Option<Selected>> {
    let now = Instant::now();
    if let Some(selected) = route
        .pool
        .select_where(cookies, sticky, |addr| state.may_use(addr, now))
    {
        return Ok(Some(selected));
    }
    if route.pool.backend_count() == 0 {
        return Ok(None);
    }
    health::metrics().all_down.fetch_add(1, Ordering::Relaxed);
    log::warn!(
        "route {}: every downstream backend is down; answering 503",
        route.traffic.name
    );
    Err(Error::explain(
        ErrorType::HTTPStatus(503),
        "every downstream backend is down",
    ))
}

fn is_connect_failure(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectTimedout
            | ErrorType::ConnectError
    )
}

/// A connection to `addr` failed: take the backend out for a while and, when
/// another one is available, retry the request (nothing was sent yet).
pub fn fail_to_connect(
    route: Option<&CompiledRoute>,
    state: &mut RequestTraffic,
    addr: Option<SocketAddr>,
    mut e: Box<Error>,
) -> Box<Error> {
    let traffic = Traffic::current();
    let passive = traffic.health.passive();
    if !passive.enabled() || !is_connect_failure(&e) {
        return e;
    }
    let now = Instant::now();
    if let Some(addr) = addr {
        passive.mark_down(addr, now);
        state.tried.push(addr);
    }
    if let Some(route) = route {
        if !state.retried && route.pool.has_ready(|a| state.may_use(a, now)) {
            state.retried = true;
            health::metrics().retries.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "route {}: retrying on another backend after: {e}",
                route.traffic.name
            );
            e.set_retry(true);
        }
    }
    e
}

/// The downstream service answered: the breaker counts 500–508 as failures.
pub fn upstream_response(state: &mut RequestTraffic, status: u16) {
    if let Some(permit) = state.permit.take() {
        permit.status(status);
    }
}

/// Adds the rate-limit headers to the response sent to the client.
pub fn response_headers(state: &RequestTraffic, resp: &mut ResponseHeader) -> Result<()> {
    for (name, value) in &state.rate_limit_headers {
        resp.insert_header(*name, value.as_str())?;
    }
    Ok(())
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout
    ) && e.esource() != &ErrorSource::Downstream
}

/// The request failed: the breaker counts connection errors and QoS
/// timeouts (not client cancellations, not the route timeout). A QoS timeout
/// is answered here, as Ocelot does, with 503 `Request timeout` and a body;
/// `None` leaves the answer to the caller.
pub async fn fail_to_proxy(
    session: &mut Session,
    e: &Error,
    route: Option<&CompiledRoute>,
    state: &mut RequestTraffic,
    extra: &ExtraHeaders,
) -> Option<FailToProxy> {
    let route = route?;
    let permit = state.permit.take();
    // A timeout after the response started (a stalled body) can only end the
    // connection; the caller handles that.
    if is_timeout(e)
        && route.traffic.timeout_is_qos(route.timeout)
        && session.response_written().is_none()
    {
        qos::count_timeout();
        if let Some(permit) = permit {
            permit.failure();
        }
        log::warn!(
            "route {}: request timed out after the QoS Timeout; answering 503",
            route.traffic.name
        );
        let body = format!("Request timeout for route -> {}", route.traffic.name);
        let answer = Answer {
            status: 503,
            reason: Some("Request timeout"),
            headers: &state.rate_limit_headers,
            content_type: Some(QOS_CONTENT_TYPE),
            body: &body,
        };
        if let Err(write_error) = respond(session, answer, extra).await {
            log::debug!("cannot send the QoS timeout response: {write_error}");
        }
        return Some(FailToProxy {
            error_code: 503,
            can_reuse_downstream: false,
        });
    }
    if let Some(permit) = permit {
        if e.esource() == &ErrorSource::Upstream && !is_timeout(e) {
            permit.failure();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocelot_compat::model::from_value;
    use serde_json::json;

    fn config(v: serde_json::Value) -> FileConfiguration {
        from_value(&v).0
    }

    #[test]
    fn identity_follows_ocelot_route_keys() {
        let c = config(json!({"Routes": [
            {"UpstreamPathTemplate": "/a/{x}", "UpstreamHttpMethod": ["Get", "Post"], "DownstreamHostAndPorts": [{"Host": "h", "Port": 1}, {"Host": "i", "Port": 2}]},
            {"UpstreamPathTemplate": "/b", "LoadBalancerOptions": {"Type": "CookieStickySessions", "Key": "sid"}},
            {"UpstreamPathTemplate": "/c", "ServiceName": "svc", "LoadBalancerOptions": {"Type": "RoundRobin"}},
        ]}));
        assert_eq!(
            route_identity(&c.routes[0], &c),
            "Get,Post|/a/{x}|no-host|h:1,i:2|no-svc-ns|no-svc-name|no-lb-type|no-lb-key"
        );
        assert_eq!(route_identity(&c.routes[1], &c), "CookieStickySessions:sid");
        assert_eq!(
            route_identity(&c.routes[2], &c),
            "|/c|no-host|no-host-and-port|no-svc-ns|svc|RoundRobin|no-lb-key"
        );
        assert_eq!(route_name(&c.routes[0]), "/a/{x}");
        assert_eq!(route_name(&c.routes[2]), ":svc:/c");
    }

    #[test]
    fn compile_collects_policies_and_warnings() {
        let t = Traffic::default();
        let c = config(json!({
            "Routes": [{"UpstreamPathTemplate": "/p", "QoSOptions": {"MinimumThroughput": 2, "Timeout": 500},
                        "RateLimitOptions": {"Limit": 1, "ClientIdHeader": "bad header"},
                        "SecurityOptions": {"IPBlockedList": ["nope", "10.0.0.1"]}}],
        }));
        let p = t.compile(&c.routes[0], &c);
        assert!(p.security.is_some() && p.rate_limit.is_none() && p.breaker.is_some());
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert_eq!(
            p.downstream_timeout(Duration::from_secs(90)),
            Duration::from_millis(500)
        );
        assert!(p.timeout_is_qos(Duration::from_secs(90)));
        let again = t.compile(&c.routes[0], &c);
        assert!(
            Arc::ptr_eq(
                p.breaker.as_ref().expect("breaker"),
                again.breaker.as_ref().expect("breaker")
            ),
            "same breaker for the same route"
        );
        let plain = TrafficPolicy::default();
        assert_eq!(
            plain.downstream_timeout(Duration::from_secs(9)),
            Duration::from_secs(9)
        );
        assert!(!plain.timeout_is_qos(Duration::from_secs(9)));
    }
}
