//! TLS: to the services (`DownstreamScheme: https` with SNI, certificate
//! verification, `DangerousAcceptAnyServerCertificateValidator`, the
//! gateway's `upstream_ca_file`), and on the gateway's own listeners
//! (certificates renewed without a restart).

use std::net::SocketAddr;
use std::time::Duration;

use e2e::pki::TestPki;
use e2e::protocol_clients::{request, tls_handshake, Transport};
use e2e::{
    bounded, config, eventually, free_port, get, https_route, metric_sample, route, wait_listening,
    write_atomically, EchoServer, Gateway,
};

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

/// A gateway with a TLS listener serving `pki`'s certificate from
/// `gateway-cert.pem` / `gateway-key.pem` in its folder.
async fn tls_gateway(up: &EchoServer, pki: &TestPki, poll_seconds: u64) -> (Gateway, SocketAddr) {
    let tls: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let gw = Gateway::builder(config(vec![route("/a", "/a", &[up])]))
        .file("gateway-cert.pem", pki.chain_pem.as_bytes())
        .file("gateway-key.pem", pki.key_pem.as_bytes())
        .settings(&format!(
            "config_poll_seconds: {poll_seconds}\ntls_listen:\n  - addr: \"{tls}\"\n    cert: gateway-cert.pem\n    key: gateway-key.pem\n"
        ))
        .start()
        .await;
    wait_listening(tls).await;
    (gw, tls)
}

async fn served_by(tls: SocketAddr, pki: &TestPki) -> bool {
    tls_handshake(tls, &pki.ca_pem).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_tls_certificate_is_served_without_a_restart() {
    bounded(async {
        let up = EchoServer::start("up");
        let (old, new) = (TestPki::localhost(), TestPki::localhost());
        let (gw, tls) = tls_gateway(&up, &old, 1).await;
        assert!(served_by(tls, &old).await);
        assert!(!served_by(tls, &new).await);
        let listener = format!("listener=\"{tls}\"");
        let not_after = format!("gateway_tls_certificate_not_after_seconds{{{listener}}}");
        assert!(gw.metric(&not_after).await > 1.7e9);

        // Renewal as a careless script does it: the key first, so for a while
        // the key does not belong to the certificate. Refused, old one kept.
        write_atomically(&gw.dir().join("gateway-key.pem"), new.key_pem.as_bytes());
        eventually(
            Duration::from_secs(10),
            "mismatched pair refused",
            || async { gw.stderr().contains("is not the key of the certificate") },
        )
        .await;
        // Two more polls see the same refused pair.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            served_by(tls, &old).await,
            "a half-written pair replaced the certificate"
        );
        let failures =
            format!("gateway_tls_certificate_reloads_total{{{listener},result=\"failure\"}}");
        assert_eq!(gw.metric(&failures).await, 1.0);

        write_atomically(&gw.dir().join("gateway-cert.pem"), new.chain_pem.as_bytes());
        eventually(
            Duration::from_secs(10),
            "new certificate served",
            || async { served_by(tls, &new).await },
        )
        .await;
        assert!(!served_by(tls, &old).await);
        let text = gw.metrics().await;
        let successes =
            format!("gateway_tls_certificate_reloads_total{{{listener},result=\"success\"}}");
        assert_eq!(metric_sample(&text, &successes), 1.0);
        // Reported once, not at every poll while it lasted.
        assert_eq!(metric_sample(&text, &failures), 1.0);
        assert_eq!(
            gw.stderr()
                .matches("is not the key of the certificate")
                .count(),
            1
        );

        // Requests through the renewed listener reach the upstream.
        let h1 = Transport::Tls {
            ca_pem: &new.ca_pem,
            alpn: &["http/1.1"],
        };
        let r = request(tls, h1, http::Method::GET, "/a", &[], bytes::Bytes::new()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.seen().target(), "/a");

        // A broken file never replaces a working certificate.
        write_atomically(
            &gw.dir().join("gateway-cert.pem"),
            b"-----BEGIN CERTIFICATE-----\nbroken\n",
        );
        eventually(
            Duration::from_secs(10),
            "broken certificate refused",
            || async { gw.metric(&failures).await == 2.0 },
        )
        .await;
        assert!(served_by(tls, &new).await);
        assert!(gw.stderr().contains("gateway-cert.pem"), "{}", gw.stderr());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_tls_certificate_at_once() {
    bounded(async {
        let up = EchoServer::start("up");
        let (old, new) = (TestPki::localhost(), TestPki::localhost());
        // A poll too slow to matter here: only the signal can bring it in.
        let (gw, tls) = tls_gateway(&up, &old, 3600).await;
        write_atomically(&gw.dir().join("gateway-key.pem"), new.key_pem.as_bytes());
        write_atomically(&gw.dir().join("gateway-cert.pem"), new.chain_pem.as_bytes());
        assert!(served_by(tls, &old).await);
        gw.signal("HUP");
        eventually(
            Duration::from_secs(10),
            "new certificate served",
            || async { served_by(tls, &new).await },
        )
        .await;
    })
    .await
}
