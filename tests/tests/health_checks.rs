//! Backend health: active checks (HTTP, HTTPS trusting `upstream_ca_file`,
//! TCP, TLS handshake) keep failing backends out of the balancer and let them
//! back only after passing; passive health skips refused connections.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::load::Load;
use e2e::{
    bounded, closed_addr, config, eventually, get, https_route, restart_echo, EchoServer, Gateway,
};
use serde_json::{json, Value};

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
        // Requests /lb one after another until stopped, recording each outcome.
        let traffic = Load::to(&gw.url("/lb"), 1, Duration::from_millis(20));

        tokio::time::sleep(Duration::from_millis(600)).await;
        drop(b); // killed under traffic
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let b = restart_echo("b-again", b_addr);
        eventually(Duration::from_secs(20), "b serves again", || async {
            b.requests().iter().any(|s| s.path == "/lb")
        })
        .await;
        let log = traffic.finish().await;
        let failed: Vec<_> = log.iter().filter(|o| o.status != 200).collect();
        assert!(failed.is_empty(), "requests failed while b was down: {failed:?}");
        assert!(log.iter().any(|o| o.server.as_deref() == Some("b")), "b served before it was killed");
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

/// Active health checks of `up` over TLS every 200 ms, trusting `ca_pem`
/// through `upstream_ca_file`.
fn checked_over_tls(up: &EchoServer, ca_pem: &str, check: &str) -> e2e::gateway::GatewayBuilder {
    let settings = format!(
        "upstream_ca_file: \"{{dir}}/upstream-ca.pem\"\nhealth_checks:\n  interval_ms: 200\n  services:\n    'localhost:{}': {check}\n",
        up.port()
    );
    Gateway::builder(https_route(up, false))
        .file("upstream-ca.pem", ca_pem.as_bytes())
        .settings(&settings)
}

fn tls_health_checks(up: &EchoServer) -> usize {
    up.requests()
        .iter()
        .filter(|s| s.path == "/health" && s.tls && s.sni.as_deref() == Some("localhost"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_health_checks_trust_upstream_ca_file() {
    bounded(async {
        let up = EchoServer::start_tls("tls");
        let gw = checked_over_tls(&up, up.ca_pem(), "{ path: /health, tls: true }")
            .start()
            .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tls_health_checks(&up) < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "no HTTPS health checks reached the upstream: {:?}",
                up.requests()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = get(&gw.url("/secure/after-checks"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.seen().target(), "/s/after-checks");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_checks_trust_upstream_ca_file() {
    bounded(async {
        let up = EchoServer::start_tls("tls");
        let gw = checked_over_tls(&up, up.ca_pem(), "{ type: tcp, tls: true }")
            .start()
            .await;
        // Several check intervals: one failed handshake would take it out.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(up.connections() >= 3, "{} connections", up.connections());
        let r = get(&gw.url("/secure/x"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.seen().target(), "/s/x");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_health_checks_refuse_a_certificate_from_another_ca() {
    bounded(async {
        let up = EchoServer::start_tls("tls");
        let stranger = EchoServer::start_tls("stranger");
        let gw = checked_over_tls(&up, stranger.ca_pem(), "{ path: /health, tls: true }")
            .start()
            .await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(tls_health_checks(&up), 0, "{:?}", up.requests());
        let r = get(&gw.url("/secure/x"), &[]).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(up.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_upstream_ca_file_stops_start_up_with_its_name() {
    bounded(async {
        let up = EchoServer::start_tls("tls");
        let mut gw =
            checked_over_tls(&up, "not a certificate\n", "{ path: /health, tls: true }").launch();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = gw.exit_status() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running with a bad CA file"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(!status.success());
        let stderr = gw.stderr();
        assert!(
            stderr.contains("upstream_ca_file") && stderr.contains("upstream-ca.pem"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    })
    .await
}
