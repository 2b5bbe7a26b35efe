//! Ocelot's request order, end to end: the header transforms rewrite the
//! incoming request before the rate limiter reads it, and an aggregate's
//! sub-request goes through exactly the steps a direct request does.

use std::time::Duration;

use e2e::{bounded, eventually_ok, get, route, with, EchoServer, Gateway};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);
const EVERY: Duration = Duration::from_millis(50);

/// Polls the gateway's metrics until every series reads its value.
async fn metrics_reach(gw: &Gateway, wanted: &[&str]) {
    eventually_ok(WAIT, EVERY, || async {
        let text = gw.metrics().await;
        match wanted.iter().find(|w| !text.lines().any(|l| l == **w)) {
            None => Ok(()),
            Some(missing) => Err(format!("{missing} not in:\n{text}")),
        }
    })
    .await
}

/// The access-log lines for `path`, once `count` of them were written.
async fn access_lines(gw: &Gateway, path: &str, count: usize) -> Vec<Value> {
    eventually_ok(WAIT, EVERY, || async {
        let lines: Vec<Value> = gw
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["path"] == path)
            .collect();
        if lines.len() >= count {
            Ok(lines)
        } else {
            Err(format!(
                "{} access-log lines for {path}, wanted {count}",
                lines.len()
            ))
        }
    })
    .await
}

/// The Ocelot idiom: `"Oc-Client": "{RemoteIpAddress}"` turns client-id
/// limiting into per-IP limiting, whatever `Oc-Client` the client sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_transforms_come_before_the_rate_limiter() {
    bounded(async {
        let svc = EchoServer::start("svc");
        let limited = with(
            route("/limited", "/limited", &[&svc]),
            json!({
                "UpstreamHeaderTransform": { "Oc-Client": "{RemoteIpAddress}" },
                "RateLimitOptions": {
                    "EnableRateLimiting": true, "Limit": 2, "Period": "1m", "PeriodTimespan": 60
                },
            }),
        );
        let gw = Gateway::builder(json!({
            "Routes": [limited],
            "GlobalConfiguration": { "RateLimitOptions": { "ClientIdHeader": "Oc-Client" } },
        }))
        .settings("access_log: true\naccess_log_flush_ms: 50\n")
        .start()
        .await;

        // No id, then a forged one, then another forged one: all the same
        // client (the address), so the third is over the limit.
        let first = get(&gw.url("/limited"), &[]).await;
        assert_eq!(first.status, 200, "{}", first.text());
        assert_eq!(first.seen().header("oc-client"), Some("127.0.0.1"));
        let forged = get(&gw.url("/limited"), &[("Oc-Client", "forged-1")]).await;
        assert_eq!(forged.status, 200, "{}", forged.text());
        assert_eq!(forged.seen().header("oc-client"), Some("127.0.0.1"));
        let third = get(&gw.url("/limited"), &[("Oc-Client", "forged-2")]).await;
        assert_eq!(third.status, 429, "{}", third.text());
        assert_eq!(
            svc.count(),
            2,
            "the refused request never reached the service"
        );

        let quota =
            "gateway_refused_requests_total{reason=\"quota_exceeded\",route=\"/limited\"} 1";
        metrics_reach(&gw, &[quota]).await;
        let lines = access_lines(&gw, "/limited", 3).await;
        let refusals: Vec<&Value> = lines.iter().map(|l| &l["refusal"]).collect();
        assert_eq!(
            refusals,
            [&Value::Null, &Value::Null, &json!("quota_exceeded")],
            "{lines:?}"
        );
    })
    .await
}

