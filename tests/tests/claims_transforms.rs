//! Claims transforms (Ocelot's `AddClaimsToRequest`, `AddHeadersToRequest`,
//! `AddQueriesToRequest`, `ChangeDownstreamPathTemplate`; Ocelot's Claims
//! acceptance tests): a valid token's claims reach the service in headers,
//! query and path.

use e2e::oidc::{authenticated, bearer, claims, oidc_settings, Authority, SigningKey, AUDIENCE};
use e2e::{bounded, config, get, EchoServer, Gateway};
use serde_json::json;

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
