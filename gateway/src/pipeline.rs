//! Ocelot's request order, written once (Ocelot's
//! `src/Middleware/OcelotPipelineExtensions.cs`):
//!
//! route → security → header transforms → rate limit → request id →
//! authentication → claims to claims → authorization → claims to headers →
//! claims to query and path → URL; then the downstream call: load balancing
//! → circuit breaker → request → outcome.
//!
//! [`find_route`] is the first step; [`run`] is every step after it, each
//! returning `Ok` to go on or a [`Refusal`]. The proxy runs them from
//! `request_filter`; an aggregate runs [`run`] for each of its routes, as
//! Ocelot's `MultiplexingMiddleware` re-enters the pipeline, so a
//! sub-request gets exactly the steps a direct request gets. Nothing here
//! needs a Pingora `Session`: the steps see a [`Request`] (the request head
//! and the client's address) and write what they learn to a
//! [`RequestState`].
//!
//! Header transforms rewrite the incoming request's headers before the rate
//! limiter, request id and authentication read them, as Ocelot's
//! `HttpHeadersTransformationMiddleware` does: `{"Oc-Client":
//! "{RemoteIpAddress}"}` makes client-id limiting per IP.

use crate::answer::Refusal;
use crate::auth::{Authenticator, Principal};
use crate::balancing::{BalancerKind, Selected, StickySessions};
use crate::claims::{Claims, ClaimsError};
use crate::headers::PlaceholderValues;
use crate::health;
use crate::qos::Permit;
use crate::rate_limiting::{ClientIdentity, Decision, RequestView};
use crate::retries::{Attempt, Outcome};
use crate::snapshot::{CompiledRoute, Env, Snapshot};
use http::header::{self, HeaderMap};
use http::Method;
use ocelot_compat::path::normalize_path;
use ocelot_compat::table::{HeaderSource, Placeholders, RequestInfo, Target};
use ocelot_compat::template::DownstreamTarget;
use pingora_http::RequestHeader;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The request as the steps see it.
pub(crate) struct Request<'a> {
    /// The incoming request head; header transforms and claims change it.
    pub(crate) head: &'a mut RequestHeader,
    /// The socket peer's address (none on a Unix socket).
    pub(crate) peer: Option<IpAddr>,
    /// A WebSocket upgrade: Ocelot's WebSocket pipeline has no rate limiting
    /// and no QoS.
    pub(crate) upgrade: bool,
}

/// What the steps learnt, kept for the response and the access log.
#[derive(Debug, Default)]
pub(crate) struct RequestState {
    /// The request id (`RequestIdKey`; `{TraceId}` without tracing), when
    /// the route uses one.
    pub(crate) request_id: Option<String>,
    /// The OpenTelemetry trace id, when the request is traced: `{TraceId}`.
    pub(crate) trace_id: Option<String>,
    /// The client's address (`{RemoteIpAddress}`), when transforms use it.
    pub(crate) remote_ip: Option<String>,
    /// The request's `Host` header (`{UpstreamHost}`), when transforms use it.
    pub(crate) upstream_host: Option<String>,
    /// The authenticated user, if the route authenticated one.
    pub(crate) principal: Option<Principal>,
    /// `X-Rate-Limit-*` headers for the response, once the request was counted.
    pub(crate) rate_limit_headers: Vec<(&'static str, String)>,
    /// Path and query to send downstream.
    pub(crate) downstream: Option<DownstreamTarget>,
}

impl RequestState {
    fn claims(&self) -> &Claims {
        static NONE: std::sync::OnceLock<Claims> = std::sync::OnceLock::new();
        match &self.principal {
            Some(p) => &p.claims,
            None => NONE.get_or_init(Claims::default),
        }
    }

    /// The placeholder values of the header transforms.
    pub(crate) fn placeholders(&self) -> PlaceholderValues<'_> {
        PlaceholderValues {
            remote_ip: self.remote_ip.clone(),
            trace_id: self.trace_id.as_deref().or(self.request_id.as_deref()),
            upstream_host: self.upstream_host.as_deref(),
            downstream_base_url: None,
        }
    }
}

/// How the matched route's downstream URL is made.
#[derive(Debug, Clone)]
pub(crate) enum RouteMatch {
    /// A route of the table: its downstream template, rendered with these
    /// placeholders of the normalized request path.
    Template {
        placeholders: Placeholders,
        path: String,
    },
    /// A dynamic route: the path after the service name, the query as it came.
    Fixed(DownstreamTarget),
}

