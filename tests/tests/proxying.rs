//! What the gateway sends upstream and hands back: method
//! override, Host, header forwarding, hop-by-hop removal, bodies, response
//! headers.

use e2e::{
    assert_routed, bounded, client, config, get, raw, route, send, with, EchoServer, Gateway, Seen,
};
use serde_json::json;

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_http_method_overrides_the_method() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![with(
            route("/m", "/m", &[&up]),
            json!({ "UpstreamHttpMethod": ["Post"], "DownstreamHttpMethod": "PUT" }),
        )]))
        .await;
        let r = send(client().post(gw.url("/m")).body("0123456789"), &[]).await;
        let seen = assert_routed(&r, "up", "/m");
        assert_eq!(seen.method, "PUT");
        assert_eq!(seen.body_len, 10);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_is_the_downstream_services() {
    bounded(async {
        // In Ocelot's terms "downstream" is the backend: like .NET's HttpClient,
        // the gateway sends the backend's host:port, not the client's Host.
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/h", "/h", &[&up])])).await;
        let backend = up.addr().to_string();

        let seen = assert_routed(&get(&gw.url("/h"), &[]).await, "up", "/h");
        assert_eq!(seen.header_values("host"), vec![backend.as_str()]);

        let r = get(&gw.url("/h"), &[("host", "shop.example.com:1234")]).await;
        let seen = assert_routed(&r, "up", "/h");
        assert_eq!(seen.header_values("host"), vec![backend.as_str()]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_of_an_ipv6_service_has_brackets() {
    bounded(async {
        // `{"Host": "::1"}` in DownstreamHostAndPorts: the Host header (and
        // any URL made from it) needs the address in brackets, RFC 3986.
        let up =
            EchoServer::start_on("up", "[::1]:0".parse().expect("addr")).expect("IPv6 loopback");
        let gw = Gateway::start(config(vec![route("/h", "/h", &[&up])])).await;
        let seen = assert_routed(&get(&gw.url("/h"), &[]).await, "up", "/h");
        let expected = format!("[::1]:{}", up.port());
        assert_eq!(seen.header_values("host"), vec![expected.as_str()]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_headers_are_forwarded_and_nothing_is_added() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/f", "/f", &[&up])])).await;
        let req = client()
            .get(gw.url("/f"))
            .header("authorization", "Bearer abc.def")
            .header("cookie", "a=1; b=2")
            .header("accept", "application/xml")
            .header("user-agent", "e2e-test/1")
            .header("x-custom", "one")
            .header("x-multi", "first")
            .header("x-multi", "second")
            .header("x-forwarded-for", "10.9.8.7");
        let seen = assert_routed(&send(req, &[]).await, "up", "/f");

        assert_eq!(seen.header("authorization"), Some("Bearer abc.def"));
        assert_eq!(seen.header("cookie"), Some("a=1; b=2"));
        assert_eq!(seen.header("accept"), Some("application/xml"));
        assert_eq!(seen.header("user-agent"), Some("e2e-test/1"));
        assert_eq!(seen.header("x-custom"), Some("one"));
        assert_eq!(joined(&seen, "x-multi"), "first,second");
        // A client's own X-Forwarded-For passes through unchanged...
        assert_eq!(seen.header_values("x-forwarded-for"), vec!["10.9.8.7"]);
        // ...and the gateway adds none of its own (Ocelot adds no forwarding headers).
        for h in [
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
            "forwarded",
            "via",
            "x-real-ip",
        ] {
            assert!(!seen.has_header(h), "gateway added {h}: {seen:#?}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/hop", "/hop", &[&up])])).await;
        // Raw bytes: client libraries manage these headers themselves.
        let req = format!(
            "GET /hop HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nKeep-Alive: timeout=5\r\n\
             TE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\n\
             X-Keep: yes\r\n\r\n",
            gw.authority()
        );
        let r = raw::exchange(gw.addr(), req.as_bytes()).await;
        assert_eq!(r.status(), Some(200), "{}", r.describe());
        let seen = up.only_request();
        for h in HOP_BY_HOP {
            assert!(!seen.has_header(h), "hop-by-hop {h} forwarded: {seen:#?}");
        }
        assert_eq!(seen.header("x-keep"), Some("yes"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_header_without_upgrade_is_not_forwarded() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/up", "/up", &[&up])])).await;
        let req = format!(
            "GET /up HTTP/1.1\r\nHost: {}\r\nUpgrade: h2c\r\nConnection: close\r\n\r\n",
            gw.authority()
        );
        let r = raw::exchange(gw.addr(), req.as_bytes()).await;
        assert_eq!(r.status(), Some(200), "{}", r.describe());
        let seen = up.only_request();
        assert!(!seen.has_header("upgrade"), "{seen:#?}");
        assert!(!seen.has_header("connection"), "{seen:#?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_forwarded_with_length_or_chunked() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/body", "/body", &[&up])])).await;

        let body = vec![b'z'; 100_000];
        let r = send(
            client().post(gw.url("/body")).body(body),
            &[("content-type", "application/octet-stream")],
        )
        .await;
        let seen = assert_routed(&r, "up", "/body");
        assert_eq!(seen.body_len, 100_000);
        assert_eq!(seen.header("content-length"), Some("100000"));
        assert_eq!(
            seen.header("content-type"),
            Some("application/octet-stream")
        );

        // Chunked in (no length known): the whole body still arrives.
        let total = 300_001u64;
        let req = client()
            .post(gw.url("/body"))
            .header("x-echo-expect-pattern", "1")
            .body(reqwest::Body::wrap_stream(e2e::pattern::stream(total)));
        let seen = assert_routed(&send(req, &[]).await, "up", "/body");
        assert_eq!(seen.body_len, total);
        assert_eq!(seen.body_pattern_ok, Some(true));

        // Empty POST.
        let seen = assert_routed(
            &send(client().post(gw.url("/body")), &[]).await,
            "up",
            "/body",
        );
        assert_eq!(seen.body_len, 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_and_body_come_back_unchanged() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/r", "/r", &[&up])])).await;
        let r = get(
            &gw.url("/r"),
            &[
                ("x-echo-header", "X-Resp: hello"),
                ("x-echo-header", "Cache-Control: max-age=60"),
                ("x-echo-header", "Set-Cookie: s=1; Path=/"),
            ],
        )
        .await;
        let seen = assert_routed(&r, "up", "/r");
        assert_eq!(r.header("x-resp"), Some("hello"));
        assert_eq!(r.header("cache-control"), Some("max-age=60"));
        assert_eq!(r.header("set-cookie"), Some("s=1; Path=/"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        // The body is the upstream's, byte for byte.
        assert_eq!(r.body, serde_json::to_vec(&seen).unwrap());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_client_connection_serves_many_requests() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/k/{n}", "/k/{n}", &[&up])])).await;
        let c = client();
        for n in 0..20 {
            let r = send(c.get(gw.url(&format!("/k/{n}"))), &[]).await;
            assert_routed(&r, "up", &format!("/k/{n}"));
        }
        assert_eq!(up.count(), 20);
    })
    .await
}

fn joined(seen: &Seen, name: &str) -> String {
    // Repeated headers may be sent as separate lines or folded with commas;
    // both mean the same list.
    seen.header_values(name)
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_request_gets_headers_only() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/head", "/head", &[&up])])).await;
        let r = send(
            client().head(gw.url("/head")),
            &[("x-echo-header", "X-Head: yes")],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-head"), Some("yes"));
        assert!(r.body.is_empty());
        assert_eq!(up.only_request().method, "HEAD");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_request_is_served() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/old/{x}", "/new/{x}", &[&up])])).await;
        let req = format!(
            "GET /old/school HTTP/1.0\r\nHost: {}\r\n\r\n",
            gw.authority()
        );
        let r = raw::exchange_to_close(gw.addr(), req.as_bytes()).await;
        assert_eq!(r.status(), Some(200), "{}", r.describe());
        assert!(
            r.closed && !r.timed_out,
            "HTTP/1.0 connection not closed: {}",
            r.describe()
        );
        assert_eq!(up.only_request().path, "/new/school");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_upload_completes() {
    bounded(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/upload", "/upload", &[&up])])).await;
        // As curl does for bodies over 1 KiB: headers first, body after
        // "100 Continue" (or after a short wait if none comes).
        let mut c = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: 2000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            gw.authority()
        );
        c.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        if let Ok(Ok(n)) = tokio::time::timeout(std::time::Duration::from_secs(1), c.read(&mut buf)).await {
            let interim = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(interim.starts_with("HTTP/1.1 100"), "expected 100 Continue, got {interim:?}");
        }
        c.write_all(&[b'x'; 2000]).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(raw::RAW_TIMEOUT, c.read_to_end(&mut rest)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&rest);
        assert!(text.contains("HTTP/1.1 200"), "{text}");
        assert_eq!(up.only_request().body_len, 2000);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_request_target_is_routed_by_path() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/abs/{x}", "/abs/{x}", &[&up])])).await;
        let req = format!(
            "GET http://{}/abs/1?q=2 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            gw.authority(),
            gw.authority()
        );
        let r = raw::exchange(gw.addr(), req.as_bytes()).await;
        assert_eq!(r.status(), Some(200), "{}", r.describe());
        let seen = up.only_request();
        // Upstream gets origin-form.
        assert_eq!(seen.path, "/abs/1");
        assert_eq!(seen.query.as_deref(), Some("q=2"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_connections_are_reused_across_worker_threads() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::builder(config(vec![route("/r", "/r", &[&up])]))
            .settings("threads: 2\n")
            .start()
            .await;
        const CLIENTS: usize = 16;
        const REQUESTS: usize = 150;
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let url = gw.url("/r");
                tokio::spawn(async move {
                    // A client of its own: its own connection to the gateway,
                    // so requests arrive on both worker threads.
                    let client = e2e::client();
                    for _ in 0..REQUESTS {
                        let r = client.get(&url).send().await.unwrap();
                        assert_eq!(r.status(), 200);
                        r.bytes().await.unwrap();
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        assert_eq!(up.count(), CLIENTS * REQUESTS);
        // Never more upstream connections than requests in flight at once
        // (plus a few made while the pool filled): idle ones are reused
        // whichever thread released them.
        assert!(
            up.connections() <= (2 * CLIENTS) as u64,
            "{} upstream connections for {CLIENTS} clients",
            up.connections()
        );
        assert!(
            !gw.stderr().contains("failed to acquire reusable stream"),
            "{}",
            gw.stderr()
        );
    })
    .await
}
