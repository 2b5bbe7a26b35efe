//! Self-tests of the harness (no gateway involved): the echo server's
//! answers and special headers, streaming both ways, TLS, the raw client, and
//! the OTLP receiver against the real OpenTelemetry exporter.
//! If one of these fails, gateway test failures mean nothing.

use std::sync::Arc;
use std::time::Duration;

use e2e::otlp::{OtlpReceiver, ReceivedSpan, SpanKind, SpanStatus};
use e2e::{bounded, client, pattern, raw, streaming_client, EchoServer, Reply};
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Array, Context, KeyValue, StringValue};
use opentelemetry_otlp::{
    Compression, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
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

// ---------------------------------------------------------------------------
// OTLP receiver, fed by the real opentelemetry-otlp exporter

/// Long enough for a loopback export on a loaded machine; also how long an
/// export to a stopped receiver keeps retrying before it gives up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

fn http_exporter(rx: &OtlpReceiver, compression: Option<Compression>) -> SpanExporter {
    let mut builder = SpanExporter::builder()
        .with_http()
        // The harness client ignores any http_proxy in the environment.
        .with_http_client(client())
        // Configured in code, the endpoint is used as is: no /v1/traces added.
        .with_endpoint(rx.traces_url())
        .with_timeout(EXPORT_TIMEOUT)
        .with_headers([("x-tenant".to_string(), "acme".to_string())].into());
    if let Some(c) = compression {
        builder = builder.with_compression(c);
    }
    builder.build().expect("build OTLP/HTTP exporter")
}

/// Must run inside the runtime: tonic's channel is created here.
fn grpc_exporter(rx: &OtlpReceiver, compression: Option<Compression>) -> SpanExporter {
    let mut builder = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(rx.endpoint())
        .with_timeout(EXPORT_TIMEOUT);
    if let Some(c) = compression {
        builder = builder.with_compression(c);
    }
    builder.build().expect("build OTLP/gRPC exporter")
}

/// One export per ended span (the simple processor), so a span has arrived,
/// or failed to, when the code that ended it returns.
fn provider(exporter: SpanExporter) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(
            Resource::builder_empty()
                .with_service_name("harness")
                .with_attribute(KeyValue::new("deployment.environment", "test"))
                .build(),
        )
        .build()
}

/// Runs span code off the runtime's workers: the simple processor blocks on
/// each export, whose I/O the workers drive.
async fn traced<T: Send + 'static>(
    provider: &SdkTracerProvider,
    f: impl FnOnce(opentelemetry_sdk::trace::SdkTracer) -> T + Send + 'static,
) -> T {
    let tracer = provider.tracer("e2e-harness");
    tokio::task::spawn_blocking(move || f(tracer))
        .await
        .expect("span code panicked")
}

/// Ids of a server span and its client child, as hex.
struct Sent {
    trace_id: String,
    parent_id: String,
    child_id: String,
}

async fn send_parent_and_child(provider: &SdkTracerProvider) -> Sent {
    traced(provider, |tracer| {
        let parent = tracer
            .span_builder("GET /orders/{id}")
            .with_kind(opentelemetry::trace::SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.response.status_code", 200_i64),
                KeyValue::new("cache.hit", false),
                KeyValue::new("sample.ratio", 0.25),
                KeyValue::new(
                    "upstreams",
                    opentelemetry::Value::Array(Array::String(vec![
                        StringValue::from("a:80"),
                        StringValue::from("b:80"),
                    ])),
                ),
            ])
            .start(&tracer);
        let cx = Context::current_with_span(parent);
        let mut child = tracer
            .span_builder("upstream GET")
            .with_kind(opentelemetry::trace::SpanKind::Client)
            .with_attributes([KeyValue::new("server.port", 80_i64)])
            .start_with_context(&tracer, &cx);
        child.add_event("retry", vec![KeyValue::new("attempt", 2_i64)]);
        child.set_status(opentelemetry::trace::Status::error("upstream timed out"));
        let sent = Sent {
            trace_id: child.span_context().trace_id().to_string(),
            parent_id: cx.span().span_context().span_id().to_string(),
            child_id: child.span_context().span_id().to_string(),
        };
        child.end();
        cx.span().end();
        sent
    })
    .await
}

async fn send_span(provider: &SdkTracerProvider, name: &'static str) {
    traced(provider, move |tracer| tracer.start(name).end()).await
}

