//! The admin listener: liveness and readiness for orchestrators.

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether the gateway should receive traffic: set once serving starts,
/// cleared the moment shutdown begins so load balancers stop sending first.
#[derive(Default)]
pub struct Readiness {
    ready: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

pub struct AdminApp {
    pub readiness: Arc<Readiness>,
}

fn text(status: u16, body: &str) -> Response<Vec<u8>> {
    let mut resp = Response::new(body.as_bytes().to_vec());
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    resp.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
    resp
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/healthz" => text(200, "ok\n"),
            "/readyz" if self.readiness.is_ready() => text(200, "ready\n"),
            "/readyz" => text(503, "not ready\n"),
            _ => text(404, "not found\n"),
        }
    }
}

/// Marks the gateway ready when the server starts its services and not ready
/// as soon as shutdown is signalled.
pub struct Lifecycle {
    pub readiness: Arc<Readiness>,
}

#[async_trait]
impl BackgroundService for Lifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.readiness.ready.store(true, Ordering::Release);
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        self.readiness.ready.store(false, Ordering::Release);
    }
}
