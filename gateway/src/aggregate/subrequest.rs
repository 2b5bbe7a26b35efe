//! One sub-request of an aggregate, through the route's own policies, the
//! way Ocelot runs its pipeline again for each route of an aggregate (spec
//! §6, §7.9):
//!
//! IP security (403) → rate limiting (its rejection) → upstream header
//! transforms and request id → authentication (401) → claims to claims and
//! authorization (403) → claims to headers, query and path → the route's
//! balancer (502 / 503 when no backend is available) → the circuit breaker
//! (open: Ocelot's synthetic 503 response) → the call with the route's
//! timeout (QoS timeout: synthetic 503; route timeout: 503 error; connection
//! failure: 502 error).
//!
//! Not applied: the output cache (a sub-request always reaches the service),
//! the passive-health retry on another backend, downstream header transforms
//! and response headers (the aggregate's response has none of them, as in
//! Ocelot). The request keeps the client's method (or the route's
//! `DownstreamHttpMethod`), headers (less hop-by-hop ones) and body.

use super::aggregators::{Outcome, SubError};
use super::{Job, Shared};
use crate::balancing::BalancerKind;
use crate::errors::status_for;
use crate::qos::{self, Permit};
use crate::ratelimit::{Decision, RequestView};
use crate::traffic::{self, RequestTraffic, Traffic};
use bytes::Bytes;
use http::header::{self, HeaderMap};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Request headers that describe the client's connection or its body
/// framing, which the HTTP client sets itself.
const NOT_FORWARDED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "host",
    "content-length",
    "transfer-encoding",
];

/// Why a call produced no response.
enum Failure {
    Timeout,
    Connection,
    /// The aggregate's body bound was reached.
    TooLarge,
}

fn error(status: u16, message: impl Into<String>) -> Outcome {
    Outcome::Error(SubError::new(status, message))
}

