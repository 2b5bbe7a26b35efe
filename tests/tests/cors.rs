//! CORS: preflights answered by the gateway's policy before authentication.

use e2e::oidc::{bearer, claims, SigningKey, AUDIENCE};
use e2e::{assert_refused, bounded, client, config, get, route, send, with, EchoServer, Gateway};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_is_answered_before_authentication() {
    bounded(async {
        let key = SigningKey::ec("k1");
        let up = EchoServer::start("up");
        let mut cfg = config(vec![with(
            route("/api/{rest}", "/api/{rest}", &[&up]),
            json!({"AuthenticationOptions": {"AuthenticationProviderKey": "Jwt"}}),
        )]);
        cfg["GlobalConfiguration"] = json!({});
        let pem = key.public_pem.replace('\n', "\n          ");
        let settings = format!(
            "auth_providers:\n  Jwt:\n    keys:\n      - pem: |\n          {pem}\n    issuer: https://issuer\n    audience: {AUDIENCE}\n\
             cors:\n  allowed_origins: ['https://app.example.com', 'https://*.abp.io']\n  allow_credentials: true\n  max_age_seconds: 600\n  exposed_headers: [X-Total]\n"
        );
        let gw = Gateway::builder(cfg).settings(&settings).start().await;
        let preflight = |origin: &'static str, path: &'static str| {
            let url = gw.url(path);
            async move {
                send(
                    client().request(reqwest::Method::OPTIONS, url),
                    &[
                        ("origin", origin),
                        ("access-control-request-method", "GET"),
                        ("access-control-request-headers", "authorization"),
                    ],
                )
                .await
            }
        };

        let ok = preflight("https://app.example.com", "/api/orders").await;
        assert_eq!(ok.status, 204);
        assert_eq!(ok.header("access-control-allow-origin"), Some("https://app.example.com"));
        assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(ok.header("access-control-allow-methods"), Some("GET"));
        assert_eq!(ok.header("access-control-allow-headers"), Some("authorization"));
        assert_eq!(ok.header("access-control-max-age"), Some("600"));
        let sub = preflight("https://tenant1.abp.io", "/no/such/route").await;
        assert_eq!(sub.status, 204);
        assert_eq!(sub.header("access-control-allow-origin"), Some("https://tenant1.abp.io"));
        let refused = preflight("https://evil.example.com", "/api/orders").await;
        assert_eq!(refused.status, 204);
        assert!(refused.header("access-control-allow-origin").is_none());
        assert_eq!(up.count(), 0, "preflights never reach the service");

        // A 401 carries the CORS headers too, so the browser app can see it.
        let denied = get(&gw.url("/api/orders"), &[("origin", "https://app.example.com")]).await;
        assert_refused(&denied, 401, "no token");
        assert_eq!(denied.header("access-control-allow-origin"), Some("https://app.example.com"));

        let token = key.sign(&claims("https://issuer", AUDIENCE, json!({})));
        let ok = get(
            &gw.url("/api/orders"),
            &[("origin", "https://app.example.com"), ("authorization", &bearer(&token)), ("x-echo-header", "Access-Control-Allow-Origin: *")],
        )
        .await;
        assert_eq!(ok.status, 200);
        let acao: Vec<_> = ok.headers.get_all("access-control-allow-origin").iter().collect();
        assert_eq!(acao, vec!["https://app.example.com"], "the gateway's CORS answer replaces the service's");
        assert_eq!(ok.header("access-control-expose-headers"), Some("X-Total"));
        assert!(ok.headers.get_all("vary").iter().any(|v| v == "Origin"));
        let plain = get(&gw.url("/api/orders"), &[("authorization", &bearer(&token))]).await;
        assert!(plain.header("access-control-allow-origin").is_none(), "no Origin, no CORS headers");
    })
    .await
}
