//! Authorization (Ocelot's `AllowedScopes` and `RouteClaimsRequirement`;
//! Ocelot's Authorization acceptance tests): missing scopes and claims are
//! 403, claims that cannot be put in a header safely are 400.

use e2e::oidc::{authenticated, bearer, claims, oidc_settings, Authority, SigningKey, AUDIENCE};
use e2e::{assert_refused, bounded, config, get, EchoServer, Gateway};
use serde_json::{json, Value};

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
