//! The one HTTP server every fake service in this crate is built on: the
//! echo upstream ([`EchoServer`](crate::EchoServer)), the JSON upstream
//! ([`JsonServer`](crate::json_upstream::JsonServer)), the OpenID Connect
//! authority ([`Authority`](crate::oidc::Authority)), the service
//! registries ([`crate::registries`]), the OTLP/HTTP receiver
//! ([`crate::otlp`]) and the WebSocket echo.
//!
//! A [`TestServer`] owns its listener(s) and its own Tokio runtime, so it keeps
//! answering whatever the test's runtime is doing (blocking, shutting down)
//! and works from sync and async tests. It speaks HTTP/1.1, or HTTP/2 with
//! prior knowledge ([`ServerBuilder::h2c`]), optionally over TLS (where ALPN
//! `h2` selects HTTP/2); each request goes to one handler
//! `Fn(Request, Conn) -> Future<Output = Response>`. It can be stopped (the
//! port refuses connections, open connections break) and started again on
//! the same port. Dropping it stops it.
//!
//! The WebSocket echo ([`crate::protocol_servers`]) is one too, accepting
//! upgrades in its handler. Some servers keep their own loops: tonic's gRPC
//! servers (health, OTLP/gRPC), and the misbehaving [`bad_upstream`](crate::upstream::bad_upstream),
//! which writes raw bytes no HTTP library would.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The response body every handler answers with.
pub type Body = BoxBody<Bytes, Infallible>;

/// What a handler knows of the connection a request came on.
#[derive(Debug, Clone, Default)]
pub struct Conn {
    /// The request came over TLS.
    pub tls: bool,
    /// TLS server name indication the client sent, if any.
    pub sni: Option<String>,
}

type Handler = dyn Fn(Request<Incoming>, Conn) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>
    + Send
    + Sync;

/// A response with this status and body.
pub fn response(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

/// A response with this status and no body.
pub fn empty(status: u16) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Empty::new().boxed())
        .unwrap()
}

/// A JSON response (`Content-Type: application/json`).
pub fn json_response(status: u16, value: &Value) -> Response<Body> {
    json_text_response(status, value.to_string())
}

/// A response with a JSON body given as text (`Content-Type: application/json`).
pub fn json_text_response(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = response(status, body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// How to start a [`TestServer`]. See [`TestServer::builder`].
pub struct ServerBuilder {
    name: String,
    threads: usize,
    addr: SocketAddr,
    tls: Option<ServerConfig>,
    also_ipv6: bool,
    h2c: bool,
}

impl ServerBuilder {
    /// Worker threads of the server's runtime (default 1).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Listen on this address (default `127.0.0.1:0`, a port chosen by the OS).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Serve TLS with this config; ALPN `h2` (if the config offers it and
    /// the client picks it) selects HTTP/2, anything else HTTP/1.1.
    pub fn tls(mut self, config: ServerConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Also listen on `[::1]` at the same port, when that port is free there
    /// (`localhost` may resolve to either address).
    pub fn also_ipv6(mut self) -> Self {
        self.also_ipv6 = true;
        self
    }

    /// Cleartext HTTP/2 with prior knowledge only (an HTTP/1.1 request is a
    /// protocol error to it). Over TLS, ALPN decides instead.
    pub fn h2c(mut self) -> Self {
        self.h2c = true;
        self
    }

    /// Start serving every request with `handler`.
    pub fn serve<H, F>(self, handler: H) -> std::io::Result<TestServer>
    where
        H: Fn(Request<Incoming>, Conn) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let handler: Arc<Handler> = Arc::new(move |req, conn| Box::pin(handler(req, conn)));
        let shared = Arc::new(Shared {
            handler,
            tls: self.tls.map(|c| TlsAcceptor::from(Arc::new(c))),
            h2c: self.h2c,
            connections: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
        });
        let mut server = TestServer {
            name: self.name,
            threads: self.threads,
            addr: self.addr,
            also_ipv6: self.also_ipv6,
            shared,
            rt: None,
        };
        server.spawn()?;
        Ok(server)
    }
}

struct Shared {
    handler: Arc<Handler>,
    tls: Option<TlsAcceptor>,
    h2c: bool,
    connections: AtomicU64,
    tls_handshake_failures: AtomicU64,
}

/// A running HTTP server on loopback. Dropping it stops it.
pub struct TestServer {
    name: String,
    threads: usize,
    addr: SocketAddr,
    also_ipv6: bool,
    shared: Arc<Shared>,
    rt: Option<Runtime>,
}

impl TestServer {
    /// A server whose runtime threads are named after `name`.
    pub fn builder(name: &str) -> ServerBuilder {
        ServerBuilder {
            name: name.to_string(),
            threads: 1,
            addr: ([127, 0, 0, 1], 0).into(),
            tls: None,
            also_ipv6: false,
            h2c: false,
        }
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let listener = std::net::TcpListener::bind(self.addr)?;
        listener.set_nonblocking(true)?;
        self.addr = listener.local_addr()?;
        let mut listeners = vec![listener];
        if self.also_ipv6 {
            if let Ok(v6) = std::net::TcpListener::bind(("::1", self.addr.port())) {
                v6.set_nonblocking(true)?;
                listeners.push(v6);
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.threads)
            .thread_name(self.name.clone())
            .enable_all()
            .build()?;
        {
            let _guard = rt.enter();
            for l in listeners {
                rt.spawn(accept_loop(TcpListener::from_std(l)?, self.shared.clone()));
            }
        }
        self.rt = Some(rt);
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `{"Host": "127.0.0.1", "Port": port}` for `DownstreamHostAndPorts`.
    pub fn host_and_port(&self) -> Value {
        serde_json::json!({ "Host": self.addr.ip().to_string(), "Port": self.port() })
    }

    /// TCP connections accepted (a refused TLS handshake still counts).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (e.g. the client rejected our certificate).
    pub fn tls_handshake_failures(&self) -> u64 {
        self.shared.tls_handshake_failures.load(Ordering::SeqCst)
    }

    /// Closes the port and every open connection: the server is unreachable.
    pub fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // shutdown_background is the one way to drop a runtime that is
            // allowed from inside another runtime (async tests).
            rt.shutdown_background();
        }
    }

    /// Serves again on the same port, retrying while it is being released.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("{} cannot listen again on {}: {e}", self.name, self.addr)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _peer)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            match &shared.tls {
                None => serve_connection(tcp, Conn::default(), shared.h2c, &shared).await,
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        let session = stream.get_ref().1;
                        let h2 = session.alpn_protocol() == Some(b"h2");
                        let conn = Conn {
                            tls: true,
                            sni: session.server_name().map(str::to_string),
                        };
                        serve_connection(stream, conn, h2, &shared).await
                    }
                    Err(_) => {
                        shared.tls_handshake_failures.fetch_add(1, Ordering::SeqCst);
                    }
                },
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, conn: Conn, h2: bool, shared: &Shared)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler = shared.handler.clone();
    let svc = service_fn(move |req| {
        let answer = handler(req, conn.clone());
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let io = TokioIo::new(io);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .serve_connection(io, svc)
            .with_upgrades()
            .await;
    }
}