/// A request that matched an aggregate.
#[derive(Debug, Clone)]
pub(crate) struct AggregateMatch {
    pub(crate) index: usize,
    pub(crate) placeholders: Placeholders,
    /// The normalized request path.
    pub(crate) path: String,
}

/// What routing found.
#[derive(Debug)]
pub(crate) enum Found {
    /// Route number `index` of the snapshot.
    Route { index: usize, matched: RouteMatch },
    /// An aggregate with several routes, answered by the gateway itself.
    Aggregate(AggregateMatch),
}

/// Request headers as the route table asks for them.
struct Headers<'a>(&'a HeaderMap);

impl HeaderSource for Headers<'_> {
    fn joined(&self, name: &str) -> Option<String> {
        let mut values = self.0.get_all(name).iter();
        let first = values.next()?;
        let mut out = String::from_utf8_lossy(first.as_bytes()).into_owned();
        for v in values {
            out.push(',');
            out.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        Some(out)
    }
}

/// Kestrel's default `MaxRequestHeadersTotalSize`.
const MAX_REQUEST_HEADER_BYTES: usize = 32 * 1024;

/// What Kestrel, Ocelot's server, refuses before Ocelot sees the request.
fn kestrel_limits(req: &RequestHeader) -> Result<(), Refusal> {
    // Pingora alone would accept up to 1 MiB of headers; Kestrel answers 431.
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_REQUEST_HEADER_BYTES {
        return Err(Refusal::HeadersTooLarge);
    }
    // Ocelot 25 refuses header values that are not ASCII with 400.
    if req.headers.values().any(|v| !v.as_bytes().is_ascii()) {
        return Err(Refusal::InvalidHeaderValue);
    }
    Ok(())
}

/// Ocelot's DownstreamRouteFinder: the route (or aggregate) for the request,
/// then, with service discovery and no static route, a dynamic route
/// (Ocelot's DiscoveryDownstreamRouteFinder).
pub(crate) async fn find_route(
    env: &Env,
    snapshot: &Snapshot,
    req: &RequestHeader,
) -> Result<Found, Refusal> {
    kestrel_limits(req)?;
    let path = normalize_path(req.uri.path()).map_err(|_| Refusal::InvalidPath)?;
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()));
    let found = {
        // The route table's view of the request is not `Send`: dropped
        // before any await.
        let headers = Headers(&req.headers);
        let info = RequestInfo {
            method: req.method.as_str(),
            host,
            path: &path,
            query: req.uri.query(),
            headers: &headers,
        };
        snapshot.table.find(&info)
    };
    let Some(found) = found else {
        return find_dynamic_route(env, snapshot, req, &path).await;
    };
    let index = match found.target {
        Target::Route(i) => i,
        // Ocelot proxies a single-key aggregate as its route.
        Target::Aggregate(i) => match snapshot.aggregates.get(i).and_then(|a| a.single_route()) {
            Some(route) => route,
            None => {
                return Ok(Found::Aggregate(AggregateMatch {
                    index: i,
                    placeholders: found.placeholders,
                    path: path.into_owned(),
                }))
            }
        },
    };
    let route = snapshot.routes.get(index).ok_or(Refusal::NoRoute)?;
    known_load_balancer(route)?;
    Ok(Found::Route {
        index,
        matched: RouteMatch::Template {
            placeholders: found.placeholders,
            path: path.into_owned(),
        },
    })
}

/// `/{service}/{rest}` to `{rest}` on an instance of the service.
async fn find_dynamic_route(
    env: &Env,
    snapshot: &Snapshot,
    req: &RequestHeader,
    path: &str,
) -> Result<Found, Refusal> {
    let Some(dynamic) = snapshot.dynamic.as_ref() else {
        log::debug!("no route for {} {}", req.method, path);
        return Err(Refusal::NoRoute);
    };
    let (namespace, service, rest) = crate::snapshot::dynamic::split(path);
    let index = dynamic
        .route(namespace, service, env)
        .await
        .map_err(|_| Refusal::NoRoute)?;
    let route = snapshot.route(index).ok_or(Refusal::NoRoute)?;
    known_load_balancer(route)?;
    Ok(Found::Route {
        index,
        matched: RouteMatch::Fixed(DownstreamTarget {
            path: rest.to_string(),
            query: req
                .uri
                .query()
                .filter(|q| !q.is_empty())
                .map(str::to_string),
        }),
    })
}

