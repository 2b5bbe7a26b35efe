//! WebSockets through the gateway (Ocelot's `ws`/`wss` routes; Ocelot's
//! WebSockets acceptance tests): echo both ways, wss and http-scheme routes,
//! idle timeouts, and the route's security and authentication at the upgrade.

use std::time::Duration;

use e2e::protocol_servers::WsEchoServer;
use e2e::{bounded, config, with, Gateway};
use futures_util::{SinkExt, StreamExt};
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
