//! The request pipeline: one `ProxyHttp` whose phases call each feature in
//! Ocelot's order (`src/Middleware/OcelotPipelineExtensions.cs`):
//! route finding → (security, header transforms, rate limiting, request id,
//! authentication, authorization, claims transforms: later issues) → load
//! balancing → downstream URL creation → request. `proxy` orchestrates; the
//! feature logic lives in its own modules.

use crate::balancing::{BalancerKind, Selected, StickySessions};
use crate::errors::{respond_with, status_for};
use crate::lifecycle::Readiness;
use crate::metrics::{status_class, METRICS};
use crate::routing::{CompiledRoute, Snapshot};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header::{self, HeaderMap, HeaderName};
use ocelot_compat::path::normalize_path;
use ocelot_compat::table::{HeaderSource, RequestInfo, Target};
use ocelot_compat::template::DownstreamTarget;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The gateway: the current snapshot plus state that outlives reloads.
pub struct Gateway {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub sticky: Arc<StickySessions>,
    pub readiness: Arc<Readiness>,
    /// Write one JSON access-log line per request on stdout.
    pub access_log: bool,
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
}

impl Ctx {
    fn route(&self) -> Result<&CompiledRoute> {
        self.route
            .and_then(|i| self.snapshot.routes.get(i))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))
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
const HOP_BY_HOP: [&str; 7] = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization"];

/// Answers the request with `status` and an empty body, as Ocelot does for its
/// own errors, keeping the connection when the request carried no body.
async fn respond_empty(session: &mut Session, status: u16) -> Result<bool> {
    let has_body = session.req_header().headers.contains_key(header::TRANSFER_ENCODING)
        || session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        // The unread body would be taken for the next request.
        session.set_keepalive(None);
    }
    let mut resp = ResponseHeader::build(status, Some(1))?;
    resp.insert_header(header::CONTENT_LENGTH, "0")?;
    session.write_response_header(Box::new(resp), true).await?;
    Ok(true)
}

/// Finds the route and builds the downstream path: Ocelot's
/// DownstreamRouteFinder and DownstreamUrlCreator. `Err` is the status to answer.
fn route_request(req: &RequestHeader, ctx: &mut Ctx) -> std::result::Result<(), u16> {
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
        Target::Aggregate(_) => return Err(501),
    };
    let route = ctx.snapshot.routes.get(index).ok_or(500u16)?;
    // Authentication is not built yet: fail closed rather than let a
    // protected route through. Ocelot skips authentication for OPTIONS.
    if !route.auth_schemes.is_empty() && req.method != http::Method::OPTIONS {
        return Err(401);
    }
    if let BalancerKind::Unknown(name) = &route.pool.kind {
        log::error!("route {}: no load balancer named '{name}'", route.name);
        return Err(500);
    }
    ctx.downstream = Some(route.downstream.render(&found.placeholders, &path, req.uri.query()));
    ctx.route = Some(index);
    Ok(())
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
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        match route_request(session.req_header(), ctx) {
            Ok(()) => Ok(false),
            Err(status) => respond_empty(session, status).await,
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx.route()?;
        let cookies = session.req_header().headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes());
        let Some(selected) = route.pool.select(cookies, &self.sticky) else {
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
        // Ocelot's route timeout bounds the whole downstream call; per phase here.
        opts.connection_timeout = Some(route.timeout);
        opts.total_connection_timeout = Some(route.timeout);
        opts.read_timeout = Some(route.timeout);
        opts.write_timeout = Some(route.timeout);
        opts.idle_timeout = Some(Duration::from_secs(60));
        opts.verify_cert = route.verify_cert;
        opts.verify_hostname = route.verify_cert;
        ctx.selected = Some(selected);
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(&self, session: &mut Session, upstream: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
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
            .map_err(|e| Error::because(ErrorType::HTTPStatus(400), "downstream path is not a valid URI", e))?;
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
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = status_for(e);
        log::debug!("route {}: {e}", ctx.route().map(|r| r.name.as_str()).unwrap_or("-"));
        if let Some(code) = code {
            // Ocelot's error responses are the bare status: no body, no extra headers.
            match ResponseHeader::build(code, Some(1)) {
                Ok(mut resp) => {
                    let _ = resp.insert_header(header::CONTENT_LENGTH, "0");
                    if let Err(write_error) = session.write_error_response(resp, bytes::Bytes::new()).await {
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

    async fn upstream_response_filter(&self, _session: &mut Session, _upstream: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        ctx.upstream_elapsed = ctx.upstream_started.map(|t| t.elapsed());
        Ok(())
    }

    async fn response_filter(&self, session: &mut Session, response: &mut ResponseHeader, _ctx: &mut Ctx) -> Result<()> {
        if self.readiness.is_draining() {
            // Shutting down or upgrading: tell keep-alive clients to reconnect
            // (to another replica or the new process) instead of having the
            // connection closed under their next request.
            session.set_keepalive(None);
            response.insert_header(header::CONNECTION, "close")?;
        }
        Ok(())
    }

    fn fail_to_connect(&self, _session: &mut Session, _peer: &HttpPeer, ctx: &mut Ctx, e: Box<Error>) -> Box<Error> {
        let route = ctx.route().map(|r| r.name.as_str()).unwrap_or("-");
        METRICS.upstream_connect_errors.with_label_values(&[route]).inc();
        e
    }

    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        // Pingora's error log line ends with this: name the route, not just the path.
        let req = session.req_header();
        let route = ctx.route().map(|r| r.name.as_str()).unwrap_or("-");
        format!("{} {}, route: {route}", req.method, req.uri)
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route().map(|r| r.name.as_str()).unwrap_or("");
        let method = session.req_header().method.as_str();
        let elapsed = ctx.started.elapsed();
        if !route.is_empty() {
            METRICS.requests.with_label_values(&[route, method, status_class(status)]).inc();
            METRICS.request_duration.with_label_values(&[route]).observe(elapsed.as_secs_f64());
            if let Some(upstream) = ctx.upstream_elapsed {
                METRICS.upstream_duration.with_label_values(&[route]).observe(upstream.as_secs_f64());
            }
        }
        if self.access_log {
            let line = serde_json::json!({
                "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                "request_id": ctx.request_id,
                "route": route,
                "method": method,
                "path": session.req_header().uri.path(),
                "status": status,
                "upstream": ctx.selected.as_ref().map(|s| s.addr.to_string()),
                "duration_ms": elapsed.as_secs_f64() * 1000.0,
                "upstream_ms": ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
                "bytes_in": session.body_bytes_read(),
                "bytes_out": session.body_bytes_sent(),
                "client": session.client_addr().map(|a| a.to_string()),
                "error": error.map(|e| e.to_string()),
            });
            println!("{line}");
        }
        // Ends the request's in-flight count for LeastConnection.
        ctx.selected = None;
    }
}
