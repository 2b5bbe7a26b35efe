//! OpenTelemetry tracing against a real OTLP receiver on loopback: the
//! client's trace context reaches the service through the gateway's spans,
//! with the HTTP semantic-convention attributes; refused requests, retries
//! and aggregate sub-requests have their spans; sampling follows the ratio
//! and the parent; a collector that goes away costs spans, not requests.

use std::time::Duration;

use e2e::otlp::{OtlpReceiver, ReceivedSpan, SpanKind, SpanStatus};
use e2e::server::{response, TestServer};
use e2e::{bounded, closed_addr, config, get, EchoServer, Gateway};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn users_route(up: &EchoServer) -> Value {
    json!({
        "UpstreamPathTemplate": "/users/{id}",
        "DownstreamPathTemplate": "/api/users/{id}",
        "DownstreamScheme": "http",
        "DownstreamHostAndPorts": [up.host_and_port()],
        "UpstreamHeaderTransform": {"X-Trace": "{TraceId}"},
    })
}

fn settings(receiver: &OtlpReceiver, extra: &str) -> String {
    format!(
        "tracing: {{endpoint: '{}', export_interval_ms: 100{extra}}}",
        receiver.endpoint()
    )
}

fn traceparent(trace: &str, span: &str, sampled: bool) -> String {
    format!("00-{trace}-{span}-{}", if sampled { "01" } else { "00" })
}

