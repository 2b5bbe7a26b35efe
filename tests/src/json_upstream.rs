//! A small upstream that answers fixed bodies by path, for aggregation tests
//! (abp-style services answering JSON documents to merge).
//!
//! Each path has a status and a body ([`JsonServer::serve`]); an unknown path
//! answers 404 with an empty body. Every request is counted by path and its
//! target recorded, so a test can check what the gateway called.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::server::{json_text_response, Body, TestServer};

#[derive(Default)]
struct State {
    routes: HashMap<String, (u16, String, Duration)>,
    /// Request targets (path and `?query`) in arrival order.
    seen: Vec<String>,
}

/// A running JSON upstream (a [`TestServer`]). Dropping it stops it.
pub struct JsonServer {
    state: Arc<Mutex<State>>,
    server: TestServer,
}

impl JsonServer {
    /// Listens on 127.0.0.1 at a port chosen by the OS.
    pub fn start() -> JsonServer {
        let state = Arc::new(Mutex::new(State::default()));
        let handler_state = state.clone();
        let server = TestServer::builder("json-upstream")
            .serve(move |req, _conn| handle(handler_state.clone(), req))
            .expect("start JSON upstream");
        JsonServer { state, server }
    }

    /// Answer `path` with `status` and `body` (`Content-Type: application/json`).
    pub fn serve(&self, path: &str, status: u16, body: &str) -> &Self {
        self.serve_after(path, status, body, Duration::ZERO)
    }

    /// Like [`serve`](Self::serve), after waiting `delay`.
    pub fn serve_after(&self, path: &str, status: u16, body: &str, delay: Duration) -> &Self {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_string(), (status, body.to_string(), delay));
        self
    }

    /// `{"Host": "127.0.0.1", "Port": port}`.
    pub fn host_and_port(&self) -> serde_json::Value {
        self.server.host_and_port()
    }

    /// Request targets seen so far, in arrival order.
    pub fn seen(&self) -> Vec<String> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let _ = req.into_body().collect().await;
    let found = {
        let mut s = state.lock().unwrap();
        s.seen.push(target);
        s.routes.get(&path).cloned()
    };
    let (status, body, delay) = found.unwrap_or((404, String::new(), Duration::ZERO));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = if http::StatusCode::from_u16(status).is_ok() {
        status
    } else {
        200
    };
    json_text_response(status, body)
}
