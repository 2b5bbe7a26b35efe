//! Hostile and malformed requests: each is refused (4xx or a closed
//! connection), never forwarded where it should not go, and the gateway keeps
//! serving normal requests afterwards.

use e2e::raw::{self, RawResponse};
use e2e::{assert_routed, bounded, config, get, route, EchoServer, Gateway};

/// A gateway with `/api/{rest}` → `api` and `/admin/{rest}` → `admin`.
struct Setup {
    api: EchoServer,
    admin: EchoServer,
    gw: Gateway,
}

async fn setup() -> Setup {
    let api = EchoServer::start("api");
    let admin = EchoServer::start("admin");
    let gw = Gateway::start(config(vec![
        route("/api/{rest}", "/api/{rest}", &[&api]),
        route("/admin/{rest}", "/admin/{rest}", &[&admin]),
    ]))
    .await;
    Setup { api, admin, gw }
}

impl Setup {
    async fn send(&self, bytes: &[u8]) -> RawResponse {
        raw::exchange(self.gw.addr(), bytes).await
    }

    async fn get(&self, target: &str, extra: &[&str]) -> RawResponse {
        self.gw.raw_get(target, extra).await
    }

    /// The gateway is alive and still routes a normal request.
    async fn assert_still_serves(&mut self) {
        assert!(
            self.gw.is_running(),
            "gateway process died: {:?}",
            self.gw.exit_status()
        );
        assert_routed(
            &get(&self.gw.url("/api/health"), &[]).await,
            "api",
            "/api/health",
        );
    }

    fn nothing_forwarded(&self) {
        assert_eq!(
            self.api.count() + self.admin.count(),
            0,
            "forwarded: {:#?} {:#?}",
            self.api.requests(),
            self.admin.requests()
        );
    }
}

#[track_caller]
fn assert_status(r: &RawResponse, expected: u16) {
    assert_eq!(r.status(), Some(expected), "{}", r.describe());
}