/// `00-TRACE-SPAN-FLAGS` → (trace, span, flags).
fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn one(spans: &[ReceivedSpan], kind: SpanKind) -> &ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind == kind).collect();
    assert_eq!(found.len(), 1, "one {kind:?} span in {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_the_client_through_the_gateway_to_the_service() {
    bounded(async {
        let receiver = OtlpReceiver::start_http();
        let up = EchoServer::start("users");
        let gw = Gateway::builder(config(vec![users_route(&up)]))
            .settings(&settings(&receiver, ", service_name: edge"))
            .start()
            .await;
        let parent = traceparent(CLIENT_TRACE, CLIENT_SPAN, true);
        let r = get(
            &gw.url("/users/7?full=1"),
            &[
                ("traceparent", parent.as_str()),
                ("tracestate", "vendor=1"),
                ("user-agent", "tracing-test"),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = r.seen();
        let (trace, service_parent, flags) =
            parse_traceparent(seen.header("traceparent").expect("traceparent sent on"));
        assert_eq!((trace.as_str(), flags.as_str()), (CLIENT_TRACE, "01"));
        assert_ne!(
            service_parent, CLIENT_SPAN,
            "the gateway's span is the service's parent"
        );
        assert_eq!(seen.header("tracestate"), Some("vendor=1"));
        assert_eq!(
            seen.header("x-trace"),
            Some(CLIENT_TRACE),
            "{{TraceId}} is the trace id"
        );

        let spans = receiver
            .wait_for_spans(2, WAIT, |s| s.trace_id == CLIENT_TRACE)
            .await;
        let server = one(&spans, SpanKind::Server);
        let client = one(&spans, SpanKind::Client);
        assert_eq!(server.parent_span_id.as_deref(), Some(CLIENT_SPAN));
        assert_eq!(server.name, "GET /users/{id}");
        assert_eq!(server.service_name.as_deref(), Some("edge"));
        assert_eq!(server.attributes["http.request.method"], "GET");
        assert_eq!(server.attributes["http.route"], "/users/{id}");
        assert_eq!(server.attributes["http.response.status_code"], 200i64);
        assert_eq!(server.attributes["url.path"], "/users/7");
        assert_eq!(server.attributes["url.query"], "full=1");
        assert_eq!(server.attributes["client.address"], "127.0.0.1");
        assert_eq!(server.attributes["server.address"], "127.0.0.1");
        assert_eq!(
            server.attributes["server.port"],
            i64::from(gw.addr().port())
        );
        assert_eq!(server.attributes["user_agent.original"], "tracing-test");
        assert!(server.attributes.contains_key("http.response.body.size"));
        assert_eq!(server.status, SpanStatus::Unset);

        assert_eq!(
            client.parent_span_id.as_deref(),
            Some(server.span_id.as_str())
        );
        assert_eq!(
            client.span_id, service_parent,
            "the service saw the client span"
        );
        assert_eq!(client.attributes["http.request.method"], "GET");
        assert_eq!(client.attributes["server.port"], i64::from(up.port()));
        assert_eq!(client.attributes["http.response.status_code"], 200i64);
        assert_eq!(
            client.attributes["url.full"],
            format!("http://127.0.0.1:{}/api/users/7?full=1", up.port()).as_str()
        );

        let lines = gw.wait_for_access_log("/users/7", 1).await;
        assert_eq!(lines[0]["trace_id"], CLIENT_TRACE);
        gw.wait_for_metrics(&["gateway_trace_spans_exported_total 2"])
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_failed_requests_have_their_spans() {
    bounded(async {
        let receiver = OtlpReceiver::start_http();
        let dead = closed_addr();
        let route = json!({
            "UpstreamPathTemplate": "/dead",
            "DownstreamPathTemplate": "/dead",
            "DownstreamScheme": "http",
            "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": dead.port()}],
        });
        let gw = Gateway::builder(config(vec![route]))
            .settings(&settings(&receiver, ""))
            .start()
            .await;

        let nowhere = "11111111111111111111111111111111";
        let r = get(
            &gw.url("/nowhere"),
            &[("traceparent", &traceparent(nowhere, CLIENT_SPAN, true))],
        )
        .await;
        assert_eq!(r.status, 404);
        let spans = receiver
            .wait_for_spans(1, WAIT, |s| s.trace_id == nowhere)
            .await;
        let server = one(&spans, SpanKind::Server);
        assert_eq!(server.attributes["gateway.refusal"], "no_route");
        assert_eq!(server.attributes["http.response.status_code"], 404i64);
        assert_eq!(server.status, SpanStatus::Unset, "a 4xx is the client's");
        assert_eq!(server.name, "GET");

        let dead_trace = "22222222222222222222222222222222";
        let r = get(
            &gw.url("/dead"),
            &[("traceparent", &traceparent(dead_trace, CLIENT_SPAN, true))],
        )
        .await;
        assert_eq!(r.status, 502);
        let spans = receiver
            .wait_for_spans(2, WAIT, |s| s.trace_id == dead_trace)
            .await;
        let server = one(&spans, SpanKind::Server);
        let client = one(&spans, SpanKind::Client);
        assert_eq!(server.name, "GET /dead");
        assert_eq!(server.status, SpanStatus::Error);
        assert_eq!(server.attributes["error.type"], "502");
        assert_eq!(client.status, SpanStatus::Error);
        assert_eq!(client.attributes["error.type"], "ConnectRefused");
        assert_eq!(
            client.parent_span_id.as_deref(),
            Some(server.span_id.as_str())
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_and_the_clients_decision() {
    bounded(async {
        let receiver = OtlpReceiver::start_http();
        let up = EchoServer::start("users");
        let gw = Gateway::builder(config(vec![users_route(&up)]))
            .settings(&settings(&receiver, ", sampler_ratio: 0"))
            .start()
            .await;
        // No parent: ratio 0 samples nothing, yet the service still gets a
        // trace context (not sampled) to continue.
        let mut unsampled = Vec::new();
        for _ in 0..5 {
            let r = get(&gw.url("/users/1"), &[]).await;
            assert_eq!(r.status, 200);
            let (trace, _, flags) =
                parse_traceparent(r.seen().header("traceparent").expect("sent"));
            assert_eq!(flags, "00");
            unsampled.push(trace);
        }
        // A client that sampled its trace: followed (parent-based).
        let r = get(
            &gw.url("/users/2"),
            &[("traceparent", &traceparent(CLIENT_TRACE, CLIENT_SPAN, true))],
        )
        .await;
        assert_eq!(r.status, 200);
        receiver
            .wait_for_spans(2, WAIT, |s| s.trace_id == CLIENT_TRACE)
            .await;
        // A client that did not: not sampled either.
        let declined = "33333333333333333333333333333333";
        get(
            &gw.url("/users/3"),
            &[("traceparent", &traceparent(declined, CLIENT_SPAN, false))],
        )
        .await;
        // Exported in the same or an earlier batch than the sampled trace's
        // spans had they been sampled; wait one more export interval.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let spans = receiver.spans();
        assert!(
            spans.iter().all(|s| s.trace_id == CLIENT_TRACE),
            "only the sampled trace was exported: {:?}",
            spans.iter().map(|s| &s.trace_id).collect::<Vec<_>>()
        );
        assert!(unsampled.iter().all(|t| t != CLIENT_TRACE));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_goes_away_costs_spans_not_requests() {
    bounded(async {
        let mut receiver = OtlpReceiver::start_http();
        let up = EchoServer::start("users");
        let gw = Gateway::builder(config(vec![users_route(&up)]))
            .settings(&settings(
                &receiver,
                ", export_timeout_ms: 300, queue_size: 16, batch_size: 4",
            ))
            .start()
            .await;
        receiver.stop();
        for i in 0..60 {
            let r = get(&gw.url("/users/1"), &[]).await;
            assert_eq!(r.status, 200, "request {i}");
        }
        e2e::eventually(WAIT, "failed exports counted", || async {
            let m = gw.metrics().await;
            e2e::metric_sample(&m, "gateway_trace_spans_dropped_export_failed_total") > 0.0
                && e2e::metric_sample(&m, "gateway_trace_export_failures_total") > 0.0
        })
        .await;
        assert!(
            gw.metric("gateway_trace_queue_spans").await <= 16.0,
            "the queue stays bounded"
        );
        receiver.start_again();
        let after = "44444444444444444444444444444444";
        e2e::eventually(
            WAIT,
            "spans exported after the collector is back",
            || async {
                // Each try is a new request: one may still meet the last failing export.
                let r = get(
                    &gw.url("/users/9"),
                    &[("traceparent", &traceparent(after, CLIENT_SPAN, true))],
                )
                .await;
                assert_eq!(r.status, 200);
                tokio::time::sleep(Duration::from_millis(300)).await;
                receiver.spans().iter().any(|s| s.trace_id == after)
            },
        )
        .await;
        assert!(
            gw.stderr().matches("tracing: export to").count() >= 2,
            "outage and recovery logged"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_configured_by_the_standard_environment() {
    bounded(async {
        let receiver = OtlpReceiver::start_grpc();
        let up = EchoServer::start("users");
        let gw = Gateway::builder(config(vec![users_route(&up)]))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_SERVICE_NAME", "edge-grpc")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .start()
            .await;
        let r = get(
            &gw.url("/users/5"),
            &[("traceparent", &traceparent(CLIENT_TRACE, CLIENT_SPAN, true))],
        )
        .await;
        assert_eq!(r.status, 200);
        let spans = receiver
            .wait_for_spans(2, WAIT, |s| s.trace_id == CLIENT_TRACE)
            .await;
        let server = one(&spans, SpanKind::Server);
        assert_eq!(server.service_name.as_deref(), Some("edge-grpc"));
        assert_eq!(server.attributes["http.route"], "/users/{id}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_aggregate_sub_requests_have_a_span_per_attempt() {
    bounded(async {
        let receiver = OtlpReceiver::start_http();
        let failing = TestServer::builder("failing")
            .serve(|_req, _conn| async { response(503, "down") })
            .expect("failing service");
        let good = EchoServer::start("good");
        let users = EchoServer::start("users");
        let ocelot = json!({
            "Routes": [
                {
                    "Key": "orders",
                    "UpstreamPathTemplate": "/orders",
                    "DownstreamPathTemplate": "/orders",
                    "DownstreamScheme": "http",
                    "DownstreamHostAndPorts": [failing.host_and_port(), good.host_and_port()],
                    "LoadBalancerOptions": {"Type": "RoundRobin"},
                },
                {
                    "Key": "users",
                    "UpstreamPathTemplate": "/users",
                    "DownstreamPathTemplate": "/users",
                    "DownstreamScheme": "http",
                    "DownstreamHostAndPorts": [users.host_and_port()],
                },
            ],
            "Aggregates": [{"RouteKeys": ["orders", "users"], "UpstreamPathTemplate": "/both"}],
            "GlobalConfiguration": {},
        });
        let gw = Gateway::builder(ocelot)
            .settings(&format!(
                "{}\nretries: {{routes: {{orders: {{attempts: 2}}}}}}",
                settings(&receiver, "")
            ))
            .start()
            .await;

        // Round robin makes one of two requests meet the failing backend first.
        let traces = [
            "55555555555555555555555555555555",
            "66666666666666666666666666666666",
        ];
        for trace in traces {
            let r = get(
                &gw.url("/orders"),
                &[("traceparent", &traceparent(trace, CLIENT_SPAN, true))],
            )
            .await;
            assert_eq!(r.status, 200);
        }
        // Each trace: the server span and one client span per attempt, a
        // retried one after a 503 carrying `http.request.resend_count`.
        let mut retried = 0;
        for trace in traces {
            let spans = receiver
                .wait_for_spans(2, WAIT, |s| s.trace_id == trace)
                .await;
            let server = one(&spans, SpanKind::Server);
            let mut clients: Vec<&ReceivedSpan> = spans
                .iter()
                .filter(|s| s.kind == SpanKind::Client)
                .collect();
            clients.sort_by_key(|c| c.start_unix_nanos);
            assert!(clients
                .iter()
                .all(|c| c.parent_span_id.as_deref() == Some(server.span_id.as_str())));
            let last = clients.last().expect("an attempt");
            assert_eq!(last.attributes["http.response.status_code"], 200i64);
            if clients.len() == 2 {
                retried += 1;
                assert_eq!(clients[0].attributes["http.response.status_code"], 503i64);
                assert_eq!(clients[0].status, SpanStatus::Error);
                assert_eq!(last.attributes["http.request.resend_count"], 1i64);
            } else {
                assert_eq!(clients.len(), 1, "{spans:#?}");
            }
        }
        assert!(
            retried >= 1,
            "one of two requests met the failing backend first"
        );

        let both = "77777777777777777777777777777777";
        let r = get(
            &gw.url("/both"),
            &[("traceparent", &traceparent(both, CLIENT_SPAN, true))],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let spans = receiver
            .wait_for_spans(3, WAIT, |s| s.trace_id == both)
            .await;
        let server = one(&spans, SpanKind::Server);
        assert_eq!(server.name, "GET /both");
        let clients: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.kind == SpanKind::Client)
            .collect();
        assert!(clients.len() >= 2, "{spans:#?}");
        assert!(clients
            .iter()
            .all(|c| c.parent_span_id.as_deref() == Some(server.span_id.as_str())));
        let users_seen = users.requests();
        let (trace, parent, _) = parse_traceparent(
            users_seen
                .last()
                .and_then(|s| s.header("traceparent"))
                .expect("sent"),
        );
        assert_eq!(trace, both);
        assert!(
            clients.iter().any(|c| c.span_id == parent),
            "the users service saw its span"
        );
    })
    .await
}