fn known_load_balancer(route: &CompiledRoute) -> Result<(), Refusal> {
    if let BalancerKind::Unknown(name) = &route.pool.kind {
        log::error!("route {}: no load balancer named '{name}'", route.name);
        return Err(Refusal::UnknownLoadBalancer);
    }
    Ok(())
}

/// Every step after routing, in Ocelot's order.
pub(crate) async fn run(
    env: &Env,
    auth: &Authenticator,
    route: &CompiledRoute,
    matched: RouteMatch,
    req: &mut Request<'_>,
    state: &mut RequestState,
) -> Result<(), Refusal> {
    security(env, route, req)?;
    header_transforms(env, route, req, state);
    // A limit counted by a claim of the user (a gateway setting beyond
    // Ocelot) can only be counted once authentication has found the user.
    let by_claim = route
        .rate_limit
        .as_ref()
        .is_some_and(|r| r.counts_by_claim());
    if !by_claim {
        rate_limit(env, route, req, state).await?;
    }
    request_id(route, req, state);
    authentication(auth, route, req, state).await?;
    if by_claim {
        rate_limit(env, route, req, state).await?;
    }
    claims_to_claims(route, state)?;
    authorization(route, req, state, &matched)?;
    claims_to_headers(route, req, state)?;
    downstream_url(route, req, state, matched)
}

/// `SecurityOptions`: the client's address against the allow and block
/// lists. Without an address (a Unix socket) there is nothing to check, as
/// Ocelot skips the check without a `RemoteIpAddress`.
fn security(env: &Env, route: &CompiledRoute, req: &Request<'_>) -> Result<(), Refusal> {
    let (Some(policy), Some(peer)) = (&route.security, req.peer) else {
        return Ok(());
    };
    let client = env.client_ip(peer, &req.head.headers);
    if policy.permits(client) {
        Ok(())
    } else {
        log::debug!("route {}: client IP {client} is denied", route.ocelot_name);
        Err(Refusal::IpDenied)
    }
}

/// `UpstreamHeaderTransform` on the incoming request. The placeholders are
/// read from the request as it arrived.
fn header_transforms(
    env: &Env,
    route: &CompiledRoute,
    req: &mut Request<'_>,
    state: &mut RequestState,
) {
    if route.needs_request_id {
        state.request_id = Some(route.request_id.id(&req.head.headers));
    }
    let transforms = &route.headers;
    if transforms.upstream.is_empty() && transforms.downstream.is_empty() {
        return;
    }
    state.remote_ip = req
        .peer
        .map(|peer| env.client_ip(peer, &req.head.headers).to_string());
    state.upstream_host = req
        .head
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    if !transforms.upstream.is_empty() {
        transforms
            .upstream
            .apply_to_request(req.head, &state.placeholders());
    }
}

/// `RateLimitOptions`, counting the client its (transformed) headers name,
/// or, as the settings say, its address or a claim.
async fn rate_limit(
    env: &Env,
    route: &CompiledRoute,
    req: &Request<'_>,
    state: &mut RequestState,
) -> Result<(), Refusal> {
    let Some(rule) = route.rate_limit.as_ref().filter(|_| !req.upgrade) else {
        return Ok(());
    };
    let client = match rule.identity() {
        ClientIdentity::ClientIdHeader => None,
        ClientIdentity::Ip => req
            .peer
            .map(|peer| env.client_ip(peer, &req.head.headers).to_string()),
        ClientIdentity::Claim(name) => state.claims().values(name).next().map(str::to_string),
    };
    let view = RequestView {
        method: req.head.method.as_str(),
        path: req.head.uri.path(),
        headers: &req.head.headers,
        client: client.as_deref(),
    };
    match env.limiter.check(rule, &view).await {
        Decision::Allow(headers) => {
            state.rate_limit_headers = headers;
            Ok(())
        }
        Decision::Reject(r) => Err(Refusal::QuotaExceeded(r)),
        Decision::Unidentified(r) => Err(Refusal::UnidentifiedClient(r)),
        Decision::Unavailable => Err(Refusal::RateLimitUnavailable),
    }
}

/// `RequestIdKey`: the request id header sent downstream.
fn request_id(route: &CompiledRoute, req: &mut Request<'_>, state: &RequestState) {
    if let Some(id) = &state.request_id {
        route.request_id.apply(req.head, id);
    }
}

