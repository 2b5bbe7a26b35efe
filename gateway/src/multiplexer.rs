//! Answers a request that matched an aggregate of several routes (Ocelot's
//! `src/Multiplexer/MultiplexingMiddleware.cs`): each route of `RouteKeys`
//! becomes a sub-request that runs [`pipeline::run`] exactly as a direct
//! request to that route would, then goes to a backend of the route through
//! the aggregation HTTP client, with the route's balancer, circuit breaker
//! and timeout. The aggregator makes one answer of the outcomes.
//!
//! Not applied to sub-requests, as in Ocelot: the output cache (a
//! sub-request always reaches the service), downstream header transforms
//! and response headers (the aggregate's response has none of them). The
//! passive-health retry on another backend is the proxy's only.

use crate::aggregate::aggregators::{self, Outcome, Part, SubError};
use crate::aggregate::{jsonpath, AggregatorConfig, AggregatorKind};
use crate::answer::{Answer, Refusal};
use crate::auth::Authenticator;
use crate::balancing::{Selected, StickySessions};
use crate::otel::TraceParent;
use crate::pipeline::{
    self, AggregateMatch, CallFailure, CallState, Request, RequestState, Retryable,
};
use crate::request_mapper;
use crate::retries::Outcome as RetryOutcome;
use crate::snapshot::{CompiledRoute, Env, Snapshot};
use bytes::Bytes;
use http::header::{self, HeaderMap};
use ocelot_compat::table::Placeholders;
use ocelot_compat::template::DownstreamTarget;
use pingora_error::Result;
use pingora_proxy::Session;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Sub-requests of one aggregate in flight at once. Ocelot starts them all;
/// a `JsonPath` over a long array would otherwise open that many
/// connections together.
const MAX_PARALLEL: usize = 64;

/// What the proxy hands over.
pub(crate) struct Parts {
    pub(crate) env: Arc<Env>,
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) sticky: Arc<StickySessions>,
    /// The request's trace, whose server span parents every attempt's span.
    pub(crate) trace: Option<TraceParent>,
}

/// What sub-requests share (owned, so they can run as tasks).
struct Shared {
    parts: Parts,
    /// The client's request as it arrived.
    req: pingora_http::RequestHeader,
    path: String,
    peer: Option<IpAddr>,
    body: Option<Bytes>,
    /// Bytes of sub-responses this aggregate may still buffer.
    budget: AtomicUsize,
    /// Bounds the sub-requests in flight ([`MAX_PARALLEL`]).
    parallel: Arc<tokio::sync::Semaphore>,
}

/// One sub-request: a route with the placeholders to render it with.
struct Job {
    route: usize,
    key: String,
    placeholders: Placeholders,
}

