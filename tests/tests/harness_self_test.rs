//! Self-tests of the harness (no gateway involved): the echo server's
//! answers and special headers, streaming both ways, TLS, and the raw client.
//! If one of these fails, gateway test failures mean nothing.

use std::sync::Arc;
use std::time::Duration;

use e2e::{bounded, client, pattern, raw, streaming_client, EchoServer, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};

fn url(s: &EchoServer, target: &str) -> String {
    format!("http://{}{}", s.addr(), target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_describes_and_records_the_request() {
    bounded(async {
        let s = EchoServer::start("alpha");
        let reply = Reply::read(
            client()
                .post(url(&s, "/a/b%20c?x=1&y=%2F"))
                .header("X-One", "1")
                .header("X-Two", "two")
                .body("hello")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let seen = reply.seen();
        assert_eq!(seen.server, "alpha");
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.path, "/a/b%20c");
        assert_eq!(seen.query.as_deref(), Some("x=1&y=%2F"));
        assert_eq!(seen.header("x-one"), Some("1"));
        assert_eq!(seen.header("X-TWO"), Some("two"));
        assert_eq!(seen.body_len, 5);
        assert_eq!(seen.sni, None);
        assert!(!seen.tls);
        assert_eq!(s.only_request(), seen);

        let no_query = Reply::read(client().get(url(&s, "/p")).send().await.unwrap()).await;
        assert_eq!(no_query.seen().query, None);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_status_reason_and_headers() {
    bounded(async {
        let s = EchoServer::start("s");
        let addr = s.addr().to_string();
        let r = raw::exchange(
            s.addr(),
            &raw::get_request(
                "/x",
                &addr,
                &[
                    "x-echo-status: 503",
                    "x-echo-reason: Custom Reason",
                    "x-echo-header: X-Extra: yes",
                    "x-echo-header: Set-Cookie: a=1",
                ],
            ),
        )
        .await;
        assert_eq!(
            r.status_line().as_deref(),
            Some("HTTP/1.1 503 Custom Reason"),
            "{}",
            r.describe()
        );
        assert_eq!(r.header("x-extra").as_deref(), Some("yes"));
        assert!(r.body().starts_with(b"{"), "{}", r.describe());

        let r = raw::exchange(
            s.addr(),
            &raw::get_request("/x", &addr, &["x-echo-status: 304"]),
        )
        .await;
        assert_eq!(r.status(), Some(304));
        assert!(r.body().is_empty(), "{}", r.describe());

        let r = raw::exchange(
            s.addr(),
            &raw::get_request("/x", &addr, &["x-echo-status: 500"]),
        )
        .await;
        assert_eq!(
            r.status_line().as_deref(),
            Some("HTTP/1.1 500 Internal Server Error")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_hold_waits_for_release() {
    bounded(async {
        let s = Arc::new(EchoServer::start("h"));
        let u = url(&s, "/held");
        let pending = tokio::spawn(async move {
            Reply::read(
                client()
                    .get(u)
                    .header("x-echo-hold", "k1")
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        });
        s.wait_for_requests(1, Duration::from_secs(10)).await;
        // Another request is not blocked by the held one.
        let other = Reply::read(client().get(url(&s, "/free")).send().await.unwrap()).await;
        assert_eq!(other.status, 200);
        assert!(!pending.is_finished());
        s.release("k1");
        assert_eq!(pending.await.unwrap().status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_streams_large_bodies_both_ways() {
    bounded(async {
        let s = EchoServer::start("big");
        let total: u64 = 64 * 1024 * 1024 + 7;

        // Download, with Content-Length and chunked.
        for chunked in [false, true] {
            let mut req = streaming_client()
                .get(url(&s, "/dl"))
                .header("x-echo-body-bytes", total.to_string());
            if chunked {
                req = req.header("x-echo-chunked", "1");
            }
            let mut resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(
                resp.headers().contains_key("content-length"),
                !chunked,
                "{:?}",
                resp.headers()
            );
            let mut got = 0u64;
            while let Some(chunk) = resp.chunk().await.unwrap() {
                assert!(pattern::matches_at(got, &chunk), "corrupt at {got}");
                got += chunk.len() as u64;
            }
            assert_eq!(got, total);
        }

        // Upload, streamed, checked by the server against the pattern.
        let reply = Reply::read(
            streaming_client()
                .put(url(&s, "/ul"))
                .header("x-echo-expect-pattern", "1")
                .header("content-length", total.to_string())
                .body(reqwest::Body::wrap_stream(pattern::stream(total)))
                .send()
                .await
                .unwrap(),
        )
        .await;
        let seen = reply.seen();
        assert_eq!(seen.body_len, total);
        assert_eq!(seen.body_pattern_ok, Some(true));
        assert_eq!(
            seen.header("content-length"),
            Some(total.to_string().as_str())
        );

        // A shifted body is caught.
        let reply = Reply::read(
            client()
                .put(url(&s, "/ul"))
                .header("x-echo-expect-pattern", "1")
                .body(pattern::chunk_at(1, 1000))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.seen().body_pattern_ok, Some(false));
    })
    .await
}

fn tls_client(roots: RootCertStore) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_echo_trusted_through_its_ca_only() {
    bounded(async {
        let s = EchoServer::start_tls("secure");
        let mut roots = RootCertStore::empty();
        let ca = rustls::pki_types::CertificateDer::from_pem_slice(s.ca_pem().as_bytes()).unwrap();
        roots.add(ca).unwrap();

        let tcp = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
        let mut tls = tls_client(roots)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("handshake with the test CA trusted");
        tls.write_all(b"GET /tls?q=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tls.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        let seen = s.only_request();
        assert!(seen.tls);
        assert_eq!(seen.sni.as_deref(), Some("localhost"));
        assert_eq!(seen.target(), "/tls?q=1");

        // Without the CA the client refuses, and the server counts the failure.
        let tcp = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
        let r = tls_client(RootCertStore::empty())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await;
        assert!(r.is_err());
        for _ in 0..500 {
            if s.tls_handshake_failures() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(s.tls_handshake_failures(), 1);
        assert_eq!(s.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_client_reads_responses_and_closes() {
    bounded(async {
        let s = EchoServer::start("raw");
        let r = raw::exchange(s.addr(), &raw::get_request("/a%zz/../b", "h", &[])).await;
        // hyper accepts this target; what matters here is that raw bytes go out unchanged.
        assert_eq!(r.status(), Some(200), "{}", r.describe());
        assert_eq!(s.only_request().path, "/a%zz/../b");

        let r = raw::exchange(s.addr(), b"\x16\x03\x01garbage\r\n\r\n").await;
        assert!(r.closed || r.status() == Some(400), "{}", r.describe());
        assert!(!r.timed_out);
    })
    .await
}