/// Skipped for anonymous routes and `OPTIONS`; otherwise the first scheme
/// accepting the bearer token sets the principal.
async fn authentication(
    auth: &Authenticator,
    route: &CompiledRoute,
    req: &Request<'_>,
    state: &mut RequestState,
) -> Result<(), Refusal> {
    if route.authentication.is_empty() || req.head.method == Method::OPTIONS {
        return Ok(());
    }
    match auth
        .authenticate(&route.authentication, &req.head.headers)
        .await
    {
        Some(principal) => {
            log::debug!(
                "route {}: authenticated by {}",
                route.ocelot_name,
                principal.scheme
            );
            state.principal = Some(principal);
            Ok(())
        }
        None => Err(Refusal::Unauthenticated),
    }
}

/// `AddClaimsToRequest`.
fn claims_to_claims(route: &CompiledRoute, state: &mut RequestState) -> Result<(), Refusal> {
    if !route.claims.adds_claims() {
        return Ok(());
    }
    let mut principal = state.principal.take().unwrap_or_default();
    let result = route
        .claims
        .apply_to_claims(std::sync::Arc::make_mut(&mut principal.claims));
    state.principal = Some(principal);
    result.map_err(claims_refusal)
}

/// Scopes on authenticated routes, then `RouteClaimsRequirement` (compared
/// with the route's placeholders); both skipped for `OPTIONS`.
fn authorization(
    route: &CompiledRoute,
    req: &Request<'_>,
    state: &RequestState,
    matched: &RouteMatch,
) -> Result<(), Refusal> {
    if req.head.method == Method::OPTIONS || route.authorization.is_empty() {
        return Ok(());
    }
    let placeholder = |name: &str| match matched {
        RouteMatch::Template { placeholders, .. } => placeholders.get(name),
        RouteMatch::Fixed(_) => None,
    };
    let claims = state.claims();
    route
        .authorization
        .check_scopes(claims)
        .and_then(|()| route.authorization.check_claims(claims, placeholder))
        .map_err(|e| {
            log::debug!("route {}: authorization: {e}", route.ocelot_name);
            Refusal::Forbidden
        })
}

/// `AddHeadersToRequest`.
fn claims_to_headers(
    route: &CompiledRoute,
    req: &mut Request<'_>,
    state: &RequestState,
) -> Result<(), Refusal> {
    if route.claims.is_empty() {
        return Ok(());
    }
    let headers = route
        .claims
        .headers(state.claims())
        .map_err(claims_refusal)?;
    for (name, value) in headers {
        let refused = || Refusal::Claims(ClaimsError::InvalidHeaderValue(name.to_string()));
        req.head
            .insert_header(name.clone(), value)
            .map_err(|_| refused())?;
    }
    Ok(())
}

/// `AddQueriesToRequest` and `ChangeDownstreamPathTemplate`, then Ocelot's
/// DownstreamUrlCreator: the downstream path and query.
fn downstream_url(
    route: &CompiledRoute,
    req: &Request<'_>,
    state: &mut RequestState,
    matched: RouteMatch,
) -> Result<(), Refusal> {
    let (mut placeholders, path) = match matched {
        RouteMatch::Fixed(target) => {
            state.downstream = Some(target);
            return Ok(());
        }
        RouteMatch::Template { placeholders, path } => (placeholders, path),
    };
    let claims = state.claims();
    let added_query = if route.claims.adds_queries() {
        route
            .claims
            .apply_to_query(claims, req.head.uri.query())
            .map_err(claims_refusal)?
    } else {
        None
    };
    if route.claims.changes_path() {
        for (name, value) in route
            .claims
            .path_placeholders(claims)
            .map_err(claims_refusal)?
        {
            placeholders.insert(name, value);
        }
    }
    let query = if route.claims.adds_queries() {
        added_query.as_deref()
    } else {
        req.head.uri.query()
    };
    state.downstream = Some(route.downstream.render(&placeholders, &path, query));
    Ok(())
}

fn claims_refusal(e: ClaimsError) -> Refusal {
    log::debug!("claims: {e}");
    Refusal::Claims(e)
}

// The downstream call: load balancing, the circuit breaker and passive
// health, the same for a proxied request and an aggregate's sub-request.

