//! A real HTTP/1.1 upstream ("echo server") for the gateway to proxy to.
//!
//! Every request is answered with a JSON description of what arrived (see
//! [`Seen`]) and recorded, so a test can check both what the client got back
//! and what the upstream saw. Special behaviour is requested with `x-echo-*`
//! request headers rather than paths, so the path stays free for routing:
//!
//! | header | effect |
//! |---|---|
//! | `x-echo-status: 503` | answer with that status |
//! | `x-echo-reason: Custom Reason` | use that reason phrase in the status line |
//! | `x-echo-header: Name: value` | add a response header (repeatable) |
//! | `x-echo-delay-ms: N` | wait N ms before answering |
//! | `x-echo-hold: KEY` | wait until the test calls [`EchoServer::release`] with KEY |
//! | `x-echo-body-bytes: N` | stream an N-byte [`pattern`](crate::pattern) body instead of JSON |
//! | `x-echo-chunked: 1` | with `x-echo-body-bytes`, send it chunked (no Content-Length) |
//! | `x-echo-expect-pattern: 1` | check the request body against the pattern ([`Seen::body_pattern_ok`]) |
//!
//! Request bodies are consumed frame by frame and only counted, never buffered,
//! so a 1 GiB upload costs the test process nothing.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls::ServerConfig;

use crate::pattern;
use crate::pki::TestPki;
use crate::server::{Body, Conn, TestServer};

pub const STATUS: &str = "x-echo-status";
pub const REASON: &str = "x-echo-reason";
pub const HEADER: &str = "x-echo-header";
pub const DELAY_MS: &str = "x-echo-delay-ms";
pub const HOLD: &str = "x-echo-hold";
pub const BODY_BYTES: &str = "x-echo-body-bytes";
pub const CHUNKED: &str = "x-echo-chunked";
pub const EXPECT_PATTERN: &str = "x-echo-expect-pattern";

/// A held request is let go after this long even if the test never releases
/// it, so a failing test cannot leave a connection hanging forever.
const MAX_HOLD: Duration = Duration::from_secs(120);

/// What one upstream saw of one request. It is also the JSON answer body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    /// Name of the echo server that answered (tells load-balanced backends apart).
    pub server: String,
    pub method: String,
    /// Request path exactly as it arrived (still percent-encoded).
    pub path: String,
    /// Raw query after `?`, or null when the request target had no `?`.
    pub query: Option<String>,
    /// Header names are lower-case (hyper's HeaderMap); order is arrival order,
    /// except that repeated names are grouped at their first position.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// The body ended in an error (the sender went away mid-body), as opposed
    /// to a clean end at its declared length or final chunk.
    #[serde(default)]
    pub body_error: bool,
    /// Set only when the request carried `x-echo-expect-pattern`.
    #[serde(default)]
    pub body_pattern_ok: Option<bool>,
    pub version: String,
    /// Whether the request came over TLS.
    #[serde(default)]
    pub tls: bool,
    /// TLS server name indication the client sent, if any.
    #[serde(default)]
    pub sni: Option<String>,
}

impl Seen {
    /// First value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// Path plus `?query` when there was one, as the upstream received it.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

struct State {
    name: String,
    seen: Mutex<Vec<Seen>>,
    released: watch::Sender<HashSet<String>>,
}

/// A running echo server (a [`TestServer`] with the echo handler). Dropping
/// it stops it.
pub struct EchoServer {
    name: String,
    state: Arc<State>,
    pki: Option<TestPki>,
    server: TestServer,
}

impl EchoServer {
    /// Plain HTTP on 127.0.0.1 and a port chosen by the OS.
    pub fn start(name: &str) -> EchoServer {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).expect("start echo server")
    }

    /// Plain HTTP on a given address (the `demo-upstream` binary uses this).
    pub fn start_on(name: &str, addr: SocketAddr) -> std::io::Result<EchoServer> {
        Self::spawn(name, addr, None, false)
    }

