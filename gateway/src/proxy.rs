//! The request pipeline: one `ProxyHttp` whose phases call each feature in
//! Ocelot's order (`src/Middleware/OcelotPipelineExtensions.cs`):
//! route finding → (security, header transforms, rate limiting, request id,
//! authentication, authorization, claims transforms: later issues) → load
//! balancing → downstream URL creation → request. `proxy` orchestrates; the
//! feature logic lives in its own modules.

use crate::auth::Authenticator;
use crate::balancing::{BalancerKind, Selected, StickySessions};
use crate::cors::Cors;
use crate::errors::{respond_with, status_for};
use crate::lifecycle::Readiness;
use crate::metrics::METRICS;
use crate::policies::RequestState;
use crate::routing::{CompiledRoute, Snapshot};
use crate::traffic::{self, RequestTraffic};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ocelot_compat::path::normalize_path;
use ocelot_compat::table::{HeaderSource, Placeholders, RequestInfo, Target};
use ocelot_compat::template::DownstreamTarget;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The gateway: the current snapshot plus state that outlives reloads.
/// Cheap to clone (shared state only): one per proxy service, e.g. the h2c one.
#[derive(Clone)]
pub struct Gateway {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub sticky: Arc<StickySessions>,
    pub readiness: Arc<Readiness>,
    /// Read and write timeout of upgraded (WebSocket) connections, in place of
    /// the route's `Timeout` (setting `websocket_idle_timeout_seconds`).
    pub websocket_idle_timeout: Duration,
    /// The parts of the settings that a settings reload replaces.
    pub live: Arc<ArcSwap<LiveSettings>>,
}

/// Settings that take effect without a restart: swapped whole when the
/// settings file changes.
pub struct LiveSettings {
    /// Write one JSON access-log line per request on stdout.
    pub access_log: bool,
    /// JWT providers named by the routes' `AuthenticationProviderKey(s)`.
    pub auth: Arc<Authenticator>,
    /// The gateway's CORS policy, if any.
    pub cors: Option<Arc<Cors>>,
}

/// Per-request state.
pub struct Ctx {
    snapshot: Arc<Snapshot>,
    route: Option<usize>,
    downstream: Option<DownstreamTarget>,
    selected: Option<Selected>,
    started: Instant,
    upstream_started: Option<Instant>,
    upstream_elapsed: Option<Duration>,
    /// The request id forwarded downstream, for the access log.
    pub request_id: Option<String>,
    /// What the identity steps learnt (principal, request id, placeholders
    /// for the response transforms).
    identity: RequestState,
    /// The route match (placeholders, normalized path), kept only when claims
    /// steps need it after routing.
    matched: Option<(Placeholders, String)>,
    /// CORS headers for the response (empty without an allowed `Origin`).
    cors: Vec<(HeaderName, HeaderValue)>,
    /// Rate-limit headers, circuit-breaker permit, passive-health retry state.
    traffic: RequestTraffic,
    /// The backend picked in `request_filter` for a cached route (the cache
    /// key names it, and Pingora looks the cache up before `upstream_peer`).
    preselected: Option<Selected>,
    /// The output-cache key of this request, when its route caches.
    cache: Option<crate::cache::RequestCache>,
    /// The aggregate this request matched, answered by `request_filter`.
    aggregate: Option<crate::aggregate::Matched>,
    /// Its index once answered, for the access log and metrics.
    answered_aggregate: Option<usize>,
}

impl Ctx {
    fn route(&self) -> Result<&CompiledRoute> {
        self.route
            .and_then(|i| self.snapshot.route(i))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))
    }
}

/// One access-log line. Serialized straight from this struct (fields in this
/// order, `None` as `null`), the same JSON as building a `serde_json::Value`
/// first, without its map and string copies on every request.
#[derive(serde::Serialize)]
struct AccessLogLine<'a> {
    #[serde(serialize_with = "display")]
    time: humantime::Rfc3339Timestamp,
    request_id: Option<&'a str>,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    #[serde(serialize_with = "display_opt")]
    upstream: Option<std::net::SocketAddr>,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    bytes_in: usize,
    bytes_out: usize,
    client: Option<String>,
    error: Option<String>,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn display_opt<T: std::fmt::Display, S: serde::Serializer>(
    value: &Option<T>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
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

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1):
/// never forwarded.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