/// The downstream call's state.
#[derive(Default)]
pub(crate) struct CallState {
    /// The breaker's permission for this call.
    permit: Option<Permit>,
    /// Backends this request already tried.
    tried: Vec<SocketAddr>,
    /// The passive-health retry after a refused connection was used.
    retried: bool,
    /// Attempts started.
    attempts: u32,
    /// When the first attempt started: every attempt fits in the route's
    /// `Timeout` counted from here.
    first_attempt: Option<Instant>,
    /// The attempt just ended was decided to be retried (its error is ours).
    retry_decided: bool,
}

impl CallState {
    /// Whether the balancer may pick `addr`: not passively down, and not
    /// already tried by this request.
    fn may_use(&self, env: &Env, addr: &SocketAddr) -> bool {
        !self.tried.contains(addr) && !env.health.passive().is_down_now(addr)
    }

    /// Attempts started so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether an earlier attempt of this request was decided to be retried;
    /// clears the mark.
    pub(crate) fn take_retry_decision(&mut self) -> bool {
        std::mem::take(&mut self.retry_decided)
    }
}

/// Ocelot's LoadBalancingMiddleware: a backend, skipping passively-down
/// ones and those this request already tried.
pub(crate) fn select_backend(
    env: &Env,
    route: &CompiledRoute,
    call: &CallState,
    headers: &HeaderMap,
    sticky: &StickySessions,
) -> Result<Selected, Refusal> {
    let cookies = || headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes());
    if let Some(selected) = route
        .pool
        .select_where(cookies(), sticky, |addr| call.may_use(env, addr))
    {
        return Ok(selected);
    }
    // A retry goes to another backend where there is one, else to one
    // already tried that is still up (a 503 does not take a backend out).
    if route.retry.is_some() && !call.tried.is_empty() {
        if let Some(selected) = route.pool.select_where(cookies(), sticky, |addr| {
            !env.health.passive().is_down_now(addr)
        }) {
            return Ok(selected);
        }
    }
    if route.pool.backend_count() == 0 {
        return Err(Refusal::NoBackend {
            discovery: route.uses_discovery,
        });
    }
    Err(Refusal::AllBackendsDown)
}

/// The circuit breaker, just before the call (not for upgrades, as in
/// Ocelot's WebSocket pipeline).
pub(crate) fn admit(
    route: &CompiledRoute,
    call: &mut CallState,
    upgrade: bool,
) -> Result<(), Refusal> {
    let Some(qos) = route.qos.as_ref().filter(|_| !upgrade) else {
        return Ok(());
    };
    match Permit::acquire(&qos.breaker) {
        Some(permit) => {
            call.permit = Some(permit);
            Ok(())
        }
        None => Err(Refusal::BreakerOpen {
            route: route.ocelot_name.clone(),
        }),
    }
}

/// An attempt starts: its timeout, within what is left of the route's
/// `Timeout` since the first attempt.
pub(crate) fn attempt_started(route: &CompiledRoute, call: &mut CallState) -> Duration {
    let timeout = route.downstream_timeout();
    call.attempts += 1;
    let Some(policy) = &route.retry else {
        return timeout;
    };
    let first = *call.first_attempt.get_or_insert_with(|| {
        policy.requested();
        Instant::now()
    });
    // Never zero: Pingora reads a zero timeout as "fail at once".
    policy
        .attempt_timeout(timeout.saturating_sub(first.elapsed()))
        .max(Duration::from_millis(1))
}

/// What a retry decision needs of the request.
pub(crate) struct Retryable<'a> {
    pub(crate) method: &'a Method,
    /// The body can be sent again (Pingora kept all of it).
    pub(crate) replayable: bool,
    /// The backend of the failed attempt.
    pub(crate) addr: Option<SocketAddr>,
}

/// The attempt ended with `outcome` before any response reached the client:
/// `true` if the route's retry policy tries again.
pub(crate) fn retry(
    route: &CompiledRoute,
    call: &mut CallState,
    outcome: Outcome,
    request: &Retryable<'_>,
) -> bool {
    let Some(policy) = &route.retry else {
        return false;
    };
    if let Some(addr) = request.addr {
        if !call.tried.contains(&addr) {
            call.tried.push(addr);
        }
    }
    let time_left = match call.first_attempt {
        Some(first) => route.downstream_timeout().saturating_sub(first.elapsed()),
        None => route.downstream_timeout(),
    };
    let attempt = Attempt {
        method: request.method,
        made: call.attempts,
        replayable: request.replayable,
        time_left,
    };
    match policy.retry(outcome, &attempt) {
        Ok(()) => {
            log::debug!(
                "route {}: attempt {} ended with {outcome:?}: retrying",
                route.ocelot_name,
                call.attempts
            );
            call.retry_decided = true;
            true
        }
        Err(why) => {
            log::debug!(
                "route {}: attempt {} ended with {outcome:?}: not retried ({why:?})",
                route.ocelot_name,
                call.attempts
            );
            false
        }
    }
}

