//! Metrics on the admin listener's `/metrics`: request counters and
//! durations labelled by route (never by raw path), rate limiting and backend
//! health, and the access line of each request.

use std::time::{Duration, Instant};

use e2e::{bounded, config, eventually, get, metric_sample, route, with, EchoServer, Gateway};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_access_log_name_the_route_not_the_path() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/users/{id}", "/u/{id}", &[&up])])).await;
        for id in 1..=3 {
            assert_eq!(
                get(&gw.url(&format!("/users/{id}")), &[("x-request-id", "abc")])
                    .await
                    .status,
                200
            );
        }
        assert_eq!(get(&gw.url("/nothing"), &[]).await.status, 404);
        // Counters and access lines are written in the logging phase, just
        // after the response went out: poll until the last request is in.
        let series_2xx =
            "gateway_requests_total{method=\"GET\",route=\"/users/{id}\",status_class=\"2xx\"}";
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = gw.metrics().await;
            let done =
                metric_sample(&text, series_2xx) >= 3.0 && gw.stdout().contains("\"/nothing\"");
            if done || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            metric_sample(
                &text,
                "gateway_requests_total{method=\"GET\",route=\"/users/{id}\",status_class=\"2xx\"}"
            ),
            3.0,
            "{text}"
        );
        assert!(
            text.contains("gateway_request_duration_seconds_bucket{route=\"/users/{id}\""),
            "{text}"
        );
        assert!(
            text.contains("gateway_upstream_duration_seconds_count{route=\"/users/{id}\"} 3"),
            "{text}"
        );
        assert!(text.contains("gateway_config_hash{hash=\""), "{text}");
        assert!(text.contains("gateway_build_info{version=\""), "{text}");
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        assert!(
            !text.contains("/users/1"),
            "raw paths must not become labels"
        );

        // Lines are written in blocks, at the latest after access_log_flush_ms.
        let logged = |path: &str| {
            gw.stdout()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["path"] == path)
        };
        eventually(
            Duration::from_secs(5),
            "access log lines for /users/2 and /nothing",
            || async { logged("/users/2").is_some() && logged("/nothing").is_some() },
        )
        .await;
        let (hit, miss) = (
            logged("/users/2").expect("line for /users/2"),
            logged("/nothing").expect("line for /nothing"),
        );
        assert_eq!(hit["route"], "/users/{id}");
        assert_eq!(hit["status"], 200);
        assert_eq!(hit["method"], "GET");
        assert_eq!(hit["upstream"], up.addr().to_string());
        assert!(
            hit["duration_ms"].as_f64().is_some() && hit["client"].as_str().is_some(),
            "{hit}"
        );
        assert_eq!(miss["status"], 404);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rate_limiting_and_show_backend_health() {
    bounded(async {
        let up = EchoServer::start("up");
        let limited = with(
            route("/limited", "/limited", &[&up]),
            json!({ "RateLimitOptions": { "Limit": 1, "Period": "1m" } }),
        );
        let gw = Gateway::start(config(vec![limited])).await;
        let client_id = ("oc-client", "metrics-test");
        assert_eq!(get(&gw.url("/limited"), &[client_id]).await.status, 200);
        assert_eq!(get(&gw.url("/limited"), &[client_id]).await.status, 429);
        let text = gw.metrics().await;
        assert_eq!(
            metric_sample(&text, "gateway_rate_limited_total{route=\"/limited\"}"),
            1.0,
            "{text}"
        );
        let backend = format!(
            "gateway_backend_healthy{{backend=\"{}\",route=\"/limited\"}}",
            up.addr()
        );
        assert_eq!(metric_sample(&text, &backend), 1.0, "{text}");
        assert_eq!(
            metric_sample(&text, "gateway_config_reloads_total{result=\"failure\"}"),
            0.0,
            "{text}"
        );
        assert!(
            text.contains("gateway_config_reloads_total{result=\"failure\"} 0"),
            "{text}"
        );
    })
    .await
}
