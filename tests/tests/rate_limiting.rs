//! Rate limiting (Ocelot's `RateLimitOptions`; Ocelot's RateLimiting
//! acceptance tests): fixed windows per client, the X-RateLimit-* and
//! Retry-After headers, whitelists, global route-key groups with a wait,
//! Ocelot 23 configs, counters shared between gateways through Redis and its
//! outages, and the limiter's memory bound; beyond Ocelot, clients counted
//! by their address or by a claim of their token.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::load::{get_for_each_id, rate_limited_burst};
use e2e::redis::RedisServer;
use e2e::{
    bounded, bounded_for, client_from, closed_addr, config, get, route, send, with, EchoServer,
    Gateway,
};
use serde_json::{json, Value};

fn limited(path: &str, up: &EchoServer, options: Value) -> Value {
    with(
        route(path, path, &[up]),
        json!({ "RateLimitOptions": options }),
    )
}

fn is_round_trip_date(v: &str) -> bool {
    // 2026-01-01T00:00:01.0000000Z
    v.len() == 28
        && v.ends_with('Z')
        && v.as_bytes()[10] == b'T'
        && v.as_bytes()[19] == b'.'
        && v[20..27].bytes().all(|b| b.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_after_rate_limiting_carry_its_headers_refusals_too() {
    bounded(async {
        let up = EchoServer::start("up");
        let dead = closed_addr();
        let window = json!({ "Limit": 5, "Period": "1m" });
        let secured = with(
            limited("/secured", &up, window.clone()),
            json!({ "AuthenticationOptions": { "AuthenticationProviderKey": "Static" } }),
        );
        let unreachable = json!({
            "UpstreamPathTemplate": "/dead",
            "DownstreamPathTemplate": "/dead",
            "DownstreamScheme": "http",
            "DownstreamHostAndPorts": [{ "Host": "127.0.0.1", "Port": dead.port() }],
            "RateLimitOptions": window,
        });
        let gw = Gateway::builder(config(vec![secured, unreachable]))
            .settings(
                "health_checks:\n  passive_down_ms: 0\nauth_providers:\n  Static:\n    keys:\n      - secret: \"a-static-hmac-secret-of-32-bytes!\"\n    validate_issuer: false\n    validate_audience: false\n",
            )
            .start()
            .await;
        let alice = [("Oc-Client", "alice")];
        // Counted, then refused by authentication: 401 with the headers.
        let r = get(&gw.url("/secured"), &alice).await;
        assert_eq!(r.status, 401);
        assert!(r.body.is_empty(), "{:?}", r.text());
        assert_eq!(r.header("X-RateLimit-Limit"), Some("5"));
        assert_eq!(r.header("X-RateLimit-Remaining"), Some("4"));
        assert!(is_round_trip_date(r.header("X-RateLimit-Reset").unwrap_or("")));
        assert_eq!(up.count(), 0);
        // Counted, then the downstream service cannot be reached: 502 with them.
        let r = get(&gw.url("/dead"), &alice).await;
        assert_eq!(r.status, 502);
        assert_eq!(r.header("X-RateLimit-Limit"), Some("5"));
        assert_eq!(r.header("X-RateLimit-Remaining"), Some("4"));
        // Not counted (no route): none.
        let r = get(&gw.url("/nowhere"), &alice).await;
        assert_eq!(r.status, 404);
        assert!(r.header("X-RateLimit-Limit").is_none());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pass_the_fourth_is_429_and_the_window_resets() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![limited(
            "/rl",
            &up,
            json!({ "Limit": 3, "Period": "3s" }),
        )]))
        .await;
        let alice = [("Oc-Client", "alice")];
        // The window starts when the gateway sees the first request: no later
        // than its response arrives here.
        let mut window_started = None;
        let mut resets = Vec::new();
        for remaining in ["2", "1", "0"] {
            let r = get(&gw.url("/rl"), &alice).await;
            window_started.get_or_insert_with(Instant::now);
            assert_eq!(r.status, 200);
            assert_eq!(r.header("X-RateLimit-Limit"), Some("3"));
            assert_eq!(r.header("X-RateLimit-Remaining"), Some(remaining));
            let reset = r.header("X-RateLimit-Reset").unwrap().to_string();
            assert!(is_round_trip_date(&reset), "{reset}");
            assert!(r.header("Retry-After").is_none());
            resets.push(reset);
        }
        assert!(
            resets.iter().all(|r| *r == resets[0]),
            "one fixed window: {resets:?}"
        );

        let r = gw.raw_get("/rl", &["Oc-Client: alice"]).await;
        assert_eq!(r.status(), Some(429), "{}", r.describe());
        assert_eq!(
            r.body_text(),
            "API calls quota exceeded! Maximum admitted 3 per 3s."
        );
        assert_eq!(r.header("content-length").as_deref(), Some("52"));
        assert_eq!(
            r.header("content-type"),
            None,
            "Ocelot sends no Content-Type"
        );
        assert_eq!(
            r.header("x-ratelimit-limit"),
            None,
            "no X-RateLimit-* when blocked"
        );
        let retry: f64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(retry > 0.0 && retry <= 3.0, "{retry}");
        assert_eq!(up.count(), 3);

        // Counters are per client.
        assert_eq!(
            get(&gw.url("/rl"), &[("Oc-Client", "bob")]).await.status,
            200
        );

        tokio::time::sleep(
            (window_started.unwrap() + Duration::from_millis(3300))
                .saturating_duration_since(Instant::now()),
        )
        .await;
        let r = get(&gw.url("/rl"), &alice).await;
        assert_eq!(r.status, 200, "a new window after the period");
        assert_eq!(r.header("X-RateLimit-Remaining"), Some("2"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitelisted_clients_pass_and_unidentified_ones_get_503() {
    bounded(async {
        let up = EchoServer::start("up");
        let options = json!({ "Limit": 1, "Period": "1m", "ClientWhitelist": ["vip"] });
        let gw = Gateway::start(config(vec![limited("/rl", &up, options)])).await;
        for _ in 0..4 {
            let r = get(&gw.url("/rl"), &[("Oc-Client", "vip")]).await;
            assert_eq!(r.status, 200);
            assert!(r.header("X-RateLimit-Limit").is_none(), "whitelisted: not counted, no headers");
        }
        let r = gw.raw_get("/rl", &["bla-bla-header: spy"]).await;
        assert_eq!(r.status(), Some(503), "{}", r.describe());
        assert_eq!(
            r.body_text(),
            "Rate limiting client could not be identified for the route '/rl' due to a missing or unknown client ID header required by rule '1/1m/w0ms'!"
        );
        assert_eq!(r.header("retry-after").as_deref(), Some("-1"));
        assert_eq!(up.count(), 4);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_options_apply_to_the_route_keys_group_with_wait() {
    bounded(async {
        let up = EchoServer::start("up");
        let grouped = with(route("/grouped", "/g", &[&up]), json!({ "Key": "R2" }));
        let free = route("/free", "/f", &[&up]);
        let cfg = json!({
            "Routes": [grouped, free],
            "GlobalConfiguration": { "RateLimitOptions": {
                "RouteKeys": ["R2"], "Limit": 2, "Period": "1m", "Wait": "1s",
                "ClientIdHeader": "X-Client", "QuotaMessage": "Exceeding!", "StatusCode": 418,
            } }
        });
        let gw = Gateway::start(cfg).await;
        let me = [("X-Client", "me")];
        for _ in 0..4 {
            assert_eq!(
                get(&gw.url("/free"), &me).await.status,
                200,
                "not in the group"
            );
        }
        assert_eq!(get(&gw.url("/grouped"), &me).await.status, 200);
        assert_eq!(get(&gw.url("/grouped"), &me).await.status, 200);
        let r = get(&gw.url("/grouped"), &me).await;
        // The wait started no later than this response arrived.
        let exceeded = Instant::now();
        assert_eq!((r.status, r.text()), (418, "Exceeding!".to_string()));
        let retry: f64 = r.header("Retry-After").unwrap().parse().unwrap();
        assert!(
            retry > 0.0 && retry <= 1.0,
            "blocked for the Wait, not the period: {retry}"
        );
        // After the wait a new window starts, though the 1 m period has not ended.
        tokio::time::sleep(
            (exceeded + Duration::from_millis(1200)).saturating_duration_since(Instant::now()),
        )
        .await;
        let r = get(&gw.url("/grouped"), &me).await;
        assert_eq!(
            (r.status, r.header("X-RateLimit-Remaining")),
            (200, Some("1"))
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_for_ocelot_23_behave_as_they_did_there() {
    bounded(async {
        let up = EchoServer::start("up");
        let old =
            json!({ "EnableRateLimiting": true, "Period": "1m", "PeriodTimespan": 2, "Limit": 2 });
        let off = json!({ "Period": "1s", "Limit": 1 });
        let cfg = config(vec![limited("/old", &up, old), limited("/off", &up, off)]);
        let gw = Gateway::builder(cfg)
            .settings("rate_limiting:\n  ocelot_compat_version: 23\n")
            .start()
            .await;

        // No client header: everyone shares the "client" bucket (no 503).
        let r = get(&gw.url("/old"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("X-Rate-Limit-Limit"),
            Some("1m"),
            "24.0 put the period in this header"
        );
        assert_eq!(r.header("X-Rate-Limit-Remaining"), Some("1"));
        assert!(is_round_trip_date(r.header("X-Rate-Limit-Reset").unwrap()));
        assert!(r.header("X-RateLimit-Limit").is_none());
        assert_eq!(
            get(&gw.url("/old"), &[])
                .await
                .header("X-Rate-Limit-Remaining"),
            Some("0")
        );
        // The ban started (at the latest) when this response arrived.
        let reached = Instant::now();
        let r = get(&gw.url("/old"), &[]).await;
        assert_eq!(
            (r.status, r.text()),
            (
                429,
                "API calls quota exceeded! maximum admitted 2 per 1m.".to_string()
            )
        );
        let retry: f64 = r.header("Retry-After").unwrap().parse().unwrap();
        assert!(retry > 0.0 && retry <= 2.0, "PeriodTimespan ban: {retry}");
        // The 24.0 default header is ClientId.
        assert_eq!(
            get(&gw.url("/old"), &[("ClientId", "alice")]).await.status,
            200
        );
        // Route-level EnableRateLimiting defaulted to false.
        for _ in 0..3 {
            let r = get(&gw.url("/off"), &[]).await;
            assert_eq!((r.status, r.header("X-Rate-Limit-Limit")), (200, None));
        }
        // The ban ends PeriodTimespan after the limit was reached, inside the period.
        tokio::time::sleep(
            (reached + Duration::from_millis(2300)).saturating_duration_since(Instant::now()),
        )
        .await;
        assert_eq!(get(&gw.url("/old"), &[]).await.status, 200);
    })
    .await
}

fn redis_settings(redis: &RedisServer, extra: &str) -> String {
    format!(
        "access_log: false\nrate_limiting:\n  redis_url: \"{}\"\n  redis_timeout_ms: 200\n  redis_retry_ms: 300\n{extra}",
        redis.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_enforce_one_limit_through_redis() {
    bounded(async {
        let redis = RedisServer::start();
        let up = EchoServer::start("up");
        let cfg = config(vec![limited(
            "/shared",
            &up,
            json!({ "Limit": 4, "Period": "1m" }),
        )]);
        let settings = redis_settings(&redis, "");
        let g1 = Gateway::builder(cfg.clone())
            .settings(&settings)
            .start()
            .await;
        let g2 = Gateway::builder(cfg).settings(&settings).start().await;
        let a = [("Oc-Client", "a")];
        for (i, gw) in [&g1, &g2, &g1, &g2].into_iter().enumerate() {
            let r = get(&gw.url("/shared"), &a).await;
            assert_eq!(r.status, 200);
            assert_eq!(
                r.header("X-RateLimit-Remaining"),
                Some((3 - i).to_string().as_str()),
                "one counter for both"
            );
        }
        for gw in [&g2, &g1] {
            let r = get(&gw.url("/shared"), &a).await;
            assert_eq!(
                (r.status, r.text()),
                (
                    429,
                    "API calls quota exceeded! Maximum admitted 4 per 1m.".to_string()
                )
            );
        }
        assert_eq!(
            get(&g2.url("/shared"), &[("Oc-Client", "b")]).await.status,
            200
        );
        assert_eq!(up.count(), 5);
    })
    .await
}

/// How Redis goes away and comes back in the outage tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// SIGKILL, then a new `redis-server` on the same port: no keys, no
    /// scripts.
    RestartedEmpty,
    /// SIGSTOP, then SIGCONT: the counters are still there, and Redis runs
    /// whatever the gateways sent it meanwhile.
    FrozenAndThawed,
}

const OUTAGE_LIMIT: usize = 10;
const OUTAGE_RETRY_MS: u64 = 1000;

/// Issue #14, item 3: two gateways share a limit of 10 through one Redis;
/// client `a` has used 3 when Redis goes away. While it is away both apply
/// the failure policy. Once it answers again, the first requests after
/// `redis_retry_ms` are counted: a burst of 40 from both gateways at once
/// lets exactly the rest of the limit through (all 10 after an empty
/// restart, 7 after a thaw, as nothing sent during the freeze counts), and
/// a new client gets exactly 10. The outage and the recovery are logged
/// once per gateway and counted in `/metrics`.
async fn redis_outage_ends_by_itself(outage: Outage, policy: &str) {
    let mut redis = RedisServer::start();
    let up = EchoServer::start("up");
    let cfg = config(vec![limited(
        "/shared",
        &up,
        json!({ "Limit": OUTAGE_LIMIT, "Period": "1m" }),
    )]);
    let settings = format!(
        "access_log: false\nrate_limiting:\n  redis_url: \"{}\"\n  redis_timeout_ms: 200\n  redis_retry_ms: {OUTAGE_RETRY_MS}\n  failure_policy: {policy}\n",
        redis.url()
    );
    let g1 = Gateway::builder(cfg.clone())
        .settings(&settings)
        .start()
        .await;
    let g2 = Gateway::builder(cfg).settings(&settings).start().await;
    let a = [("Oc-Client", "a")];
    for (i, gw) in [&g1, &g2, &g1].into_iter().enumerate() {
        let r = get(&gw.url("/shared"), &a).await;
        let remaining = (OUTAGE_LIMIT - 1 - i).to_string();
        assert_eq!(
            (r.status, r.header("X-RateLimit-Remaining")),
            (200, Some(remaining.as_str()))
        );
    }

    match outage {
        Outage::RestartedEmpty => redis.kill(),
        Outage::FrozenAndThawed => redis.freeze(),
    }
    for gw in [&g1, &g2, &g1, &g2] {
        let r = get(&gw.url("/shared"), &a).await;
        match policy {
            "open" => assert_eq!(
                (r.status, r.header("X-RateLimit-Remaining")),
                (200, None),
                "served uncounted"
            ),
            _ => assert_eq!((r.status, r.body.len()), (503, 0), "refused"),
        }
    }
    for gw in [&g1, &g2] {
        gw.wait_for_metrics(&[
            "gateway_rate_limit_redis_down 1",
            "gateway_rate_limit_redis_outages_total 1",
        ])
        .await;
    }

    match outage {
        Outage::RestartedEmpty => redis.restart(),
        Outage::FrozenAndThawed => redis.thaw(),
    }
    tokio::time::sleep(Duration::from_millis(OUTAGE_RETRY_MS + 100)).await;
    let urls = [g1.url("/shared"), g2.url("/shared")];
    let rest = match outage {
        Outage::RestartedEmpty => OUTAGE_LIMIT,
        Outage::FrozenAndThawed => OUTAGE_LIMIT - 3,
    };
    let (statuses, counted) = rate_limited_burst(&urls, "a", 2 * OUTAGE_LIMIT).await;
    assert_eq!(
        (statuses, counted),
        (
            BTreeMap::from([(200, rest), (429, 4 * OUTAGE_LIMIT - rest)]),
            rest
        ),
        "client a after {outage:?} (failure_policy: {policy})"
    );
    let (statuses, counted) = rate_limited_burst(&urls, "b", OUTAGE_LIMIT).await;
    assert_eq!(
        (statuses, counted),
        (
            BTreeMap::from([(200, OUTAGE_LIMIT), (429, OUTAGE_LIMIT)]),
            OUTAGE_LIMIT
        ),
        "a new client after {outage:?} (failure_policy: {policy})"
    );
    assert_eq!(
        up.count(),
        3 + rest + OUTAGE_LIMIT + if policy == "open" { 4 } else { 0 }
    );

    for gw in [&g1, &g2] {
        gw.wait_for_metrics(&[
            "gateway_rate_limit_redis_down 0",
            "gateway_rate_limit_redis_outages_total 1",
            "gateway_rate_limit_redis_recoveries_total 1",
        ])
        .await;
        let log = gw.stderr();
        assert_eq!(
            (
                log.matches("applying the failure policy").count(),
                log.matches("reachable again").count()
            ),
            (1, 1),
            "one line for the outage, one for the recovery:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_open_policy() {
    bounded(redis_outage_ends_by_itself(Outage::RestartedEmpty, "open")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_closed_policy() {
    bounded(redis_outage_ends_by_itself(
        Outage::RestartedEmpty,
        "closed",
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_and_thawed_open_policy() {
    bounded(redis_outage_ends_by_itself(Outage::FrozenAndThawed, "open")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_and_thawed_closed_policy() {
    bounded(redis_outage_ends_by_itself(
        Outage::FrozenAndThawed,
        "closed",
    ))
    .await
}

/// Memory bound of the rate limiter, stated in the README: with the default
/// `max_counters` (200 000 exact counters), a million distinct client ids in
/// one window raise the gateway's resident memory by less than this.
const MILLION_IDS_RSS_GROWTH_BOUND: u64 = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_distinct_client_ids_keep_memory_bounded() {
    bounded_for(Duration::from_secs(900), async {
        let up = EchoServer::start("up");
        // The route's circuit is opened first, so once rate limiting has counted
        // a request the gateway answers 503 itself: the test measures the
        // limiter, not a million proxied calls.
        let r = with(
            route("/mem", "/mem", &[&up]),
            json!({
                "RateLimitOptions": { "Limit": 5, "Period": "1h" },
                "QoSOptions": { "MinimumThroughput": 2, "BreakDuration": 3600000 },
            }),
        );
        let gw = Gateway::builder(config(vec![r]))
            .settings("access_log: false\n")
            .env("RUST_LOG", "warn")
            .start()
            .await;
        for _ in 0..2 {
            let r = get(
                &gw.url("/mem"),
                &[("Oc-Client", "opener"), ("x-echo-status", "500")],
            )
            .await;
            assert_eq!(r.status, 500);
        }
        let warm = get_for_each_id(gw.addr(), "/mem", "Oc-Client", 0..20_000, 16).await;
        assert_eq!(
            warm.keys().copied().collect::<Vec<_>>(),
            vec![503],
            "{warm:?}"
        );
        let baseline = gw.rss();

        let counts = get_for_each_id(gw.addr(), "/mem", "Oc-Client", 20_000..1_000_000, 16).await;
        assert_eq!(counts.get(&503), Some(&980_000), "{counts:?}");
        let peak = gw.peak_rss();
        let growth = peak.saturating_sub(baseline);
        eprintln!(
            "rss baseline {} MiB, peak {} MiB, growth {} MiB",
            baseline >> 20,
            peak >> 20,
            growth >> 20
        );
        assert!(
            growth < MILLION_IDS_RSS_GROWTH_BOUND,
            "resident memory grew by {} MiB",
            growth >> 20
        );
        assert!(
            peak < 4 * MILLION_IDS_RSS_GROWTH_BOUND,
            "peak resident memory {} MiB",
            peak >> 20
        );

        // Still limiting (Limit 5): a client that keeps coming gets a counter
        // and is refused within a few requests of its limit.
        for id in ["client-0", "client-999999", "newcomer"] {
            let mut statuses = Vec::new();
            while statuses.len() < 10 && statuses.last() != Some(&429) {
                statuses.push(get(&gw.url("/mem"), &[("Oc-Client", id)]).await.status);
            }
            assert_eq!(statuses.last(), Some(&429), "{id}: {statuses:?}");
        }
    })
    .await
}

/// `client_identity: ip`: two loopback addresses are two clients, whatever
/// client id header each sends; a whitelisted address is not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_counted_by_address() {
    bounded(async {
        let up = EchoServer::start("up");
        let options = json!({"Limit": 1, "Period": "1m", "PeriodTimespan": 60, "ClientWhitelist": ["127.0.0.3"]});
        let gw = Gateway::builder(config(vec![limited("/by-ip", &up, options)]))
            .settings("rate_limiting:\n  client_identity: ip\n")
            .start()
            .await;
        let one = client_from("127.0.0.1".parse().unwrap());
        let two = client_from("127.0.0.2".parse().unwrap());
        let vip = client_from("127.0.0.3".parse().unwrap());
        let url = gw.url("/by-ip");
        let status = |c: &reqwest::Client, id: &str| {
            let req = c.get(&url).header("Oc-Client", id);
            async move { send(req, &[]).await.status }
        };
        assert_eq!(status(&one, "a").await, 200);
        assert_eq!(status(&one, "b").await, 429, "a new client id is still the same address");
        assert_eq!(status(&two, "a").await, 200, "another address is another client");
        assert_eq!(status(&two, "a").await, 429);
        for _ in 0..3 {
            assert_eq!(status(&vip, "a").await, 200, "whitelists still apply");
        }
        assert_eq!(up.count(), 5);
    })
    .await
}

const HMAC_SECRET: &str = "0123456789abcdef0123456789abcdef";

fn token_for(sub: Option<&str>) -> String {
    let mut claims = json!({
        "exp": jsonwebtoken::get_current_timestamp() + 300,
        "iss": "https://issuer",
        "aud": "api",
    });
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
    )
    .unwrap();
    format!("Bearer {token}")
}

/// `client_identity_routes: {route: claim:sub}`: two tokens are two
/// clients, counted after authentication, whatever address they come from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_counted_by_a_claim_of_their_token() {
    bounded(async {
        let up = EchoServer::start("up");
        let route = with(
            limited("/by-user", &up, json!({"Limit": 1, "Period": "1m", "PeriodTimespan": 60})),
            json!({"Key": "orders", "AuthenticationOptions": {"AuthenticationProviderKey": "Bearer"}}),
        );
        let settings = format!(
            "rate_limiting:\n  client_identity_routes:\n    orders: 'claim:sub'\n\
             auth_providers:\n  Bearer:\n    keys: [{{secret: '{HMAC_SECRET}'}}]\n    issuer: https://issuer\n    audience: api\n"
        );
        let gw = Gateway::builder(config(vec![route]))
            .settings(&settings)
            .start()
            .await;
        let url = gw.url("/by-user");
        let as_user = |sub: Option<&str>, from: &str| {
            let req = client_from(from.parse().unwrap())
                .get(&url)
                .header("Authorization", token_for(sub));
            async move { send(req, &[]).await }
        };
        assert_eq!(as_user(Some("alice"), "127.0.0.1").await.status, 200);
        assert_eq!(
            as_user(Some("alice"), "127.0.0.2").await.status,
            429,
            "another address, the same user"
        );
        assert_eq!(as_user(Some("bob"), "127.0.0.1").await.status, 200);
        assert_eq!(
            get(&url, &[]).await.status,
            401,
            "authentication comes before the count"
        );
        let nameless = as_user(None, "127.0.0.1").await;
        assert_eq!(nameless.status, 503, "{}", nameless.text());
        assert!(nameless.text().contains("missing claim 'sub'"), "{}", nameless.text());
        assert_eq!(up.count(), 2);
    })
    .await
}