/// Runs one sub-request; never fails, every problem is an [`Outcome`].
pub(super) async fn call(shared: &Shared, job: &Job) -> Outcome {
    let Some(route) = shared.snapshot.routes.get(job.route) else {
        return error(500, "no such route");
    };
    let traffic = Traffic::current();
    let policy = &route.traffic;

    if let (Some(ip_policy), Some(peer)) = (&policy.security, shared.peer) {
        let client = traffic.client_ip(peer, &shared.req.headers);
        if !ip_policy.permits(client) {
            return error(
                403,
                format!(
                    "client IP {client} is denied by SecurityOptions of route {}",
                    policy.name
                ),
            );
        }
    }
    if let Some(rule) = &policy.rate_limit {
        let view = RequestView {
            method: shared.req.method.as_str(),
            path: shared.req.uri.path(),
            headers: &shared.req.headers,
        };
        if let Decision::Reject(r) = traffic.limiter.check(rule, &view).await {
            return Outcome::Error(SubError {
                status: r.status,
                message: format!("rate limit exceeded for route {}", policy.name),
                reply: Some((r.headers, r.body)),
            });
        }
    }

    let mut req = shared.req.clone();
    let policies = &route.policies;
    let client_ip = shared
        .peer
        .filter(|_| policies.uses_client_ip())
        .map(|peer| traffic.client_ip(peer, &shared.req.headers));
    let mut state = policies.prepare(&mut req, client_ip);
    if let Err(status) = policies.authenticate(&shared.auth, &req, &mut state).await {
        return error(
            status,
            format!("request for route {} was not authenticated", policy.name),
        );
    }
    if let Err(status) =
        policies.authorize(&req.method, &mut state, |name| job.placeholders.get(name))
    {
        return error(
            status,
            format!("request for route {} was not authorized", policy.name),
        );
    }
    if let Err(status) = policies.claims_to_headers(&mut req, &state) {
        return error(status, "claims to headers failed");
    }
    let mut placeholders = job.placeholders.clone();
    let query = if policies.changes_query() {
        match policies.claims_to_query(&state, shared.req.uri.query()) {
            Ok(q) => q,
            Err(status) => return error(status, "claims to query failed"),
        }
    } else {
        shared.req.uri.query().map(str::to_string)
    };
    if policies.changes_path() {
        match policies.claims_to_path(&state) {
            Ok(values) => {
                for (name, value) in values {
                    placeholders.insert(name, value);
                }
            }
            Err(status) => return error(status, "claims to downstream path failed"),
        }
    }
    let target = route
        .downstream
        .render(&placeholders, &shared.path, query.as_deref());

    if let BalancerKind::Unknown(name) = &route.pool.kind {
        return error(500, format!("no load balancer named '{name}'"));
    }
    let cookies = req
        .headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes());
    let selected =
        match traffic::select_backend(route, &RequestTraffic::default(), cookies, &shared.sticky) {
            Ok(Some(s)) => s,
            Ok(None) => {
                let status = if route.uses_discovery { 404 } else { 502 };
                return error(status, "no downstream service available");
            }
            Err(e) => return error(status_for(&e).unwrap_or(503), e.to_string()),
        };

    let permit = match &policy.breaker {
        Some(breaker) => match Permit::acquire(breaker) {
            Some(p) => Some(p),
            None => {
                return Outcome::Response {
                    status: 503,
                    body: Bytes::from(format!(
                        "Circuit breaker is open for route -> {}",
                        policy.name
                    )),
                }
            }
        },
        None => None,
    };

    let port = selected.addr.port();
    let default_port = if route.tls { 443 } else { 80 };
    let host = if port == default_port {
        selected.meta.host.to_string()
    } else {
        selected.meta.authority.to_string()
    };
    // Plain HTTP goes to the address the balancer resolved; TLS needs the
    // name for SNI and certificate checks.
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
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 1);
    for (name, value) in req.headers.iter() {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(value) = http::HeaderValue::from_str(&host) {
        headers.insert(header::HOST, value);
    }
    let method = route.method.clone().unwrap_or_else(|| req.method.clone());
    let timeout = policy.downstream_timeout(route.timeout);
    let mut builder = shared
        .aggregation
        .http(route.verify_cert)
        .request(method, url.as_str())
        .headers(headers)
        .timeout(timeout);
    if let Some(body) = &shared.body {
        builder = builder.body(body.clone());
    }
    let result = match builder.send().await {
        Ok(mut response) => {
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
                            break Err((
                                Failure::TooLarge,
                                "responses exceed aggregate_max_body_bytes".to_string(),
                            ));
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok(None) => break Ok((status, Bytes::from(body))),
                    Err(e) if e.is_timeout() => break Err((Failure::Timeout, e.to_string())),
                    Err(e) => break Err((Failure::Connection, e.to_string())),
                }
            }
        }
        Err(e) if e.is_timeout() => Err((Failure::Timeout, e.to_string())),
        Err(e) => {
            if e.is_connect() {
                traffic
                    .health
                    .passive()
                    .mark_down(selected.addr, Instant::now());
            }
            Err((Failure::Connection, e.to_string()))
        }
    };
    // Ends the in-flight count (LeastConnection) now, not when the aggregate ends.
    drop(selected);
    match result {
        Ok((status, body)) => {
            if let Some(permit) = permit {
                permit.status(status);
            }
            Outcome::Response { status, body }
        }
        Err((Failure::Timeout, message)) if policy.timeout_is_qos(route.timeout) => {
            // Ocelot's QoS handler answers a timeout with a response of its own.
            qos::count_timeout();
            if let Some(permit) = permit {
                permit.failure();
            }
            log::warn!(
                "aggregate: route {} timed out after the QoS Timeout: {message}",
                policy.name
            );
            Outcome::Response {
                status: 503,
                body: Bytes::from(format!("Request timeout for route -> {}", policy.name)),
            }
        }
        Err((Failure::Timeout, message)) => {
            // The route timeout: an error, not counted by the breaker.
            log::debug!("aggregate: route {}: {message}", policy.name);
            error(503, "Timeout making http request")
        }
        Err((Failure::Connection, message)) => {
            if let Some(permit) = permit {
                permit.failure();
            }
            log::debug!("aggregate: route {}: {message}", policy.name);
            error(
                502,
                format!("Error connecting to downstream service: {message}"),
            )
        }
        Err((Failure::TooLarge, message)) => {
            log::warn!("aggregate: route {}: {message}", policy.name);
            error(502, message)
        }
    }
}
