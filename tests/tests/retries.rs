//! Retries (the gateway's `retries` settings, beyond Ocelot): a refused
//! connection, a 503 and a slow attempt are tried again on another backend;
//! a POST is not; the retry budget caps what a failing service gets; QoS
//! sees only the final outcome.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::server::{response, TestServer};
use e2e::{bounded, closed_addr, config, get, send, EchoServer, Gateway};
use serde_json::{json, Value};

/// A service that answers every request with `status` after `delay`,
/// counting them.
struct Failing {
    server: TestServer,
    count: Arc<AtomicUsize>,
}

impl Failing {
    fn start(status: u16, delay: Duration) -> Failing {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let server = TestServer::builder("failing")
            .serve(move |_req, _conn| {
                seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(delay).await;
                    response(status, format!("failing service: {status}"))
                }
            })
            .expect("start failing service");
        Failing { server, count }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn host_and_port(&self) -> Value {
        self.server.host_and_port()
    }
}

fn route(hosts: Vec<Value>, extra: Value) -> Value {
    let mut route = json!({
        "Key": "orders",
        "UpstreamPathTemplate": "/orders",
        "UpstreamHttpMethod": ["Get", "Post"],
        "DownstreamPathTemplate": "/orders",
        "DownstreamScheme": "http",
        "DownstreamHostAndPorts": hosts,
        "LoadBalancerOptions": { "Type": "RoundRobin" },
    });
    if let (Some(r), Value::Object(extra)) = (route.as_object_mut(), extra) {
        r.extend(extra);
    }
    route
}