/// The aggregate's answer; `Err` when the aggregate itself is refused.
/// A sub-request's refusal is recorded, and its answer is the aggregate's
/// unless the aggregator ignores errors.
pub(crate) async fn answer(
    session: &mut Session,
    parts: Parts,
    matched: AggregateMatch,
) -> Result<std::result::Result<Answer, Refusal>> {
    let snapshot = parts.snapshot.clone();
    let Some(aggregate) = snapshot.aggregates.get(matched.index) else {
        return Ok(Err(Refusal::NoRoute));
    };
    let Some(routes) = aggregate.routes.clone() else {
        log::debug!("aggregate {}: a route key names no route", aggregate.name);
        return Ok(Err(Refusal::UnknownAggregator));
    };
    let aggregation = parts.env.aggregation.clone();
    let kind = match &aggregate.aggregator {
        None => None,
        Some(name) => match aggregation.aggregator(name) {
            Some(config) => Some(config),
            None => {
                log::warn!("aggregate {}: no aggregator named '{name}'", aggregate.name);
                return Ok(Err(Refusal::UnknownAggregator));
            }
        },
    };
    let body = match read_body(session, aggregation.max_body_bytes).await? {
        Ok(body) => body,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let shared = Arc::new(Shared {
        parts,
        req: session.req_header().clone(),
        path: matched.path,
        peer: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        body,
        budget: AtomicUsize::new(aggregation.max_body_bytes),
        parallel: Arc::new(tokio::sync::Semaphore::new(MAX_PARALLEL)),
    });
    let job = |position: usize, placeholders: Placeholders| Job {
        route: routes[position],
        key: aggregate.keys[position].clone(),
        placeholders,
    };
    let parts = if aggregate.chained {
        let first = run(&shared, vec![job(0, matched.placeholders.clone())]).await;
        let Some(main) = first.into_iter().next() else {
            return Ok(Err(Refusal::AggregateFailed));
        };
        let json = match &main.outcome {
            Outcome::Error(e) => return Ok(Ok(e.answer())),
            Outcome::Response { body, .. } => serde_json::from_slice::<serde_json::Value>(body),
        };
        let Ok(json) = json else {
            log::warn!(
                "aggregate {}: the first route's body is not JSON; cannot apply RouteKeysConfig",
                aggregate.name
            );
            return Ok(Err(Refusal::AggregateFailed));
        };
        let mut jobs = Vec::new();
        for position in 1..routes.len() {
            match &aggregate.fan_out[position] {
                None => jobs.push(job(position, matched.placeholders.clone())),
                Some(fan_out) => {
                    let Ok(path) = &fan_out.path else {
                        return Ok(Err(Refusal::AggregateFailed));
                    };
                    let mut values: Vec<String> = Vec::new();
                    for v in path.select(&json) {
                        let v = jsonpath::token_string(v);
                        if !values.contains(&v) {
                            values.push(v);
                        }
                    }
                    for value in values {
                        let mut placeholders = matched.placeholders.clone();
                        placeholders.push(fan_out.placeholder.clone(), value);
                        jobs.push(job(position, placeholders));
                    }
                }
            }
        }
        let mut parts = vec![main];
        parts.extend(run(&shared, jobs).await);
        parts
    } else {
        let jobs = (0..routes.len())
            .map(|p| job(p, matched.placeholders.clone()))
            .collect();
        run(&shared, jobs).await
    };
    Ok(Ok(match kind {
        Some(AggregatorConfig {
            kind: AggregatorKind::AbpMerge,
            ignore_errors,
        }) => aggregators::abp_merge(&parts, ignore_errors),
        _ => aggregators::simple(&parts),
    }))
}

/// Runs the jobs in parallel; results in job order.
async fn run(shared: &Arc<Shared>, jobs: Vec<Job>) -> Vec<Part> {
    let mut tasks = tokio::task::JoinSet::new();
    let keys: Vec<String> = jobs.iter().map(|j| j.key.clone()).collect();
    for (i, job) in jobs.into_iter().enumerate() {
        let shared = shared.clone();
        tasks.spawn(async move {
            // The semaphore is never closed, so this waits for a slot.
            let _slot = shared.parallel.clone().acquire_owned().await;
            (i, subrequest(&shared, job).await)
        });
    }
    let mut outcomes: Vec<Option<Outcome>> = vec![None; keys.len()];
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((i, outcome)) => outcomes[i] = Some(outcome),
            Err(e) => log::error!("aggregate sub-request failed: {e}"),
        }
    }
    keys.into_iter()
        .zip(outcomes)
        .map(|(key, outcome)| Part {
            key,
            outcome: outcome
                .unwrap_or_else(|| Outcome::Error(SubError::new(500, "sub-request failed"))),
        })
        .collect()
}

/// A refusal as the aggregator sees it: the QoS handler's own answers are
/// responses to Ocelot, every other refusal an error.
fn refused(route: &str, refusal: Refusal) -> Outcome {
    refusal.record(route);
    match refusal {
        Refusal::BreakerOpen { .. } | Refusal::QosTimeout { .. } => {
            let answer = refusal.answer();
            Outcome::Response { body: answer.body }
        }
        refusal => Outcome::Error(SubError {
            status: refusal.status(),
            message: format!("route {route}: {}", refusal.name()),
            refusal: Some(refusal),
        }),
    }
}

fn error(status: u16, message: impl Into<String>) -> Outcome {
    Outcome::Error(SubError::new(status, message))
}