/// Answers the request with `status`, an empty body and `extra` headers (a
/// CORS preflight's).
async fn respond_empty_with(
    session: &mut Session,
    status: u16,
    extra: &[(HeaderName, HeaderValue)],
) -> Result<bool> {
    let resp = empty_response(session, status, extra)?;
    session.write_response_header(Box::new(resp), true).await?;
    Ok(true)
}

/// A refusal of the gateway's own (empty body), with the headers every such
/// answer carries.
async fn refuse(session: &mut Session, status: u16, ctx: &Ctx) -> Result<bool> {
    let mut resp = empty_response(session, status, &[])?;
    add_answer_headers(&mut resp, ctx)?;
    session.write_response_header(Box::new(resp), true).await?;
    Ok(true)
}

/// What the gateway's own answers carry: the CORS headers, so a browser can
/// read a 401, and once the request was counted the rate-limit headers, as
/// Ocelot adds them when any response starts.
fn add_answer_headers(resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    for (name, value) in &ctx.cors {
        resp.append_header(name.clone(), value.clone())?;
    }
    traffic::response_headers(&ctx.traffic, resp)
}

/// A bodiless answer of the gateway's own, as Ocelot gives for its errors,
/// keeping the connection when the request carried no body.
fn empty_response(
    session: &mut Session,
    status: u16,
    extra: &[(HeaderName, HeaderValue)],
) -> Result<ResponseHeader> {
    let has_body = session
        .req_header()
        .headers
        .contains_key(header::TRANSFER_ENCODING)
        || session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        // The unread body would be taken for the next request.
        session.set_keepalive(None);
    }
    let mut resp = ResponseHeader::build(status, Some(1 + extra.len()))?;
    // A 204 has no body and so no Content-Length (RFC 9110 §8.6).
    if status != 204 {
        resp.insert_header(header::CONTENT_LENGTH, "0")?;
    }
    for (name, value) in extra {
        resp.append_header(name.clone(), value.clone())?;
    }
    Ok(resp)
}

/// Kestrel's default `MaxRequestHeadersTotalSize`.
const MAX_REQUEST_HEADER_BYTES: usize = 32 * 1024;

/// Finds the route and builds the downstream path: Ocelot's
/// DownstreamRouteFinder and DownstreamUrlCreator. `Err` is the status to answer.
fn route_request(req: &RequestHeader, ctx: &mut Ctx) -> std::result::Result<(), u16> {
    // Kestrel, which Ocelot runs on, refuses request headers over 32 KiB in
    // total with 431; Pingora alone would accept up to 1 MiB.
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_REQUEST_HEADER_BYTES {
        return Err(431);
    }
    // Ocelot 25 refuses header values that are not ASCII with 400.
    if req.headers.values().any(|v| !v.as_bytes().is_ascii()) {
        return Err(400);
    }
    let path = normalize_path(req.uri.path()).map_err(|_| 400u16)?;
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()));
    let headers = Headers(&req.headers);
    let info = RequestInfo {
        method: req.method.as_str(),
        host,
        path: &path,
        query: req.uri.query(),
        headers: &headers,
    };
    let Some(found) = ctx.snapshot.table.find(&info) else {
        log::debug!("no route for {} {}", req.method, path);
        return Err(404);
    };
    let index = match found.target {
        Target::Route(i) => i,
        // Ocelot proxies a single-key aggregate as its route; others are
        // answered by the gateway itself (`aggregate::respond`).
        Target::Aggregate(i) => match crate::aggregate::single_route(&ctx.snapshot, i) {
            Some(route) => route,
            None => {
                ctx.aggregate = Some(crate::aggregate::Matched {
                    index: i,
                    placeholders: found.placeholders,
                    path: path.into_owned(),
                });
                return Ok(());
            }
        },
    };
    let route = ctx.snapshot.routes.get(index).ok_or(500u16)?;
    if let BalancerKind::Unknown(name) = &route.pool.kind {
        log::error!("route {}: no load balancer named '{name}'", route.name);
        return Err(500);
    }
    ctx.downstream = Some(
        route
            .downstream
            .render(&found.placeholders, &path, req.uri.query()),
    );
    if route.policies.needs_match() {
        ctx.matched = Some((found.placeholders, path.into_owned()));
    }
    ctx.route = Some(index);
    Ok(())
}

