//! Upstreams and clients for the protocol tests (`tests/protocols.rs`):
//!
//! * [`WsEchoServer`]: a WebSocket echo server (plain or TLS) that records
//!   each handshake it accepted;
//! * [`H2Server`]: an HTTP server that answers with a [`Seen`] like the
//!   [`EchoServer`](crate::EchoServer), but speaks HTTP/2 — cleartext with
//!   prior knowledge (h2c), or TLS with a chosen ALPN list;
//! * [`GrpcServer`]: a real gRPC service, tonic's health service, whose code
//!   tonic ships pre-generated (no `protoc`);
//! * clients for the gateway's own TLS and h2c listeners: raw HTTP/1.1 and
//!   HTTP/2 requests ([`request`]) and gRPC channels ([`grpc_channel`]).
//!
//! Servers run on the test's runtime and stop when dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};

use crate::pki::TestPki;
use crate::upstream::Seen;

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

/// A certificate for `localhost` and `127.0.0.1` from a fresh test CA.
pub fn localhost_pki() -> TestPki {
    TestPki::generate(&["localhost", "127.0.0.1"])
}

/// A TLS handshake with `addr` as `localhost`, trusting only `ca_pem`: `Ok`
/// when the certificate the server presents chains to that CA.
pub async fn tls_handshake(addr: SocketAddr, ca_pem: &str) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Polls until something accepts TCP connections on `addr` (listeners other
/// than the one `/readyz` is checked through come up at their own pace).
pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
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
        let cfg = localhost_pki().server_config();
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
// HTTP/2 echo

/// Answers every request with the JSON [`Seen`] of it (`version` tells
/// which protocol arrived), over HTTP/2 — or HTTP/1.1 when TLS negotiated it.
pub struct H2Server {
    name: String,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: Task,
}

impl H2Server {
    /// Cleartext HTTP/2 with prior knowledge only (an HTTP/1.1 request is a
    /// protocol error to it).
    pub async fn h2c(name: &str) -> H2Server {
        Self::spawn(name, None).await
    }

    /// TLS offering `alpn` (e.g. `["h2", "http/1.1"]`; empty: no ALPN at
    /// all), with a certificate the gateway must be told to accept.
    pub async fn tls(name: &str, alpn: &[&str]) -> H2Server {
        let mut cfg = localhost_pki().server_config();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Self::spawn(name, Some(TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn spawn(name: &str, tls: Option<TlsAcceptor>) -> H2Server {
        let (listener, addr) = bind().await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (server, log) = (name.to_string(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (server, log, tls) = (server.clone(), log.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve_h2(TokioIo::new(tcp), server, log, false).await,
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            let io = TokioIo::new(stream);
                            if h2 {
                                serve_h2(io, server, log, true).await
                            } else {
                                let svc = service_fn(move |req| {
                                    describe(req, server.clone(), log.clone(), true)
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(io, svc)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        H2Server {
            name: name.to_string(),
            addr,
            seen,
            _task: Task(task),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn host_and_port(&self) -> Value {
        host_and_port(self.addr)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve_h2<IO>(io: TokioIo<IO>, server: String, log: Arc<Mutex<Vec<Seen>>>, tls: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| describe(req, server.clone(), log.clone(), tls));
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(io, svc)
        .await;
}

async fn describe(
    req: Request<Incoming>,
    server: String,
    log: Arc<Mutex<Vec<Seen>>>,
    tls: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body_len = body
        .collect()
        .await
        .map(|b| b.to_bytes().len() as u64)
        .unwrap_or(0);
    let seen = Seen {
        server,
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len,
        body_error: false,
        body_pattern_ok: None,
        version: format!("{:?}", parts.version),
        tls,
        sni: None,
    };
    log.lock().unwrap().push(seen.clone());
    let body = serde_json::to_vec(&seen).unwrap();
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

// ---------------------------------------------------------------------------
// gRPC

pub use tonic_health::pb::health_check_response::ServingStatus;
pub use tonic_health::pb::health_client::HealthClient;
pub use tonic_health::pb::HealthCheckRequest;

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

/// A gRPC channel to the gateway: h2c on a plain listener, or TLS with ALPN
/// h2 trusting `ca_pem` (certificate names `localhost`).
pub async fn grpc_channel(addr: SocketAddr, ca_pem: Option<&str>) -> tonic::transport::Channel {
    let scheme = if ca_pem.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(30));
    if let Some(ca) = ca_pem {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name("localhost");
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    endpoint
        .connect()
        .await
        .expect("gRPC channel to the gateway")
}

/// The body of a unary gRPC request for `grpc.health.v1.Health/Check`,
/// encoded by hand: one length-prefixed message holding field 1 (`service`).
pub fn health_check_body(service: &str) -> Bytes {
    let mut msg = vec![0x0a, service.len() as u8];
    msg.extend_from_slice(service.as_bytes());
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    Bytes::from(frame)
}

// ---------------------------------------------------------------------------
// Clients for the gateway's listeners

/// One response read whole, trailers included.
#[derive(Debug)]
pub struct H2Reply {
    pub version: Version,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl H2Reply {
    /// The upstream's [`Seen`] (echo servers answer with it).
    pub fn seen(&self) -> Seen {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an echo answer ({e}): {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header, or else a trailer, by name: gRPC puts `grpc-status` in the
    /// trailers, or in the headers of a trailers-only (error) response.
    pub fn grpc(&self, name: &str) -> Option<String> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .or_else(|| self.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// How to reach the gateway for [`request`].
#[derive(Clone, Copy)]
pub enum Transport<'a> {
    /// Plain TCP, HTTP/1.1.
    H1,
    /// Plain TCP, HTTP/2 with prior knowledge (h2c).
    H2c,
    /// TLS trusting this CA (PEM), offering these ALPN protocols; the
    /// negotiated one is used.
    Tls {
        ca_pem: &'a str,
        alpn: &'a [&'a str],
    },
}

/// Sends one request to `addr` and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    transport: Transport<'_>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> H2Reply {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    match transport {
        Transport::H1 => {
            send(
                TokioIo::new(tcp),
                false,
                "http",
                addr,
                method,
                path,
                headers,
                body,
            )
            .await
        }
        Transport::H2c => {
            send(
                TokioIo::new(tcp),
                true,
                "http",
                addr,
                method,
                path,
                headers,
                body,
            )
            .await
        }
        Transport::Tls { ca_pem, alpn } => {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
                .unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut cfg = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            let name = ServerName::try_from("localhost").unwrap();
            let stream = TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .expect("TLS handshake with the gateway");
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            send(
                TokioIo::new(stream),
                h2,
                "https",
                addr,
                method,
                path,
                headers,
                body,
            )
            .await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn send<IO>(
    io: TokioIo<IO>,
    h2: bool,
    scheme: &str,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> H2Reply
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let authority = format!("localhost:{}", addr.port());
    let mut builder = Request::builder().method(method);
    builder = if h2 {
        // HTTP/2 carries the authority in the URI (:authority).
        builder.uri(format!("{scheme}://{authority}{path}"))
    } else {
        builder.uri(path).header("host", &authority)
    };
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(Full::new(body)).unwrap();
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("HTTP/2 handshake with the gateway");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("HTTP/2 request")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("HTTP/1.1 handshake with the gateway");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("HTTP/1.1 request")
    };
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("response body");
    let trailers = collected.trailers().cloned();
    H2Reply {
        version: parts.version,
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}
