//! HTTP versions and gRPC: the downstream HTTP version and version policy
//! (Ocelot's `DownstreamHttpVersion`/`DownstreamHttpVersionPolicy`) over
//! cleartext and TLS ALPN, HTTP/2 from clients on the gateway's TLS and h2c
//! listeners, and gRPC through both.

use std::net::SocketAddr;

use bytes::Bytes;
use e2e::pki::TestPki;
use e2e::protocol_clients::{
    grpc_channel, health_check_body, request, HealthCheckRequest, HealthClient, ServingStatus,
    Transport,
};
use e2e::protocol_servers::GrpcServer;
use e2e::{bounded, client, config, free_port, get, route, wait_listening, EchoServer, Gateway};
use http::Method;
use serde_json::{json, Value};

fn versioned(up: &str, server: Value, scheme: &str, version: &str, policy: Option<&str>) -> Value {
    let mut r = json!({
        "UpstreamPathTemplate": up,
        "DownstreamPathTemplate": "/x",
        "DownstreamScheme": scheme,
        "DownstreamHostAndPorts": [server],
        "DownstreamHttpVersion": version,
        "DangerousAcceptAnyServerCertificateValidator": true,
    });
    if let Some(p) = policy {
        r["DownstreamHttpVersionPolicy"] = json!(p);
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_with_http2_exact_and_or_higher() {
    bounded(async {
        let up = EchoServer::start_h2c("h2c");
        let gw = Gateway::start(config(vec![
            versioned(
                "/exact",
                up.host_and_port(),
                "http",
                "2.0",
                Some("RequestVersionExact"),
            ),
            versioned(
                "/higher",
                up.host_and_port(),
                "http",
                "2.0",
                Some("RequestVersionOrHigher"),
            ),
        ]))
        .await;
        let r = get(
            &gw.url("/exact?q=1"),
            &[("x-custom", "1"), ("te", "trailers")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = r.seen();
        assert_eq!(seen.version, "HTTP/2.0");
        assert_eq!(seen.target(), "/x?q=1");
        assert_eq!(seen.header("x-custom"), Some("1"));
        // The one TE value HTTP/2 allows survives hop-by-hop stripping (gRPC).
        assert_eq!(seen.header("te"), Some("trailers"));
        // A request body crosses into HTTP/2 DATA frames.
        let body = vec![7u8; 100_000];
        let resp = client()
            .post(gw.url("/higher"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen: e2e::Seen = resp.json().await.unwrap();
        assert_eq!(
            (seen.version.as_str(), seen.body_len),
            ("HTTP/2.0", 100_000)
        );
        assert_eq!(up.requests().len(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_versions_and_fallbacks() {
    bounded(async {
        let h1 = EchoServer::start("h1");
        let gw = Gateway::start(config(vec![
            // No prior knowledge with OrLower: HttpClient stays on HTTP/1.1.
            versioned(
                "/lower",
                h1.host_and_port(),
                "http",
                "2.0",
                Some("RequestVersionOrLower"),
            ),
            versioned(
                "/exact",
                h1.host_and_port(),
                "http",
                "2.0",
                Some("RequestVersionExact"),
            ),
            versioned("/ten", h1.host_and_port(), "http", "1.0", None),
            versioned(
                "/eleven",
                h1.host_and_port(),
                "http",
                "1.1",
                Some("RequestVersionOrHigher"),
            ),
        ]))
        .await;
        let r = get(&gw.url("/lower"), &[]).await;
        assert_eq!((r.status, r.seen().version.as_str()), (200, "HTTP/1.1"));
        // h2c to a server that only speaks HTTP/1.1: Ocelot's 502.
        let r = get(&gw.url("/exact"), &[]).await;
        assert_eq!(r.status, 502, "{}", r.text());
        let r = get(&gw.url("/ten"), &[]).await;
        assert_eq!((r.status, r.seen().version.as_str()), (200, "HTTP/1.0"));
        let r = get(&gw.url("/eleven"), &[]).await;
        assert_eq!((r.status, r.seen().version.as_str()), (200, "HTTP/1.1"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_follows_the_version_policy() {
    bounded(async {
        // Ocelot's DefaultVersionPolicyTests, against servers offering h2 and
        // http/1.1, only http/1.1, or no ALPN at all.
        let both = EchoServer::start_tls_alpn("both", &["h2", "http/1.1"]);
        let h1 = EchoServer::start_tls_alpn("h1", &["http/1.1"]);
        let none = EchoServer::start_tls_alpn("none", &[]);
        let exact = Some("RequestVersionExact");
        let higher = Some("RequestVersionOrHigher");
        let lower = Some("RequestVersionOrLower");
        let gw = Gateway::start(config(vec![
            versioned("/both-2-exact", both.host_and_port(), "https", "2.0", exact),
            versioned(
                "/both-11-higher",
                both.host_and_port(),
                "https",
                "1.1",
                higher,
            ),
            versioned("/both-11", both.host_and_port(), "https", "1.1", None),
            versioned("/both-2-lower", both.host_and_port(), "https", "2.0", lower),
            versioned("/h1-2-higher", h1.host_and_port(), "https", "2.0", higher),
            versioned("/h1-2-lower", h1.host_and_port(), "https", "2.0", lower),
            versioned("/none-2-exact", none.host_and_port(), "https", "2.0", exact),
            versioned("/none-2-lower", none.host_and_port(), "https", "2.0", lower),
        ]))
        .await;
        for (path, expected) in [
            ("/both-2-exact", Some("HTTP/2.0")),
            ("/both-11-higher", Some("HTTP/2.0")),
            ("/both-11", Some("HTTP/1.1")),
            ("/both-2-lower", Some("HTTP/2.0")),
            ("/h1-2-higher", None),
            ("/h1-2-lower", Some("HTTP/1.1")),
            ("/none-2-exact", None),
            ("/none-2-lower", Some("HTTP/1.1")),
        ] {
            let r = get(&gw.url(path), &[]).await;
            match expected {
                Some(version) => {
                    assert_eq!(r.status, 200, "{path}: {}", r.text());
                    let seen = r.seen();
                    assert!(seen.tls, "{path}");
                    assert_eq!(seen.version, version, "{path}");
                }
                None => assert_eq!(r.status, 502, "{path}: {}", r.text()),
            }
        }
        assert!(
            none.requests().is_empty() || none.requests().iter().all(|s| s.version == "HTTP/1.1")
        );
    })
    .await
}

/// A gateway with a catch-all gRPC route (HTTP/2 to the service, as a gRPC
/// route in Ocelot needs `DownstreamHttpVersion: 2.0`) and an HTTP/1.1 echo
/// route, plus the settings given.
async fn grpc_gateway(
    svc: &GrpcServer,
    echo: &EchoServer,
    settings: &str,
    files: Vec<(&str, String)>,
) -> Gateway {
    let grpc = json!({
        "UpstreamPathTemplate": "/{everything}",
        "DownstreamPathTemplate": "/{everything}",
        "DownstreamScheme": "http",
        "DownstreamHostAndPorts": [svc.host_and_port()],
        "DownstreamHttpVersion": "2.0",
        "DownstreamHttpVersionPolicy": "RequestVersionExact",
    });
    let mut builder = Gateway::builder(config(vec![grpc, route("/echo/{x}", "/e/{x}", &[echo])]))
        .settings(settings);
    for (name, contents) in files {
        builder = builder.file(name, contents);
    }
    builder.start().await
}

async fn grpc_calls(addr: SocketAddr, ca_pem: Option<&str>, svc: &GrpcServer) {
    let mut health = HealthClient::new(grpc_channel(addr, ca_pem).await);
    let ok = health
        .check(HealthCheckRequest {
            service: GrpcServer::SERVICE.into(),
        })
        .await
        .expect("unary call through the gateway");
    assert_eq!(ok.get_ref().status(), ServingStatus::Serving);
    let missing = health
        .check(HealthCheckRequest {
            service: "missing".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

    // Server streaming: the first status, then a change pushed later.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: GrpcServer::SERVICE.into(),
        })
        .await
        .expect("streaming call")
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    svc.set_serving(false).await;
    let second = watch.message().await.unwrap().unwrap();
    assert_eq!(second.status(), ServingStatus::NotServing);
    svc.set_serving(true).await;
}

/// The raw exchange, to see the `grpc-status` trailer itself.
async fn grpc_trailers(addr: SocketAddr, transport: Transport<'_>) {
    let headers = [("content-type", "application/grpc"), ("te", "trailers")];
    let call = |service: &'static str| {
        request(
            addr,
            transport,
            Method::POST,
            "/grpc.health.v1.Health/Check",
            &headers,
            health_check_body(service),
        )
    };
    let ok = call(GrpcServer::SERVICE).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.version, http::Version::HTTP_2);
    // One message: field 1 (status) = 1 (SERVING).
    assert_eq!(ok.body, Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]));
    let trailers = ok.trailers.as_ref().expect("trailers after the message");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    let failed = call("missing").await;
    assert_eq!(failed.status, 200, "gRPC errors travel in grpc-status");
    assert_eq!(failed.grpc("grpc-status").as_deref(), Some("5"));
    assert!(failed.grpc("grpc-message").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_an_h2c_listener() {
    bounded(async {
        let svc = GrpcServer::start().await;
        let echo = EchoServer::start("echo");
        let h2c: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let gw = grpc_gateway(&svc, &echo, &format!("h2c_listen: [\"{h2c}\"]\n"), vec![]).await;
        wait_listening(h2c).await;
        grpc_calls(h2c, None, &svc).await;
        grpc_trailers(h2c, Transport::H2c).await;
        // The h2c listener still serves HTTP/1.1 clients.
        let r = get(&format!("http://{h2c}/echo/a"), &[]).await;
        assert_eq!((r.status, r.seen().target()), (200, "/e/a".to_string()));
        let r = request(
            h2c,
            Transport::H2c,
            Method::GET,
            "/echo/b",
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!((r.status, r.version), (200, http::Version::HTTP_2));
        assert_eq!(r.seen().version, "HTTP/1.1", "h2 in front, HTTP/1.1 behind");
        drop(gw);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_through_a_tls_listener() {
    bounded(async {
        let svc = GrpcServer::start().await;
        let echo = EchoServer::start("echo");
        let pki = TestPki::localhost();
        let tls: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let settings = format!(
            "tls_listen:\n  - addr: \"{tls}\"\n    cert: gateway-cert.pem\n    key: gateway-key.pem\n"
        );
        let files = vec![("gateway-cert.pem", pki.chain_pem.clone()), ("gateway-key.pem", pki.key_pem.clone())];
        let gw = grpc_gateway(&svc, &echo, &settings, files).await;
        wait_listening(tls).await;
        grpc_calls(tls, Some(&pki.ca_pem), &svc).await;
        let h2 = Transport::Tls { ca_pem: &pki.ca_pem, alpn: &["h2", "http/1.1"] };
        grpc_trailers(tls, h2).await;
        // Plain HTTP/1.1 clients get HTTP/1.1 over the same TLS listener.
        let h1 = Transport::Tls { ca_pem: &pki.ca_pem, alpn: &["http/1.1"] };
        let r = request(tls, h1, Method::GET, "/echo/c?d=1", &[], Bytes::new()).await;
        assert_eq!((r.status, r.version), (200, http::Version::HTTP_11));
        assert_eq!(r.seen().target(), "/e/c?d=1");
        let r = request(tls, h2, Method::GET, "/echo/e", &[], Bytes::new()).await;
        assert_eq!((r.status, r.version), (200, http::Version::HTTP_2));
        // The plain listener is unchanged.
        let r = get(&gw.url("/echo/f"), &[]).await;
        assert_eq!(r.status, 200);
    })
    .await
}