/// Dynamic routing (Ocelot's DiscoveryDownstreamRouteFinder): `/{service}/{rest}`
/// to `{rest}` on an instance of the service, the query unchanged.
async fn route_dynamic(req: &RequestHeader, ctx: &mut Ctx) -> std::result::Result<(), u16> {
    let snapshot = ctx.snapshot.clone();
    let dynamic = snapshot.dynamic.as_ref().ok_or(404u16)?;
    let path = normalize_path(req.uri.path()).map_err(|_| 400u16)?;
    let (namespace, service, rest) = crate::discovery::dynamic::split(&path);
    let index = dynamic.route(namespace, service).await?;
    let route = snapshot.route(index).ok_or(500u16)?;
    if let BalancerKind::Unknown(name) = &route.pool.kind {
        log::error!("route {}: no load balancer named '{name}'", route.name);
        return Err(500);
    }
    ctx.downstream = Some(DownstreamTarget {
        path: rest.to_string(),
        query: req
            .uri
            .query()
            .filter(|q| !q.is_empty())
            .map(str::to_string),
    });
    ctx.route = Some(index);
    Ok(())
}

impl Gateway {
    /// Ocelot's steps from header transforms to the downstream URL (spec
    /// §7.9): upstream header transforms and request id, authentication,
    /// claims to claims, authorization, claims to headers, query and path.
    /// `Err` is the status to answer, with an empty body.
    async fn identity(&self, session: &mut Session, ctx: &mut Ctx) -> std::result::Result<(), u16> {
        let snapshot = ctx.snapshot.clone();
        let Some(route) = ctx.route.and_then(|i| snapshot.route(i)) else {
            return Ok(());
        };
        let policies = &route.policies;
        // `{RemoteIpAddress}`: the client as IP security sees it (a trusted
        // proxy's X-Forwarded-For included).
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .filter(|_| policies.uses_client_ip())
            .map(|a| {
                crate::traffic::Traffic::current().client_ip(a.ip(), &session.req_header().headers)
            });
        let mut state = policies.prepare(session.req_header_mut(), client_ip);
        ctx.request_id.clone_from(&state.trace_id);
        let auth = self.live.load().auth.clone();
        policies
            .authenticate(&auth, session.req_header(), &mut state)
            .await?;
        let matched = ctx.matched.take();
        let placeholders = matched.as_ref().map(|(p, _)| p);
        policies.authorize(&session.req_header().method, &mut state, |name| {
            placeholders.and_then(|p| p.get(name))
        })?;
        policies.claims_to_headers(session.req_header_mut(), &state)?;
        if let Some((mut placeholders, path)) =
            matched.filter(|_| policies.changes_query() || policies.changes_path())
        {
            // Ocelot adds claim parameters to the request's query and changes
            // placeholders before its URL creator runs: render again with both.
            let query = policies.claims_to_query(&state, session.req_header().uri.query())?;
            for (name, value) in policies.claims_to_path(&state)? {
                placeholders.insert(name, value);
            }
            ctx.downstream = Some(
                route
                    .downstream
                    .render(&placeholders, &path, query.as_deref()),
            );
        }
        ctx.identity = state;
        Ok(())
    }
}

