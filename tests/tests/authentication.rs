//! Authentication (Ocelot's `AuthenticationOptions`; Ocelot's Authentication
//! acceptance tests): JWT bearer tokens against a real OpenID Connect
//! authority on loopback and static keys, invalid tokens refused with 401,
//! key rotation, the authority going down, several schemes on one route, and
//! a route naming an unknown provider.

use std::ffi::OsString;
use std::time::Duration;

use e2e::oidc::{
    alg_none_token, authenticated, bearer, claims, hs256_token, now, oidc_settings, Authority,
    SigningKey, AUDIENCE, SECRET,
};
use e2e::{
    assert_refused, bounded, client, config, get, route, run_to_exit, send, with, EchoServer,
    Gateway,
};
use serde_json::json;

/// A gateway with `/secure` authenticated by the `Bearer` provider of `authority`.
async fn secure_gateway(authority: &Authority, up: &EchoServer) -> Gateway {
    Gateway::builder(config(vec![authenticated(
        "/secure",
        "/secure",
        up,
        json!({}),
    )]))
    .settings(&oidc_settings(authority, ""))
    .start()
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tokens_are_401_with_an_empty_body() {
    bounded(async {
        let key = SigningKey::rsa("k1", 0);
        let other = SigningKey::rsa("k1", 1); // same kid, different key: a forged signature
        let authority = Authority::start(&[&key]);
        let up = EchoServer::start("up");
        let gw = secure_gateway(&authority, &up).await;
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
async fn rotated_keys_are_picked_up_and_bogus_kids_cannot_hammer_the_authority() {
    bounded(async {
        let k1 = SigningKey::rsa("k1", 0);
        let k2 = SigningKey::rsa("k2", 1);
        let authority = Authority::start(&[&k1]);
        let up = EchoServer::start("up");
        let gw = secure_gateway(&authority, &up).await;
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
        let gw = secure_gateway(&authority, &up).await;
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
        let gw = secure_gateway(&authority, &up).await;
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