    /// HTTPS with a certificate for `localhost` and `127.0.0.1` issued by a
    /// fresh test CA (see [`EchoServer::write_ca_pem`]). Also listens on
    /// `[::1]` at the same port when it can, because `localhost` may resolve
    /// to either address.
    pub fn start_tls(name: &str) -> EchoServer {
        Self::start_tls_for(name, &["localhost", "127.0.0.1"])
    }

    /// HTTPS with a certificate valid only for `cert_names`.
    pub fn start_tls_for(name: &str, cert_names: &[&str]) -> EchoServer {
        let pki = TestPki::generate(cert_names);
        let config = pki.server_config();
        Self::spawn_tls(name, pki, config)
    }

    /// Cleartext HTTP/2 with prior knowledge only (an HTTP/1.1 request is a
    /// protocol error to it); `version` in its answers tells what arrived.
    pub fn start_h2c(name: &str) -> EchoServer {
        Self::spawn(name, "127.0.0.1:0".parse().unwrap(), None, true)
            .expect("start h2c echo server")
    }

    /// HTTPS offering `alpn` (e.g. `["h2", "http/1.1"]`; empty: no ALPN at
    /// all) and speaking HTTP/2 when `h2` is chosen, HTTP/1.1 otherwise; its
    /// certificate (for `localhost` and `127.0.0.1`) is from a test CA the
    /// gateway must be told to accept.
    pub fn start_tls_alpn(name: &str, alpn: &[&str]) -> EchoServer {
        let pki = TestPki::localhost();
        let mut config = pki.server_config();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Self::spawn_tls(name, pki, config)
    }

    fn spawn_tls(name: &str, pki: TestPki, config: ServerConfig) -> EchoServer {
        Self::spawn(
            name,
            "127.0.0.1:0".parse().unwrap(),
            Some((pki, config)),
            false,
        )
        .expect("start TLS echo server")
    }