fn port_of(addr: std::net::SocketAddr) -> Value {
    json!({ "Host": "127.0.0.1", "Port": addr.port() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_until_a_backend_answers() {
    bounded(async {
        let alive = EchoServer::start("alive");
        let mut hosts: Vec<Value> = (0..3).map(|_| port_of(closed_addr())).collect();
        hosts.push(alive.host_and_port());
        let gw = Gateway::builder(config(vec![route(hosts, json!({}))]))
            .settings("retries: {routes: {orders: {attempts: 4}}}")
            .start()
            .await;
        for i in 0..6 {
            let r = get(&gw.url("/orders"), &[]).await;
            assert_eq!(
                (r.status, r.seen().server.as_str()),
                (200, "alive"),
                "request {i}"
            );
        }
        assert_eq!(alive.count(), 6);
        let retried = gw
            .metric(r#"gateway_retries_total{outcome="connect_failure",route="/orders"}"#)
            .await;
        assert!(
            retried >= 3.0,
            "every dead backend was tried once: {retried}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_on_another_backend_and_qos_sees_only_the_answer() {
    bounded(async {
        let failing = Failing::start(503, Duration::ZERO);
        let good = EchoServer::start("good");
        // The breaker would open after two 503s in a row if it counted the
        // attempts rather than the request's outcome.
        let qos = json!({"QoSOptions": {"MinimumThroughput": 2, "BreakDuration": 60000}});
        let gw = Gateway::builder(config(vec![route(
            vec![failing.host_and_port(), good.host_and_port()],
            qos,
        )]))
        .settings("retries: {default: {attempts: 2}}")
        .start()
        .await;
        for i in 0..10 {
            let r = get(&gw.url("/orders"), &[]).await;
            assert_eq!(r.status, 200, "request {i}: {}", r.text());
            assert_eq!(r.seen().server, "good");
        }
        assert_eq!(good.count(), 10);
        let retried = gw
            .metric(r#"gateway_retries_total{outcome="503",route="/orders"}"#)
            .await;
        assert!(failing.count() >= 1, "the failing backend was tried");
        assert_eq!(retried, failing.count() as f64, "every 503 was retried");
        gw.wait_for_metrics(&[r#"gateway_breaker_open{route="/orders"} 0"#])
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_by_default() {
    bounded(async {
        let failing = Failing::start(503, Duration::ZERO);
        let good = EchoServer::start("good");
        let gw = Gateway::builder(config(vec![route(
            vec![failing.host_and_port(), good.host_and_port()],
            json!({}),
        )]))
        .settings("retries: {default: {attempts: 3}}")
        .start()
        .await;
        let client = e2e::client();
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let r = send(client.post(gw.url("/orders")).body("{\"item\": 1}"), &[]).await;
            statuses.push(r.status);
        }
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 200, 200, 503, 503, 503]);
        assert_eq!((failing.count(), good.count()), (3, 3));
        // The same request as a GET is retried.
        for _ in 0..4 {
            assert_eq!(get(&gw.url("/orders"), &[]).await.status, 200);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_what_a_failing_service_gets() {
    bounded(async {
        let failing = Failing::start(503, Duration::ZERO);
        let gw = Gateway::builder(config(vec![route(
            vec![failing.host_and_port()],
            json!({}),
        )]))
        .settings("retries: {default: {attempts: 3, budget_ratio: 0.2, budget_min_per_second: 0}}")
        .start()
        .await;
        for _ in 0..50 {
            assert_eq!(get(&gw.url("/orders"), &[]).await.status, 503);
        }
        // Without the budget: 150 attempts. With it: 50 plus at most a fifth.
        let seen = failing.count();
        assert!((55..=60).contains(&seen), "the service got {seen} requests");
        let exhausted = gw
            .metric(r#"gateway_retry_budget_exhausted_total{route="/orders"}"#)
            .await;
        assert!(exhausted >= 40.0, "refused retries: {exhausted}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_attempt_gives_way_to_another_backend_at_the_per_try_timeout() {
    bounded(async {
        let slow = Failing::start(200, Duration::from_secs(5));
        let fast = EchoServer::start("fast");
        let gw = Gateway::builder(config(vec![route(
            vec![slow.host_and_port(), fast.host_and_port()],
            json!({}),
        )]))
        .settings("retries: {routes: {'/orders': {attempts: 2, per_try_timeout_ms: 300}}}")
        .start()
        .await;
        for i in 0..4 {
            let started = std::time::Instant::now();
            let r = get(&gw.url("/orders"), &[]).await;
            assert_eq!(
                (r.status, r.seen().server.as_str()),
                (200, "fast"),
                "request {i}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "request {i} waited for the slow one"
            );
        }
        assert!(slow.count() >= 1, "the slow backend was tried");
        let retried = gw
            .metric(r#"gateway_retries_total{outcome="timeout",route="/orders"}"#)
            .await;
        assert_eq!(
            retried,
            slow.count() as f64,
            "every slow attempt was retried"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_retry_settings_stop_start_up_with_their_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exited = e2e::run_to_exit(
        &[
            "--ocelot".into(),
            e2e::workspace_root().join("conf/ocelot.json").into(),
            "--settings".into(),
            {
                let file = dir.path().join("gateway.yaml");
                std::fs::write(
                    &file,
                    "retries: {routes: {orders: {attempts: 2, on: [404]}}}",
                )
                .expect("write");
                file.into()
            },
        ],
        Duration::from_secs(20),
    );
    assert!(!exited.status.success());
    assert!(
        exited.stderr.contains("only 5xx") && exited.stderr.contains("routes.orders"),
        "{}",
        exited.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_sub_requests_are_retried_like_direct_requests() {
    bounded(async {
        let failing = Failing::start(503, Duration::ZERO);
        let good = EchoServer::start("good");
        let users = EchoServer::start("users");
        let mut users_route = route(vec![users.host_and_port()], json!({}));
        users_route["Key"] = json!("users");
        users_route["UpstreamPathTemplate"] = json!("/users");
        let ocelot = json!({
            "Routes": [
                route(vec![failing.host_and_port(), good.host_and_port()], json!({})),
                users_route,
            ],
            "Aggregates": [{"RouteKeys": ["orders", "users"], "UpstreamPathTemplate": "/both"}],
            "GlobalConfiguration": {},
        });
        let gw = Gateway::builder(ocelot)
            .settings("retries: {routes: {orders: {attempts: 2}}}")
            .start()
            .await;
        for i in 0..4 {
            let r = get(&gw.url("/both"), &[]).await;
            assert_eq!(r.status, 200, "request {i}: {}", r.text());
            let body: Value = serde_json::from_slice(&r.body).expect("aggregate JSON");
            assert_eq!(body["orders"]["server"], "good", "request {i}: {body}");
            assert_eq!(body["users"]["server"], "users");
        }
        assert!(failing.count() >= 1, "the failing backend was tried");
        let retried = gw
            .metric(r#"gateway_retries_total{outcome="503",route="/orders"}"#)
            .await;
        assert_eq!(retried, failing.count() as f64);
    })
    .await
}
