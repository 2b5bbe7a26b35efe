//! `DownstreamScheme: https`: TLS to the upstream with SNI, certificate
//! verification, `DangerousAcceptAnyServerCertificateValidator`, and the
//! gateway's `upstream_ca_file` setting.

use e2e::{bounded, config, get, EchoServer, Gateway};
use serde_json::{json, Value};
use std::time::Duration;

fn https_route(up: &EchoServer, dangerous: bool) -> Value {
    config(vec![json!({
        "UpstreamPathTemplate": "/secure/{rest}",
        "DownstreamPathTemplate": "/s/{rest}",
        "DownstreamScheme": "https",
        "DownstreamHostAndPorts": [up.localhost_and_port()],
        "DangerousAcceptAnyServerCertificateValidator": dangerous,
    })])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangerous_accept_any_certificate_reaches_untrusted_upstream() {
    bounded(async {
        let up = EchoServer::start_tls("tls");
        let gw = Gateway::start(https_route(&up, true)).await;
        let r = get(&gw.url("/secure/x?y=1"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = r.seen();
        assert!(seen.tls);
        assert_eq!(seen.sni.as_deref(), Some("localhost"));
        assert_eq!(seen.target(), "/s/x?y=1");
        assert_eq!(
            seen.header("host"),
            Some(format!("localhost:{}", up.port()).as_str())
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_is_rejected_with_502() {
    bounded(async {
        let up = EchoServer::start_tls("tls");
        let gw = Gateway::start(https_route(&up, false)).await;
        let r = get(&gw.url("/secure/x"), &[]).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.body.is_empty(), "{:?}", r.text());
        // The gateway did try TLS (and then refused our certificate).
        assert!(up.connections() >= 1);
        assert_eq!(up.count(), 0, "request reached an untrusted upstream");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_ca_file_makes_the_certificate_trusted() {
    bounded(async {
        let up = EchoServer::start_tls("tls");
        let gw = Gateway::builder(https_route(&up, false))
            .file("upstream-ca.pem", up.ca_pem())
            .settings("upstream_ca_file: \"{dir}/upstream-ca.pem\"\n")
            .start()
            .await;
        let r = get(&gw.url("/secure/ok"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = r.seen();
        assert!(seen.tls);
        assert_eq!(seen.sni.as_deref(), Some("localhost"));
        assert_eq!(seen.target(), "/s/ok");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_ca_does_not_make_the_certificate_trusted() {
    bounded(async {
        let up = EchoServer::start_tls("tls");
        let stranger = EchoServer::start_tls("stranger");
        let gw = Gateway::builder(https_route(&up, false))
            .file("upstream-ca.pem", stranger.ca_pem())
            .settings("upstream_ca_file: \"{dir}/upstream-ca.pem\"\n")
            .start()
            .await;
        let r = get(&gw.url("/secure/x"), &[]).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(up.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_for_another_name_is_rejected() {
    bounded(async {
        // Trusted CA, but the certificate names another host than the route's.
        let up = EchoServer::start_tls_for("tls", &["other.example.test"]);
        let gw = Gateway::builder(https_route(&up, false))
            .file("upstream-ca.pem", up.ca_pem())
            .settings("upstream_ca_file: \"{dir}/upstream-ca.pem\"\n")
            .start()
            .await;
        let r = get(&gw.url("/secure/x"), &[]).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(
            up.count(),
            0,
            "request reached an upstream with the wrong name"
        );
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
