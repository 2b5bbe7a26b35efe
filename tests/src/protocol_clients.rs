//! Clients for the gateway's own TLS and h2c listeners: a TLS handshake
//! ([`tls_handshake`]), whole HTTP/1.1 and HTTP/2 exchanges over plain TCP,
//! h2c or TLS with a chosen ALPN list ([`request`]), and gRPC
//! ([`grpc_channel`], [`health_check_body`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::upstream::Seen;

pub use tonic_health::pb::health_check_response::ServingStatus;
pub use tonic_health::pb::health_client::HealthClient;
pub use tonic_health::pb::HealthCheckRequest;

/// A TLS client config trusting only the CA in `ca_pem`.
pub fn trusting(ca_pem: &str) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A TLS handshake with `addr` as `localhost`, trusting only `ca_pem`: `Ok`
/// when the certificate the server presents chains to that CA.
pub async fn tls_handshake(addr: SocketAddr, ca_pem: &str) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let cfg = trusting(ca_pem)?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
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
        Transport::H1 | Transport::H2c => {
            let h2 = matches!(transport, Transport::H2c);
            send(
                TokioIo::new(tcp),
                h2,
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
            let mut cfg = trusting(ca_pem).expect("client config trusting the CA");
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