/// What the receiver decoded is what was sent.
async fn assert_parent_and_child(rx: &OtlpReceiver, sent: &Sent) {
    let spans = rx
        .wait_for_spans(2, Duration::from_secs(10), |s| s.trace_id == sent.trace_id)
        .await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let find = |name: &str| -> &ReceivedSpan {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
    };
    let parent = find("GET /orders/{id}");
    let child = find("upstream GET");

    assert_eq!(parent.trace_id.len(), 32);
    assert!(parent
        .trace_id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(parent.span_id, sent.parent_id);
    assert_eq!(parent.span_id.len(), 16);
    assert!(parent.is_root(), "{parent:#?}");
    assert_eq!(parent.kind, SpanKind::Server);
    assert_eq!(parent.kind.as_str(), "server");
    assert_eq!(parent.status, SpanStatus::Unset);
    assert_eq!(parent.attributes["http.request.method"], "GET");
    assert_eq!(parent.attributes["http.response.status_code"], 200_i64);
    assert_eq!(parent.int_attr("http.response.status_code"), Some(200));
    assert_eq!(parent.attributes["cache.hit"], false);
    assert_eq!(parent.attributes["sample.ratio"], 0.25);
    assert_eq!(
        parent.attributes["upstreams"],
        e2e::otlp::AttrValue::Array(vec![
            e2e::otlp::AttrValue::String("a:80".into()),
            e2e::otlp::AttrValue::String("b:80".into()),
        ])
    );
    assert_eq!(parent.service_name.as_deref(), Some("harness"));
    assert_eq!(parent.resource["deployment.environment"], "test");
    assert_eq!(parent.scope_name, "e2e-harness");
    assert!(parent.start_unix_nanos > 0 && parent.end_unix_nanos >= parent.start_unix_nanos);

    assert_eq!(child.trace_id, sent.trace_id);
    assert_eq!(child.span_id, sent.child_id);
    assert_eq!(
        child.parent_span_id.as_deref(),
        Some(sent.parent_id.as_str())
    );
    assert_eq!(child.kind, SpanKind::Client);
    assert_eq!(child.kind.as_str(), "client");
    assert_eq!(child.int_attr("server.port"), Some(80));
    assert_eq!(child.status, SpanStatus::Error);
    assert_eq!(child.status.as_str(), "error");
    assert_eq!(child.status_message, "upstream timed out");
    assert_eq!(child.events.len(), 1, "{child:#?}");
    assert_eq!(child.events[0].name, "retry");
    assert_eq!(child.events[0].attributes["attempt"], 2_i64);
    // The child ends first, and the simple processor exports each on its own.
    assert_eq!(rx.requests(), 2);
    assert!(rx.rejected().is_empty(), "{:?}", rx.rejected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_receiver_decodes_real_spans() {
    bounded(async {
        let rx = OtlpReceiver::start_http();
        assert_eq!(rx.endpoint(), format!("http://127.0.0.1:{}", rx.port()));
        assert_eq!(rx.traces_url(), format!("{}/v1/traces", rx.endpoint()));
        let provider = provider(http_exporter(&rx, None));
        let sent = send_parent_and_child(&provider).await;
        assert_parent_and_child(&rx, &sent).await;
        let headers = rx.request_headers();
        assert_eq!(headers[0]["content-type"], "application/x-protobuf");
        assert_eq!(headers[0]["x-tenant"], "acme");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_receiver_decodes_real_spans() {
    bounded(async {
        let rx = OtlpReceiver::start_grpc();
        assert_eq!(rx.endpoint(), format!("http://127.0.0.1:{}", rx.port()));
        let provider = provider(grpc_exporter(&rx, None));
        let sent = send_parent_and_child(&provider).await;
        assert_parent_and_child(&rx, &sent).await;
        assert_eq!(rx.request_headers()[0]["content-type"], "application/grpc");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_receivers_inflate_gzip() {
    bounded(async {
        let http = OtlpReceiver::start_http();
        let sent =
            send_parent_and_child(&provider(http_exporter(&http, Some(Compression::Gzip)))).await;
        assert_parent_and_child(&http, &sent).await;
        assert_eq!(http.request_headers()[0]["content-encoding"], "gzip");

        let grpc = OtlpReceiver::start_grpc();
        let sent =
            send_parent_and_child(&provider(grpc_exporter(&grpc, Some(Compression::Gzip)))).await;
        assert_parent_and_child(&grpc, &sent).await;
        assert_eq!(grpc.request_headers()[0]["grpc-encoding"], "gzip");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_refuses_what_it_cannot_decode() {
    bounded(async {
        let rx = OtlpReceiver::start_http();
        let post = |path: &str, content_type: &str, body: &'static [u8]| {
            client()
                .post(format!("{}{path}", rx.endpoint()))
                .header("content-type", content_type)
                .body(body)
        };
        let json = Reply::read(
            post("/v1/traces", "application/json", b"{}")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(json.status, 415, "{}", json.text());
        let garbage = Reply::read(
            post("/v1/traces", "application/x-protobuf", b"\xff\xff\xff")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(garbage.status, 400, "{}", garbage.text());
        let logs = Reply::read(
            post("/v1/logs", "application/x-protobuf", b"")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(logs.status, 404);
        let get = Reply::read(client().get(rx.traces_url()).send().await.unwrap()).await;
        assert_eq!(get.status, 405);
        assert_eq!(rx.rejected().len(), 4, "{:?}", rx.rejected());
        assert_eq!(rx.requests(), 0);

        // An empty body is a valid, empty export request.
        let empty = Reply::read(
            post("/v1/traces", "application/x-protobuf", b"")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(empty.status, 200);
        assert_eq!(empty.header("content-type"), Some("application/x-protobuf"));
        assert_eq!(rx.requests(), 1);
        assert!(rx.spans().is_empty());
    })
    .await
}

/// A span exported while the receiver is stopped is lost; one exported after
/// it started again on the same port arrives.
async fn stop_and_start_again(mut rx: OtlpReceiver, provider: SdkTracerProvider) {
    send_span(&provider, "before").await;
    rx.wait_for_span("before", Duration::from_secs(10)).await;
    let port = rx.port();

    rx.stop();
    assert!(
        tokio::net::TcpStream::connect(rx.addr()).await.is_err(),
        "a stopped receiver refuses connections"
    );
    send_span(&provider, "while stopped").await;

    rx.start_again();
    assert_eq!(rx.port(), port);
    send_span(&provider, "after").await;
    rx.wait_for_span("after", Duration::from_secs(10)).await;
    let names: Vec<String> = rx.spans().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["before", "after"]);

    rx.clear();
    assert!(rx.spans().is_empty());
    assert_eq!(rx.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_stop_and_start_again() {
    bounded(async {
        let rx = OtlpReceiver::start_http();
        let provider = provider(http_exporter(&rx, None));
        stop_and_start_again(rx, provider).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_stop_and_start_again() {
    bounded(async {
        let rx = OtlpReceiver::start_grpc();
        let provider = provider(grpc_exporter(&rx, None));
        stop_and_start_again(rx, provider).await;
    })
    .await
}
