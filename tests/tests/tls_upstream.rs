//! `DownstreamScheme: https`: TLS to the upstream with SNI, certificate
//! verification, `DangerousAcceptAnyServerCertificateValidator`, and the
//! gateway's `upstream_ca_file` setting.

use e2e::{bounded, get, https_route, EchoServer, Gateway};

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