fn default_port(tls: bool) -> u16 {
    if tls {
        443
    } else {
        80
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    /// No downstream modules. Pingora's default adds a response-compression
    /// module at level 0 (disabled), which still costs a module context and
    /// its filter calls on every request; nothing here enables it.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            snapshot: self.state.load_full(),
            route: None,
            downstream: None,
            selected: None,
            started: Instant::now(),
            upstream_started: None,
            upstream_elapsed: None,
            request_id: None,
            identity: RequestState::default(),
            matched: None,
            cors: Vec::new(),
            traffic: RequestTraffic::default(),
            preselected: None,
            cache: None,
            aggregate: None,
            answered_aggregate: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(cors) = self.live.load().cors.clone() {
            let req = session.req_header();
            // Answered before routing and authentication, as ASP.NET's CORS
            // middleware in front of Ocelot does (Ocelot issue #633).
            if Cors::is_preflight(&req.method, &req.headers) {
                let headers = cors.preflight(&req.headers);
                return respond_empty_with(session, 204, &headers).await;
            }
            ctx.cors = cors.response_headers(&req.headers);
        }
        let mut routed = route_request(session.req_header(), ctx);
        if routed == Err(404) && ctx.snapshot.dynamic.is_some() {
            routed = route_dynamic(session.req_header(), ctx).await;
        }
        if let Err(status) = routed {
            return refuse(session, status, ctx).await;
        }
        if let Some(matched) = ctx.aggregate.take() {
            ctx.answered_aggregate = Some(matched.index);
            let env = crate::aggregate::Env {
                snapshot: ctx.snapshot.clone(),
                auth: self.live.load().auth.clone(),
                sticky: self.sticky.clone(),
            };
            return crate::aggregate::respond(session, env, matched, &ctx.cors).await;
        }
        // Ocelot: IP security and rate limiting come before authentication.
        let snapshot = ctx.snapshot.clone();
        if let Some(route) = ctx.route.and_then(|i| snapshot.route(i)) {
            if traffic::request_filter(session, route, &mut ctx.traffic, &ctx.cors).await? {
                return Ok(true);
            }
        }
        if let Err(status) = self.identity(session, ctx).await {
            return refuse(session, status, ctx).await;
        }
        // Ocelot's OutputCache comes after load balancing and URL creation:
        // its key names the chosen backend, so cached routes choose it here.
        if let (Some(route), Some(downstream)) = (
            ctx.route.and_then(|i| snapshot.route(i)),
            ctx.downstream.as_ref(),
        ) {
            if route.cache.is_some() {
                let cookies = session
                    .req_header()
                    .headers
                    .get_all(header::COOKIE)
                    .iter()
                    .map(|v| v.as_bytes());
                if let Ok(Some(selected)) =
                    traffic::select_backend(route, &ctx.traffic, cookies, &self.sticky)
                {
                    ctx.cache =
                        crate::cache::request_key(session, route, downstream, &selected).await?;
                    ctx.preselected = Some(selected);
                }
            }
        }
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let preselected = ctx.preselected.take();
        let route = ctx.route()?;
        let cookies = session
            .req_header()
            .headers
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.as_bytes());
        let selected = match preselected {
            Some(selected) => Some(selected),
            None => traffic::select_backend(route, &ctx.traffic, cookies, &self.sticky)?,
        };
        let Some(selected) = selected else {
            // With service discovery an empty list is Ocelot's ServicesAreEmpty
            // (404); static hosts that cannot be reached are a connection error.
            let status = if route.uses_discovery { 404 } else { 502 };
            log::warn!("route {}: no downstream service available", route.name);
            return Err(respond_with(status, "no downstream service available"));
        };
        let sni = if selected.meta.host.parse::<std::net::IpAddr>().is_ok() {
            String::new()
        } else {
            selected.meta.host.to_string()
        };
        let mut peer = HttpPeer::new(selected.addr, route.tls, sni);
        let opts = &mut peer.options;
        // Ocelot's route timeout (or the shorter QoS one) bounds the whole
        // downstream call; per phase here.
        let timeout = route.traffic.downstream_timeout(route.timeout);
        opts.connection_timeout = Some(timeout);
        opts.total_connection_timeout = Some(timeout);
        opts.read_timeout = Some(timeout);
        opts.write_timeout = Some(timeout);
        opts.idle_timeout = Some(Duration::from_secs(60));
        opts.verify_cert = route.verify_cert;
        opts.verify_hostname = route.verify_cert;
        // HTTP version and ALPN (DownstreamHttpVersion/Policy); an upgraded
        // connection idles as long as the setting allows, on both sides.
        let upgrade = session.is_upgrade_req();
        route
            .protocol
            .configure_peer(&mut peer, upgrade, self.websocket_idle_timeout);
        if upgrade {
            session.set_read_timeout(Some(self.websocket_idle_timeout));
        }
        ctx.selected = Some(selected);
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let route = ctx.route()?;
        let target = ctx
            .downstream
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no downstream path"))?;
        let path_and_query = match &target.query {
            Some(q) => format!("{}?{}", target.path, q),
            None => target.path.clone(),
        };
        let uri = http::Uri::builder()
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| {
                Error::because(
                    ErrorType::HTTPStatus(400),
                    "downstream path is not a valid URI",
                    e,
                )
            })?;
        upstream.set_uri(uri);
        if let Some(method) = &route.method {
            upstream.set_method(method.clone());
        }
        if let Some(selected) = &ctx.selected {
            // Host names the downstream service, as HttpClient would send it.
            let port = selected.addr.port();
            let host = if port == default_port(route.tls) {
                selected.meta.host.to_string()
            } else {
                selected.meta.authority.to_string()
            };
            upstream.insert_header(header::HOST, host)?;
        }
        let upgrade = session.is_upgrade_req();
        let listed: Vec<HeaderName> = upstream
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            if !(upgrade && name == header::UPGRADE) {
                upstream.remove_header(&name);
            }
        }
        for name in HOP_BY_HOP {
            if upgrade && (name == "connection" || name == "upgrade") {
                continue;
            }
            upstream.remove_header(name);
        }
        let unframed_body =
            !session.is_body_empty() && !upstream.headers.contains_key(header::CONTENT_LENGTH);
        route
            .protocol
            .finish_request(session.req_header(), upstream, upgrade, unframed_body)?;
        Ok(())
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snapshot = ctx.snapshot.clone();
        match ctx.route.and_then(|i| snapshot.route(i)) {
            Some(route) => {
                traffic::proxy_upstream_filter(session, route, &mut ctx.traffic, &ctx.cors).await
            }
            None => Ok(true),
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        // QoS timeouts answer with their own 503; the breaker counts failures.
        let snapshot = ctx.snapshot.clone();
        let route = ctx.route.and_then(|i| snapshot.route(i));
        if let Some(done) =
            traffic::fail_to_proxy(session, e, route, &mut ctx.traffic, &ctx.cors).await
        {
            return done;
        }
        let code = status_for(e);
        log::debug!(
            "route {}: {e}",
            ctx.route().map(|r| r.name.as_str()).unwrap_or("-")
        );
        if let Some(code) = code {
            // Ocelot's error responses are the bare status: no body, and only the
            // headers set when any response starts (CORS, rate limiting).
            match ResponseHeader::build(code, Some(1)) {
                Ok(mut resp) => {
                    let _ = resp.insert_header(header::CONTENT_LENGTH, "0");
                    let _ = add_answer_headers(&mut resp, ctx);
                    if let Err(write_error) = session
                        .write_error_response(resp, bytes::Bytes::new())
                        .await
                    {
                        log::debug!("cannot send error response: {write_error}");
                    }
                }
                Err(build_error) => log::error!("cannot build a {code} response: {build_error}"),
            }
        }
        FailToProxy {
            error_code: code.unwrap_or(0),
            can_reuse_downstream: false,
        }
    }

    // Output cache (`crate::cache`): on for requests that got a key in
    // `request_filter`, with Ocelot's semantics rather than HTTP caching's.

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        crate::cache::enable(session, ctx.cache.as_ref());
        Ok(())
    }

    fn cache_key_callback(
        &self,
        _session: &Session,
        ctx: &mut Ctx,
    ) -> Result<pingora_cache::CacheKey> {
        crate::cache::cache_key(ctx.cache.as_ref())
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<pingora_cache::RespCacheable> {
        Ok(crate::cache::response_cacheable(ctx.cache.as_ref(), resp))
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        _meta: &pingora_cache::CacheMeta,
        _hit_handler: &mut pingora_cache::HitHandler,
        is_fresh: bool,
        _ctx: &mut Ctx,
    ) -> Result<Option<pingora_cache::ForcedFreshness>> {
        // Ocelot's entries expire absolutely: never revalidate a stale one.
        Ok((!is_fresh).then_some(pingora_cache::ForcedFreshness::ForceMiss))
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut Ctx,
        _error: Option<&Error>,
    ) -> bool {
        false
    }

    fn cache_not_modified_filter(
        &self,
        _session: &Session,
        _resp: &ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<bool> {
        // Ocelot answers a cached response whole, whatever the conditions.
        Ok(false)
    }

    fn range_header_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> pingora_proxy::RangeType {
        pingora_proxy::RangeType::None
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_elapsed = ctx.upstream_started.map(|t| t.elapsed());
        traffic::upstream_response(&mut ctx.traffic, upstream.status.as_u16());
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        traffic::response_headers(&ctx.traffic, response)?;
        if let Ok(route) = ctx.route() {
            // A cache hit never reached `upstream_peer`: the preselected backend.
            let base_url = ctx.selected.as_ref().or(ctx.preselected.as_ref()).map(|s| {
                crate::headers::downstream_base_url(route.tls, &s.meta.host, s.addr.port())
            });
            route
                .policies
                .apply_to_response(response, &ctx.identity, base_url);
        }
        for (name, value) in &ctx.cors {
            // The gateway owns CORS: its headers replace the service's (two
            // Access-Control-Allow-Origin values make browsers refuse), but
            // Vary only grows.
            if name == header::VARY {
                response.append_header(name.clone(), value.clone())?;
            } else {
                response.insert_header(name.clone(), value.clone())?;
            }
        }
        if self.readiness.is_draining() {
            // Shutting down or upgrading: tell keep-alive clients to reconnect
            // (to another replica or the new process) instead of having the
            // connection closed under their next request.
            session.set_keepalive(None);
            response.insert_header(header::CONNECTION, "close")?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        let route = ctx.route().map(|r| r.name.as_str()).unwrap_or("-");
        METRICS
            .upstream_connect_errors
            .with_label_values(&[route])
            .inc();
        // Passive health: skip this backend for a while; retry elsewhere once.
        let snapshot = ctx.snapshot.clone();
        let addr = ctx.selected.as_ref().map(|s| s.addr);
        traffic::fail_to_connect(
            ctx.route.and_then(|i| snapshot.route(i)),
            &mut ctx.traffic,
            addr,
            e,
        )
    }

    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        // Pingora's error log line ends with this: name the route, not just the path.
        let req = session.req_header();
        let route = ctx.route().map(|r| r.name.as_str()).unwrap_or("-");
        format!("{} {}, route: {route}", req.method, req.uri)
    }

    /// A client that went away mid-request (or timed out sending it) is not
    /// a gateway failure: Pingora would log each one at ERROR, which under
    /// load buries real errors. nginx logs them at info; here the access log
    /// line carries the error, and debug logging shows it too.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        let from_client = error.esource() == &ErrorSource::Downstream;
        if from_client {
            log::debug!("client side: {error}");
        }
        from_client
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let aggregate = ctx
            .answered_aggregate
            .and_then(|i| ctx.snapshot.aggregates.get(i));
        let route = match (ctx.route(), aggregate) {
            (Ok(compiled), _) => compiled.name.as_str(),
            (Err(_), Some(aggregate)) => aggregate.name.as_str(),
            (Err(_), None) => "",
        };
        let method = session.req_header().method.as_str();
        let elapsed = ctx.started.elapsed();
        if !route.is_empty() {
            if let Ok(compiled) = ctx.route() {
                compiled
                    .metrics
                    .record(route, method, status, elapsed, ctx.upstream_elapsed);
            } else if let Some(aggregate) = aggregate {
                aggregate
                    .metrics
                    .record(route, method, status, elapsed, None);
            }
        }
        if self.live.load().access_log {
            let line = AccessLogLine {
                time: humantime::format_rfc3339_millis(SystemTime::now()),
                request_id: ctx.request_id.as_deref(),
                route,
                method,
                path: session.req_header().uri.path(),
                status,
                upstream: ctx.selected.as_ref().map(|s| s.addr),
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                upstream_ms: ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
                bytes_in: session.body_bytes_read(),
                bytes_out: session.body_bytes_sent(),
                client: session.client_addr().map(|a| a.to_string()),
                error: error.map(|e| e.to_string()),
            };
            crate::access_log::write_line(&line);
        }
        // Ends the request's in-flight count for LeastConnection.
        ctx.selected = None;
    }
}