/// One sub-request, through the pipeline and the route's call; never fails,
/// every problem is an [`Outcome`].
async fn subrequest(shared: &Shared, job: Job) -> Outcome {
    let Parts {
        env,
        snapshot,
        auth,
        sticky,
        trace,
    } = &shared.parts;
    let Some(route) = snapshot.route(job.route) else {
        return error(500, "no such route");
    };
    let mut head = shared.req.clone();
    let mut state = RequestState::default();
    let matched = pipeline::RouteMatch::Template {
        placeholders: job.placeholders,
        path: shared.path.clone(),
    };
    let mut req = Request {
        head: &mut head,
        peer: shared.peer,
        upgrade: false,
    };
    if let Err(refusal) = pipeline::run(env, auth, route, matched, &mut req, &mut state).await {
        return refused(&route.name, refusal);
    }
    let Some(target) = state.downstream.take() else {
        return error(500, "no downstream URL");
    };
    request_mapper::remove_hop_by_hop(&mut head, false);
    let mut headers = HeaderMap::with_capacity(head.headers.len() + 1);
    for (name, value) in head.headers.iter() {
        // The HTTP client frames the body and names the host itself.
        if name != header::HOST
            && name != header::CONTENT_LENGTH
            && name != header::TRANSFER_ENCODING
        {
            headers.append(name.clone(), value.clone());
        }
    }
    let mut call = CallState::default();
    let mut selected = match pipeline::select_backend(env, route, &call, &head.headers, sticky) {
        Ok(selected) => selected,
        Err(refusal) => return refused(&route.name, refusal),
    };
    if let Err(refusal) = pipeline::admit(route, &mut call, false) {
        return refused(&route.name, refusal);
    }

    let method = route.method.clone().unwrap_or_else(|| head.method.clone());
    // Attempts, as the proxy makes them: the route's retry policy decides;
    // the body is held whole, so it can always be sent again.
    let result = loop {
        let timeout = pipeline::attempt_started(route, &mut call);
        let mut span = trace.as_ref().map(|t| {
            t.client_span(
                &method,
                selected.addr,
                &selected.meta.host,
                &url_for(route, &selected, &target),
                call_attempts(&call),
            )
        });
        let mut attempt_headers = headers.clone();
        if let (Some(t), Some(span)) = (trace, &span) {
            for (name, value) in span.propagation(t.tracing()).0 {
                if let Ok(value) = http::HeaderValue::from_str(&value) {
                    attempt_headers.insert(name, value);
                }
            }
        }
        let sent = send(
            env,
            shared,
            route,
            &selected,
            &method,
            &target,
            attempt_headers,
            timeout,
        )
        .await;
        if let Some(mut span) = span.take() {
            match &sent {
                Sent::Response(response) => {
                    span.answered(response.status().as_u16());
                    span.end();
                }
                Sent::Failed(e) if e.is_timeout() => span.failed("timeout"),
                Sent::Failed(e) if e.is_connect() => span.failed("connect_failure"),
                Sent::Failed(_) => span.failed("reset"),
            }
        }
        let retryable = Retryable {
            method: &method,
            replayable: true,
            addr: Some(selected.addr),
        };
        let retried = match &sent {
            Sent::Response(response) => {
                let status = response.status().as_u16();
                status >= 500
                    && pipeline::retry(route, &mut call, RetryOutcome::Status(status), &retryable)
            }
            Sent::Failed(e) if e.is_timeout() => {
                pipeline::retry(route, &mut call, RetryOutcome::Timeout, &retryable)
            }
            Sent::Failed(e) if e.is_connect() => {
                pipeline::connect_failed(env, route, &mut call, &retryable)
            }
            Sent::Failed(_) => pipeline::retry(route, &mut call, RetryOutcome::Reset, &retryable),
        };
        if retried {
            call.take_retry_decision();
            if let Ok(next) = pipeline::select_backend(env, route, &call, &head.headers, sticky) {
                selected = next;
                continue;
            }
        }
        break match sent {
            Sent::Response(response) => read_response(shared, response).await,
            Sent::Failed(e) if e.is_timeout() => Err((CallFailure::Timeout, e.to_string())),
            Sent::Failed(e) => Err((CallFailure::Connection, e.to_string())),
        };
    };
    // Ends the in-flight count (LeastConnection) now, not when the aggregate ends.
    drop(selected);
    match result {
        Ok((status, body)) => {
            pipeline::answered(&mut call, status);
            Outcome::Response { body }
        }
        Err((failure, message)) => {
            if let Some(refusal) = pipeline::call_failed(route, &mut call, failure, false) {
                log::warn!("aggregate: route {}: {message}", route.name);
                return refused(&route.name, refusal);
            }
            log::debug!("aggregate: route {}: {message}", route.name);
            match failure {
                // The route timeout: an error, not counted by the breaker.
                CallFailure::Timeout => error(503, "Timeout making http request"),
                CallFailure::Connection => error(
                    502,
                    format!("Error connecting to downstream service: {message}"),
                ),
                CallFailure::Other => error(502, message),
            }
        }
    }
}

