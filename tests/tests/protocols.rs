//! WebSockets, HTTP versions to the downstream service, HTTP/2 from clients
//! (TLS and h2c listeners) and gRPC, end to end through the real binary.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use e2e::pki::TestPki;
use e2e::protocol_clients::{
    grpc_channel, health_check_body, request, HealthCheckRequest, HealthClient, ServingStatus,
    Transport,
};
use e2e::protocol_servers::{GrpcServer, WsEchoServer};
use e2e::wait_listening;
use e2e::{bounded, client, config, free_port, get, route, with, EchoServer, Gateway};
use futures_util::{SinkExt, StreamExt};
use http::Method;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket through the gateway at `path`.
async fn ws_connect(gw: &Gateway, path: &str) -> Result<Ws, tungstenite::Error> {
    let req = format!("ws://{}{path}", gw.authority())
        .into_client_request()
        .unwrap();
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(ws, _)| ws)
}

/// Sends `msg` and expects it back unchanged.
async fn echo(ws: &mut Ws, msg: Message) {
    ws.send(msg.clone())
        .await
        .expect("send through the gateway");
    let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo within 10 s")
        .expect("socket still open")
        .expect("a message");
    assert_eq!(back, msg);
}

fn ws_route(up: &str, down: &str, scheme: &str, server: Value) -> Value {
    json!({
        "UpstreamPathTemplate": up,
        "DownstreamPathTemplate": down,
        "DownstreamScheme": scheme,
        "DownstreamHostAndPorts": [server],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_both_ways() {
    bounded(async {
        let up = WsEchoServer::start().await;
        let gw = Gateway::start(config(vec![ws_route(
            "/ws/{room}",
            "/chat/{room}",
            "ws",
            up.host_and_port(),
        )]))
        .await;
        let mut ws = ws_connect(&gw, "/ws/lobby?user=ann")
            .await
            .expect("upgrade through the gateway");
        for i in 0..5 {
            echo(&mut ws, Message::text(format!("hello {i}"))).await;
        }
        // A message larger than any single read buffer.
        let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        echo(&mut ws, Message::binary(big)).await;
        ws.close(None).await.unwrap();

        let hs = up.handshakes();
        assert_eq!(hs.len(), 1, "{hs:?}");
        assert_eq!(hs[0].target, "/chat/lobby?user=ann");
        assert_eq!(
            hs[0].header("host"),
            Some(format!("127.0.0.1:{}", up.addr().port()).as_str())
        );
        assert_eq!(
            hs[0]
                .header("upgrade")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("websocket")
        );
        assert!(hs[0].header("sec-websocket-key").is_some());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_wss_and_http_scheme_routes() {
    bounded(async {
        let plain = WsEchoServer::start().await;
        let secure = WsEchoServer::start_tls().await;
        let mut wss = ws_route("/secure", "/s", "wss", secure.host_and_port());
        wss["DangerousAcceptAnyServerCertificateValidator"] = json!(true);
        // Ocelot rewrites http/https to ws/wss for upgrade requests.
        let http = ws_route("/plain", "/p", "http", plain.host_and_port());
        let gw = Gateway::start(config(vec![wss, http])).await;

        let mut ws = ws_connect(&gw, "/secure").await.expect("wss upstream");
        echo(&mut ws, Message::text("over TLS")).await;
        let mut ws = ws_connect(&gw, "/plain").await.expect("http-scheme route");
        echo(&mut ws, Message::text("over http scheme")).await;
        assert_eq!(secure.handshakes()[0].target, "/s");
        assert_eq!(plain.handshakes()[0].target, "/p");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_outlives_the_route_timeout_while_idle() {
    bounded(async {
        let up = WsEchoServer::start().await;
        let r = with(
            ws_route("/ws", "/ws", "ws", up.host_and_port()),
            json!({ "Timeout": 1 }),
        );
        let gw = Gateway::start(config(vec![r])).await;
        let mut ws = ws_connect(&gw, "/ws").await.unwrap();
        echo(&mut ws, Message::text("before")).await;
        // Three times the route Timeout without a frame either way.
        tokio::time::sleep(Duration::from_secs(3)).await;
        echo(&mut ws, Message::text("after")).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_idle_timeout_setting_closes_silent_sockets() {
    bounded(async {
        let up = WsEchoServer::start().await;
        let gw = Gateway::builder(config(vec![ws_route(
            "/ws",
            "/ws",
            "ws",
            up.host_and_port(),
        )]))
        .settings("websocket_idle_timeout_seconds: 1\n")
        .start()
        .await;
        let mut ws = ws_connect(&gw, "/ws").await.unwrap();
        echo(&mut ws, Message::text("ping")).await;
        let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the gateway closes an idle socket");
        assert!(
            matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
            "{end:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_from_a_blocked_ip_is_403() {
    bounded(async {
        let up = WsEchoServer::start().await;
        let r = with(
            ws_route("/ws", "/ws", "ws", up.host_and_port()),
            json!({ "SecurityOptions": { "IPBlockedList": ["127.0.0.1"] } }),
        );
        let gw = Gateway::start(config(vec![r])).await;
        match ws_connect(&gw, "/ws").await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
            other => panic!("expected a 403 refusal, got {other:?}"),
        }
        assert!(
            up.handshakes().is_empty(),
            "the upgrade reached the service"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_on_an_authenticated_route_needs_a_token() {
    bounded(async {
        // Unlike Ocelot, whose WebSocket branch skips authentication, the
        // gateway does not let an upgrade around a route's AuthenticationOptions.
        let up = WsEchoServer::start().await;
        let r = with(
            ws_route("/ws", "/ws", "ws", up.host_and_port()),
            json!({ "AuthenticationOptions": { "AuthenticationProviderKey": "Bearer" } }),
        );
        let gw = Gateway::start(config(vec![r])).await;
        match ws_connect(&gw, "/ws").await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("expected a 401 refusal, got {other:?}"),
        }
        assert!(up.handshakes().is_empty());
    })
    .await
}

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
