//! The gateway as a Pingora `ProxyHttp`: each phase hands its work to the
//! pipeline (`pipeline.rs`, Ocelot's request order) or to a feature module,
//! and every answer of the gateway's own goes through `answer.rs`.
//!
//! `request_filter` runs the pipeline (or the multiplexer for an aggregate);
//! `upstream_peer` asks the route's balancer; `proxy_upstream_filter` the
//! circuit breaker; `upstream_request_filter` maps the request for the
//! service; `response_filter` applies the downstream header transforms,
//! rate-limit and CORS headers; `fail_to_proxy` maps failures to Ocelot's
//! statuses; `logging` records metrics and the access-log line.

use crate::access_log;
use crate::answer::{self, Answer, AnswerHeaders, Refusal};
use crate::balancing::{Selected, StickySessions};
use crate::cors::{self, Cors};
use crate::headers::downstream_base_url;
use crate::lifecycle::Readiness;
use crate::metrics::METRICS;
use crate::multiplexer;
use crate::otel::{Finished, RequestTrace, Tracing};
use crate::pipeline::{self, CallFailure, CallState, Found, Request, RequestState, Retryable};
use crate::reload::LiveSettings;
use crate::request_mapper;
use crate::retries::Outcome as RetryOutcome;
use crate::snapshot::{CompiledRoute, Env, Snapshot};
use crate::swagger::{Clients, Docs, Page};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header::{self, HeaderName, HeaderValue};
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
    /// The stores snapshots are built with (limiter, breakers, health, …).
    pub env: Arc<Env>,
    pub sticky: Arc<StickySessions>,
    pub readiness: Arc<Readiness>,
    /// Read and write timeout of upgraded (WebSocket) connections, in place of
    /// the route's `Timeout` (setting `websocket_idle_timeout_seconds`).
    pub websocket_idle_timeout: Duration,
    /// The parts of the settings that a settings reload replaces.
    pub live: Arc<ArcSwap<LiveSettings>>,
    /// OpenTelemetry tracing, when a collector is configured.
    pub tracing: Option<Arc<Tracing>>,
}

/// Per-request state.
pub struct Ctx {
    snapshot: Arc<Snapshot>,
    route: Option<usize>,
    started: Instant,
    /// What the pipeline learnt.
    state: RequestState,
    /// The downstream call: breaker permit, backends tried.
    call: CallState,
    selected: Option<Selected>,
    /// The backend picked in `request_filter` for a cached route (the cache
    /// key names it, and Pingora looks the cache up before `upstream_peer`).
    preselected: Option<Box<Selected>>,
    upstream_started: Option<Instant>,
    upstream_elapsed: Option<Duration>,
    /// CORS headers for the response (empty without an allowed `Origin`).
    cors: Vec<(HeaderName, HeaderValue)>,
    /// The output-cache key of this request, when its route caches.
    cache: Option<crate::cache::RequestCache>,
    /// The aggregate this request was answered with.
    aggregate: Option<usize>,
    /// Why the gateway answered itself, if it did.
    refusal: Option<Refusal>,
    /// The request's spans, when it is traced. Boxed, as the backend
    /// preselected for a cached route: rarely there, and the context is part
    /// of every request's future (twice: Pingora moves it into a local).
    trace: Option<Box<RequestTrace>>,
}

/// Route `index` of `snapshot`: a free function, so that the route can be
/// borrowed from the context while other fields change.
fn route_at(snapshot: &Snapshot, index: Option<usize>) -> Option<&CompiledRoute> {
    index.and_then(|i| snapshot.route(i))
}

fn no_route() -> Box<Error> {
    Error::explain(ErrorType::InternalError, "no route selected")
}

impl Ctx {
    fn route(&self) -> Option<&CompiledRoute> {
        route_at(&self.snapshot, self.route)
    }

    /// The label under which metrics and logs name the request.
    fn label(&self) -> &str {
        match (self.route(), self.aggregate) {
            (Some(route), _) => &route.name,
            (None, Some(i)) => self
                .snapshot
                .aggregates
                .get(i)
                .map_or("", |a| a.name.as_str()),
            (None, None) => "",
        }
    }

