//! End-to-end test harness for the `gateway` binary.
//!
//! The tests in `tests/` start the real binary ([`Gateway`]) with a generated
//! `ocelot.json`, in front of real HTTP/1.1 upstreams ([`EchoServer`]) on
//! loopback, and check both what the client gets back and what each upstream
//! received. Every test owns its ports and temp dir, so tests run in parallel.
//!
//! Test files are named after the Ocelot feature they test (`routing.rs`,
//! `rate_limiting.rs`, `qos.rs`, ...). The modules here are named after what
//! they provide:
//!
//! * [`gateway`]: the binary under test, its ports, files, signals, metrics;
//! * [`server`]: the one HTTP test server every fake service is built on;
//! * [`upstream`] (echo), [`json_upstream`], [`openapi`] (a service with
//!   its OpenAPI document), [`oidc`] (JWT authority and tokens), [`registries`] (Kubernetes, Consul, Eureka): fake services;
//! * [`protocol_servers`] (WebSocket, gRPC) and [`protocol_clients`] (TLS,
//!   HTTP/2, gRPC clients for the gateway's listeners);
//! * [`otlp`]: an OpenTelemetry collector (OTLP/HTTP and OTLP/gRPC) that
//!   decodes the spans the gateway exports;
//! * [`redis`], [`dns`]: real `redis-server` and `dnsmasq` processes;
//! * [`load`]: client load; [`wait`]: polling with a deadline; [`raw`]:
//!   exact bytes over TCP; [`pki`]: test certificates; [`pattern`]: bodies
//!   checked byte for byte.

pub mod dns;
pub mod gateway;
pub mod json_upstream;
pub mod load;
pub mod oidc;
pub mod openapi;
pub mod otlp;
pub mod pattern;
pub mod pki;
pub mod protocol_clients;
pub mod protocol_servers;
pub mod raw;
pub mod redis;
pub mod registries;
pub mod server;
pub mod upstream;
pub mod wait;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

pub use gateway::{
    closed_addr, free_port, gateway_bin, metric_sample, run_to_exit, signal, workspace_root,
    Exited, Gateway,
};
pub use raw::RawResponse;
pub use upstream::{restart_echo, EchoServer, Seen};
pub use wait::{eventually, eventually_ok, wait_listening};

/// Default bound for one test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Run a test body with a time limit, so a hung gateway fails the test rather
/// than the whole run.
pub async fn bounded<F: Future>(f: F) -> F::Output {
    bounded_for(TEST_TIMEOUT, f).await
}

pub async fn bounded_for<F: Future>(limit: Duration, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

/// `cargo test --workspace` unifies reqwest's features with the gateway's,
/// which turns on rustls without a crypto provider; reqwest then refuses to
/// build a client unless one is installed for the process.
fn install_crypto_provider() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

/// Replaces a file atomically (write a temporary file, rename it over),
/// as editors and config management do.
pub fn write_atomically(path: &Path, contents: &[u8]) {
    let temp = path.with_extension("tmp-write");
    std::fs::write(&temp, contents).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// An HTTP/1.1 client for talking to the gateway: no proxy (CI may have
/// `http_proxy` set), no redirects followed, a per-request timeout.
pub fn client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// As [`client`], with connections from this loopback address (e.g.
/// 127.0.0.2), to be another client to the gateway.
pub fn client_from(local: std::net::IpAddr) -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .local_address(local)
        .build()
        .unwrap()
}

/// A client without a total timeout, for multi-GiB transfers (bound the test
/// with [`bounded_for`] instead).
pub fn streaming_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A route from `up` to `down` on the given upstreams (http, any method).
pub fn route(up: &str, down: &str, upstreams: &[&EchoServer]) -> Value {
    json!({
        "UpstreamPathTemplate": up,
        "DownstreamPathTemplate": down,
        "DownstreamScheme": "http",
        "DownstreamHostAndPorts": upstreams.iter().map(|u| u.host_and_port()).collect::<Vec<_>>(),
    })
}

/// A config with one route `/secure/{rest}` → `https://localhost:PORT/s/{rest}`
/// on a TLS echo server, accepting any certificate when `dangerous`.
pub fn https_route(up: &EchoServer, dangerous: bool) -> Value {
    config(vec![json!({
        "UpstreamPathTemplate": "/secure/{rest}",
        "DownstreamPathTemplate": "/s/{rest}",
        "DownstreamScheme": "https",
        "DownstreamHostAndPorts": [up.localhost_and_port()],
        "DangerousAcceptAnyServerCertificateValidator": dangerous,
    })])
}

/// `base` with the members of `extra` added or replaced (shallow).
pub fn with(mut base: Value, extra: Value) -> Value {
    let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) else {
        panic!("with() merges JSON objects");
    };
    for (k, v) in e {
        b.insert(k, v);
    }
    base
}

/// `{"Routes": routes, "GlobalConfiguration": {}}`.
pub fn config(routes: Vec<Value>) -> Value {
    json!({ "Routes": routes, "GlobalConfiguration": {} })
}

/// A response read whole: status, headers and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    pub async fn read(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("read response body");
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The echo server's description of the request (panics if the body is
    /// not one, e.g. an error page from the gateway).
    pub fn seen(&self) -> Seen {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not an echo answer ({e}); status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET url` with extra headers, read whole.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(client().get(url), headers).await
}

/// Add headers to a request, send it and read the whole reply.
pub async fn send(mut req: reqwest::RequestBuilder, headers: &[(&str, &str)]) -> Reply {
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Reply::read(req.send().await.expect("request to gateway")).await
}

/// Status of `GET url`, 0 when there was no answer at all.
pub async fn status_of(url: &str) -> u16 {
    match client().get(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Assert `reply` has this status and an empty body, as the gateway's own
/// refusals (401, 403, 404, ...) have.
#[track_caller]
pub fn assert_refused(reply: &Reply, status: u16, what: &str) {
    assert_eq!(
        reply.status,
        status,
        "{what}: expected {status}, got {} body {:?}",
        reply.status,
        reply.text()
    );
    assert!(
        reply.body.is_empty(),
        "{what}: error bodies are empty, got {:?}",
        reply.text()
    );
}

/// Assert `reply` is a 200 answered by `server` with this target
/// (path plus `?query`), and return what the upstream saw.
#[track_caller]
pub fn assert_routed(reply: &Reply, server: &str, target: &str) -> Seen {
    assert_eq!(
        reply.status,
        200,
        "expected 200 from {server} for {target}, got {} body {:?}",
        reply.status,
        reply.text()
    );
    let seen = reply.seen();
    assert_eq!(seen.server, server, "wrong upstream: {seen:#?}");
    assert_eq!(seen.target(), target, "wrong downstream target: {seen:#?}");
    seen
}
