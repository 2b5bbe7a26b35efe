//! Route matching and downstream URL building: placeholders,
//! catch-alls, trailing slashes, case, priority, UpstreamHost, methods,
//! header templates and query strings.

use e2e::{assert_routed, bounded, client, config, get, route, send, with, EchoServer, Gateway};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_are_substituted_into_the_downstream_path() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route(
            "/products/{id}/reviews/{reviewId}",
            "/api/p/{id}/r/{reviewId}",
            &[&up],
        )]))
        .await;

        let seen = assert_routed(
            &get(&gw.url("/products/42/reviews/7"), &[]).await,
            "up",
            "/api/p/42/r/7",
        );
        assert_eq!(seen.method, "GET");
        // Values are copied as sent, percent-encoding included.
        assert_routed(
            &get(&gw.url("/products/a%20b/reviews/x"), &[]).await,
            "up",
            "/api/p/a%20b/r/x",
        );
        // A non-last placeholder is exactly one segment.
        assert_eq!(
            get(&gw.url("/products/1/2/reviews/7"), &[]).await.status,
            404
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_all_everything_forwards_any_path_and_query() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route(
            "/{everything}",
            "/{everything}",
            &[&up],
        )]))
        .await;

        assert_routed(
            &get(&gw.url("/a/b/c?x=1&y=%20z"), &[]).await,
            "up",
            "/a/b/c?x=1&y=%20z",
        );
        assert_routed(&get(&gw.url("/single"), &[]).await, "up", "/single");
        assert_routed(&get(&gw.url("/"), &[]).await, "up", "/");
        assert_routed(&get(&gw.url("/dir/"), &[]).await, "up", "/dir/");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_segment_placeholder_spans_segments_and_is_optional() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/api/{rest}", "/svc/{rest}", &[&up])])).await;

        assert_routed(&get(&gw.url("/api/a"), &[]).await, "up", "/svc/a");
        assert_routed(&get(&gw.url("/api/a/b/c"), &[]).await, "up", "/svc/a/b/c");
        // `/api/{rest}` also matches `/api` and `/api/` with an empty value; the
        // trailing `/` of the downstream path is trimmed when upstream had none.
        assert_routed(&get(&gw.url("/api"), &[]).await, "up", "/svc");
        assert_routed(&get(&gw.url("/api/"), &[]).await, "up", "/svc/");
        // ...but not a longer first segment.
        assert_eq!(get(&gw.url("/apix"), &[]).await.status, 404);
        assert_eq!(up.count(), 4);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_slash_rules() {
    bounded(async {
        let a = EchoServer::start("a");
        let b = EchoServer::start("b");
        let gw = Gateway::start(config(vec![
            route("/products", "/p", &[&a]),
            route("/orders/", "/o/", &[&b]),
        ]))
        .await;

        assert_routed(&get(&gw.url("/products"), &[]).await, "a", "/p");
        // A template without a trailing slash does not match one with it.
        let r = get(&gw.url("/products/"), &[]).await;
        assert_eq!(r.status, 404);
        assert!(r.body.is_empty());
        // A template with a trailing slash matches both.
        assert_routed(&get(&gw.url("/orders/"), &[]).await, "b", "/o/");
        assert_routed(&get(&gw.url("/orders"), &[]).await, "b", "/o");
        assert_eq!(a.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_is_case_insensitive_unless_route_is_case_sensitive() {
    bounded(async {
        let a = EchoServer::start("a");
        let b = EchoServer::start("b");
        let gw = Gateway::start(config(vec![
            route("/Products/{id}", "/p/{id}", &[&a]),
            with(
                route("/Strict/{id}", "/s/{id}", &[&b]),
                json!({ "RouteIsCaseSensitive": true }),
            ),
        ]))
        .await;

        // Placeholder values keep their case; only matching ignores it.
        assert_routed(&get(&gw.url("/PRODUCTS/AbC"), &[]).await, "a", "/p/AbC");
        assert_routed(&get(&gw.url("/products/x"), &[]).await, "a", "/p/x");
        assert_routed(&get(&gw.url("/Strict/Q"), &[]).await, "b", "/s/Q");
        assert_eq!(get(&gw.url("/strict/Q"), &[]).await.status, 404);
        assert_eq!(get(&gw.url("/STRICT/Q"), &[]).await.status, 404);
        assert_eq!(b.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_wins_and_catch_all_is_last() {
    bounded(async {
        let general = EchoServer::start("general");
        let special = EchoServer::start("special");
        let fallback = EchoServer::start("fallback");
        let gw = Gateway::start(config(vec![
            // The catch-all comes first in the file but is forced to priority 0.
            route("/{everything}", "/{everything}", &[&fallback]),
            route("/goods/{id}", "/general/{id}", &[&general]),
            with(
                route("/goods/special", "/special", &[&special]),
                json!({ "Priority": 2 }),
            ),
        ]))
        .await;

        assert_routed(
            &get(&gw.url("/goods/special"), &[]).await,
            "special",
            "/special",
        );
        assert_routed(
            &get(&gw.url("/goods/7"), &[]).await,
            "general",
            "/general/7",
        );
        assert_routed(&get(&gw.url("/other/x"), &[]).await, "fallback", "/other/x");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_priority_keeps_file_order() {
    bounded(async {
        let first = EchoServer::start("first");
        let second = EchoServer::start("second");
        let gw = Gateway::start(config(vec![
            route("/items/{id}", "/first/{id}", &[&first]),
            route("/items/fixed", "/second", &[&second]),
        ]))
        .await;

        // Both match; same default priority (1), so the earlier route wins.
        assert_routed(
            &get(&gw.url("/items/fixed"), &[]).await,
            "first",
            "/first/fixed",
        );
        assert_eq!(second.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_host_selects_route_and_ignores_port() {
    bounded(async {
        let any = EchoServer::start("any");
        let api = EchoServer::start("api");
        let gw = Gateway::start(config(vec![
            route("/svc/{x}", "/any/{x}", &[&any]),
            // Later in the file and same priority, but a host-specific match wins.
            with(
                route("/svc/{x}", "/api/{x}", &[&api]),
                json!({ "UpstreamHost": "api.example.com" }),
            ),
        ]))
        .await;

        let r = get(&gw.url("/svc/1"), &[("host", "api.example.com")]).await;
        assert_routed(&r, "api", "/api/1");
        let r = get(&gw.url("/svc/2"), &[("host", "api.example.com:8080")]).await;
        assert_routed(&r, "api", "/api/2");
        // Host comparison is exact and case-sensitive.
        let r = get(&gw.url("/svc/3"), &[("host", "API.example.com")]).await;
        assert_routed(&r, "any", "/any/3");
        let r = get(&gw.url("/svc/4"), &[("host", "other.example.com")]).await;
        assert_routed(&r, "any", "/any/4");
        let r = get(&gw.url("/svc/5"), &[]).await;
        assert_routed(&r, "any", "/any/5");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_host_only_route_is_404_for_other_hosts() {
    bounded(async {
        let api = EchoServer::start("api");
        let gw = Gateway::start(config(vec![with(
            route("/only/{x}", "/{x}", &[&api]),
            json!({ "UpstreamHost": "api.example.com" }),
        )]))
        .await;
        assert_eq!(
            get(&gw.url("/only/1"), &[("host", "nope.example.com")])
                .await
                .status,
            404
        );
        assert_routed(
            &get(&gw.url("/only/1"), &[("host", "api.example.com")]).await,
            "api",
            "/1",
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_http_method_filters_routes() {
    bounded(async {
        let reader = EchoServer::start("reader");
        let writer = EchoServer::start("writer");
        let gw = Gateway::start(config(vec![
            with(
                route("/things/{id}", "/read/{id}", &[&reader]),
                json!({ "UpstreamHttpMethod": ["Get"] }),
            ),
            // Lower-case method names work too.
            with(
                route("/things/{id}", "/write/{id}", &[&writer]),
                json!({ "UpstreamHttpMethod": ["post", "PUT"] }),
            ),
        ]))
        .await;

        assert_routed(&get(&gw.url("/things/1"), &[]).await, "reader", "/read/1");
        let r = send(client().post(gw.url("/things/2")).body("x"), &[]).await;
        let seen = assert_routed(&r, "writer", "/write/2");
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.body_len, 1);
        let r = send(client().put(gw.url("/things/3")), &[]).await;
        assert_eq!(assert_routed(&r, "writer", "/write/3").method, "PUT");

        // No route allows DELETE: 404 (Ocelot never answers 405), empty body.
        let r = send(client().delete(gw.url("/things/4")), &[]).await;
        assert_eq!(r.status, 404);
        assert!(r.body.is_empty(), "{:?}", r.text());
        assert_eq!(reader.count() + writer.count(), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_header_templates_match_and_capture() {
    bounded(async {
        let tenant = EchoServer::start("tenant");
        let v2 = EchoServer::start("v2");
        let plain = EchoServer::start("plain");
        let gw = Gateway::start(config(vec![
            with(
                route("/h/{id}", "/tenants/{tenant}/{id}", &[&tenant]),
                json!({ "UpstreamHeaderTemplates": { "X-Tenant": "{header:tenant}" } }),
            ),
            with(
                route("/h/{id}", "/v2/{id}", &[&v2]),
                json!({ "UpstreamHeaderTemplates": { "X-Version": "v2" } }),
            ),
            route("/h/{id}", "/plain/{id}", &[&plain]),
        ]))
        .await;

        assert_routed(
            &get(&gw.url("/h/1"), &[("x-tenant", "acme")]).await,
            "tenant",
            "/tenants/acme/1",
        );
        // Value templates are case-insensitive by default.
        assert_routed(
            &get(&gw.url("/h/2"), &[("x-version", "V2")]).await,
            "v2",
            "/v2/2",
        );
        assert_routed(
            &get(&gw.url("/h/3"), &[("x-version", "v3")]).await,
            "plain",
            "/plain/3",
        );
        assert_routed(&get(&gw.url("/h/4"), &[]).await, "plain", "/plain/4");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_template_without_fallback_is_404_when_header_missing() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![with(
            route("/needs-header", "/ok", &[&up]),
            json!({ "UpstreamHeaderTemplates": { "X-Key": "secret" } }),
        )]))
        .await;
        assert_eq!(get(&gw.url("/needs-header"), &[]).await.status, 404);
        assert_eq!(
            get(&gw.url("/needs-header"), &[("x-key", "other")])
                .await
                .status,
            404
        );
        assert_routed(
            &get(&gw.url("/needs-header"), &[("x-key", "secret")]).await,
            "up",
            "/ok",
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_placeholders() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route(
            "/invoices_{a}/{b}-{c}",
            "/inv/{a}/{b}/{c}",
            &[&up],
        )]))
        .await;
        assert_routed(
            &get(&gw.url("/invoices_1/2-3"), &[]).await,
            "up",
            "/inv/1/2/3",
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_passes_untouched_without_placeholders() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/q", "/target", &[&up])])).await;
        // Raw query (order, duplicates, encoding) reaches the upstream unchanged.
        let r = get(&gw.url("/q?b=2&a=1&a=%20x&flag"), &[]).await;
        assert_routed(&r, "up", "/target?b=2&a=1&a=%20x&flag");
        let r = get(&gw.url("/q"), &[]).await;
        assert_eq!(r.seen().query, None);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_params_named_like_placeholders_are_dropped() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route(
            "/users/{userId}",
            "/u/{userId}",
            &[&up],
        )]))
        .await;
        let r = get(&gw.url("/users/5?userId=9&x=1"), &[]).await;
        assert_routed(&r, "up", "/u/5?x=1");
        // The match is case-insensitive for this rule.
        let r = get(&gw.url("/users/5?USERID=9&y=2"), &[]).await;
        assert_routed(&r, "up", "/u/5?y=2");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_query_template_maps_upstream_query_placeholders() {
    bounded(async {
        let a = EchoServer::start("a");
        let b = EchoServer::start("b");
        let gw = Gateway::start(config(vec![
            route(
                "/users?userId={userId}",
                "/persons?personId={userId}",
                &[&a],
            ),
            route("/members?memberId={uid}", "/people?personId={uid}", &[&b]),
        ]))
        .await;

        // The placeholder's own param is consumed...
        assert_routed(
            &get(&gw.url("/users?userId=webley"), &[]).await,
            "a",
            "/persons?personId=webley",
        );
        // ...but only when its name equals the placeholder's (`uid` ≠ `memberId`).
        assert_routed(
            &get(&gw.url("/members?memberId=webley"), &[]).await,
            "b",
            "/people?personId=webley&memberId=webley",
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_query_template_merges_remaining_upstream_params() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route(
            "/search/{term}",
            "/api/search?q={term}&source=gw",
            &[&up],
        )]))
        .await;
        // Template params first, then the upstream's own params not already present.
        let r = get(&gw.url("/search/cats?page=2&source=client"), &[]).await;
        assert_routed(&r, "up", "/api/search?q=cats&source=gw&page=2");
        let r = get(&gw.url("/search/dogs"), &[]).await;
        assert_routed(&r, "up", "/api/search?q=dogs&source=gw");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_all_query_placeholder() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route(
            "/contracts?{q}",
            "/apipath/contracts?{q}",
            &[&up],
        )]))
        .await;

        let r = get(&gw.url("/contracts"), &[]).await;
        let seen = assert_routed(&r, "up", "/apipath/contracts");
        assert_eq!(seen.query, None);
        let r = raw_get(&gw, "/contracts?").await;
        assert_eq!(r.0, 200, "{}", r.1);
        let seen: e2e::Seen = serde_json::from_slice(&r.2).unwrap();
        assert_eq!(seen.target(), "/apipath/contracts");
        assert_routed(
            &get(&gw.url("/contracts?p1=v1&p2=v2"), &[]).await,
            "up",
            "/apipath/contracts?p1=v1&p2=v2",
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_query_template_is_required_and_consumed() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route(
            "/units/updates?unitId={unitId}",
            "/api/units/{unitId}/updates",
            &[&up],
        )]))
        .await;

        assert_routed(
            &get(&gw.url("/units/updates?unitId=X"), &[]).await,
            "up",
            "/api/units/X/updates",
        );
        assert_routed(
            &get(&gw.url("/units/updates?unitId=X&productId=1"), &[]).await,
            "up",
            "/api/units/X/updates?productId=1",
        );
        assert_eq!(
            get(&gw.url("/units/updates?productId=1"), &[]).await.status,
            404
        );
        assert_eq!(get(&gw.url("/units/updates"), &[]).await.status, 404);
        assert_eq!(up.count(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_is_404_with_empty_body() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/known", "/k", &[&up])])).await;
        for path in ["/unknown", "/", "/known/extra", "/knownx"] {
            let r = get(&gw.url(path), &[]).await;
            assert_eq!(r.status, 404, "{path}");
            assert!(r.body.is_empty(), "{path}: {:?}", r.text());
        }
        assert_eq!(up.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_config_answers_404() {
    bounded(async {
        let gw = Gateway::start(json!({ "Routes": [] })).await;
        let r = get(&gw.url("/anything"), &[]).await;
        assert_eq!(r.status, 404);
        assert!(r.body.is_empty());
    })
    .await
}

/// A request whose target an HTTP client library would rewrite.
async fn raw_get(gw: &Gateway, target: &str) -> (u16, String, Vec<u8>) {
    let r = gw.raw_get(target, &[]).await;
    (r.status().unwrap_or(0), r.describe(), r.body().to_vec())
}

/// Query-string cases from Ocelot's own acceptance tests
/// (RoutingWithQueryStringTests: bug 2002, bug 1288, PR 2351 / bug 2346):
/// (upstream template, downstream template, request, expected downstream target).
const OCELOT_QUERY_CASES: &[(&str, &str, &str, &str)] = &[
    (
        "/WeatherForecast/{roleid}/groups?username={username}&groupName={groupName}&{everything}",
        "/account/{username}/groups/{groupName}/roles?roleId={roleid}&{everything}",
        "/WeatherForecast/123456/groups?username=bbenameur&groupName=Paris&something=9874565",
        "/account/bbenameur/groups/Paris/roles?roleId=123456&something=9874565",
    ),
    (
        "/safe/{id}",
        "/cpx/t1/{id}",
        "/safe/3?id1=2312",
        "/cpx/t1/3?id1=2312",
    ),
    (
        "/finance/v1/payment-methods?{id}",
        "/v1/payment-methods?{id}",
        "/finance/v1/payment-methods?customer_id=12345",
        "/v1/payment-methods?customer_id=12345",
    ),
    (
        "/finance/v1/payment-methods/{id}",
        "/v1/payment-methods/{id}",
        "/finance/v1/payment-methods/?customer_id=123",
        "/v1/payment-methods/?customer_id=123",
    ),
    (
        "/finance/v1/payment-methods/{id}/orders/{oid}",
        "/v1/orders/{id}/{oid}",
        "/finance/v1/payment-methods/1/orders/2?id=1&oid=2&orderid=3&customer_id=4",
        "/v1/orders/1/2?orderid=3&customer_id=4",
    ),
    (
        "/finance/v1/users/{customer_id}",
        "/v1/users/{customer_id}",
        "/finance/v1/users/123?id=999&customer_id=x",
        "/v1/users/123?id=999",
    ),
    (
        "/finance/v1/items/{id}/{Id}",
        "/v1/items/{Id}/{id}",
        "/finance/v1/items/1/2?id=3&Id=4&ID=5&extra=x",
        "/v1/items/2/1?extra=x",
    ),
    (
        "/finance/v1/data/{id}",
        "/v1/data/{id}",
        "/finance/v1/data/123/?xid=1&idx=2&id=3&extra=x",
        "/v1/data/123/?xid=1&idx=2&extra=x",
    ),
    (
        "/finance/v1/records/{id1}",
        "/v1/records/{id1}",
        "/finance/v1/records/123/?id1=1&id10=10&extra=x",
        "/v1/records/123/?id10=10&extra=x",
    ),
    (
        "/finance/v1/alpha/{id}",
        "/v1/alpha/{id}",
        "/finance/v1/alpha/123/?id_=1&_id=2&id=3&extra=x",
        "/v1/alpha/123/?id_=1&_id=2&extra=x",
    ),
    (
        "/finance/v2/orders/{id}",
        "/v2/orders/{id}",
        "/finance/v2/orders/42?status=active&customer_id=123&extra=x",
        "/v2/orders/42?status=active&customer_id=123&extra=x",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocelot_acceptance_query_cases() {
    bounded(async {
        let up = EchoServer::start("up");
        let mut failures = Vec::new();
        for (upstream, downstream, request, expected) in OCELOT_QUERY_CASES {
            let gw = Gateway::start(config(vec![route(upstream, downstream, &[&up])])).await;
            let r = get(&gw.url(request), &[]).await;
            let got = if r.status == 200 {
                r.seen().target()
            } else {
                format!("status {}", r.status)
            };
            if got != *expected {
                failures.push(format!(
                    "{upstream} -> {downstream}\n    GET {request}\n    expected {expected}\n    got      {got}"
                ));
            }
        }
        assert!(failures.is_empty(), "{} case(s) differ from Ocelot:\n{}", failures.len(), failures.join("\n"));
    })
    .await
}
