//! Upstreams for the protocol tests:
//!
//! * [`WsEchoServer`]: a WebSocket echo server (plain or TLS) that records
//!   each handshake it accepted, a [`TestServer`] that accepts the upgrade;
//! * [`GrpcServer`]: a real gRPC service, tonic's health service, whose code
//!   tonic ships pre-generated (no `protoc`); tonic serves it on the test's
//!   runtime, and it stops when dropped.
//!
//! (HTTP/2 upstreams are [`EchoServer::start_h2c`](crate::EchoServer::start_h2c)
//! and [`EchoServer::start_tls_alpn`](crate::EchoServer::start_tls_alpn).)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::ServerConfig;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::pki::TestPki;
use crate::server::{empty, Body, TestServer};

/// Aborts the accept loop when the server is dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn host_and_port(addr: SocketAddr) -> Value {
    json!({ "Host": addr.ip().to_string(), "Port": addr.port() })
}

// ---------------------------------------------------------------------------
// WebSocket echo

/// What a WebSocket upstream saw of one handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// Path and query of the upgrade request.
    pub target: String,
    /// Header names lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
}

impl Handshake {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Echoes every text and binary message back on the same socket: a
/// [`TestServer`] whose handler accepts the upgrade.
pub struct WsEchoServer {
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    server: TestServer,
}

impl WsEchoServer {
    /// Plain `ws://`.
    pub async fn start() -> WsEchoServer {
        Self::spawn(None)
    }

    /// `wss://` with a certificate from a test CA the gateway does not trust
    /// (routes use `DangerousAcceptAnyServerCertificateValidator`).
    pub async fn start_tls() -> WsEchoServer {
        Self::spawn(Some(TestPki::localhost().server_config()))
    }

    fn spawn(tls: Option<ServerConfig>) -> WsEchoServer {
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = handshakes.clone();
        let mut builder = TestServer::builder("ws-echo");
        if let Some(config) = tls {
            builder = builder.tls(config);
        }
        let server = builder
            .serve(move |req, _conn| std::future::ready(accept(req, &seen)))
            .expect("start WebSocket echo server");
        WsEchoServer { handshakes, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `{"Host": "127.0.0.1", "Port": …}` for `DownstreamHostAndPorts`.
    pub fn host_and_port(&self) -> Value {
        self.server.host_and_port()
    }

    /// Every handshake accepted so far.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().unwrap().clone()
    }
}

/// Accepts a WebSocket upgrade (RFC 6455 §4.2): records the handshake,
/// answers 101 and echoes on the upgraded connection. Anything else is 400.
fn accept(mut req: Request<Incoming>, seen: &Mutex<Vec<Handshake>>) -> Response<Body> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version = header("sec-websocket-version") == Some("13");
    let (true, true, Some(key)) = (upgrade, version, header("sec-websocket-key")) else {
        return empty(400);
    };
    let accept_key = derive_accept_key(key.as_bytes());
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    seen.lock().unwrap().push(Handshake { target, headers });
    let upgraded = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(io) = upgraded.await {
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
            echo(ws).await;
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept_key)
        .body(Empty::new().boxed())
        .unwrap()
}

async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            return;
        }
        // Pings are answered by tungstenite itself.
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// gRPC

/// tonic's `grpc.health.v1.Health` service over h2c. The service name
/// [`GrpcServer::SERVICE`] starts as `SERVING`; unknown names answer
/// `NOT_FOUND` (grpc-status 5).
pub struct GrpcServer {
    addr: SocketAddr,
    reporter: tonic_health::server::HealthReporter,
    _task: Task,
}

impl GrpcServer {
    pub const SERVICE: &'static str = "orders";

    pub async fn start() -> GrpcServer {
        let (listener, addr) = bind().await;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(Self::SERVICE, tonic_health::ServingStatus::Serving)
            .await;
        let task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        GrpcServer {
            addr,
            reporter,
            _task: Task(task),
        }
    }

    pub fn host_and_port(&self) -> Value {
        host_and_port(self.addr)
    }

    /// Changes what `Check` and `Watch` report for [`GrpcServer::SERVICE`].
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.reporter
            .set_service_status(Self::SERVICE, status)
            .await;
    }
}