/// A connection to `addr` failed: passive health takes the backend out for
/// a while. `true`: the request is tried again, by the route's retry policy,
/// or else once on another available backend when passive health is on
/// (nothing was sent yet).
pub(crate) fn connect_failed(
    env: &Env,
    route: &CompiledRoute,
    call: &mut CallState,
    request: &Retryable<'_>,
) -> bool {
    let passive = env.health.passive();
    let now = Instant::now();
    if passive.enabled() {
        if let Some(addr) = request.addr {
            passive.mark_down(addr, now);
        }
    }
    if route.retry.is_some() {
        return retry(route, call, Outcome::ConnectFailure, request);
    }
    if !passive.enabled() {
        return false;
    }
    if let Some(addr) = request.addr {
        call.tried.push(addr);
    }
    if call.retried || !route.pool.has_ready(|a| call.may_use(env, a)) {
        return false;
    }
    call.retried = true;
    health::count_retry();
    true
}

/// The service answered: the breaker counts 500–508 as failures.
pub(crate) fn answered(call: &mut CallState, status: u16) {
    if let Some(permit) = call.permit.take() {
        permit.status(status);
    }
}

/// How a call failed without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallFailure {
    /// The downstream call timed out.
    Timeout,
    /// No connection, or the service broke it.
    Connection,
    /// Anything else (the client went away, a body too large): not the
    /// service's fault, not counted.
    Other,
}

