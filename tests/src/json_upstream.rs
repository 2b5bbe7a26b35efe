//! A small upstream that answers fixed bodies by path, for aggregation tests
//! (abp-style services answering JSON documents to merge).
//!
//! Each path has a status and a body ([`JsonServer::serve`]); an unknown path
//! answers 404 with an empty body. Every request is counted by path and its
//! target recorded, so a test can check what the gateway called.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

#[derive(Default)]
struct State {
    routes: HashMap<String, (u16, String, Duration)>,
    /// Request targets (path and `?query`) in arrival order.
    seen: Vec<String>,
}

/// A running JSON upstream. Dropping it stops it.
pub struct JsonServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    rt: Option<Runtime>,
}

impl JsonServer {
    /// Listens on 127.0.0.1 at a port chosen by the OS.
    pub fn start() -> JsonServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("json-upstream")
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        {
            let _guard = rt.enter();
            let listener = TcpListener::from_std(listener).unwrap();
            rt.spawn(accept(listener, state.clone()));
        }
        JsonServer {
            addr,
            state,
            rt: Some(rt),
        }
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
        serde_json::json!({ "Host": "127.0.0.1", "Port": self.addr.port() })
    }

    /// Request targets seen so far, in arrival order.
    pub fn seen(&self) -> Vec<String> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }
}

impl Drop for JsonServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
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
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
