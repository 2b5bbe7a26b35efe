//! The output cache (`CacheOptions` / `FileCacheOptions`): hits
//! served without the upstream, expiry after `TtlSeconds`, the `Header` and
//! `EnableContentHashing` key rules, and region purges through the admin API.

use std::time::Duration;

use e2e::{bounded, client, config, get, route, send, with, EchoServer, Gateway};
use serde_json::{json, Value};

/// A route `up` → the same path on `upstream`, with these `CacheOptions`.
fn cached(up: &str, upstream: &EchoServer, options: Value) -> Value {
    with(
        route(up, up, &[upstream]),
        json!({ "UpstreamHttpMethod": ["Get", "Post"], "CacheOptions": options }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_is_served_from_the_cache() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![
            cached("/cached", &up, json!({"TtlSeconds": 100})),
            route("/plain", "/plain", &[&up]),
        ]))
        .await;

        let first = get(&gw.url("/cached?x=1"), &[("x-echo-header", "X-Stamp: one")]).await;
        assert_eq!(first.status, 200);
        assert_eq!(up.count(), 1);
        // Same method and URL: answered from the cache, status, headers and
        // body as stored, whatever the request's other headers say.
        let second = get(&gw.url("/cached?x=1"), &[("x-echo-header", "X-Stamp: two")]).await;
        assert_eq!(up.count(), 1, "the upstream was not called again");
        assert_eq!(second.status, 200);
        assert_eq!(second.body, first.body);
        assert_eq!(second.header("x-stamp"), Some("one"));
        assert_eq!(second.header("content-type"), Some("application/json"));
        assert_eq!(
            second.header("content-length"),
            first.header("content-length")
        );

        // Another query, another method: other keys.
        get(&gw.url("/cached?x=2"), &[]).await;
        assert_eq!(up.count(), 2);
        send(client().post(gw.url("/cached?x=1")), &[]).await;
        assert_eq!(up.count(), 3);
        send(client().post(gw.url("/cached?x=1")), &[]).await;
        assert_eq!(up.count(), 3, "POST is cached under its own key");

        // Routes without CacheOptions are never cached.
        get(&gw.url("/plain"), &[]).await;
        get(&gw.url("/plain"), &[]).await;
        assert_eq!(up.count(), 5);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_status_of_the_service_is_cached() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![cached("/c", &up, json!({"TtlSeconds": 100}))])).await;
        let r = get(
            &gw.url("/c"),
            &[
                ("x-echo-status", "404"),
                ("x-echo-header", "Cache-Control: no-store"),
            ],
        )
        .await;
        assert_eq!(r.status, 404);
        // Ocelot ignores Cache-Control and caches every response of the service.
        let r = get(&gw.url("/c"), &[]).await;
        assert_eq!(r.status, 404);
        assert_eq!(up.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_ttl_seconds() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![cached("/c", &up, json!({"TtlSeconds": 1}))])).await;
        get(&gw.url("/c"), &[]).await;
        get(&gw.url("/c"), &[]).await;
        assert_eq!(up.count(), 1);
        tokio::time::sleep(Duration::from_millis(1300)).await;
        get(&gw.url("/c"), &[]).await;
        assert_eq!(up.count(), 2, "expired after TtlSeconds");
        get(&gw.url("/c"), &[]).await;
        assert_eq!(up.count(), 2, "and cached again");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_header_is_part_of_the_key() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![
            cached("/default", &up, json!({"TtlSeconds": 100})),
            cached(
                "/auth",
                &up,
                json!({"TtlSeconds": 100, "Header": "Authorization"}),
            ),
        ]))
        .await;

        // Ocelot's default key header is OC-Cache-Control.
        get(&gw.url("/default"), &[]).await;
        get(&gw.url("/default"), &[("OC-Cache-Control", "v2")]).await;
        assert_eq!(up.count(), 2);
        get(&gw.url("/default"), &[("OC-Cache-Control", "v2")]).await;
        get(&gw.url("/default"), &[]).await;
        assert_eq!(up.count(), 2);
        // A custom Header (Ocelot's acceptance test uses Authorization).
        let alice = get(&gw.url("/auth"), &[("Authorization", "Bearer alice")]).await;
        let bob = get(&gw.url("/auth"), &[("Authorization", "Bearer bob")]).await;
        assert_eq!(up.count(), 4);
        assert_eq!(alice.seen().header("authorization"), Some("Bearer alice"));
        assert_eq!(bob.seen().header("authorization"), Some("Bearer bob"));
        let again = get(&gw.url("/auth"), &[("Authorization", "Bearer alice")]).await;
        assert_eq!(again.body, alice.body);
        assert_eq!(up.count(), 4);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_hashing_keys_on_the_request_body() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![
            cached(
                "/hashed",
                &up,
                json!({"TtlSeconds": 100, "EnableContentHashing": true}),
            ),
            cached("/unhashed", &up, json!({"TtlSeconds": 100})),
        ]))
        .await;
        let post =
            |path: &str, body: &'static str| send(client().post(gw.url(path)).body(body), &[]);

        let tom = post("/hashed", r#"{"FirstName":"Tom"}"#).await;
        let laura = post("/hashed", r#"{"FirstName":"Laura"}"#).await;
        // The body read for the key still reaches the service whole.
        assert_eq!(tom.seen().body_len, 19);
        assert_eq!(laura.seen().body_len, 21);
        assert_eq!(
            post("/hashed", r#"{"FirstName":"Tom"}"#).await.body,
            tom.body
        );
        assert_eq!(
            post("/hashed", r#"{"FirstName":"Laura"}"#).await.body,
            laura.body
        );
        assert_eq!(up.count(), 2);

        // Without EnableContentHashing the body is not part of the key.
        post("/unhashed", r#"{"FirstName":"Tom"}"#).await;
        let r = post("/unhashed", r#"{"FirstName":"Laura"}"#).await;
        assert_eq!(r.seen().body_len, 19, "Tom's cached answer");
        assert_eq!(up.count(), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_is_purged_through_the_admin_api() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::builder(config(vec![
            cached(
                "/eu",
                &up,
                json!({"TtlSeconds": 100, "Region": "europe-central"}),
            ),
            cached("/us", &up, json!({"TtlSeconds": 100, "Region": "us-east"})),
        ]))
        .settings("admin_token: s3cret\n")
        .start()
        .await;
        let token = ("Authorization", "Bearer s3cret");
        let purge = |region: &str, auth: Vec<(&'static str, &'static str)>| {
            let req = client().delete(gw.admin_url(&format!("/admin/outputcache/{region}")));
            async move { send(req, &auth).await }
        };

        get(&gw.url("/eu"), &[]).await;
        get(&gw.url("/us"), &[]).await;
        get(&gw.url("/eu"), &[]).await;
        assert_eq!(up.count(), 2);

        assert_eq!(purge("europe-central", vec![]).await.status, 401);
        let r = purge("europe-central", vec![token]).await;
        assert_eq!(r.status, 204);
        get(&gw.url("/eu"), &[]).await;
        get(&gw.url("/us"), &[]).await;
        assert_eq!(up.count(), 3, "only europe-central was purged");
        // An unknown region is fine, as in Ocelot.
        assert_eq!(purge("nowhere", vec![token]).await.status, 204);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_names_the_backend_the_balancer_chose() {
    bounded(async {
        let a = EchoServer::start("a");
        let b = EchoServer::start("b");
        let gw = Gateway::start(config(vec![with(
            route("/rr", "/rr", &[&a, &b]),
            json!({"LoadBalancerOptions": {"Type": "RoundRobin"}, "CacheOptions": {"TtlSeconds": 100}}),
        )]))
        .await;
        let servers: Vec<String> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                v.push(get(&gw.url("/rr"), &[]).await.seen().server);
            }
            v
        };
        // Each backend is called once; then each answer comes from the cache
        // under its own backend's key, as the rotation goes on.
        assert_eq!((a.count(), b.count()), (1, 1));
        assert_ne!(servers[0], servers[1]);
        assert_eq!(servers[0], servers[2]);
        assert_eq!(servers[1], servers[3]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_responses_still_pass_the_routes_policies() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![with(
            cached("/limited", &up, json!({"TtlSeconds": 100})),
            json!({"RateLimitOptions": {"Limit": 2, "Period": "1m"}}),
        )]))
        .await;
        let client_id = [("Oc-Client", "alice")];
        assert_eq!(get(&gw.url("/limited"), &client_id).await.status, 200);
        assert_eq!(get(&gw.url("/limited"), &client_id).await.status, 200);
        // Rate limiting comes before the cache in Ocelot's pipeline.
        assert_eq!(get(&gw.url("/limited"), &client_id).await.status, 429);
        assert_eq!(up.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_are_cached_and_large_ones_only_served() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::builder(config(vec![cached("/c", &up, json!({"TtlSeconds": 100}))]))
            .settings("cache:\n  max_bytes: 1000000\n  max_object_bytes: 50000\n")
            .start()
            .await;
        let chunked = [("x-echo-body-bytes", "40000"), ("x-echo-chunked", "1")];
        let first = get(&gw.url("/c?small"), &chunked).await;
        let second = get(&gw.url("/c?small"), &chunked).await;
        assert_eq!((first.status, first.body.len()), (200, 40000));
        assert_eq!(second.body, first.body);
        assert_eq!(up.count(), 1);

        // Over max_object_bytes: served whole, every time from the service.
        let big = [("x-echo-body-bytes", "60000")];
        assert_eq!(get(&gw.url("/c?big"), &big).await.body.len(), 60000);
        assert_eq!(get(&gw.url("/c?big"), &big).await.body.len(), 60000);
        assert_eq!(up.count(), 3);
    })
    .await
}
