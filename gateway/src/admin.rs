//! The admin listener: liveness and readiness for orchestrators, Prometheus
//! metrics, and the configuration API (behind a bearer token from the settings).
//!
//! - `GET /healthz`, `GET /readyz`, `GET /metrics`: open.
//! - `GET /admin/configuration`: the merged configuration as Ocelot JSON.
//! - `POST /admin/configuration[?persist=true]`: replace it (validated first;
//!   `persist` writes it back to the file).
//! - `GET /admin/routes`: the compiled route table.
//! - `DELETE /admin/outputcache/{region}`: drop the cached responses of a
//!   cache region (Ocelot's `DELETE {AdministrationPath}/outputcache/{region}`), 204.

use crate::lifecycle::Readiness;
use crate::metrics;
use crate::reload::Reloader;
use async_trait::async_trait;
use http::{header, Method, Response};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

/// Region purges: `DELETE /admin/outputcache/{region}`.
const OUTPUT_CACHE: &str = "/admin/outputcache/";

/// Largest configuration the admin API accepts.
const MAX_BODY: usize = 16 * 1024 * 1024;

pub struct AdminApp {
    pub readiness: Arc<Readiness>,
    pub reloader: Arc<Reloader>,
    /// `/admin/*` is disabled (404) without a token.
    pub token: Option<String>,
    /// The output cache, for region purges.
    pub cache: &'static crate::cache::store::MemoryStore,
}

fn respond(status: u16, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    let mut resp = Response::new(body);
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

fn text(status: u16, body: &str) -> Response<Vec<u8>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

fn json_response(status: u16, value: &serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", value.to_string().into_bytes())
}

/// Compares in constant time so the token cannot be guessed byte by byte.
fn token_matches(expected: &str, given: &[u8]) -> bool {
    let expected = expected.as_bytes();
    expected.len() == given.len()
        && expected
            .iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

impl AdminApp {
    fn authorized(&self, session: &ServerSession) -> Option<Response<Vec<u8>>> {
        let Some(token) = &self.token else {
            return Some(text(
                404,
                "the admin API is disabled: set admin_token in the settings\n",
            ));
        };
        let given = session
            .req_header()
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match given {
            Some(given) if token_matches(token, given) => None,
            _ => Some(text(401, "")),
        }
    }

    fn routes(&self) -> serde_json::Value {
        let snapshot = self.reloader.state.load_full();
        let routes: Vec<serde_json::Value> = snapshot
            .config
            .routes
            .iter()
            .zip(&snapshot.routes)
            .map(|(file, compiled)| {
                json!({
                    "upstreamPathTemplate": file.upstream_path_template,
                    "upstreamHttpMethod": file.upstream_http_method,
                    "upstreamHost": file.upstream_host,
                    "priority": file.priority,
                    "key": file.key,
                    "downstreamScheme": if compiled.tls { "https" } else { "http" },
                    "downstreamPathTemplate": file.downstream_path_template,
                    "downstreamHostAndPorts": file.downstream_host_and_ports.iter().map(|hp| format!("{}:{}", hp.host, hp.port)).collect::<Vec<_>>(),
                    "serviceName": file.service_name,
                    "loadBalancer": format!("{:?}", compiled.pool.kind),
                    "backends": compiled.pool.backend_count(),
                    "timeoutSeconds": compiled.timeout.as_secs(),
                    "authenticationProviderKeys": compiled.authentication,
                    "swaggerKey": file.swagger_key,
                })
            })
            .collect();
        json!({ "routes": routes, "aggregates": snapshot.config.aggregates.iter().map(|a| json!({
            "upstreamPathTemplate": a.upstream_path_template,
            "routeKeys": a.route_keys,
            "aggregator": a.aggregator,
        })).collect::<Vec<_>>() })
    }

    async fn replace_configuration(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        return text(413, "configuration too large\n");
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return text(400, &format!("cannot read the body: {e}\n")),
            }
        }
        let value = match ocelot_compat::read::parse(&body, std::path::Path::new("<admin API>")) {
            Ok(value) => value,
            Err(diag) => return json_response(400, &json!({ "errors": [diag.to_string()] })),
        };
        let persist = session
            .req_header()
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "persist=true"));
        match self.reloader.apply_json(value, persist).await {
            Ok(()) => json_response(200, &json!({ "status": "loaded", "persisted": persist })),
            Err(diags) => json_response(
                400,
                &json!({ "errors": diags.errors().map(|d| d.to_string()).collect::<Vec<_>>() }),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method, path.as_str()) {
            (Method::GET, "/healthz") => text(200, "ok\n"),
            (Method::GET, "/readyz") if self.readiness.is_ready() => text(200, "ready\n"),
            (Method::GET, "/readyz") => text(503, "not ready\n"),
            (Method::GET, "/metrics") => {
                self.reloader.state.load_full().observe();
                respond(200, "text/plain; version=0.0.4", metrics::render())
            }
            (method, p) if p.starts_with("/admin/") => {
                if let Some(denied) = self.authorized(session) {
                    return denied;
                }
                match (method, p) {
                    (Method::GET, "/admin/configuration") => {
                        json_response(200, &self.reloader.state.load_full().value)
                    }
                    (Method::POST, "/admin/configuration") => {
                        self.replace_configuration(session).await
                    }
                    (Method::GET, "/admin/routes") => json_response(200, &self.routes()),
                    (Method::DELETE, p) if p.starts_with(OUTPUT_CACHE) => {
                        match crate::cache::decode_region(&p[OUTPUT_CACHE.len()..]) {
                            Some(region) => {
                                let purged = self.cache.purge_region(&region);
                                log::info!("admin API: purged {purged} cached responses of region '{region}'");
                                respond(204, "text/plain; charset=utf-8", Vec::new())
                            }
                            None => text(400, "bad region name\n"),
                        }
                    }
                    _ => text(404, "not found\n"),
                }
            }
            _ => text(404, "not found\n"),
        }
    }
}