/// The call failed: the breaker counts connection errors and QoS timeouts
/// (not the route timeout, not the client's doing). A QoS timeout before the
/// response started is Ocelot's QoS answer, a refusal of its own.
pub(crate) fn call_failed(
    route: &CompiledRoute,
    call: &mut CallState,
    failure: CallFailure,
    response_started: bool,
) -> Option<Refusal> {
    let permit = call.permit.take();
    if failure == CallFailure::Timeout && route.timeout_is_qos() && !response_started {
        if let Some(permit) = permit {
            permit.failure();
        }
        return Some(Refusal::QosTimeout {
            route: route.ocelot_name.clone(),
        });
    }
    if let Some(permit) = permit {
        if failure == CallFailure::Connection {
            permit.failure();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use crate::snapshot::Env;
    use ocelot_compat::from_json;
    use std::sync::Arc;

    fn snapshot(json: &str, env: &Env) -> Snapshot {
        let value: serde_json::Value = serde_json::from_str(json).expect("json");
        let loaded = from_json(value, std::path::Path::new("ocelot.json")).expect("config");
        Snapshot::build(loaded, None, env, &Authenticator::default())
    }

    fn env() -> Env {
        Env::from_settings(&Settings::default()).expect("env")
    }

    fn head(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut h = RequestHeader::build("GET", path.as_bytes(), None).expect("head");
        h.insert_header("host", "gw").expect("host");
        for (k, v) in headers {
            h.append_header(k.to_string(), *v).expect("header");
        }
        h
    }

    async fn pass(
        env: &Env,
        snapshot: &Snapshot,
        head: &mut RequestHeader,
        peer: &str,
    ) -> (Result<(), Refusal>, RequestState) {
        let mut state = RequestState::default();
        let found = find_route(env, snapshot, head).await;
        let Ok(Found::Route { index, matched }) = found else {
            return (Err(found.err().unwrap_or(Refusal::NoRoute)), state);
        };
        let route = snapshot.route(index).expect("route");
        let mut req = Request {
            head,
            peer: Some(peer.parse().expect("ip")),
            upgrade: false,
        };
        let auth = Authenticator::default();
        let result = run(env, &auth, route, matched, &mut req, &mut state).await;
        (result, state)
    }

    #[tokio::test]
    async fn header_transforms_run_before_the_rate_limiter() {
        let env = env();
        let s = snapshot(
            r#"{"Routes": [{"UpstreamPathTemplate": "/a", "DownstreamPathTemplate": "/b",
                "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": 1}],
                "UpstreamHeaderTransform": {"Oc-Client": "{RemoteIpAddress}"},
                "RateLimitOptions": {"EnableRateLimiting": true, "Limit": 2, "Period": "1m", "PeriodTimespan": 60}}]}"#,
            &env,
        );
        let forged = ["", "forged-1", "forged-2"];
        for (i, id) in forged.iter().enumerate() {
            let mut h = if id.is_empty() {
                head("/a", &[])
            } else {
                head("/a", &[("oc-client", id)])
            };
            let (result, state) = pass(&env, &s, &mut h, "10.1.2.3").await;
            assert_eq!(h.headers["oc-client"], "10.1.2.3", "request {i}");
            if i < 2 {
                assert_eq!(result, Ok(()), "request {i}");
                assert_eq!(state.downstream.expect("url").path, "/b");
            } else {
                assert!(
                    matches!(result, Err(Refusal::QuotaExceeded(ref r)) if r.status == 429),
                    "{result:?}"
                );
            }
        }
        // Another address is another client.
        let mut h = head("/a", &[("oc-client", "forged-1")]);
        assert_eq!(pass(&env, &s, &mut h, "10.9.9.9").await.0, Ok(()));
    }

    /// Runs one request through `find_route` and `run` with these settings.
    async fn pass_with(
        env: &Env,
        auth: &Authenticator,
        s: &Snapshot,
        head: &mut RequestHeader,
        peer: &str,
    ) -> Result<(), Refusal> {
        let Found::Route { index, matched } = find_route(env, s, head).await? else {
            return Err(Refusal::NoRoute);
        };
        let route = s.route(index).expect("route");
        let mut req = Request {
            head,
            peer: Some(peer.parse().expect("ip")),
            upgrade: false,
        };
        run(
            env,
            auth,
            route,
            matched,
            &mut req,
            &mut RequestState::default(),
        )
        .await
    }

    const LIMITED: &str = r#"{"Routes": [{"UpstreamPathTemplate": "/a", "DownstreamPathTemplate": "/a",
        "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": 1}],
        "AuthenticationOptions": {"AuthenticationProviderKey": "Bearer"},
        "RateLimitOptions": {"Limit": 1, "Period": "1m", "PeriodTimespan": 60}},
        {"UpstreamPathTemplate": "/b", "DownstreamPathTemplate": "/b",
        "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": 1}],
        "RateLimitOptions": {"Limit": 1, "Period": "1m", "PeriodTimespan": 60}}]}"#;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn token(sub: Option<&str>) -> String {
        let mut claims = serde_json::json!({
            "exp": jsonwebtoken::get_current_timestamp() + 60,
            "iss": "https://issuer", "aud": "api",
        });
        if let Some(sub) = sub {
            claims["sub"] = serde_json::json!(sub);
        }
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("token");
        format!("Bearer {token}")
    }

    #[tokio::test]
    async fn clients_counted_by_address_or_by_claim() {
        let yaml = [
            "rate_limiting:",
            "  client_identity: ip",
            "  client_identity_routes: {'/a': 'claim:sub'}",
            "auth_providers:",
            "  Bearer:",
            &format!("    keys: [{{secret: '{SECRET}'}}]"),
            "    issuer: https://issuer",
            "    audience: api",
        ]
        .join("\n");
        let settings: Settings = serde_yaml::from_str(&yaml).expect("settings");
        let env = Env::from_settings(&settings).expect("env");
        let auth = Authenticator::from_settings(&settings.auth_providers).expect("auth");
        let value: serde_json::Value = serde_json::from_str(LIMITED).expect("json");
        let loaded = from_json(value, std::path::Path::new("ocelot.json")).expect("config");
        let s = Snapshot::build(loaded, None, &env, &auth);

        // By address: the client id header changes nothing.
        let b = |id: &str| head("/b", &[("oc-client", id)]);
        assert_eq!(
            pass_with(&env, &auth, &s, &mut b("x"), "10.0.0.1").await,
            Ok(())
        );
        let second = pass_with(&env, &auth, &s, &mut b("y"), "10.0.0.1").await;
        assert!(
            matches!(second, Err(Refusal::QuotaExceeded(_))),
            "{second:?}"
        );
        assert_eq!(
            pass_with(&env, &auth, &s, &mut b("x"), "10.0.0.2").await,
            Ok(())
        );

        // By claim, after authentication: the address changes nothing.
        let a = |sub: Option<&str>| head("/a", &[("authorization", &token(sub))]);
        assert_eq!(
            pass_with(&env, &auth, &s, &mut a(Some("u1")), "10.0.0.1").await,
            Ok(())
        );
        let again = pass_with(&env, &auth, &s, &mut a(Some("u1")), "10.0.0.9").await;
        assert!(matches!(again, Err(Refusal::QuotaExceeded(_))), "{again:?}");
        assert_eq!(
            pass_with(&env, &auth, &s, &mut a(Some("u2")), "10.0.0.1").await,
            Ok(())
        );
        assert_eq!(
            pass_with(&env, &auth, &s, &mut head("/a", &[]), "10.0.0.1").await,
            Err(Refusal::Unauthenticated),
            "authentication comes first"
        );
        let nameless = pass_with(&env, &auth, &s, &mut a(None), "10.0.0.1").await;
        assert!(
            matches!(nameless, Err(Refusal::UnidentifiedClient(_))),
            "{nameless:?}"
        );
    }

    #[tokio::test]
    async fn security_comes_first_and_unknown_paths_are_no_route() {
        let env = env();
        let s = snapshot(
            r#"{"Routes": [{"UpstreamPathTemplate": "/a", "DownstreamPathTemplate": "/a",
                "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": 1}],
                "SecurityOptions": {"IPBlockedList": ["10.0.0.1"]},
                "AuthenticationOptions": {"AuthenticationProviderKey": "Bearer"}}]}"#,
            &env,
        );
        let mut h = head("/a", &[]);
        assert_eq!(
            pass(&env, &s, &mut h, "10.0.0.1").await.0,
            Err(Refusal::IpDenied)
        );
        let mut h = head("/a", &[]);
        assert_eq!(
            pass(&env, &s, &mut h, "10.0.0.2").await.0,
            Err(Refusal::Unauthenticated)
        );
        let mut h = head("/nope", &[]);
        assert_eq!(
            pass(&env, &s, &mut h, "10.0.0.2").await.0,
            Err(Refusal::NoRoute)
        );
        let mut h = head("/a", &[("x", "caf\u{e9}")]);
        assert_eq!(
            pass(&env, &s, &mut h, "10.0.0.2").await.0,
            Err(Refusal::InvalidHeaderValue)
        );
    }

    #[tokio::test]
    async fn request_id_and_placeholders_reach_the_request() {
        let env = env();
        let s = snapshot(
            r#"{"Routes": [{"UpstreamPathTemplate": "/u/{id}", "DownstreamPathTemplate": "/users/{id}",
                "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": 1}],
                "RequestIdKey": "Oc-RequestId",
                "UpstreamHeaderTransform": {"X-Trace": "{TraceId}"}}]}"#,
            &env,
        );
        let mut h = head("/u/7?x=1", &[("oc-requestid", "id-1")]);
        let (result, state) = pass(&env, &s, &mut h, "10.0.0.2").await;
        assert_eq!(result, Ok(()));
        assert_eq!(state.request_id.as_deref(), Some("id-1"));
        assert_eq!(h.headers["x-trace"], "id-1");
        let target = state.downstream.expect("url");
        assert_eq!(
            (target.path.as_str(), target.query.as_deref()),
            ("/users/7", Some("x=1"))
        );
    }

    #[tokio::test]
    async fn breaker_and_call_outcomes() {
        let env = env();
        let s = snapshot(
            r#"{"Routes": [{"UpstreamPathTemplate": "/a", "DownstreamPathTemplate": "/a",
                "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": 1}],
                "QoSOptions": {"ExceptionsAllowedBeforeBreaking": 2, "DurationOfBreak": 60000, "TimeoutValue": 500}}]}"#,
            &env,
        );
        let route = &s.routes[0];
        route.pool.refresh().await;
        let sticky = Arc::new(StickySessions::default());
        for _ in 0..2 {
            let mut call = CallState::default();
            assert!(select_backend(&env, route, &call, &HeaderMap::new(), &sticky).is_ok());
            admit(route, &mut call, false).expect("closed");
            assert_eq!(
                call_failed(route, &mut call, CallFailure::Timeout, false),
                Some(Refusal::QosTimeout { route: "/a".into() })
            );
        }
        let mut call = CallState::default();
        assert_eq!(
            admit(route, &mut call, false),
            Err(Refusal::BreakerOpen { route: "/a".into() })
        );
        assert_eq!(admit(route, &mut call, true), Ok(()), "upgrades skip QoS");
    }
}
