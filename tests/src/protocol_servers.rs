//! Upstreams that are not plain request/response HTTP, so not
//! [`TestServer`](crate::server::TestServer)s:
//!
//! * [`WsEchoServer`]: a WebSocket echo server (plain or TLS) that records
//!   each handshake it accepted;
//! * [`GrpcServer`]: a real gRPC service, tonic's health service, whose code
//!   tonic ships pre-generated (no `protoc`).
//!
//! (HTTP/2 upstreams are [`EchoServer::start_h2c`](crate::EchoServer::start_h2c)
//! and [`EchoServer::start_tls_alpn`](crate::EchoServer::start_tls_alpn).)
//! These servers run on the test's runtime and stop when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};

use crate::pki::TestPki;

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

/// Echoes every text and binary message back on the same socket.
pub struct WsEchoServer {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    _task: Task,
}

impl WsEchoServer {
    /// Plain `ws://`.
    pub async fn start() -> WsEchoServer {
        Self::spawn(None).await
    }

    /// `wss://` with a certificate from a test CA the gateway does not trust
    /// (routes use `DangerousAcceptAnyServerCertificateValidator`).
    pub async fn start_tls() -> WsEchoServer {
        let cfg = TestPki::localhost().server_config();
        Self::spawn(Some(TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn spawn(tls: Option<TlsAcceptor>) -> WsEchoServer {
        let (listener, addr) = bind().await;
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = handshakes.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => ws_echo(tcp, seen).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                ws_echo(stream, seen).await
                            }
                        }
                    }
                });
            }
        });
        WsEchoServer {
            addr,
            handshakes,
            _task: Task(task),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `{"Host": "127.0.0.1", "Port": …}` for `DownstreamHostAndPorts`.
    pub fn host_and_port(&self) -> Value {
        host_and_port(self.addr)
    }

    /// Every handshake accepted so far.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().unwrap().clone()
    }
}

async fn ws_echo<S>(stream: S, seen: Arc<Mutex<Vec<Handshake>>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The error type is tungstenite's (a whole HTTP response), not ours.
    #[allow(clippy::result_large_err)]
    let record = |req: &WsRequest, resp: WsResponse| {
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
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
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