/// A route refused by `SecurityOptions`, asked for directly and as part of
/// an aggregate: the same answer, the same count, the same log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_sub_requests_are_refused_like_direct_requests() {
    bounded(async {
        let open_svc = EchoServer::start("open");
        let closed_svc = EchoServer::start("closed");
        let closed = with(
            route("/closed", "/closed", &[&closed_svc]),
            json!({
                "Key": "closed",
                "SecurityOptions": { "IPBlockedList": ["127.0.0.1"] },
            }),
        );
        let open = with(
            route("/open", "/open", &[&open_svc]),
            json!({"Key": "open"}),
        );
        let gw = Gateway::builder(json!({
            "Routes": [closed, open],
            "Aggregates": [{ "UpstreamPathTemplate": "/both", "RouteKeys": ["open", "closed"] }],
            "GlobalConfiguration": {},
        }))
        .settings("access_log: true\naccess_log_flush_ms: 50\n")
        .start()
        .await;

        let direct = get(&gw.url("/closed"), &[]).await;
        assert_eq!((direct.status, direct.text().as_str()), (403, ""));
        let aggregate = get(&gw.url("/both"), &[]).await;
        assert_eq!(
            (aggregate.status, aggregate.text().as_str()),
            (403, ""),
            "Ocelot's aggregate answers its first error"
        );
        assert_eq!(
            closed_svc.count(),
            0,
            "a denied client never reaches the service"
        );

        metrics_reach(
            &gw,
            &["gateway_refused_requests_total{reason=\"ip_denied\",route=\"/closed\"} 2"],
        )
        .await;
        let denials = gw
            .stderr()
            .lines()
            .filter(|l| l.contains("route /closed: client IP denied by SecurityOptions"))
            .count();
        assert_eq!(denials, 2, "one log line each:\n{}", gw.stderr());
        let direct_line = access_lines(&gw, "/closed", 1).await;
        assert_eq!(direct_line[0]["refusal"], "ip_denied");
        assert_eq!(direct_line[0]["status"], 403);
        let aggregate_line = access_lines(&gw, "/both", 1).await;
        assert_eq!(aggregate_line[0]["status"], 403);
        assert_eq!(aggregate_line[0]["route"], "/both");
    })
    .await
}

/// A sub-request meets the route's open circuit breaker as a direct request
/// does: Ocelot's QoS answer, counted as a breaker rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_sub_requests_meet_the_same_circuit_breaker() {
    bounded(async {
        let ok_svc = EchoServer::start("ok");
        let fragile_svc = EchoServer::start("fragile");
        let fragile = with(
            route("/fragile", "/fragile", &[&fragile_svc]),
            json!({
                "Key": "fragile",
                "QoSOptions": { "MinimumThroughput": 2, "BreakDuration": 60000 },
            }),
        );
        let ok = with(route("/ok", "/ok", &[&ok_svc]), json!({"Key": "ok"}));
        let gw = Gateway::start(json!({
            "Routes": [fragile, ok],
            "Aggregates": [{ "UpstreamPathTemplate": "/both", "RouteKeys": ["ok", "fragile"] }],
            "GlobalConfiguration": {},
        }))
        .await;
        // Two failures open the circuit.
        for _ in 0..2 {
            let failed = get(&gw.url("/fragile"), &[("x-echo-status", "500")]).await;
            assert_eq!(failed.status, 500);
        }
        let direct = get(&gw.url("/fragile"), &[]).await;
        assert_eq!(direct.status, 503);
        assert_eq!(
            direct.text(),
            "Circuit breaker is open for route -> /fragile"
        );
        // In an aggregate the breaker's answer is a response, as Ocelot's
        // QoS handler gives one: the simple aggregator inserts its body.
        let aggregate = get(&gw.url("/both"), &[]).await;
        assert_eq!(aggregate.status, 200, "{}", aggregate.text());
        assert!(
            aggregate
                .text()
                .contains(r#""fragile":Circuit breaker is open for route -> /fragile"#),
            "{}",
            aggregate.text()
        );
        metrics_reach(
            &gw,
            &[
                "gateway_breaker_rejected_total{route=\"/fragile\"} 2",
                "gateway_refused_requests_total{reason=\"breaker_open\",route=\"/fragile\"} 2",
            ],
        )
        .await;
    })
    .await
}