    fn spawn(
        name: &str,
        addr: SocketAddr,
        tls: Option<(TestPki, ServerConfig)>,
        h2c: bool,
    ) -> std::io::Result<EchoServer> {
        let state = Arc::new(State {
            name: name.to_string(),
            seen: Mutex::new(Vec::new()),
            released: watch::Sender::new(HashSet::new()),
        });
        let mut builder = TestServer::builder(&format!("echo-{name}"))
            .threads(2)
            .bind(addr);
        if h2c {
            builder = builder.h2c();
        }
        let pki = match tls {
            Some((pki, config)) => {
                builder = builder.tls(config).also_ipv6();
                Some(pki)
            }
            None => None,
        };
        let handler_state = state.clone();
        let server = builder.serve(move |req, conn| handle(handler_state.clone(), conn, req))?;
        Ok(EchoServer {
            name: name.to_string(),
            state,
            pki,
            server,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `{"Host": "127.0.0.1", "Port": port}` for `DownstreamHostAndPorts`.
    pub fn host_and_port(&self) -> serde_json::Value {
        self.server.host_and_port()
    }

    /// `{"Host": "localhost", "Port": port}`: the name the TLS certificate is for.
    pub fn localhost_and_port(&self) -> serde_json::Value {
        serde_json::json!({ "Host": "localhost", "Port": self.port() })
    }

    /// Every request seen so far, in completion-of-body order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// The only request seen; panics if there were none or several.
    pub fn only_request(&self) -> Seen {
        let all = self.requests();
        assert_eq!(
            all.len(),
            1,
            "{} expected exactly one request, saw {all:#?}",
            self.name
        );
        all.into_iter().next().unwrap()
    }

    /// TCP connections accepted (a refused TLS handshake still counts).
    pub fn connections(&self) -> u64 {
        self.server.connections()
    }

    /// TLS handshakes that failed (e.g. the client rejected our certificate).
    pub fn tls_handshake_failures(&self) -> u64 {
        self.server.tls_handshake_failures()
    }

    /// Let every request held with `x-echo-hold: key` answer.
    pub fn release(&self, key: &str) {
        self.state.released.send_modify(|s| {
            s.insert(key.to_string());
        });
    }

    /// Poll until at least `n` requests were seen; panics after `timeout`.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) {
        crate::eventually_ok(timeout, Duration::from_millis(10), || async {
            match self.count() {
                seen if seen >= n => Ok(()),
                seen => Err(format!("{}: {n} requests, saw {seen}", self.name)),
            }
        })
        .await
    }

    /// PEM of the CA that issued this server's certificate (TLS mode only).
    pub fn ca_pem(&self) -> &str {
        &self.pki.as_ref().expect("not a TLS echo server").ca_pem
    }

    /// Write the CA PEM to `path`, e.g. for the gateway's `upstream_ca_file`.
    pub fn write_ca_pem(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.ca_pem())
    }
}

fn header_str<'a>(parts: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

async fn handle(state: Arc<State>, conn: Conn, req: Request<Incoming>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let check_pattern = parts.headers.contains_key(EXPECT_PATTERN);

    let mut body_len = 0u64;
    let mut pattern_ok = true;
    let mut body_error = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // The client went away mid-body; record what did arrive.
            pattern_ok = false;
            body_error = true;
            break;
        };
        if let Some(data) = frame.data_ref() {
            if check_pattern && pattern_ok && !pattern::matches_at(body_len, data) {
                pattern_ok = false;
            }
            body_len += data.len() as u64;
        }
    }

    let seen = Seen {
        server: state.name.clone(),
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
        body_error,
        body_pattern_ok: check_pattern.then_some(pattern_ok),
        version: format!("{:?}", parts.version),
        tls: conn.tls,
        sni: conn.sni,
    };
    state.seen.lock().unwrap().push(seen.clone());

    if let Some(key) = header_str(&parts, HOLD) {
        let mut rx = state.released.subscribe();
        let _ = tokio::time::timeout(MAX_HOLD, rx.wait_for(|s| s.contains(key))).await;
    }
    if let Some(ms) = header_str(&parts, DELAY_MS).and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let status = header_str(&parts, STATUS)
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|v| StatusCode::from_u16(v).ok())
        .unwrap_or(StatusCode::OK);
    let bodiless = status == StatusCode::NOT_MODIFIED
        || status == StatusCode::NO_CONTENT
        || status.is_informational()
        || parts.method == http::Method::HEAD;

    let body: Body = if bodiless {
        Empty::new().boxed()
    } else if let Some(n) = header_str(&parts, BODY_BYTES).and_then(|v| v.parse().ok()) {
        PatternBody {
            offset: 0,
            total: n,
            chunked: parts.headers.contains_key(CHUNKED),
        }
        .boxed()
    } else {
        Full::new(Bytes::from(serde_json::to_vec(&seen).unwrap())).boxed()
    };

    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if !bodiless && !parts.headers.contains_key(BODY_BYTES) {
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
    for v in parts.headers.get_all(HEADER) {
        let Some((name, value)) = v.to_str().ok().and_then(|s| s.split_once(':')) else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.trim().as_bytes()),
            http::HeaderValue::from_str(value.trim()),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    if let Some(reason) = parts.headers.get(REASON) {
        if let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason.as_bytes()) {
            resp.extensions_mut().insert(r);
        }
    }
    resp
}

/// A response body of `total` pattern bytes, produced chunk by chunk on demand.
struct PatternBody {
    offset: u64,
    total: u64,
    chunked: bool,
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let left = self.total - self.offset;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = left.min(pattern::CHUNK as u64) as usize;
        let chunk = pattern::chunk_at(self.offset, n);
        self.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset == self.total
    }

    fn size_hint(&self) -> SizeHint {
        if self.chunked {
            // An unknown size makes hyper use Transfer-Encoding: chunked.
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.total - self.offset)
        }
    }
}

/// Starts an echo server on `addr` again (after the old one was dropped),
/// retrying while the port is still being released.
pub fn restart_echo(name: &str, addr: SocketAddr) -> EchoServer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match EchoServer::start_on(name, addr) {
            Ok(server) => return server,
            Err(e) if Instant::now() > deadline => panic!("cannot listen on {addr} again: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A misbehaving upstream: reads each request head, then writes `reply`
/// verbatim (possibly nothing) and closes. For 502 tests. Runs on the
/// caller's runtime, so it stops with the test.
pub async fn bad_upstream(reply: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind bad upstream");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(reply).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}
