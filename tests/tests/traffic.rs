//! Traffic policy (issue #3): QoS circuit breaker and timeouts (spec §4),
//! active and passive backend health, rate limiting (spec §3) per process and
//! shared through Redis, and IP security (spec §7.6).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::load::get_for_each_id;
use e2e::redis::RedisServer;
use e2e::restart_echo;
use e2e::{
    bounded, bounded_for, closed_addr, config, get, raw, route, with, EchoServer, Gateway,
    RawResponse, Reply,
};
use serde_json::{json, Value};

/// Polls `check` until it holds, or panics after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET path` on a fresh connection, read raw (for reason phrases and exact headers).
async fn raw_get(gw: &Gateway, path: &str, extra: &[&str]) -> RawResponse {
    raw::exchange(gw.addr(), &raw::get_request(path, &gw.authority(), extra)).await
}

fn body_text(r: &RawResponse) -> String {
    String::from_utf8_lossy(r.body()).into_owned()
}

fn write_atomically(path: &std::path::Path, contents: &[u8]) {
    let temp = path.with_extension("tmp-write");
    std::fs::write(&temp, contents).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

// ---------------------------------------------------------------- QoS (§4)

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
        let r = raw_get(&gw, "/qos/a", &[]).await;
        assert_eq!(r.status(), Some(503), "{}", r.describe());
        assert_eq!(r.reason().as_deref(), Some("Circuit breaker is open"));
        assert_eq!(
            body_text(&r),
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
            let r = raw_get(&gw, "/slow", &["x-echo-delay-ms: 3000"]).await;
            assert_eq!(r.status(), Some(503), "{}", r.describe());
            assert_eq!(r.reason().as_deref(), Some("Request timeout"));
            assert_eq!(body_text(&r), "Request timeout for route -> /slow");
        }
        let r = raw_get(&gw, "/slow", &[]).await;
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
        let r = raw_get(&gw, "/t", &["x-echo-delay-ms: 2500"]).await;
        assert_eq!(r.status(), Some(503), "{}", r.describe());
        assert_eq!(body_text(&r), "Request timeout for route -> /t");
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
        write_atomically(
            &gw.dir().join("ocelot.json"),
            &serde_json::to_vec(&config(vec![guarded, other])).unwrap(),
        );
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

// --------------------------------------------------------------- health

fn service(server: &EchoServer) -> String {
    format!("127.0.0.1:{}", server.port())
}

fn lb_route(servers: &[&EchoServer], extra: &[SocketAddr]) -> Value {
    let mut hosts: Vec<Value> = servers.iter().map(|s| s.host_and_port()).collect();
    hosts.extend(
        extra
            .iter()
            .map(|a| json!({ "Host": "127.0.0.1", "Port": a.port() })),
    );
    json!({
        "UpstreamPathTemplate": "/lb",
        "DownstreamPathTemplate": "/lb",
        "DownstreamScheme": "http",
        "DownstreamHostAndPorts": hosts,
        "LoadBalancerOptions": { "Type": "RoundRobin" },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_its_health_check_gets_no_requests() {
    bounded(async {
        let good = EchoServer::start("good");
        let bad = EchoServer::start("bad");
        let settings = format!(
            "health_checks:\n  interval_ms: 200\n  services:\n    '{}': {{ path: /health }}\n    '{}': {{ path: /health, expected_status: [204] }}\n",
            service(&good),
            service(&bad)
        );
        let gw = Gateway::builder(config(vec![lb_route(&[&good, &bad], &[])])).settings(&settings).start().await;
        for _ in 0..10 {
            let r = get(&gw.url("/lb"), &[]).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.seen().server, "good");
        }
        let paths: Vec<String> = bad.requests().into_iter().map(|s| s.path).collect();
        assert!(!paths.is_empty() && paths.iter().all(|p| p == "/health"), "{paths:?}");
        assert_eq!(bad.requests()[0].header("user-agent"), Some("gateway-health-check"));
    })
    .await
}

/// Requests `/lb` until told to stop, recording (status, server).
fn steady_traffic(
    url: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(u16, String)>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let r = get(&url, &[]).await;
            let server = if r.status == 200 {
                r.seen().server
            } else {
                r.text()
            };
            log.lock().unwrap().push((r.status, server));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_is_skipped_and_rejoins_only_after_passing_checks() {
    bounded(async {
        let a = EchoServer::start("a");
        let b = EchoServer::start("b");
        let b_addr = b.addr();
        let settings = format!(
            "health_checks:\n  interval_ms: 200\n  healthy_threshold: 3\n  services:\n    '{}': {{ path: /health }}\n    '{}': {{ path: /health }}\n",
            service(&a),
            service(&b)
        );
        let gw = Gateway::builder(config(vec![lb_route(&[&a, &b], &[])])).settings(&settings).start().await;
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let traffic = steady_traffic(gw.url("/lb"), stop.clone(), log.clone());

        tokio::time::sleep(Duration::from_millis(600)).await;
        drop(b); // killed under traffic
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let b = restart_echo("b-again", b_addr);
        eventually(Duration::from_secs(20), "b serves again", || async {
            b.requests().iter().any(|s| s.path == "/lb")
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        traffic.await.unwrap();

        let log = log.lock().unwrap().clone();
        let failed: Vec<_> = log.iter().filter(|(status, _)| *status != 200).collect();
        assert!(failed.is_empty(), "requests failed while b was down: {failed:?}");
        assert!(log.iter().any(|(_, s)| s == "b"), "b served before it was killed");
        // The restarted b saw its health checks pass (three in a row) before any request.
        let seen: Vec<String> = b.requests().into_iter().map(|s| s.path).collect();
        let first = seen.iter().position(|p| p == "/lb").unwrap();
        assert!(first >= 3 && seen[..first].iter().all(|p| p == "/health"), "{seen:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_backend() {
    bounded(async {
        let alive = EchoServer::start("alive");
        let dead = closed_addr();
        let gw = Gateway::start(config(vec![lb_route(&[&alive], &[dead])])).await;
        for _ in 0..6 {
            let r = get(&gw.url("/lb"), &[]).await;
            assert_eq!((r.status, r.seen().server.as_str()), (200, "alive"));
        }
        assert_eq!(alive.count(), 6);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_backends_are_all_down_answers_503_at_once() {
    bounded(async {
        let (d1, d2) = (closed_addr(), closed_addr());
        let mut checked = lb_route(&[], &[d1, d2]);
        checked["UpstreamPathTemplate"] = json!("/checked");
        let mut passive = lb_route(&[], &[closed_addr(), closed_addr()]);
        passive["UpstreamPathTemplate"] = json!("/passive");
        let settings = format!(
            "health_checks:\n  interval_ms: 500\n  services:\n    '127.0.0.1:{}': {{ type: tcp, timeout_ms: 300 }}\n    '127.0.0.1:{}': {{ type: tcp, timeout_ms: 300 }}\n",
            d1.port(),
            d2.port()
        );
        let gw = Gateway::builder(config(vec![checked, passive])).settings(&settings).start().await;
        // Active checks already know: 503 without trying to connect.
        let r = get(&gw.url("/checked"), &[]).await;
        assert_eq!((r.status, r.body.len()), (503, 0));
        // Without checks the first request finds out (502, as Ocelot), the next ones know.
        assert_eq!(get(&gw.url("/passive"), &[]).await.status, 502);
        assert_eq!(get(&gw.url("/passive"), &[]).await.status, 503);
    })
    .await
}

// ------------------------------------------------------ rate limiting (§3)

fn limited(path: &str, up: &EchoServer, options: Value) -> Value {
    with(
        route(path, path, &[up]),
        json!({ "RateLimitOptions": options }),
    )
}

fn is_round_trip_date(v: &str) -> bool {
    // 2026-01-01T00:00:01.0000000Z
    v.len() == 28
        && v.ends_with('Z')
        && v.as_bytes()[10] == b'T'
        && v.as_bytes()[19] == b'.'
        && v[20..27].bytes().all(|b| b.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_after_rate_limiting_carry_its_headers_refusals_too() {
    bounded(async {
        let up = EchoServer::start("up");
        let dead = closed_addr();
        let window = json!({ "Limit": 5, "Period": "1m" });
        let secured = with(
            limited("/secured", &up, window.clone()),
            json!({ "AuthenticationOptions": { "AuthenticationProviderKey": "Static" } }),
        );
        let unreachable = json!({
            "UpstreamPathTemplate": "/dead",
            "DownstreamPathTemplate": "/dead",
            "DownstreamScheme": "http",
            "DownstreamHostAndPorts": [{ "Host": "127.0.0.1", "Port": dead.port() }],
            "RateLimitOptions": window,
        });
        let gw = Gateway::builder(config(vec![secured, unreachable]))
            .settings(
                "health_checks:\n  passive_down_ms: 0\nauth_providers:\n  Static:\n    keys:\n      - secret: \"a-static-hmac-secret-of-32-bytes!\"\n    validate_issuer: false\n    validate_audience: false\n",
            )
            .start()
            .await;
        let alice = [("Oc-Client", "alice")];
        // Counted, then refused by authentication: 401 with the headers.
        let r = get(&gw.url("/secured"), &alice).await;
        assert_eq!(r.status, 401);
        assert!(r.body.is_empty(), "{:?}", r.text());
        assert_eq!(r.header("X-RateLimit-Limit"), Some("5"));
        assert_eq!(r.header("X-RateLimit-Remaining"), Some("4"));
        assert!(is_round_trip_date(r.header("X-RateLimit-Reset").unwrap_or("")));
        assert_eq!(up.count(), 0);
        // Counted, then the downstream service cannot be reached: 502 with them.
        let r = get(&gw.url("/dead"), &alice).await;
        assert_eq!(r.status, 502);
        assert_eq!(r.header("X-RateLimit-Limit"), Some("5"));
        assert_eq!(r.header("X-RateLimit-Remaining"), Some("4"));
        // Not counted (no route): none.
        let r = get(&gw.url("/nowhere"), &alice).await;
        assert_eq!(r.status, 404);
        assert!(r.header("X-RateLimit-Limit").is_none());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pass_the_fourth_is_429_and_the_window_resets() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![limited(
            "/rl",
            &up,
            json!({ "Limit": 3, "Period": "3s" }),
        )]))
        .await;
        let alice = [("Oc-Client", "alice")];
        // The window starts when the gateway sees the first request: no later
        // than its response arrives here.
        let mut window_started = None;
        let mut resets = Vec::new();
        for remaining in ["2", "1", "0"] {
            let r = get(&gw.url("/rl"), &alice).await;
            window_started.get_or_insert_with(Instant::now);
            assert_eq!(r.status, 200);
            assert_eq!(r.header("X-RateLimit-Limit"), Some("3"));
            assert_eq!(r.header("X-RateLimit-Remaining"), Some(remaining));
            let reset = r.header("X-RateLimit-Reset").unwrap().to_string();
            assert!(is_round_trip_date(&reset), "{reset}");
            assert!(r.header("Retry-After").is_none());
            resets.push(reset);
        }
        assert!(
            resets.iter().all(|r| *r == resets[0]),
            "one fixed window: {resets:?}"
        );

        let r = raw_get(&gw, "/rl", &["Oc-Client: alice"]).await;
        assert_eq!(r.status(), Some(429), "{}", r.describe());
        assert_eq!(
            body_text(&r),
            "API calls quota exceeded! Maximum admitted 3 per 3s."
        );
        assert_eq!(r.header("content-length").as_deref(), Some("52"));
        assert_eq!(
            r.header("content-type"),
            None,
            "Ocelot sends no Content-Type"
        );
        assert_eq!(
            r.header("x-ratelimit-limit"),
            None,
            "no X-RateLimit-* when blocked"
        );
        let retry: f64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(retry > 0.0 && retry <= 3.0, "{retry}");
        assert_eq!(up.count(), 3);

        // Counters are per client.
        assert_eq!(
            get(&gw.url("/rl"), &[("Oc-Client", "bob")]).await.status,
            200
        );

        tokio::time::sleep(
            (window_started.unwrap() + Duration::from_millis(3300))
                .saturating_duration_since(Instant::now()),
        )
        .await;
        let r = get(&gw.url("/rl"), &alice).await;
        assert_eq!(r.status, 200, "a new window after the period");
        assert_eq!(r.header("X-RateLimit-Remaining"), Some("2"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitelisted_clients_pass_and_unidentified_ones_get_503() {
    bounded(async {
        let up = EchoServer::start("up");
        let options = json!({ "Limit": 1, "Period": "1m", "ClientWhitelist": ["vip"] });
        let gw = Gateway::start(config(vec![limited("/rl", &up, options)])).await;
        for _ in 0..4 {
            let r = get(&gw.url("/rl"), &[("Oc-Client", "vip")]).await;
            assert_eq!(r.status, 200);
            assert!(r.header("X-RateLimit-Limit").is_none(), "whitelisted: not counted, no headers");
        }
        let r = raw_get(&gw, "/rl", &["bla-bla-header: spy"]).await;
        assert_eq!(r.status(), Some(503), "{}", r.describe());
        assert_eq!(
            body_text(&r),
            "Rate limiting client could not be identified for the route '/rl' due to a missing or unknown client ID header required by rule '1/1m/w0ms'!"
        );
        assert_eq!(r.header("retry-after").as_deref(), Some("-1"));
        assert_eq!(up.count(), 4);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_options_apply_to_the_route_keys_group_with_wait() {
    bounded(async {
        let up = EchoServer::start("up");
        let grouped = with(route("/grouped", "/g", &[&up]), json!({ "Key": "R2" }));
        let free = route("/free", "/f", &[&up]);
        let cfg = json!({
            "Routes": [grouped, free],
            "GlobalConfiguration": { "RateLimitOptions": {
                "RouteKeys": ["R2"], "Limit": 2, "Period": "1m", "Wait": "1s",
                "ClientIdHeader": "X-Client", "QuotaMessage": "Exceeding!", "StatusCode": 418,
            } }
        });
        let gw = Gateway::start(cfg).await;
        let me = [("X-Client", "me")];
        for _ in 0..4 {
            assert_eq!(
                get(&gw.url("/free"), &me).await.status,
                200,
                "not in the group"
            );
        }
        assert_eq!(get(&gw.url("/grouped"), &me).await.status, 200);
        assert_eq!(get(&gw.url("/grouped"), &me).await.status, 200);
        let r = get(&gw.url("/grouped"), &me).await;
        // The wait started no later than this response arrived.
        let exceeded = Instant::now();
        assert_eq!((r.status, r.text()), (418, "Exceeding!".to_string()));
        let retry: f64 = r.header("Retry-After").unwrap().parse().unwrap();
        assert!(
            retry > 0.0 && retry <= 1.0,
            "blocked for the Wait, not the period: {retry}"
        );
        // After the wait a new window starts, though the 1 m period has not ended.
        tokio::time::sleep(
            (exceeded + Duration::from_millis(1200)).saturating_duration_since(Instant::now()),
        )
        .await;
        let r = get(&gw.url("/grouped"), &me).await;
        assert_eq!(
            (r.status, r.header("X-RateLimit-Remaining")),
            (200, Some("1"))
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_for_ocelot_23_behave_as_they_did_there() {
    bounded(async {
        let up = EchoServer::start("up");
        let old =
            json!({ "EnableRateLimiting": true, "Period": "1m", "PeriodTimespan": 2, "Limit": 2 });
        let off = json!({ "Period": "1s", "Limit": 1 });
        let cfg = config(vec![limited("/old", &up, old), limited("/off", &up, off)]);
        let gw = Gateway::builder(cfg)
            .settings("rate_limiting:\n  ocelot_compat_version: 23\n")
            .start()
            .await;

        // No client header: everyone shares the "client" bucket (no 503).
        let r = get(&gw.url("/old"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("X-Rate-Limit-Limit"),
            Some("1m"),
            "24.0 put the period in this header"
        );
        assert_eq!(r.header("X-Rate-Limit-Remaining"), Some("1"));
        assert!(is_round_trip_date(r.header("X-Rate-Limit-Reset").unwrap()));
        assert!(r.header("X-RateLimit-Limit").is_none());
        assert_eq!(
            get(&gw.url("/old"), &[])
                .await
                .header("X-Rate-Limit-Remaining"),
            Some("0")
        );
        // The ban started (at the latest) when this response arrived.
        let reached = Instant::now();
        let r = get(&gw.url("/old"), &[]).await;
        assert_eq!(
            (r.status, r.text()),
            (
                429,
                "API calls quota exceeded! maximum admitted 2 per 1m.".to_string()
            )
        );
        let retry: f64 = r.header("Retry-After").unwrap().parse().unwrap();
        assert!(retry > 0.0 && retry <= 2.0, "PeriodTimespan ban: {retry}");
        // The 24.0 default header is ClientId.
        assert_eq!(
            get(&gw.url("/old"), &[("ClientId", "alice")]).await.status,
            200
        );
        // Route-level EnableRateLimiting defaulted to false.
        for _ in 0..3 {
            let r = get(&gw.url("/off"), &[]).await;
            assert_eq!((r.status, r.header("X-Rate-Limit-Limit")), (200, None));
        }
        // The ban ends PeriodTimespan after the limit was reached, inside the period.
        tokio::time::sleep(
            (reached + Duration::from_millis(2300)).saturating_duration_since(Instant::now()),
        )
        .await;
        assert_eq!(get(&gw.url("/old"), &[]).await.status, 200);
    })
    .await
}

fn redis_settings(redis: &RedisServer, extra: &str) -> String {
    format!(
        "access_log: false\nrate_limiting:\n  redis_url: \"{}\"\n  redis_timeout_ms: 200\n  redis_retry_ms: 300\n{extra}",
        redis.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_enforce_one_limit_through_redis() {
    bounded(async {
        let redis = RedisServer::start();
        let up = EchoServer::start("up");
        let cfg = config(vec![limited(
            "/shared",
            &up,
            json!({ "Limit": 4, "Period": "1m" }),
        )]);
        let settings = redis_settings(&redis, "");
        let g1 = Gateway::builder(cfg.clone())
            .settings(&settings)
            .start()
            .await;
        let g2 = Gateway::builder(cfg).settings(&settings).start().await;
        let a = [("Oc-Client", "a")];
        for (i, gw) in [&g1, &g2, &g1, &g2].into_iter().enumerate() {
            let r = get(&gw.url("/shared"), &a).await;
            assert_eq!(r.status, 200);
            assert_eq!(
                r.header("X-RateLimit-Remaining"),
                Some((3 - i).to_string().as_str()),
                "one counter for both"
            );
        }
        for gw in [&g2, &g1] {
            let r = get(&gw.url("/shared"), &a).await;
            assert_eq!(
                (r.status, r.text()),
                (
                    429,
                    "API calls quota exceeded! Maximum admitted 4 per 1m.".to_string()
                )
            );
        }
        assert_eq!(
            get(&g2.url("/shared"), &[("Oc-Client", "b")]).await.status,
            200
        );
        assert_eq!(up.count(), 5);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_open_and_sharing_resumes_when_it_returns() {
    bounded(async {
        let mut redis = RedisServer::start();
        let up = EchoServer::start("up");
        let cfg = config(vec![limited(
            "/shared",
            &up,
            json!({ "Limit": 2, "Period": "1m" }),
        )]);
        let settings = redis_settings(&redis, "  failure_policy: open\n");
        let g1 = Gateway::builder(cfg.clone())
            .settings(&settings)
            .start()
            .await;
        let g2 = Gateway::builder(cfg).settings(&settings).start().await;
        let a = [("Oc-Client", "a")];
        assert_eq!(get(&g1.url("/shared"), &a).await.status, 200);
        assert_eq!(get(&g2.url("/shared"), &a).await.status, 200);
        assert_eq!(get(&g1.url("/shared"), &a).await.status, 429);

        redis.kill();
        for gw in [&g1, &g2, &g1, &g2, &g1] {
            let r = get(&gw.url("/shared"), &a).await;
            assert_eq!(r.status, 200, "fail open: served, uncounted");
            assert!(r.header("X-RateLimit-Remaining").is_none());
        }
        assert!(
            g1.stderr().contains("applying the failure policy"),
            "the outage is logged"
        );

        redis.restart();
        eventually(
            Duration::from_secs(15),
            "counting through Redis again",
            || async {
                get(&g1.url("/shared"), &[("Oc-Client", "probe")])
                    .await
                    .header("X-RateLimit-Remaining")
                    .is_some()
            },
        )
        .await;
        assert!(
            g1.stderr().contains("reachable again"),
            "the recovery is logged"
        );
        // A fresh client is limited across both replicas again.
        let c = [("Oc-Client", "c")];
        eventually(Duration::from_secs(15), "g2 back on Redis", || async {
            get(&g2.url("/shared"), &[("Oc-Client", "probe2")])
                .await
                .header("X-RateLimit-Remaining")
                .is_some()
        })
        .await;
        assert_eq!(get(&g1.url("/shared"), &c).await.status, 200);
        assert_eq!(get(&g2.url("/shared"), &c).await.status, 200);
        assert_eq!(get(&g1.url("/shared"), &c).await.status, 429);
        assert_eq!(get(&g2.url("/shared"), &c).await.status, 429);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_closed_when_configured() {
    bounded(async {
        let mut redis = RedisServer::start();
        let up = EchoServer::start("up");
        let cfg = config(vec![limited(
            "/shared",
            &up,
            json!({ "Limit": 5, "Period": "1m" }),
        )]);
        let gw = Gateway::builder(cfg)
            .settings(&redis_settings(&redis, "  failure_policy: closed\n"))
            .start()
            .await;
        let a = [("Oc-Client", "a")];
        assert_eq!(get(&gw.url("/shared"), &a).await.status, 200);
        redis.kill();
        for _ in 0..3 {
            let r = get(&gw.url("/shared"), &a).await;
            assert_eq!((r.status, r.body.len()), (503, 0), "fail closed");
        }
        assert_eq!(up.count(), 1);
        redis.restart();
        eventually(
            Duration::from_secs(15),
            "served again after Redis returned",
            || async { get(&gw.url("/shared"), &a).await.status == 200 },
        )
        .await;
    })
    .await
}

/// Memory bound of the rate limiter, stated in the README: with the default
/// `max_counters` (200 000 exact counters), a million distinct client ids in
/// one window raise the gateway's resident memory by less than this.
const MILLION_IDS_RSS_GROWTH_BOUND: u64 = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_distinct_client_ids_keep_memory_bounded() {
    bounded_for(Duration::from_secs(900), async {
        let up = EchoServer::start("up");
        // The route's circuit is opened first, so once rate limiting has counted
        // a request the gateway answers 503 itself: the test measures the
        // limiter, not a million proxied calls.
        let r = with(
            route("/mem", "/mem", &[&up]),
            json!({
                "RateLimitOptions": { "Limit": 5, "Period": "1h" },
                "QoSOptions": { "MinimumThroughput": 2, "BreakDuration": 3600000 },
            }),
        );
        let gw = Gateway::builder(config(vec![r]))
            .settings("access_log: false\n")
            .env("RUST_LOG", "warn")
            .start()
            .await;
        for _ in 0..2 {
            let r = get(
                &gw.url("/mem"),
                &[("Oc-Client", "opener"), ("x-echo-status", "500")],
            )
            .await;
            assert_eq!(r.status, 500);
        }
        let warm = get_for_each_id(gw.addr(), "/mem", "Oc-Client", 0..20_000, 16).await;
        assert_eq!(
            warm.keys().copied().collect::<Vec<_>>(),
            vec![503],
            "{warm:?}"
        );
        let baseline = gw.rss();

        let counts = get_for_each_id(gw.addr(), "/mem", "Oc-Client", 20_000..1_000_000, 16).await;
        assert_eq!(counts.get(&503), Some(&980_000), "{counts:?}");
        let peak = gw.peak_rss();
        let growth = peak.saturating_sub(baseline);
        eprintln!(
            "rss baseline {} MiB, peak {} MiB, growth {} MiB",
            baseline >> 20,
            peak >> 20,
            growth >> 20
        );
        assert!(
            growth < MILLION_IDS_RSS_GROWTH_BOUND,
            "resident memory grew by {} MiB",
            growth >> 20
        );
        assert!(
            peak < 4 * MILLION_IDS_RSS_GROWTH_BOUND,
            "peak resident memory {} MiB",
            peak >> 20
        );

        // Still limiting (Limit 5): a client that keeps coming gets a counter
        // and is refused within a few requests of its limit.
        for id in ["client-0", "client-999999", "newcomer"] {
            let mut statuses = Vec::new();
            while statuses.len() < 10 && statuses.last() != Some(&429) {
                statuses.push(get(&gw.url("/mem"), &[("Oc-Client", id)]).await.status);
            }
            assert_eq!(statuses.last(), Some(&429), "{id}: {statuses:?}");
        }
    })
    .await
}

// --------------------------------------------------------- IP security (§7.6)

fn secured(path: &str, up: &EchoServer, options: Value) -> Value {
    with(
        route(path, path, &[up]),
        json!({ "SecurityOptions": options }),
    )
}

async fn status_from(url: &str) -> (u16, usize) {
    let r = get(url, &[]).await;
    (r.status, r.body.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_allow_and_block_lists() {
    bounded(async {
        let up = EchoServer::start("up");
        let cfg = json!({
            "Routes": [
                secured("/blocked", &up, json!({ "IPBlockedList": ["127.0.0.1"] })),
                secured("/allowed", &up, json!({ "IPAllowedList": ["127.0.0.0/8"] })),
                secured("/elsewhere", &up, json!({ "IPAllowedList": ["10.0.0.0/8", "192.168.1.1-192.168.1.9"] })),
                secured("/short-range", &up, json!({ "IPBlockedList": ["127.0.0.0-5"] })),
                secured("/mask", &up, json!({ "IPBlockedList": ["127.0.0.0/255.0.0.0"] })),
                secured("/excluded", &up, json!({ "IPAllowedList": ["127.0.0.1"], "IPBlockedList": ["127.0.0.0/24"], "ExcludeAllowedFromBlocked": true })),
                secured("/not-excluded", &up, json!({ "IPAllowedList": ["127.0.0.1"], "IPBlockedList": ["127.0.0.0/24"] })),
                route("/global", "/global", &[&up]),
            ],
            "GlobalConfiguration": { "SecurityOptions": { "IPBlockedList": ["127.0.0.1"] } }
        });
        let gw = Gateway::start(cfg).await;
        for (path, status) in [
            ("/blocked", 403),
            ("/allowed", 200),
            ("/elsewhere", 403),
            ("/short-range", 403),
            ("/mask", 403),
            ("/excluded", 200),
            ("/not-excluded", 403),
            ("/global", 403),
        ] {
            let (got, body) = status_from(&gw.url(path)).await;
            assert_eq!(got, status, "{path}");
            if got == 403 {
                assert_eq!(body, 0, "{path}: 403 has an empty body");
            }
        }
        assert_eq!(up.count(), 2, "denied requests never reach the service");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_matched_against_ipv6_entries() {
    bounded(async {
        let up = EchoServer::start("up");
        let cfg = config(vec![
            secured("/v6-blocked", &up, json!({ "IPBlockedList": ["::1"] })),
            secured("/v6-cidr", &up, json!({ "IPAllowedList": ["::/127"] })),
            secured("/v6-range", &up, json!({ "IPBlockedList": ["::0 - ::5"] })),
            secured("/v4-only", &up, json!({ "IPAllowedList": ["0.0.0.0/0"] })),
        ]);
        let v6_port = e2e::free_port();
        let gw = Gateway::builder(cfg)
            .arg("--listen")
            .arg(format!("[::1]:{v6_port}"))
            .start()
            .await;
        let v6 = |path: &str| format!("http://[::1]:{v6_port}{path}");
        assert_eq!(status_from(&v6("/v6-blocked")).await, (403, 0));
        assert_eq!(status_from(&gw.url("/v6-blocked")).await.0, 200);
        assert_eq!(status_from(&v6("/v6-cidr")).await.0, 200);
        assert_eq!(status_from(&gw.url("/v6-cidr")).await.0, 403);
        assert_eq!(status_from(&v6("/v6-range")).await.0, 403);
        assert_eq!(
            status_from(&v6("/v4-only")).await.0,
            403,
            "an IPv4 range never holds an IPv6 client"
        );
        assert_eq!(status_from(&gw.url("/v4-only")).await.0, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    bounded(async {
        let up = EchoServer::start("up");
        let cfg = config(vec![secured(
            "/s",
            &up,
            json!({ "IPBlockedList": ["203.0.113.0/24"] }),
        )]);
        let trusting = Gateway::builder(cfg.clone())
            .settings("trusted_proxies: [\"127.0.0.1\"]\n")
            .start()
            .await;
        let plain = Gateway::start(cfg).await;
        let forwarded = |ip: &'static str| [("X-Forwarded-For", ip)];
        let r: Reply = get(&trusting.url("/s"), &forwarded("203.0.113.9")).await;
        assert_eq!(r.status, 403);
        assert_eq!(
            get(&trusting.url("/s"), &forwarded("198.51.100.1"))
                .await
                .status,
            200
        );
        // A client claiming to be behind the blocked address, through a trusted proxy.
        assert_eq!(
            get(&trusting.url("/s"), &forwarded("203.0.113.9, 198.51.100.1"))
                .await
                .status,
            200
        );
        assert_eq!(
            get(&plain.url("/s"), &forwarded("203.0.113.9"))
                .await
                .status,
            200,
            "not trusted: the socket peer counts"
        );
    })
    .await
}