    fn answer_headers(&self) -> AnswerHeaders<'_> {
        AnswerHeaders {
            cors: &self.cors,
            rate_limit: &self.state.rate_limit_headers,
        }
    }
}

impl Gateway {
    /// Answers a refused request: counted, logged, written.
    async fn refuse(&self, session: &mut Session, ctx: &mut Ctx, refusal: Refusal) -> Result<bool> {
        refusal.record(ctx.label());
        answer::write(session, &refusal.answer(), ctx.answer_headers()).await?;
        ctx.refusal = Some(refusal);
        Ok(true)
    }

    /// An aggregate of several routes: the multiplexer's answer.
    async fn aggregate(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        matched: pipeline::AggregateMatch,
    ) -> Result<bool> {
        ctx.aggregate = Some(matched.index);
        if let (Some(trace), Some(aggregate)) =
            (&ctx.trace, ctx.snapshot.aggregates.get(matched.index))
        {
            trace.matched(&aggregate.name);
        }
        let parts = multiplexer::Parts {
            env: self.env.clone(),
            snapshot: ctx.snapshot.clone(),
            auth: self.live.load().auth.clone(),
            sticky: self.sticky.clone(),
            trace: ctx.trace.as_deref().map(RequestTrace::parent),
        };
        match multiplexer::answer(session, parts, matched).await? {
            Ok(answer) => {
                answer::write(session, &answer, ctx.answer_headers()).await?;
                Ok(true)
            }
            Err(refusal) => self.refuse(session, ctx, refusal).await,
        }
    }

    /// `SwaggerEndPoints` documents and Swagger UI, before any route, as
    /// MMLib's middleware runs before Ocelot's.
    async fn documentation(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        docs: &Docs,
        page: Page,
    ) -> Result<bool> {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let host = session
            .req_header()
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| session.req_header().uri.authority().map(|a| a.as_str()))
            .unwrap_or("localhost")
            .to_string();
        let server = format!("{}://{host}", if tls { "https" } else { "http" });
        let clients = Clients {
            verifying: self.env.aggregation.http(true),
            insecure: self.env.aggregation.http(false),
            max_body_bytes: self.env.aggregation.max_body_bytes,
        };
        match docs.serve(&page, &server, &clients, &self.sticky).await {
            Ok(served) => {
                answer::write(session, &Answer::from(served), ctx.answer_headers()).await?;
                Ok(true)
            }
            Err(failure) => {
                self.refuse(session, ctx, Refusal::SwaggerDocument(failure))
                    .await
            }
        }
    }

    /// Ocelot's OutputCache comes after load balancing and URL creation: its
    /// key names the chosen backend, so a cached route chooses it here.
    async fn prepare_cache(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let Some(route) = route_at(&ctx.snapshot, ctx.route) else {
            return Ok(());
        };
        let (Some(policy), Some(downstream)) = (&route.cache, &ctx.state.downstream) else {
            return Ok(());
        };
        let headers = &session.req_header().headers;
        if let Ok(selected) =
            pipeline::select_backend(&self.env, route, &ctx.call, headers, &self.sticky)
        {
            ctx.cache = crate::cache::request_key(
                session,
                policy,
                route.method.as_ref(),
                route.tls,
                downstream,
                &selected,
            )
            .await?;
            ctx.preselected = Some(Box::new(selected));
        }
        Ok(())
    }
}

/// What a retry decision needs of the session.
fn retryable<'a>(session: &'a Session, selected: Option<&Selected>) -> Retryable<'a> {
    Retryable {
        method: &session.req_header().method,
        replayable: !session.as_ref().retry_buffer_truncated(),
        addr: selected.map(|s| s.addr),
    }
}

