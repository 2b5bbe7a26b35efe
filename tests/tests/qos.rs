//! Quality of service (Ocelot's `QoSOptions`; Ocelot's
//! QualityOfService acceptance tests): the circuit breaker opening after
//! consecutive failures and half-opening after the break, QoS and route
//! timeouts, and breaker state kept across a reload.

use std::time::{Duration, Instant};

use e2e::{bounded, closed_addr, config, eventually, get, route, with, EchoServer, Gateway};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_after_consecutive_failures_and_half_opens_after_the_break() {
    bounded(async {
        let up = EchoServer::start("up");
        let qos = json!({ "QoSOptions": { "MinimumThroughput": 3, "BreakDuration": 1000 } });
        let gw = Gateway::start(config(vec![with(route("/qos/{x}", "/{x}", &[&up]), qos)])).await;
        let url = gw.url("/qos/a");
        let fail = [("x-echo-status", "500")];

        // Failures must be consecutive: a success in between starts over.
        assert_eq!(get(&url, &fail).await.status, 500);
        assert_eq!(get(&url, &fail).await.status, 500);
        assert_eq!(get(&url, &[]).await.status, 200);
        for _ in 0..3 {
            assert_eq!(get(&url, &fail).await.status, 500);
        }
        let opened = Instant::now();
        let r = gw.raw_get("/qos/a", &[]).await;
        assert_eq!(r.status(), Some(503), "{}", r.describe());
        assert_eq!(r.reason().as_deref(), Some("Circuit breaker is open"));
        assert_eq!(
            r.body_text(),
            "Circuit breaker is open for route -> /qos/{x}"
        );
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(up.count(), 6, "an open circuit sends nothing downstream");
        assert_eq!(get(&url, &[]).await.status, 503);
        assert_eq!(up.count(), 6);

        // After the break one probe goes through; a failed probe reopens at once.
        tokio::time::sleep(
            (opened + Duration::from_millis(1200)).saturating_duration_since(Instant::now()),
        )
        .await;
        assert_eq!(
            get(&url, &[("x-echo-status", "502")]).await.status,
            502,
            "the probe reached the service"
        );
        let reopened = Instant::now();
        assert_eq!(
            get(&url, &[]).await.status,
            503,
            "failed probe reopens the circuit"
        );
        assert_eq!(up.count(), 7);

        // A successful probe closes it.
        tokio::time::sleep(
            (reopened + Duration::from_millis(1200)).saturating_duration_since(Instant::now()),
        )
        .await;
        assert_eq!(get(&url, &[]).await.status, 200);
        assert_eq!(get(&url, &[]).await.status, 200);
        assert_eq!(up.count(), 9);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_open_the_breaker_and_4xx_do_not() {
    bounded(async {
        let up = EchoServer::start("up");
        let dead = closed_addr();
        let qos = json!({ "QoSOptions": { "MinimumThroughput": 2, "BreakDuration": 60000 } });
        let dead_route = with(
            json!({
                "UpstreamPathTemplate": "/dead",
                "DownstreamPathTemplate": "/dead",
                "DownstreamScheme": "http",
                "DownstreamHostAndPorts": [{ "Host": "127.0.0.1", "Port": dead.port() }],
            }),
            qos.clone(),
        );
        let client_errors = with(route("/four", "/four", &[&up]), qos);
        // Passive health would answer 503 (all down) before the breaker sees a
        // second connection error; this test is about the breaker alone.
        let gw = Gateway::builder(config(vec![dead_route, client_errors]))
            .settings("health_checks:\n  passive_down_ms: 0\n")
            .start()
            .await;
        assert_eq!(get(&gw.url("/dead"), &[]).await.status, 502);
        assert_eq!(get(&gw.url("/dead"), &[]).await.status, 502);
        let r = get(&gw.url("/dead"), &[]).await;
        assert_eq!(
            (r.status, r.text()),
            (
                503,
                "Circuit breaker is open for route -> /dead".to_string()
            )
        );

        for _ in 0..5 {
            assert_eq!(
                get(&gw.url("/four"), &[("x-echo-status", "404")])
                    .await
                    .status,
                404
            );
        }
        assert_eq!(
            get(&gw.url("/four"), &[]).await.status,
            200,
            "4xx are successes"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_timeout_is_503_with_a_body_and_counts_as_a_failure() {
    bounded(async {
        let up = EchoServer::start("slow");
        // Ocelot's deprecated names still work (and win over the new ones).
        let qos = json!({ "QoSOptions": {
            "TimeoutValue": 300, "Timeout": 5000,
            "ExceptionsAllowedBeforeBreaking": 2, "DurationOfBreak": 60000,
        } });
        let gw = Gateway::start(config(vec![with(route("/slow", "/slow", &[&up]), qos)])).await;
        for _ in 0..2 {
            let r = gw.raw_get("/slow", &["x-echo-delay-ms: 3000"]).await;
            assert_eq!(r.status(), Some(503), "{}", r.describe());
            assert_eq!(r.reason().as_deref(), Some("Request timeout"));
            assert_eq!(r.body_text(), "Request timeout for route -> /slow");
        }
        let r = gw.raw_get("/slow", &[]).await;
        assert_eq!(
            r.reason().as_deref(),
            Some("Circuit breaker is open"),
            "two timeouts opened it"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_not_above_the_qos_timeout_is_doubled() {
    bounded(async {
        let up = EchoServer::start("slow");
        // Route Timeout 1 s ≤ QoS Timeout 1.5 s: Ocelot makes the route timeout
        // 3 s, so the QoS timeout (with its body) fires, not the route one
        // (503 with an empty body).
        let r = with(
            route("/t", "/t", &[&up]),
            json!({ "Timeout": 1, "QoSOptions": { "Timeout": 1500 } }),
        );
        let gw = Gateway::start(config(vec![r])).await;
        let r = gw.raw_get("/t", &["x-echo-delay-ms: 2500"]).await;
        assert_eq!(r.status(), Some(503), "{}", r.describe());
        assert_eq!(r.body_text(), "Request timeout for route -> /t");
        // Within the timeout nothing changes.
        assert_eq!(
            get(&gw.url("/t"), &[("x-echo-delay-ms", "100")])
                .await
                .status,
            200
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_survives_a_reload_of_an_unrelated_change() {
    bounded(async {
        let up = EchoServer::start("up");
        let guarded = with(
            route("/guarded", "/g", &[&up]),
            json!({ "QoSOptions": { "MinimumThroughput": 2, "BreakDuration": 60000 } }),
        );
        let gw = Gateway::start(config(vec![guarded.clone()])).await;
        for _ in 0..2 {
            assert_eq!(
                get(&gw.url("/guarded"), &[("x-echo-status", "503")])
                    .await
                    .status,
                503
            );
        }
        assert_eq!(
            get(&gw.url("/guarded"), &[]).await.text(),
            "Circuit breaker is open for route -> /guarded"
        );

        let other = route("/other", "/o", &[&up]);
        gw.write_config(&config(vec![guarded, other]));
        eventually(
            Duration::from_secs(20),
            "/other after the reload",
            || async { get(&gw.url("/other"), &[]).await.status == 200 },
        )
        .await;
        let r = get(&gw.url("/guarded"), &[]).await;
        assert_eq!(
            r.text(),
            "Circuit breaker is open for route -> /guarded",
            "the breaker was rebuilt by the reload"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_is_503_with_empty_body() {
    bounded(async {
        let slow = EchoServer::start("slow");
        let gw = Gateway::start(config(vec![with(
            route("/slow", "/slow", &[&slow]),
            json!({ "Timeout": 1 }),
        )]))
        .await;
        let r = get(&gw.url("/slow"), &[("x-echo-delay-ms", "3000")]).await;
        assert_eq!(r.status, 503);
        assert!(r.body.is_empty(), "{:?}", r.text());
        assert_eq!(slow.count(), 1);

        // A request within the timeout is unaffected.
        let r = get(&gw.url("/slow"), &[]).await;
        assert_eq!(r.status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_timeout_applies_when_route_has_none() {
    bounded(async {
        let slow = EchoServer::start("slow");
        let cfg = json!({
            "Routes": [route("/slow", "/slow", &[&slow])],
            "GlobalConfiguration": { "Timeout": 1 },
        });
        let gw = Gateway::start(cfg).await;
        let r = get(&gw.url("/slow"), &[("x-echo-delay-ms", "3000")]).await;
        assert_eq!(r.status, 503);
        assert!(r.body.is_empty(), "{:?}", r.text());
    })
    .await
}