/// The URL of a sub-request to `selected`. Plain HTTP goes to the address
/// the balancer resolved; TLS needs the name for SNI and certificate checks.
fn url_for(route: &CompiledRoute, selected: &Selected, target: &DownstreamTarget) -> String {
    let authority = if route.tls {
        selected.meta.authority.to_string()
    } else {
        selected.addr.to_string()
    };
    let mut url = format!(
        "{}://{authority}{}",
        if route.tls { "https" } else { "http" },
        target.path
    );
    if let Some(q) = &target.query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// Attempts made before the one starting (for `http.request.resend_count`).
fn call_attempts(call: &CallState) -> u32 {
    call.attempts().saturating_sub(1)
}

/// What one attempt of a sub-request got.
enum Sent {
    Response(reqwest::Response),
    Failed(reqwest::Error),
}

/// One attempt of a sub-request to `selected`.
#[allow(clippy::too_many_arguments)]
async fn send(
    env: &Env,
    shared: &Shared,
    route: &CompiledRoute,
    selected: &Selected,
    method: &http::Method,
    target: &DownstreamTarget,
    mut headers: HeaderMap,
    timeout: std::time::Duration,
) -> Sent {
    let url = url_for(route, selected, target);
    if let Some(value) = request_mapper::host_header(selected, route.tls) {
        headers.insert(header::HOST, value.clone());
    }
    let mut builder = env
        .aggregation
        .http(route.verify_cert)
        .request(method.clone(), url.as_str())
        .headers(headers)
        .timeout(timeout);
    if let Some(body) = &shared.body {
        builder = builder.body(body.clone());
    }
    match builder.send().await {
        Ok(response) => Sent::Response(response),
        Err(e) => Sent::Failed(e),
    }
}

/// The sub-response's body, within what the aggregate may still buffer.
async fn read_response(
    shared: &Shared,
    mut response: reqwest::Response,
) -> std::result::Result<(u16, Bytes), (CallFailure, String)> {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let fits = shared
                    .budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                        left.checked_sub(chunk.len())
                    })
                    .is_ok();
                if !fits {
                    return Err((
                        CallFailure::Other,
                        "responses exceed aggregate_max_body_bytes".to_string(),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok((status, Bytes::from(body))),
            Err(e) if e.is_timeout() => return Err((CallFailure::Timeout, e.to_string())),
            Err(e) => return Err((CallFailure::Connection, e.to_string())),
        }
    }
}

/// The request body, copied to every sub-request as Ocelot does when it
/// has a `Content-Length` (without one it is not copied). A body larger
/// than the aggregation bound is refused.
async fn read_body(
    session: &mut Session,
    limit: usize,
) -> Result<std::result::Result<Option<Bytes>, Refusal>> {
    let headers = &session.req_header().headers;
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if chunked {
        // Unread: the connection cannot be reused for another request.
        session.set_keepalive(None);
        return Ok(Ok(None));
    }
    let Some(length) = length.filter(|l| *l > 0) else {
        return Ok(Ok(None));
    };
    if length > limit {
        session.set_keepalive(None);
        return Ok(Err(Refusal::AggregateBodyTooLarge));
    }
    let mut body = Vec::with_capacity(length);
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > limit {
            session.set_keepalive(None);
            return Ok(Err(Refusal::AggregateBodyTooLarge));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(Some(Bytes::from(body))))
}
