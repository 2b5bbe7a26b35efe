//! Identity and transforms end to end (issue #4): JWT authentication against
//! a real OpenID Connect authority on loopback, scopes and claims, claims
//! transforms, header transforms, request id, tenant header and CORS.

use std::ffi::OsString;
use std::time::Duration;

use e2e::oidc::{alg_none_token, claims, hs256_token, now, Authority, SigningKey};
use e2e::{
    bounded, client, config, get, route, run_to_exit, send, with, EchoServer, Gateway, Reply,
};
use serde_json::{json, Value};

const AUDIENCE: &str = "api";
const SECRET: &str = "a-static-hmac-secret-of-32-bytes!";

/// Settings with one OIDC provider named `Bearer` (plus extra YAML lines
/// indented under `auth_providers`).
fn oidc_settings(authority: &Authority, extra_providers: &str) -> String {
    format!(
        "auth_providers:\n  Bearer:\n    authority: \"{}\"\n    require_https_metadata: false\n    audience: {AUDIENCE}\n    min_refresh_interval_seconds: 1\n{extra_providers}",
        authority.url()
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn authenticated(up: &str, down: &str, upstream: &EchoServer, extra: Value) -> Value {
    let base = with(
        route(up, down, &[upstream]),
        json!({"AuthenticationOptions": {"AuthenticationProviderKey": "Bearer"}}),
    );
    with(base, extra)
}

#[track_caller]
fn assert_refused(reply: &Reply, status: u16, what: &str) {
    assert_eq!(
        reply.status,
        status,
        "{what}: expected {status}, got {} body {:?}",
        reply.status,
        reply.text()
    );
    assert!(
        reply.body.is_empty(),
        "{what}: error bodies are empty, got {:?}",
        reply.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_reaches_upstream_with_claims_in_headers_query_and_path() {
    bounded(async {
        let key = SigningKey::rsa("k1", 0);
        let authority = Authority::start(&[&key]);
        let up = EchoServer::start("up");
        let r = authenticated(
            "/users/{userId}",
            "/api/users/{userId}",
            &up,
            json!({
                "AuthenticationOptions": {"AuthenticationProviderKey": "Bearer", "AllowedScopes": ["api"]},
                "AddClaimsToRequest": {"UserType": "Claims[usertype] > value[0] > |"},
                "RouteClaimsRequirement": {"UserType": "registered"},
                "AddHeadersToRequest": {
                    "X-User": "Claims[sub] > value",
                    "X-Role": "Claims[role] > value[1] > ,",
                    "__tenant": "Claims[tenantid] > value"
                },
                "AddQueriesToRequest": {"customerId": "Claims[customer] > value"},
                "ChangeDownstreamPathTemplate": {"userId": "Claims[sub] > value"}
            }),
        );
        let gw = Gateway::builder(config(vec![r])).settings(&oidc_settings(&authority, "")).start().await;
        let token = key.sign(&claims(
            &authority.url(),
            AUDIENCE,
            json!({
                "sub": "42",
                "scope": "openid api",
                "usertype": "registered|gold",
                "role": ["user", "admin"],
                "tenantid": "t-7",
                "customer": "c 9&x=1"
            }),
        ));
        let reply = get(&gw.url("/users/anyone?page=2"), &[("authorization", &bearer(&token)), ("x-user", "spoofed")]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let seen = reply.seen();
        assert_eq!(seen.path, "/api/users/42");
        let query = seen.query.clone().unwrap_or_default();
        assert!(query.contains("page=2"), "{query}");
        assert!(query.contains("customerId=c%209%26x%3D1"), "claim values are encoded, never new parameters: {query}");
        assert_eq!(seen.header_values("x-user"), vec!["42"], "the claim replaces what the client sent");
        assert_eq!(seen.header("x-role"), Some("admin"));
        assert_eq!(seen.header("__tenant"), Some("t-7"));
        // The token itself is forwarded, as Ocelot does.
        assert_eq!(seen.header("authorization"), Some(bearer(&token).as_str()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tokens_are_401_with_an_empty_body() {
    bounded(async {
        let key = SigningKey::rsa("k1", 0);
        let other = SigningKey::rsa("k1", 1); // same kid, different key: a forged signature
        let authority = Authority::start(&[&key]);
        let up = EchoServer::start("up");
        let gw = Gateway::builder(config(vec![authenticated(
            "/secure",
            "/secure",
            &up,
            json!({}),
        )]))
        .settings(&oidc_settings(&authority, ""))
        .start()
        .await;
        let iss = authority.url();
        let good = claims(&iss, AUDIENCE, json!({}));
        let ok = get(
            &gw.url("/secure"),
            &[("authorization", &bearer(&key.sign(&good)))],
        )
        .await;
        assert_eq!(ok.status, 200, "a valid token passes: {}", ok.text());

        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        let cases: Vec<(&str, Option<String>)> = vec![
            ("missing token", None),
            (
                "expired",
                Some(key.sign(&claims(
                    &iss,
                    AUDIENCE,
                    json!({"exp": now() - 3600, "nbf": now() - 7200}),
                ))),
            ),
            (
                "not yet valid",
                Some(key.sign(&claims(
                    &iss,
                    AUDIENCE,
                    json!({"nbf": now() + 3600, "exp": now() + 7200}),
                ))),
            ),
            ("no exp", Some(key.sign(&no_exp))),
            (
                "wrong issuer",
                Some(key.sign(&claims("http://evil.example.com", AUDIENCE, json!({})))),
            ),
            (
                "wrong audience",
                Some(key.sign(&claims(&iss, "other-api", json!({})))),
            ),
            ("bad signature", Some(other.sign(&good))),
            ("alg none", Some(alg_none_token(&good, "k1"))),
            (
                "HS256 signed with the RSA public key",
                Some(hs256_token(key.public_pem.as_bytes(), "k1", &good)),
            ),
            ("garbage", Some("not.a.jwt".to_string())),
        ];
        for (what, token) in &cases {
            let headers: Vec<(&str, String)> =
                token.iter().map(|t| ("authorization", bearer(t))).collect();
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_refused(&get(&gw.url("/secure"), &headers).await, 401, what);
        }
        assert_refused(
            &get(
                &gw.url("/secure"),
                &[("authorization", "Basic dXNlcjpwYXNz")],
            )
            .await,
            401,
            "basic auth",
        );
        assert_eq!(up.count(), 1, "only the valid request reached the upstream");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_and_claim_failures_are_403_and_unsafe_claims_are_400() {
    bounded(async {
        let key = SigningKey::ec("ec1");
        let authority = Authority::start(&[&key]);
        let up = EchoServer::start("up");
        let routes = vec![
            authenticated("/scoped", "/scoped", &up, json!({"AuthenticationOptions": {"AuthenticationProviderKey": "Bearer", "AllowedScopes": ["api", "admin"]}})),
            authenticated("/admin", "/admin", &up, json!({"RouteClaimsRequirement": {"role": "admin"}})),
            authenticated("/tenants/{tenantId}/orders", "/orders/{tenantId}", &up, json!({"RouteClaimsRequirement": {"tenantid": "{tenantId}"}})),
            authenticated("/customer", "/customer", &up, json!({"AddHeadersToRequest": {"X-Customer": "Claims[customer] > value"}})),
            authenticated("/indexed", "/indexed", &up, json!({"AddHeadersToRequest": {"X-Part": "Claims[sub] > value[3] > |"}})),
            authenticated("/name", "/name", &up, json!({"AddHeadersToRequest": {"X-Name": "Claims[name] > value"}})),
        ];
        let gw = Gateway::builder(config(routes)).settings(&oidc_settings(&authority, "")).start().await;
        let iss = authority.url();
        let call = |path: &'static str, extra: Value| {
            let token = key.sign(&claims(&iss, AUDIENCE, extra));
            let url = gw.url(path);
            async move { get(&url, &[("authorization", &bearer(&token))]).await }
        };

        assert_refused(&call("/scoped", json!({"scope": "openid profile"})).await, 403, "no allowed scope");
        assert_refused(&call("/scoped", json!({})).await, 403, "no scope claim");
        assert_eq!(call("/scoped", json!({"scope": "openid api"})).await.status, 200, "space-separated scopes");
        assert_eq!(call("/scoped", json!({"scope": ["openid", "admin"]})).await.status, 200, "scope array");

        assert_refused(&call("/admin", json!({"role": "user"})).await, 403, "claim value");
        assert_refused(&call("/admin", json!({})).await, 403, "claim missing");
        assert_eq!(call("/admin", json!({"role": ["user", "admin"]})).await.status, 200);

        assert_eq!(call("/tenants/t1/orders", json!({"tenantid": "t1"})).await.status, 200, "claim equals placeholder");
        assert_refused(&call("/tenants/t2/orders", json!({"tenantid": "t1"})).await, 403, "claim differs from placeholder");

        assert_refused(&call("/customer", json!({})).await, 403, "claim for a header missing");
        assert_refused(&call("/indexed", json!({"sub": "a|b"})).await, 403, "claim index out of range");

        let before = up.count();
        for evil in ["Eve\r\nX-Admin: true", "Eve\nX-Admin: true", "名字"] {
            assert_refused(&call("/name", json!({"name": evil})).await, 400, &format!("claim {evil:?}"));
        }
        assert_eq!(up.count(), before, "refused claims never reach the upstream");
        let ok = call("/name", json!({"name": "Eve Smith"})).await;
        assert_eq!(ok.seen().header("x-name"), Some("Eve Smith"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_are_picked_up_and_bogus_kids_cannot_hammer_the_authority() {
    bounded(async {
        let k1 = SigningKey::rsa("k1", 0);
        let k2 = SigningKey::rsa("k2", 1);
        let authority = Authority::start(&[&k1]);
        let up = EchoServer::start("up");
        let gw = Gateway::builder(config(vec![authenticated(
            "/secure",
            "/secure",
            &up,
            json!({}),
        )]))
        .settings(&oidc_settings(&authority, ""))
        .start()
        .await;
        let c = claims(&authority.url(), AUDIENCE, json!({}));
        let call = |token: String| {
            let url = gw.url("/secure");
            async move { get(&url, &[("authorization", &bearer(&token))]).await }
        };
        assert_eq!(call(k1.sign(&c)).await.status, 200);

        // The authority rotates to k2: a token with the new kid triggers one
        // fetch and is accepted, without a restart.
        authority.set_keys(&[&k1, &k2]);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let fetches = authority.jwks_fetches();
        assert_eq!(
            call(k2.sign(&c)).await.status,
            200,
            "new kid after rotation"
        );
        assert_eq!(
            authority.jwks_fetches(),
            fetches + 1,
            "one fetch for the new kid"
        );
        assert_eq!(call(k2.sign(&c)).await.status, 200);
        assert_eq!(
            authority.jwks_fetches(),
            fetches + 1,
            "known kids cause no fetch"
        );

        // A flood of tokens with unknown kids: each refused, fetches rate-limited.
        let fetches = authority.jwks_fetches();
        for i in 0..30 {
            let forged = k2.with_kid(&format!("bogus-{i}"));
            assert_eq!(call(forged.sign(&c)).await.status, 401);
        }
        assert!(
            authority.jwks_fetches() <= fetches + 2,
            "30 bogus kids caused {} fetches",
            authority.jwks_fetches() - fetches
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_down_keeps_known_keys_and_recovery_is_picked_up() {
    bounded(async {
        let k1 = SigningKey::rsa("k1", 0);
        let k2 = SigningKey::ec("k2");
        let authority = Authority::start(&[&k1]);
        let up = EchoServer::start("up");
        let gw = Gateway::builder(config(vec![authenticated(
            "/secure",
            "/secure",
            &up,
            json!({}),
        )]))
        .settings(&oidc_settings(&authority, ""))
        .start()
        .await;
        let c = claims(&authority.url(), AUDIENCE, json!({}));
        let call = |token: String| {
            let url = gw.url("/secure");
            async move { get(&url, &[("authorization", &bearer(&token))]).await }
        };
        assert_eq!(call(k1.sign(&c)).await.status, 200);

        authority.set_down(true);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            call(k2.sign(&c)).await.status,
            401,
            "unknown key while the authority is down"
        );
        assert_eq!(
            call(k1.sign(&c)).await.status,
            200,
            "the last good keys keep serving"
        );

        authority.set_keys(&[&k1, &k2]);
        authority.set_down(false);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            call(k2.sign(&c)).await.status,
            200,
            "keys load again once the authority is back"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_down_at_start_then_up() {
    bounded(async {
        let k1 = SigningKey::ec("k1");
        let authority = Authority::start(&[&k1]);
        authority.set_down(true);
        let up = EchoServer::start("up");
        let gw = Gateway::builder(config(vec![authenticated(
            "/secure",
            "/secure",
            &up,
            json!({}),
        )]))
        .settings(&oidc_settings(&authority, ""))
        .start()
        .await;
        let token = k1.sign(&claims(&authority.url(), AUDIENCE, json!({})));
        assert_eq!(
            get(&gw.url("/secure"), &[("authorization", &bearer(&token))])
                .await
                .status,
            401
        );
        authority.set_down(false);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            get(&gw.url("/secure"), &[("authorization", &bearer(&token))])
                .await
                .status,
            200
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_schemes_static_keys_anonymous_and_options() {
    bounded(async {
        let oidc_key = SigningKey::rsa("k1", 0);
        let static_key = SigningKey::rsa("static", 2);
        let authority = Authority::start(&[&oidc_key]);
        let up = EchoServer::start("up");
        let pem = static_key.public_pem.replace('\n', "\n          ");
        let extra = format!(
            "  Static:\n    keys:\n      - kid: static\n        pem: |\n          {pem}\n      - secret: \"{SECRET}\"\n    issuer: https://static.example.com\n    audience: {AUDIENCE}\n"
        );
        let routes = vec![
            with(route("/multi", "/multi", &[&up]), json!({"AuthenticationOptions": {"AuthenticationProviderKeys": ["Static", "Bearer"]}})),
            with(route("/open", "/open", &[&up]), json!({"AuthenticationOptions": {"AllowAnonymous": true}})),
            route("/global", "/global", &[&up]),
        ];
        let mut cfg = config(routes);
        cfg["GlobalConfiguration"]["AuthenticationOptions"] = json!({"AuthenticationProviderKey": "Bearer"});
        let gw = Gateway::builder(cfg).settings(&oidc_settings(&authority, &extra)).start().await;

        let oidc_token = oidc_key.sign(&claims(&authority.url(), AUDIENCE, json!({})));
        let static_claims = claims("https://static.example.com", AUDIENCE, json!({}));
        let rsa_static_token = static_key.sign(&static_claims);
        let hmac_token = {
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            h.kid = None;
            jsonwebtoken::encode(&h, &static_claims, &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
        };
        for (what, token) in [("OIDC", &oidc_token), ("static RSA", &rsa_static_token), ("static HMAC", &hmac_token)] {
            let r = get(&gw.url("/multi"), &[("authorization", &bearer(token))]).await;
            assert_eq!(r.status, 200, "{what} token on a route with two schemes: {}", r.text());
        }
        // The global scheme applies to routes without options of their own.
        assert_refused(&get(&gw.url("/global"), &[("authorization", &bearer(&rsa_static_token))]).await, 401, "wrong scheme");
        assert_eq!(get(&gw.url("/global"), &[("authorization", &bearer(&oidc_token))]).await.status, 200);
        assert_eq!(get(&gw.url("/open"), &[]).await.status, 200, "AllowAnonymous");
        // Ocelot skips authentication for OPTIONS (without a CORS policy the
        // request goes to the service).
        let options = send(client().request(reqwest::Method::OPTIONS, gw.url("/global")), &[]).await;
        assert_eq!(options.status, 200, "{}", options.text());
        assert_eq!(options.seen().method, "OPTIONS");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_transforms_with_placeholders_and_location_rewrite() {
    bounded(async {
        let up = EchoServer::start("up");
        let r = with(
            route("/pay/{rest}", "/pay/{rest}", &[&up]),
            json!({
                "UpstreamHeaderTransform": {
                    "Laz": "D, GP",
                    "X-Forwarded-For": "{RemoteIpAddress}",
                    "X-Original-Host": "{UpstreamHost}"
                },
                "DownstreamHeaderTransform": {
                    "Location": "{DownstreamBaseUrl}, {BaseUrl}",
                    "X-Powered-By": "gateway"
                }
            }),
        );
        let mut cfg = config(vec![r]);
        cfg["GlobalConfiguration"] = json!({
            "BaseUrl": "https://gateway.example.com",
            "UpstreamHeaderTransform": {"X-Global": "g", "Laz": "not used: the route's wins"},
            "DownstreamHeaderTransform": {"X-Served-By": "{BaseUrl}"}
        });
        let gw = Gateway::start(cfg).await;
        let location = format!("Location: http://127.0.0.1:{}/pay/Receive?x=1", up.port());
        let reply = get(
            &gw.url("/pay/now"),
            &[
                ("laz", "D and D"),
                ("x-echo-status", "302"),
                ("x-echo-header", &location),
                ("x-echo-header", "X-Powered-By: service"),
                ("__tenant", "tenant-1"),
            ],
        )
        .await;
        assert_eq!(reply.status, 302);
        assert_eq!(
            reply.header("location"),
            Some("https://gateway.example.com/pay/Receive?x=1")
        );
        assert_eq!(
            reply.header("x-powered-by"),
            Some("service"),
            "a header the service sent wins over an added one"
        );
        assert_eq!(
            reply.header("x-served-by"),
            Some("https://gateway.example.com")
        );
        let seen = reply.seen();
        assert_eq!(seen.header("laz"), Some("GP and GP"));
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(
            seen.header("x-original-host"),
            Some(gw.authority().as_str())
        );
        assert_eq!(seen.header("x-global"), Some("g"));
        assert_eq!(
            seen.header("__tenant"),
            Some("tenant-1"),
            "the ABP tenant header passes through unchanged"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_forwarded_or_generated() {
    bounded(async {
        let up = EchoServer::start("up");
        let routes = vec![
            with(
                route("/own", "/own", &[&up]),
                json!({"RequestIdKey": "Oc-RequestId", "UpstreamHeaderTransform": {"X-Trace": "{TraceId}"}}),
            ),
            route("/global", "/global", &[&up]),
        ];
        let mut cfg = config(routes);
        cfg["GlobalConfiguration"]["RequestIdKey"] = json!("X-Correlation-Id");
        let gw = Gateway::start(cfg).await;

        let reply = get(&gw.url("/own"), &[("oc-requestid", "abc-123")]).await;
        let seen = reply.seen();
        assert_eq!(seen.header_values("oc-requestid"), vec!["abc-123"]);
        assert_eq!(seen.header("x-trace"), Some("abc-123"));
        assert!(!seen.has_header("x-correlation-id"), "the route's key wins over the global one");
        assert!(reply.header("oc-requestid").is_none(), "not added to the response");

        let first = get(&gw.url("/own"), &[]).await.seen();
        let second = get(&gw.url("/own"), &[]).await.seen();
        let id = first.header("oc-requestid").expect("generated id");
        assert!(!id.is_empty());
        assert_eq!(first.header("x-trace"), Some(id));
        assert_ne!(Some(id), second.header("oc-requestid"), "ids are unique");

        let seen = get(&gw.url("/global"), &[]).await.seen();
        assert!(seen.header("x-correlation-id").is_some_and(|v| !v.is_empty()));
        let seen = get(&gw.url("/global"), &[("x-correlation-id", "given")]).await.seen();
        assert_eq!(seen.header_values("x-correlation-id"), vec!["given"]);
    })
    .await
}

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

#[test]
fn a_route_naming_an_unknown_provider_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let ocelot = dir.path().join("ocelot.json");
    let settings = dir.path().join("gateway.yaml");
    let cfg = json!({"Routes": [{
        "UpstreamPathTemplate": "/a",
        "DownstreamPathTemplate": "/a",
        "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": 1}],
        "AuthenticationOptions": {"AuthenticationProviderKey": "IdentityApiKey"}
    }]});
    std::fs::write(&ocelot, cfg.to_string()).unwrap();
    std::fs::write(&settings, format!("auth_providers:\n  Other:\n    keys: [{{secret: \"{SECRET}\"}}]\n    issuer: i\n    audience: a\n")).unwrap();
    let args: Vec<OsString> = vec![
        "--check".into(),
        "--ocelot".into(),
        ocelot.clone().into(),
        "--settings".into(),
        settings.into(),
    ];
    let out = run_to_exit(&args, Duration::from_secs(30));
    assert!(!out.status.success(), "must not start: {out:?}");
    assert!(out.stderr.contains("IdentityApiKey"), "{}", out.stderr);

    // Without any provider configured the file still loads (the route warns
    // and would answer 401), so an Ocelot file can be checked on its own.
    let args: Vec<OsString> = vec!["--check".into(), "--ocelot".into(), ocelot.into()];
    let out = run_to_exit(&args, Duration::from_secs(30));
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("IdentityApiKey"),
        "warned: {}",
        out.stderr
    );
}