#[track_caller]
fn assert_4xx(r: &RawResponse) {
    let s = r.status().unwrap_or(0);
    assert!(
        (400..500).contains(&s),
        "expected 4xx, got {}",
        r.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_percent_encoding_is_400() {
    bounded(async {
        let mut s = setup().await;
        // In the path only: the path is decoded to resolve dot segments and
        // match templates; a query is passed on (or re-encoded) as Ocelot does.
        for target in ["/api/%zz", "/api/a%4", "/api/%G1x", "/api/%/x"] {
            let r = s.get(target, &[]).await;
            assert_status(&r, 400);
        }
        s.nothing_forwarded();
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_resolved_before_routing() {
    bounded(async {
        let mut s = setup().await;
        // Each of these means /admin/secret and must be routed exactly like it.
        for target in [
            "/api/../admin/secret",
            "/api/%2e%2e/admin/secret",
            "/api/%2E%2E/admin/secret",
            "/api/.%2e/admin/secret",
            "/api/./../admin/./secret",
            "/../admin/secret",
        ] {
            let r = s.get(target, &[]).await;
            assert_status(&r, 200);
            let seen: e2e::Seen = serde_json::from_slice(r.body()).expect("echo body");
            assert_eq!(seen.server, "admin", "{target} reached {}", seen.server);
            assert_eq!(seen.path, "/admin/secret", "{target}");
        }
        assert_eq!(s.api.count(), 0, "api saw {:#?}", s.api.requests());
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_escape_to_an_unrouted_path() {
    bounded(async {
        let mut s = setup().await;
        for target in [
            "/api/../internal/keys",
            "/api/%2e%2e/internal",
            "/api/x/../../etc/passwd",
        ] {
            let r = s.get(target, &[]).await;
            assert_status(&r, 404);
        }
        s.nothing_forwarded();
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_header_is_rejected_with_4xx() {
    bounded(async {
        let mut s = setup().await;
        // Kestrel (Ocelot's server) refuses request headers over 32 KiB in total.
        let big = format!("X-Big: {}", "a".repeat(64 * 1024));
        let r = s.get("/api/x", &[&big]).await;
        assert_4xx(&r);
        s.nothing_forwarded();
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enormous_header_block_is_rejected_with_4xx() {
    bounded(async {
        let mut s = setup().await;
        let many: Vec<String> = (0..2000)
            .map(|i| format!("X-H{i}: {}", "v".repeat(1000)))
            .collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let r = s.get("/api/x", &refs).await;
        assert_4xx(&r);
        s.nothing_forwarded();
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_request_line_is_rejected_with_4xx() {
    bounded(async {
        let mut s = setup().await;
        let target = format!("/api/{}", "p".repeat(128 * 1024));
        let r = s.get(&target, &[]).await;
        assert_4xx(&r);
        s.nothing_forwarded();
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_byte_in_header_value_is_400() {
    bounded(async {
        let mut s = setup().await;
        let r = s.get("/api/x", &["X-Bad: a\0b"]).await;
        assert_status(&r, 400);
        s.nothing_forwarded();
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_cr_in_header_value_is_400() {
    bounded(async {
        let mut s = setup().await;
        let r = s.get("/api/x", &["X-Bad: a\rb"]).await;
        assert_status(&r, 400);
        s.nothing_forwarded();
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_header_name_is_400() {
    bounded(async {
        let mut s = setup().await;
        let r = s.get("/api/x", &["Bad Header: x"]).await;
        assert_status(&r, 400);
        s.nothing_forwarded();
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_header_value_is_400() {
    bounded(async {
        let mut s = setup().await;
        // Ocelot 25 answers 400 for non-ASCII request header values.
        let r = s.get("/api/x", &["X-Name: caf\u{e9}"]).await;
        assert_status(&r, 400);
        s.nothing_forwarded();
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_garbage_is_closed_or_400() {
    bounded(async {
        let mut s = setup().await;
        let inputs: [&[u8]; 4] = [
            // A TLS ClientHello start, as from a client that assumed HTTPS.
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
            b"HELLO WORLD\r\n\r\n",
            b"GET\r\n\r\n",
            b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
        ];
        for input in inputs {
            let r = s.send(input).await;
            let ok = r.status() == Some(400) || (r.closed && r.bytes.is_empty());
            assert!(ok, "input {input:?}: {}", r.describe());
        }
        s.nothing_forwarded();
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_are_rejected() {
    bounded(async {
        let mut s = setup().await;
        let req = format!(
            "POST /api/x HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!",
            s.gw.authority()
        );
        let r = s.send(req.as_bytes()).await;
        let ok = r.status() == Some(400) || (r.closed && r.bytes.is_empty());
        assert!(ok, "{}", r.describe());
        s.nothing_forwarded();
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_request_then_close_does_not_hurt() {
    bounded(async {
        let mut s = setup().await;
        // Body shorter than Content-Length, then the client hangs up.
        {
            let mut c = tokio::net::TcpStream::connect(s.gw.addr()).await.unwrap();
            let req = format!(
                "POST /api/x HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000\r\n\r\nonly-a-bit",
                s.gw.authority()
            );
            tokio::io::AsyncWriteExt::write_all(&mut c, req.as_bytes())
                .await
                .unwrap();
        }
        // Headers never finished.
        {
            let mut c = tokio::net::TcpStream::connect(s.gw.addr()).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut c, b"GET /api/x HTTP/1.1\r\nHost: x\r\nX-Par")
                .await
                .unwrap();
        }
        s.assert_still_serves().await;
        // A streaming proxy may have started forwarding the POST (give it a
        // moment to reach the upstream), but the upstream must never see it
        // end cleanly, as if complete.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while !s.api.requests().iter().any(|r| r.method == "POST")
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for seen in s.api.requests() {
            assert!(
                seen.method != "POST" || seen.body_error,
                "truncated body delivered as complete: {seen:#?}"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_are_400() {
    bounded(async {
        let mut s = setup().await;
        let req = "GET /api/x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n";
        let r = s.send(req.as_bytes()).await;
        assert_status(&r, 400);
        s.nothing_forwarded();
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_before_colon_is_400() {
    bounded(async {
        let mut s = setup().await;
        let r = s.get("/api/x", &["X-Test : v"]).await;
        assert_status(&r, 400);
        s.nothing_forwarded();
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obsolete_line_folding_is_not_forwarded() {
    bounded(async {
        let mut s = setup().await;
        let r = s.get("/api/x", &["X-Folded: a", " b"]).await;
        // RFC 9112 §5.2: reject, or replace the fold with spaces before forwarding.
        if r.status() != Some(400) {
            assert_status(&r, 200);
            let seen = s.api.only_request();
            let v = seen.header("x-folded").unwrap_or_default();
            assert!(
                !v.contains('\r') && !v.contains('\n'),
                "fold forwarded: {v:?}"
            );
        }
        s.assert_still_serves().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_cannot_smuggle_a_request() {
    bounded(async {
        let mut s = setup().await;
        // A body framed both ways, hiding a second request: whichever framing
        // the gateway picks, it must not end up serving /admin/smuggled.
        let req = format!(
            "POST /api/x HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
             0\r\n\r\nGET /admin/smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n",
            h = s.gw.authority()
        );
        let r = raw::exchange_to_close(s.gw.addr(), req.as_bytes()).await;
        assert!(!r.timed_out, "connection left open: {}", r.describe());
        assert_eq!(s.admin.count(), 0, "smuggled request served: {:#?}", s.admin.requests());
        for seen in s.api.requests() {
            assert!(
                !(seen.has_header("content-length") && seen.has_header("transfer-encoding")),
                "both framings forwarded: {seen:#?}"
            );
        }
        s.assert_still_serves().await;
    })
    .await
}