/// How a failed proxy attempt counts for QoS.
fn call_failure(e: &Error) -> CallFailure {
    if answer::is_downstream_timeout(e) {
        CallFailure::Timeout
    } else if e.esource() == &ErrorSource::Upstream {
        CallFailure::Connection
    } else {
        CallFailure::Other
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
            started: Instant::now(),
            state: RequestState::default(),
            call: CallState::default(),
            selected: None,
            preselected: None,
            upstream_started: None,
            upstream_elapsed: None,
            cors: Vec::new(),
            cache: None,
            aggregate: None,
            refusal: None,
            trace: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(tracing) = &self.tracing {
            let client = session.client_addr().and_then(|a| a.as_inet()).copied();
            let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
            let trace = RequestTrace::start(tracing, session.req_header(), client, tls);
            ctx.state.trace_id = Some(trace.trace_id());
            ctx.trace = Some(Box::new(trace));
        }
        let live = self.live.load();
        if let Some(cors) = &live.cors {
            let req = session.req_header();
            // Answered before routing and authentication, as ASP.NET's CORS
            // middleware in front of Ocelot does (Ocelot issue #633).
            if Cors::is_preflight(&req.method, &req.headers) {
                let preflight = cors.preflight(&req.headers);
                let extra = AnswerHeaders {
                    cors: &preflight,
                    rate_limit: &[],
                };
                answer::write(session, &Answer::empty(204), extra).await?;
                return Ok(true);
            }
            ctx.cors = cors.response_headers(&req.headers);
        }
        let reads = matches!(
            session.req_header().method,
            http::Method::GET | http::Method::HEAD
        );
        // The snapshot's docs are shared only for a documentation page.
        let documentation = ctx
            .snapshot
            .docs
            .as_ref()
            .filter(|_| reads)
            .and_then(|docs| {
                docs.page(session.req_header().uri.path())
                    .map(|page| (docs.clone(), page))
            });
        if let Some((docs, page)) = documentation {
            return self.documentation(session, ctx, &docs, page).await;
        }
        let found = match pipeline::find_route(&self.env, &ctx.snapshot, session.req_header()).await
        {
            Ok(found) => found,
            Err(refusal) => return self.refuse(session, ctx, refusal).await,
        };
        let (index, matched) = match found {
            Found::Route { index, matched } => (index, matched),
            Found::Aggregate(matched) => return self.aggregate(session, ctx, matched).await,
        };
        ctx.route = Some(index);
        let route = route_at(&ctx.snapshot, ctx.route).ok_or_else(no_route)?;
        if let Some(trace) = &ctx.trace {
            trace.matched(&route.name);
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let upgrade = session.is_upgrade_req();
        let mut req = Request {
            head: session.req_header_mut(),
            peer,
            upgrade,
        };
        let result = pipeline::run(
            &self.env,
            &live.auth,
            route,
            matched,
            &mut req,
            &mut ctx.state,
        )
        .await;
        if let Err(refusal) = result {
            return self.refuse(session, ctx, refusal).await;
        }
        self.prepare_cache(session, ctx).await?;
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = route_at(&ctx.snapshot, ctx.route).ok_or_else(no_route)?;
        let selected = match ctx.preselected.take() {
            Some(selected) => *selected,
            None => {
                let headers = &session.req_header().headers;
                match pipeline::select_backend(&self.env, route, &ctx.call, headers, &self.sticky) {
                    Ok(selected) => selected,
                    Err(refusal) => {
                        // Answered by `fail_to_proxy`, which Pingora calls next.
                        refusal.record(&route.name);
                        let status = refusal.status();
                        ctx.refusal = Some(refusal);
                        return Err(Error::explain(
                            ErrorType::HTTPStatus(status),
                            "no downstream service available",
                        ));
                    }
                }
            }
        };
        let upgrade = session.is_upgrade_req();
        let timeout = pipeline::attempt_started(route, &mut ctx.call);
        let peer = route.protocol.peer(
            &selected,
            route.tls,
            route.verify_cert,
            timeout,
            upgrade,
            self.websocket_idle_timeout,
        );
        if upgrade {
            session.set_read_timeout(Some(self.websocket_idle_timeout));
        }
        if let (Some(trace), Some(target)) = (&mut ctx.trace, &ctx.state.downstream) {
            let url = format!(
                "{}://{}{}",
                if route.tls { "https" } else { "http" },
                selected.meta.authority,
                request_mapper::uri_text(target)
            );
            trace.attempt_started(selected.addr, &selected.meta.host, &url);
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
        let route = ctx.route().ok_or_else(no_route)?;
        let target = ctx
            .state
            .downstream
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no downstream path"))?;
        if !request_mapper::asks_for(upstream, target) {
            upstream.set_uri(request_mapper::uri(target)?);
        }
        if let Some(method) = &route.method {
            upstream.set_method(method.clone());
        }
        if let Some(selected) = &ctx.selected {
            let host = request_mapper::host_header(selected, route.tls).ok_or_else(|| {
                Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "the downstream host name is not a valid Host header",
                )
            })?;
            request_mapper::set_host(upstream, host.clone())?;
        }
        let upgrade = session.is_upgrade_req();
        request_mapper::remove_hop_by_hop(upstream, upgrade);
        if let Some(trace) = &ctx.trace {
            for (name, value) in trace.propagation().0 {
                upstream.insert_header(name, value)?;
            }
        }
        let unframed_body =
            !session.is_body_empty() && !upstream.headers.contains_key(header::CONTENT_LENGTH);
        route
            .protocol
            .finish_request(session.req_header(), upstream, upgrade, unframed_body)
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(route) = route_at(&ctx.snapshot, ctx.route) else {
            return Ok(true);
        };
        match pipeline::admit(route, &mut ctx.call, session.is_upgrade_req()) {
            Ok(()) => Ok(true),
            Err(refusal) => self.refuse(session, ctx, refusal).await.map(|_| false),
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let response_started = session.response_written().is_some();
        let refusal = match (ctx.refusal.clone(), route_at(&ctx.snapshot, ctx.route)) {
            // Refused in `upstream_peer` (already counted there).
            (Some(refusal), _) => Some(refusal),
            (None, Some(route)) => {
                let refusal =
                    pipeline::call_failed(route, &mut ctx.call, call_failure(e), response_started);
                if let Some(refusal) = &refusal {
                    refusal.record(&route.name);
                }
                refusal
            }
            (None, None) => None,
        };
        log::debug!("route {}: {e}", ctx.label());
        let answer = match &refusal {
            Some(refusal) => Some(refusal.answer()),
            None => answer::status_for(e).map(Answer::empty),
        };
        let code = answer.as_ref().map_or(0, |a| a.status);
        if let Some(answer) = answer {
            // The connection is not kept after a failure.
            session.set_keepalive(None);
            if let Err(write_error) = answer::write(session, &answer, ctx.answer_headers()).await {
                log::debug!("cannot send error response: {write_error}");
            }
        }
        ctx.refusal = refusal;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    // Output cache (`crate::cache`): on for requests that got a key in
    // `request_filter`, with Ocelot's semantics rather than HTTP caching's.

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        crate::cache::enable(session, ctx.cache.as_ref(), self.env.cache);
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
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream.status.as_u16();
        if let Some(trace) = &mut ctx.trace {
            trace.attempt_answered(status);
        }
        if status >= 500 {
            if let Some(route) = route_at(&ctx.snapshot, ctx.route) {
                let retryable = retryable(session, ctx.selected.as_ref());
                if pipeline::retry(
                    route,
                    &mut ctx.call,
                    RetryOutcome::Status(status),
                    &retryable,
                ) {
                    // Nothing of this response reaches the client: Pingora
                    // drops the connection and asks `upstream_peer` again.
                    let mut e = Error::explain(
                        ErrorType::HTTPStatus(status),
                        "downstream service answered with a status that is retried",
                    );
                    e.set_retry(true);
                    if let Some(trace) = &mut ctx.trace {
                        trace.attempt_failed(&status.to_string());
                    }
                    return Err(e.into_up());
                }
            }
        }
        ctx.upstream_elapsed = ctx.upstream_started.map(|t| t.elapsed());
        pipeline::answered(&mut ctx.call, status);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for (name, value) in &ctx.state.rate_limit_headers {
            response.insert_header(*name, value.as_str())?;
        }
        if let Some(route) = ctx.route() {
            if !route.headers.downstream.is_empty() {
                let mut values = ctx.state.placeholders();
                // A cache hit never reached `upstream_peer`: the preselected backend.
                values.downstream_base_url = ctx
                    .selected
                    .as_ref()
                    .or(ctx.preselected.as_deref())
                    .map(|s| downstream_base_url(route.tls, &s.meta.host, s.addr.port()));
                route
                    .headers
                    .downstream
                    .apply_to_response(response, &values);
            }
        }
        cors::apply_to_response(response, &ctx.cors)?;
        self.readiness.close_when_draining(session, response)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(trace) = &mut ctx.trace {
            trace.attempt_failed(e.etype().as_str());
        }
        let Some(route) = route_at(&ctx.snapshot, ctx.route) else {
            return e;
        };
        METRICS
            .upstream_connect_errors
            .with_label_values(&[&route.name])
            .inc();
        let connect_failure = matches!(
            e.etype(),
            ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectTimedout
                | ErrorType::ConnectError
        );
        let retryable = retryable(session, ctx.selected.as_ref());
        if connect_failure && pipeline::connect_failed(&self.env, route, &mut ctx.call, &retryable)
        {
            log::info!("route {}: trying again after: {e}", route.ocelot_name);
            ctx.call.take_retry_decision();
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if let Some(trace) = &mut ctx.trace {
            trace.attempt_failed(e.etype().as_str());
        }
        if ctx.call.take_retry_decision() {
            // Decided in `upstream_response_filter` (a retried status).
            return e;
        }
        let retryable = retryable(session, ctx.selected.as_ref());
        // Pingora's own rule first: a pooled connection that turned out to
        // be closed is tried again for idempotent requests.
        if !session.req_header().method.is_idempotent() || !retryable.replayable {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        if e.retry() || session.response_written().is_some() {
            return e;
        }
        let Some(route) = route_at(&ctx.snapshot, ctx.route) else {
            return e;
        };
        let outcome = if answer::is_downstream_timeout(&e) {
            RetryOutcome::Timeout
        } else if e.esource() == &ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed
                    | ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::H2Error
            )
        {
            RetryOutcome::Reset
        } else {
            return e;
        };
        if pipeline::retry(route, &mut ctx.call, outcome, &retryable) {
            ctx.call.take_retry_decision();
            e.set_retry(true);
        }
        e
    }

    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        // Pingora's error log line ends with this: name the route, not just the path.
        let req = session.req_header();
        format!("{} {}, route: {}", req.method, req.uri, ctx.label())
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
        if let Some(trace) = ctx.trace.take() {
            trace.finish(Finished {
                status,
                refusal: ctx.refusal.as_ref().map(Refusal::name),
                request_body_bytes: session.body_bytes_read(),
                response_body_bytes: session.body_bytes_sent(),
                error: error.map(|e| e.etype().as_str().to_string()),
            });
        }
        let method = session.req_header().method.as_str();
        let elapsed = ctx.started.elapsed();
        let label = ctx.label();
        if let Some(route) = ctx.route() {
            route
                .metrics
                .record(label, method, status, elapsed, ctx.upstream_elapsed);
        } else if let Some(aggregate) = ctx.aggregate.and_then(|i| ctx.snapshot.aggregates.get(i)) {
            aggregate
                .metrics
                .record(label, method, status, elapsed, None);
        }
        if self.live.load().access_log {
            let line = access_log::Line {
                time: humantime::format_rfc3339_millis(SystemTime::now()),
                request_id: ctx.state.request_id.as_deref(),
                trace_id: ctx.state.trace_id.as_deref(),
                route: label,
                method,
                path: session.req_header().uri.path(),
                status,
                upstream: ctx.selected.as_ref().map(|s| s.addr),
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                upstream_ms: ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
                bytes_in: session.body_bytes_read(),
                bytes_out: session.body_bytes_sent(),
                client: session.client_addr().map(|a| a.to_string()),
                refusal: ctx.refusal.as_ref().map(Refusal::name),
                error: error.map(|e| e.to_string()),
            };
            access_log::write_line(&line);
        }
        // Ends the request's in-flight count for LeastConnection.
        ctx.selected = None;
    }
}

/// The hooks over a Pingora session on an in-memory stream: what each phase
/// writes and decides, without sockets.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;
    use crate::settings::Settings;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn gateway(ocelot: serde_json::Value, settings: &str) -> Gateway {
        let settings: Settings = serde_yaml::from_str(settings).expect("settings");
        let env = Arc::new(Env::from_settings(&settings).expect("env"));
        let loaded =
            ocelot_compat::from_json(ocelot, std::path::Path::new("ocelot.json")).expect("config");
        let auth = Authenticator::from_settings(&settings.auth_providers).expect("auth");
        let snapshot = Snapshot::build(loaded, None, &env, &auth);
        let live = LiveSettings::assemble(&settings, &snapshot, auth).expect("live");
        Gateway {
            state: Arc::new(ArcSwap::from_pointee(snapshot)),
            env,
            sticky: Arc::new(StickySessions::default()),
            readiness: Arc::new(Readiness::default()),
            websocket_idle_timeout: Duration::from_secs(60),
            live: Arc::new(ArcSwap::from_pointee(live)),
            tracing: None,
        }
    }

    /// A session that has read `request`; the other end of its stream.
    async fn session(request: &str) -> (Session, DuplexStream) {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        client.write_all(request.as_bytes()).await.expect("write");
        let mut session = Session::new_h1(Box::new(server));
        assert!(session.read_request().await.expect("read"), "a request");
        (session, client)
    }

    /// What the session wrote, once it is closed.
    async fn written(session: Session, mut client: DuplexStream) -> String {
        drop(session);
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).to_lowercase()
    }

    fn route(extra: serde_json::Value) -> serde_json::Value {
        let mut route = serde_json::json!({
            "UpstreamPathTemplate": "/users/{id}",
            "DownstreamPathTemplate": "/api/users/{id}",
            "DownstreamScheme": "http",
            "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": 5001}],
        });
        if let (Some(r), serde_json::Value::Object(e)) = (route.as_object_mut(), extra) {
            r.extend(e);
        }
        serde_json::json!({"Routes": [route]})
    }

    #[tokio::test]
    async fn request_filter_answers_a_refusal_with_cors_headers() {
        let gw = gateway(
            route(serde_json::json!({})),
            "cors: {allowed_origins: ['https://app.example']}",
        );
        let (mut s, client) =
            session("GET /nowhere HTTP/1.1\r\nHost: gw\r\nOrigin: https://app.example\r\n\r\n")
                .await;
        let mut ctx = gw.new_ctx();
        assert!(gw.request_filter(&mut s, &mut ctx).await.expect("filter"));
        assert_eq!(ctx.refusal, Some(Refusal::NoRoute));
        let out = written(s, client).await;
        assert!(out.starts_with("http/1.1 404"), "{out}");
        assert!(out.contains("content-length: 0"), "{out}");
        assert!(
            out.contains("access-control-allow-origin: https://app.example"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn request_filter_runs_the_pipeline_and_the_request_is_mapped() {
        let gw = gateway(
            route(serde_json::json!({
                "UpstreamHeaderTransform": {"X-Who": "{UpstreamHost}"},
                "RequestIdKey": "X-Request-Id",
            })),
            "{}",
        );
        let (mut s, _client) = session(
            "GET /users/7?x=1 HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive, x-private\r\nX-Private: 1\r\nX-Request-Id: r-1\r\n\r\n",
        )
        .await;
        let mut ctx = gw.new_ctx();
        assert!(!gw.request_filter(&mut s, &mut ctx).await.expect("filter"));
        assert_eq!(ctx.state.request_id.as_deref(), Some("r-1"));
        assert_eq!(s.req_header().headers["x-who"], "gw");
        gw.state.load().routes[0].pool.refresh().await;
        let peer = gw.upstream_peer(&mut s, &mut ctx).await.expect("peer");
        assert_eq!(peer._address.to_string(), "127.0.0.1:5001");
        let mut upstream = s.req_header().clone();
        gw.upstream_request_filter(&mut s, &mut upstream, &mut ctx)
            .await
            .expect("mapped");
        assert_eq!(upstream.uri.to_string(), "/api/users/7?x=1");
        assert_eq!(upstream.headers["host"], "127.0.0.1:5001");
        assert!(!upstream.headers.contains_key("x-private"));
        assert!(!upstream.headers.contains_key("connection"));
        assert_eq!(upstream.headers["x-request-id"], "r-1");
    }

    #[tokio::test]
    async fn an_open_breaker_is_answered_in_proxy_upstream_filter() {
        let gw = gateway(
            route(serde_json::json!({
                "QoSOptions": {"MinimumThroughput": 2, "BreakDuration": 60000}
            })),
            "{}",
        );
        let breaker = gw.state.load().routes[0]
            .qos
            .as_ref()
            .expect("qos")
            .breaker
            .clone();
        breaker.record_failure();
        breaker.record_failure();
        let (mut s, client) = session("GET /users/7 HTTP/1.1\r\nHost: gw\r\n\r\n").await;
        let mut ctx = gw.new_ctx();
        assert!(!gw.request_filter(&mut s, &mut ctx).await.expect("filter"));
        assert!(!gw
            .proxy_upstream_filter(&mut s, &mut ctx)
            .await
            .expect("answered"));
        let out = written(s, client).await;
        assert!(
            out.starts_with("http/1.1 503 circuit breaker is open"),
            "{out}"
        );
        assert!(
            out.ends_with("circuit breaker is open for route -> /users/{id}"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_qos_timeout_is_answered_by_fail_to_proxy() {
        let gw = gateway(
            route(serde_json::json!({"QoSOptions": {"Timeout": 500}})),
            "{}",
        );
        let (mut s, client) = session("GET /users/7 HTTP/1.1\r\nHost: gw\r\n\r\n").await;
        let mut ctx = gw.new_ctx();
        assert!(!gw.request_filter(&mut s, &mut ctx).await.expect("filter"));
        assert!(gw
            .proxy_upstream_filter(&mut s, &mut ctx)
            .await
            .expect("admitted"));
        let timeout = Error::new_up(ErrorType::ReadTimedout);
        let failed = gw.fail_to_proxy(&mut s, &timeout, &mut ctx).await;
        assert_eq!(failed.error_code, 503);
        assert!(matches!(ctx.refusal, Some(Refusal::QosTimeout { .. })));
        let out = written(s, client).await;
        assert!(out.starts_with("http/1.1 503 request timeout"), "{out}");
        assert!(
            out.ends_with("request timeout for route -> /users/{id}"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn response_filter_adds_transforms_limits_and_closes_when_draining() {
        let gw = gateway(
            route(serde_json::json!({
                "DownstreamHeaderTransform": {"X-Served-By": "gateway"},
                "RateLimitOptions": {"Limit": 5, "Period": "1m", "PeriodTimespan": 60},
            })),
            "{}",
        );
        let (mut s, _client) =
            session("GET /users/7 HTTP/1.1\r\nHost: gw\r\nOc-Client: me\r\n\r\n").await;
        let mut ctx = gw.new_ctx();
        assert!(!gw.request_filter(&mut s, &mut ctx).await.expect("filter"));
        gw.readiness.start_draining();
        let mut resp = ResponseHeader::build(200, None).expect("response");
        gw.response_filter(&mut s, &mut resp, &mut ctx)
            .await
            .expect("filtered");
        assert_eq!(resp.headers["x-served-by"], "gateway");
        assert_eq!(resp.headers["x-ratelimit-remaining"], "4");
        assert_eq!(resp.headers["connection"], "close");
    }
}
