//! Aggregates: Ocelot's simple aggregator byte for byte, its
//! error behaviour, `RouteKeysConfig` fan-out, named aggregators and
//! abp-next-admin's `AbpResponseMergeAggregator`, against the real binary.

use std::time::{Duration, Instant};

use e2e::json_upstream::JsonServer;
use e2e::{bounded, closed_addr, get, route, with, workspace_root, EchoServer, Gateway};
use serde_json::{json, Value};

/// A route `up` → `down` on `server`, with a `Key`.
fn keyed(key: &str, up: &str, down: &str, server: &JsonServer) -> Value {
    json!({
        "Key": key,
        "UpstreamPathTemplate": up,
        "UpstreamHttpMethod": ["Get"],
        "DownstreamPathTemplate": down,
        "DownstreamScheme": "http",
        "DownstreamHostAndPorts": [server.host_and_port()],
    })
}

fn aggregate(up: &str, keys: &[&str]) -> Value {
    json!({ "UpstreamPathTemplate": up, "RouteKeys": keys })
}

fn ocelot(routes: Vec<Value>, aggregates: Vec<Value>) -> Value {
    json!({ "Routes": routes, "Aggregates": aggregates, "GlobalConfiguration": {} })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_aggregate_is_ocelots_exact_json() {
    bounded(async {
        let tom = JsonServer::start();
        tom.serve("/tom", 200, r#"{"Age": 19}"#);
        let laura = JsonServer::start();
        laura.serve("/laura", 200, r#"{"Age": 25}"#);
        let gw = Gateway::start(ocelot(
            vec![
                keyed("Laura", "/laura", "/laura", &laura),
                keyed("Tom", "/tom", "/tom", &tom),
                keyed("Nobody", "/nobody", "/missing", &laura),
            ],
            vec![
                aggregate("/", &["Tom", "Laura"]),
                aggregate("/with-404", &["Nobody", "Tom"]),
            ],
        ))
        .await;

        let r = get(&gw.url("/"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), r#"{"Tom":{"Age": 19},"Laura":{"Age": 25}}"#);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("content-length"), Some("39"));
        // Downstream headers are not forwarded.
        assert_eq!(r.headers.get("content-type").into_iter().count(), 1);

        // A 404 with an empty body is inserted as it is (not valid JSON, as in
        // Ocelot), and the aggregate still answers 200.
        let r = get(&gw.url("/with-404"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), r#"{"Nobody":,"Tom":{"Age": 19}}"#);
        assert_eq!(laura.seen(), vec!["/laura", "/missing"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_requests_run_in_parallel_with_the_aggregates_placeholders() {
    bounded(async {
        let svc = JsonServer::start();
        let delay = Duration::from_millis(700);
        svc.serve_after("/api/a", 200, "1", delay)
            .serve_after("/api/b", 200, "2", delay)
            .serve_after("/api/c", 200, "3", delay);
        let gw = Gateway::start(ocelot(
            vec![
                keyed("a", "/a/{userid}", "/api/a?MailId={userid}", &svc),
                keyed("b", "/b/{userid}", "/api/b?MailId={userid}", &svc),
                keyed("c", "/c/{userid}", "/api/c?MailId={userid}", &svc),
            ],
            // Ocelot issue 597: the aggregate's placeholders fill the routes'.
            vec![aggregate("/EmpDetail/US/{userid}", &["a", "b", "c"])],
        ))
        .await;

        let started = Instant::now();
        let r = get(&gw.url("/EmpDetail/US/7"), &[]).await;
        let took = started.elapsed();
        assert_eq!(r.text(), r#"{"a":1,"b":2,"c":3}"#);
        assert!(
            took < delay * 2,
            "three {delay:?} calls took {took:?}: not in parallel"
        );
        let mut seen = svc.seen();
        seen.sort();
        assert_eq!(
            seen,
            vec!["/api/a?MailId=7", "/api/b?MailId=7", "/api/c?MailId=7"]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ocelot_error_of_one_route_is_the_whole_response() {
    bounded(async {
        let svc = JsonServer::start();
        svc.serve("/ok", 200, r#"{"ok":true}"#)
            .serve("/boom", 500, r#"{"error":"boom"}"#);
        let dead = closed_addr();
        let unreachable = json!({
            "Key": "dead",
            "UpstreamPathTemplate": "/dead",
            "DownstreamPathTemplate": "/",
            "DownstreamScheme": "http",
            "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": dead.port()}],
        });
        let gw = Gateway::start(ocelot(
            vec![
                keyed("ok", "/ok", "/ok", &svc),
                keyed("boom", "/boom", "/boom", &svc),
                unreachable,
            ],
            vec![
                aggregate("/fails", &["ok", "dead"]),
                aggregate("/service-error", &["ok", "boom"]),
            ],
        ))
        .await;

        // Unreachable: Ocelot's 502, empty, for the whole aggregate.
        let r = get(&gw.url("/fails"), &[]).await;
        assert_eq!(r.status, 502);
        assert!(r.body.is_empty(), "{:?}", r.text());

        // A service's own 500 is not an Ocelot error: inserted verbatim.
        let r = get(&gw.url("/service-error"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), r#"{"ok":{"ok":true},"boom":{"error":"boom"}}"#);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_keys_config_fans_out_over_the_json_path() {
    bounded(async {
        let comments = JsonServer::start();
        comments.serve("/comments", 200, r#"[{"id":1,"userId":1},{"id":2,"userId":2},{"id":3,"userId":1}]"#);
        let users = JsonServer::start();
        users
            .serve("/users/1", 200, r#"{"id":1,"name":"User-1"}"#)
            .serve("/users/2", 200, r#"{"id":2,"name":"User-2"}"#);
        let posts = JsonServer::start();
        posts.serve("/posts/2", 200, r#"{"id":2,"title":"post2"}"#);
        comments.serve("/single", 200, r#"[{"postId":2},{"postId":2}]"#);
        let mut fan_out = aggregate("/aggregatecommentuser", &["comments", "user"]);
        fan_out["RouteKeysConfig"] = json!([{"RouteKey": "user", "JsonPath": "$[*].userId", "Parameter": "id"}]);
        let mut single = aggregate("/single", &["single", "post"]);
        single["RouteKeysConfig"] = json!([{"RouteKey": "post", "JsonPath": "$[*].postId", "Parameter": "postId"}]);
        let gw = Gateway::start(ocelot(
            vec![
                keyed("comments", "/comments", "/comments", &comments),
                keyed("user", "/users/{id}", "/users/{id}", &users),
                keyed("single", "/single-src", "/single", &comments),
                keyed("post", "/posts/{postId}", "/posts/{postId}", &posts),
            ],
            vec![fan_out, single],
        ))
        .await;

        // Ocelot's acceptance test (issue 2248): one call per distinct value,
        // the answers as an array under the route's key.
        let r = get(&gw.url("/aggregatecommentuser"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.text(),
            r#"{"comments":[{"id":1,"userId":1},{"id":2,"userId":2},{"id":3,"userId":1}],"user":[{"id":1,"name":"User-1"},{"id":2,"name":"User-2"}]}"#
        );
        let mut seen = users.seen();
        seen.sort();
        assert_eq!(seen, vec!["/users/1", "/users/2"]);

        // One distinct value: the plain body, no array.
        let r = get(&gw.url("/single"), &[]).await;
        assert_eq!(r.text(), r#"{"single":[{"postId":2},{"postId":2}],"post":{"id":2,"title":"post2"}}"#);
        assert_eq!(posts.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_aggregators_and_single_key_aggregates() {
    bounded(async {
        let svc = JsonServer::start();
        svc.serve("/a", 200, r#"{"a":1}"#).serve("/b", 200, r#"{"b":2}"#);
        let dead = closed_addr();
        let dead2 = closed_addr();
        let mut unknown = aggregate("/unknown", &["a", "b"]);
        unknown["Aggregator"] = json!("MyAggregator");
        let mut renamed = aggregate("/renamed", &["a", "b"]);
        renamed["Aggregator"] = json!("Concat");
        let mut lenient = aggregate("/lenient", &["a", "dead", "b"]);
        lenient["Aggregator"] = json!("Lenient");
        // Another dead backend: the first one is passively out (503) by then.
        let mut strict = aggregate("/strict", &["a", "dead2", "b"]);
        strict["Aggregator"] = json!("AbpResponseMergeAggregator");
        let mut one = aggregate("/one", &["a"]);
        one["Aggregator"] = json!("AbpResponseMergeAggregator");
        let gw = Gateway::builder(ocelot(
            vec![
                keyed("a", "/ra", "/a", &svc),
                keyed("b", "/rb", "/b", &svc),
                json!({"Key": "dead", "UpstreamPathTemplate": "/rdead", "DownstreamPathTemplate": "/",
                       "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": dead.port()}]}),
                json!({"Key": "dead2", "UpstreamPathTemplate": "/rdead2", "DownstreamPathTemplate": "/",
                       "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": dead2.port()}]}),
            ],
            vec![unknown, renamed, lenient, strict, one],
        ))
        .settings("aggregators:\n  Concat: {kind: simple}\n  Lenient: {kind: abp_merge, ignore_errors: true}\n")
        .start()
        .await;

        // An aggregator nobody registered: Ocelot's CouldNotFindAggregatorError → 404.
        let before = svc.count();
        let r = get(&gw.url("/unknown"), &[]).await;
        assert_eq!((r.status, r.body.len()), (404, 0));
        assert_eq!(svc.count(), before, "no sub-request for an unknown aggregator");

        assert_eq!(get(&gw.url("/renamed"), &[]).await.text(), r#"{"a":{"a":1},"b":{"b":2}}"#);

        let r = get(&gw.url("/lenient"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), json!({"a": 1, "b": 2}));

        // abp's aggregator answers the first error unless told to ignore errors.
        let r = get(&gw.url("/strict"), &[]).await;
        assert_eq!(r.status, 502);
        assert_eq!(r.header("content-type"), Some("application/json"));

        // One route key: Ocelot proxies the route itself, nothing is aggregated.
        let r = get(&gw.url("/one"), &[]).await;
        assert_eq!((r.status, r.text().as_str()), (200, r#"{"a":1}"#));
    })
    .await
}

/// What each abp service answers at `/api/abp/application-configuration`.
fn abp_configuration(service: &str, policy: &str, language: &str) -> String {
    json!({
        "localization": {
            "values": { service: { "Welcome": format!("Welcome to {service}") } },
            "languages": [{"cultureName": "en", "displayName": "English"}, {"cultureName": language, "displayName": language}],
            "currentCulture": {"name": "en"}
        },
        "auth": { "grantedPolicies": { policy: true } },
        "setting": { "values": { format!("{service}.Enabled"): "true" } },
        "currentUser": { "isAuthenticated": false, "id": null },
        "features": { "values": {} },
        "multiTenancy": { "isEnabled": true },
        "extraProperties": {}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abp_application_configuration_is_merged_from_three_services() {
    bounded(async {
        let services: Vec<(&str, &str, &str)> = vec![
            ("Platform", "Platform.Menus", "zh-Hans"),
            ("BackendAdmin", "AbpIdentity.Users", "en"),
            ("Messages", "Notifications.Send", "zh-Hans"),
        ];
        let servers: Vec<JsonServer> = services
            .iter()
            .map(|(name, policy, lang)| {
                let s = JsonServer::start();
                s.serve("/api/abp/application-configuration", 200, &abp_configuration(name, policy, lang));
                s
            })
            .collect();
        // The shape of abp-next-admin's gateway: one route per service, keyed,
        // and the aggregate naming its .NET aggregator.
        let routes = services
            .iter()
            .zip(&servers)
            .map(|((name, _, _), server)| {
                let key = format!("{}-configuration", name.to_lowercase());
                keyed(&key, &format!("/api/abp/{}/application-configuration", name.to_lowercase()), "/api/abp/application-configuration", server)
            })
            .collect();
        let gw = Gateway::start(ocelot(
            routes,
            vec![json!({
                "UpstreamPathTemplate": "/api/abp/application-configuration",
                "RouteKeys": ["platform-configuration", "backendadmin-configuration", "messages-configuration"],
                "Aggregator": "AbpResponseMergeAggregator",
                "UpstreamHttpMethod": ["Get"],
                "Priority": 99
            })],
        ))
        .await;

        let r = get(&gw.url("/api/abp/application-configuration"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let merged: Value = serde_json::from_slice(&r.body).expect("JSON");
        assert_eq!(
            merged,
            json!({
                "localization": {
                    "values": {
                        "Platform": {"Welcome": "Welcome to Platform"},
                        "BackendAdmin": {"Welcome": "Welcome to BackendAdmin"},
                        "Messages": {"Welcome": "Welcome to Messages"}
                    },
                    // Arrays are merged as a union: English once.
                    "languages": [
                        {"cultureName": "en", "displayName": "English"},
                        {"cultureName": "zh-Hans", "displayName": "zh-Hans"},
                        {"cultureName": "en", "displayName": "en"}
                    ],
                    "currentCulture": {"name": "en"}
                },
                "auth": {"grantedPolicies": {"Platform.Menus": true, "AbpIdentity.Users": true, "Notifications.Send": true}},
                "setting": {"values": {"Platform.Enabled": "true", "BackendAdmin.Enabled": "true", "Messages.Enabled": "true"}},
                "currentUser": {"isAuthenticated": false, "id": null},
                "features": {"values": {}},
                "multiTenancy": {"isEnabled": true},
                "extraProperties": {}
            })
        );
        for s in &servers {
            assert_eq!(s.seen(), vec!["/api/abp/application-configuration"]);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_abp_corpus_configuration_serves_its_five_aggregates() {
    bounded(async {
        let path =
            workspace_root().join("tests/fixtures/ocelot-corpus/abp-next-admin/merged/ocelot.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut config: Value = serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap();
        // Every service port of the file gets a local upstream; nothing else changes.
        let mut servers: Vec<(i64, JsonServer)> = Vec::new();
        for route in config["Routes"].as_array_mut().unwrap() {
            for hp in route["DownstreamHostAndPorts"].as_array_mut().unwrap() {
                let port = hp["Port"].as_i64().unwrap();
                if !servers.iter().any(|(p, _)| *p == port) {
                    let s = JsonServer::start();
                    let name = format!("svc{port}");
                    s.serve(
                        "/api/abp/application-configuration",
                        200,
                        &abp_configuration(&name, &format!("{name}.Policy"), "en"),
                    );
                    s.serve(
                        "/api/abp/api-definition",
                        200,
                        &json!({"modules": {name.clone(): {"rootPath": name}}, "types": {}})
                            .to_string(),
                    );
                    for kind in [
                        "settings",
                        "wechat",
                        "tencent-cloud",
                        "aliyun",
                        "oss-management",
                    ] {
                        for scope in ["by-global", "by-current-tenant", "by-current-user"] {
                            let body =
                                json!({"items": [{"name": format!("{kind}/{scope}@{port}")}]})
                                    .to_string();
                            s.serve(
                                &format!("/api/setting-management/{kind}/{scope}"),
                                200,
                                &body,
                            );
                        }
                    }
                    servers.push((port, s));
                }
                let (_, s) = servers.iter().find(|(p, _)| *p == port).unwrap();
                hp["Port"] = s.host_and_port()["Port"].clone();
            }
        }
        let gw = Gateway::start(config).await;
        // The settings routes are rate limited per client (ClientId header).
        let client = [("ClientId", "e2e"), ("Oc-Client", "e2e")];

        let r = get(&gw.url("/api/abp/application-configuration"), &client).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v["localization"]["values"].as_object().unwrap().len(),
            6,
            "six services merged: {v}"
        );

        let r = get(&gw.url("/api/abp/api-definition"), &client).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["modules"].as_object().unwrap().len(), 7, "{v}");

        for scope in ["by-global", "by-current-tenant"] {
            let r = get(
                &gw.url(&format!("/api/setting-management/settings/{scope}")),
                &client,
            )
            .await;
            assert_eq!(r.status, 200, "{scope}: {}", r.text());
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["items"].as_array().unwrap().len(), 5, "{scope}: {v}");
        }
        // A single route key: the route's own response, unmerged.
        let r = get(
            &gw.url("/api/setting-management/settings/by-current-user"),
            &client,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            serde_json::from_slice::<Value>(&r.body).unwrap()["items"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_have_their_own_metrics_and_access_log_name() {
    bounded(async {
        let tom = JsonServer::start();
        tom.serve("/tom", 200, r#"{"Age": 19}"#);
        let gw = Gateway::builder(ocelot(
            vec![
                keyed("Tom", "/tom", "/tom", &tom),
                keyed("Tim", "/tim", "/tom", &tom),
            ],
            vec![aggregate("/family", &["Tom", "Tim"])],
        ))
        .settings("access_log: true\naccess_log_flush_ms: 50\n")
        .start()
        .await;
        for _ in 0..2 {
            assert_eq!(get(&gw.url("/family"), &[]).await.status, 200);
        }
        // Metrics are recorded after the response has gone out: poll.
        gw.wait_for_metrics(&[
            "gateway_requests_total{method=\"GET\",route=\"/family\",status_class=\"2xx\"} 2",
            "gateway_request_duration_seconds_count{route=\"/family\"} 2",
        ])
        .await;
        let lines = gw.wait_for_access_log("/family", 1).await;
        assert_eq!(lines[0]["route"], "/family", "{}", lines[0]);
        assert_eq!(lines[0]["status"], 200, "{}", lines[0]);
    })
    .await
}

/// A route refused by `SecurityOptions`, asked for directly and as part of
/// an aggregate: the same answer, the same count, the same log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_sub_requests_are_refused_like_direct_requests() {
    bounded(async {
        let open_svc = EchoServer::start("open");
        let closed_svc = EchoServer::start("closed");
        let closed = with(
            route("/closed", "/closed", &[&closed_svc]),
            json!({
                "Key": "closed",
                "SecurityOptions": { "IPBlockedList": ["127.0.0.1"] },
            }),
        );
        let open = with(
            route("/open", "/open", &[&open_svc]),
            json!({"Key": "open"}),
        );
        let gw = Gateway::builder(json!({
            "Routes": [closed, open],
            "Aggregates": [{ "UpstreamPathTemplate": "/both", "RouteKeys": ["open", "closed"] }],
            "GlobalConfiguration": {},
        }))
        .settings("access_log: true\naccess_log_flush_ms: 50\n")
        .start()
        .await;

        let direct = get(&gw.url("/closed"), &[]).await;
        assert_eq!((direct.status, direct.text().as_str()), (403, ""));
        let aggregate = get(&gw.url("/both"), &[]).await;
        assert_eq!(
            (aggregate.status, aggregate.text().as_str()),
            (403, ""),
            "Ocelot's aggregate answers its first error"
        );
        assert_eq!(
            closed_svc.count(),
            0,
            "a denied client never reaches the service"
        );

        gw.wait_for_metrics(&[
            "gateway_refused_requests_total{reason=\"ip_denied\",route=\"/closed\"} 2",
        ])
        .await;
        let denials = gw
            .stderr()
            .lines()
            .filter(|l| l.contains("route /closed: client IP denied by SecurityOptions"))
            .count();
        assert_eq!(denials, 2, "one log line each:\n{}", gw.stderr());
        let direct_line = gw.wait_for_access_log("/closed", 1).await;
        assert_eq!(direct_line[0]["refusal"], "ip_denied");
        assert_eq!(direct_line[0]["status"], 403);
        let aggregate_line = gw.wait_for_access_log("/both", 1).await;
        assert_eq!(aggregate_line[0]["status"], 403);
        assert_eq!(aggregate_line[0]["route"], "/both");
    })
    .await
}

/// A sub-request meets the route's open circuit breaker as a direct request
/// does: Ocelot's QoS answer, counted as a breaker rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_sub_requests_meet_the_same_circuit_breaker() {
    bounded(async {
        let ok_svc = EchoServer::start("ok");
        let fragile_svc = EchoServer::start("fragile");
        let fragile = with(
            route("/fragile", "/fragile", &[&fragile_svc]),
            json!({
                "Key": "fragile",
                "QoSOptions": { "MinimumThroughput": 2, "BreakDuration": 60000 },
            }),
        );
        let ok = with(route("/ok", "/ok", &[&ok_svc]), json!({"Key": "ok"}));
        let gw = Gateway::start(json!({
            "Routes": [fragile, ok],
            "Aggregates": [{ "UpstreamPathTemplate": "/both", "RouteKeys": ["ok", "fragile"] }],
            "GlobalConfiguration": {},
        }))
        .await;
        // Two failures open the circuit.
        for _ in 0..2 {
            let failed = get(&gw.url("/fragile"), &[("x-echo-status", "500")]).await;
            assert_eq!(failed.status, 500);
        }
        let direct = get(&gw.url("/fragile"), &[]).await;
        assert_eq!(direct.status, 503);
        assert_eq!(
            direct.text(),
            "Circuit breaker is open for route -> /fragile"
        );
        // In an aggregate the breaker's answer is a response, as Ocelot's
        // QoS handler gives one: the simple aggregator inserts its body.
        let aggregate = get(&gw.url("/both"), &[]).await;
        assert_eq!(aggregate.status, 200, "{}", aggregate.text());
        assert!(
            aggregate
                .text()
                .contains(r#""fragile":Circuit breaker is open for route -> /fragile"#),
            "{}",
            aggregate.text()
        );
        gw.wait_for_metrics(&[
            "gateway_breaker_rejected_total{route=\"/fragile\"} 2",
            "gateway_refused_requests_total{reason=\"breaker_open\",route=\"/fragile\"} 2",
        ])
        .await;
    })
    .await
}
