//! Service discovery (Ocelot's ServiceDiscovery
//! acceptance tests): routes with a `ServiceName` take their instances from
//! Kubernetes, Consul, Eureka or DNS and follow them as they appear, change
//! and disappear, without a restart; an unreachable registry leaves the last
//! good list serving; dynamic routing sends `/{service}/{rest}` to a service.
//! The registries are the test servers of `e2e::registries` and a real
//! dnsmasq (`e2e::dns`), speaking each project's real API.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use e2e::dns::Dnsmasq;
use e2e::load::{last_all_from, servers, summary, Load, Outcome};
use e2e::registries::{ConsulInstance, EurekaInstance, FakeConsul, FakeEureka, FakeKube, Pod};
use e2e::{bounded, client, eventually_ok, free_port, get, EchoServer, Gateway, Reply};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Which servers answer `n` requests to `path`, all of which must be 200.
async fn who_answers(gw: &Gateway, path: &str, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let r = get(&gw.url(path), &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        seen.insert(r.seen().server);
    }
    seen
}

/// Polls `path` until a round of requests is answered (200) by exactly
/// the `expected` servers.
async fn eventually_answered_by(gw: &Gateway, path: &str, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    eventually_ok(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            let mut seen = BTreeSet::new();
            for _ in 0..2 * expected.len().max(2) {
                let r = get(&gw.url(path), &[]).await;
                seen.insert(if r.status == 200 {
                    r.seen().server
                } else {
                    format!("status {}", r.status)
                });
            }
            if seen == expected {
                Ok(())
            } else {
                Err(format!(
                    "{path}: still answered by {seen:?}, expected {expected:?}"
                ))
            }
        },
    )
    .await
}

async fn eventually_status(gw: &Gateway, path: &str, status: u16) {
    eventually_ok(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            let r = get(&gw.url(path), &[]).await;
            if r.status == status {
                Ok(())
            } else {
                Err(format!(
                    "{path}: still {} ({}), expected {status}",
                    r.status,
                    r.text()
                ))
            }
        },
    )
    .await
}

fn kube_route(extra: Value) -> Value {
    let mut route = json!({
        "UpstreamPathTemplate": "/orders/{everything}",
        "DownstreamPathTemplate": "/api/{everything}",
        "DownstreamScheme": "http",
        "ServiceName": "orders",
        "LoadBalancerOptions": {"Type": "RoundRobin"}
    });
    for (k, v) in extra.as_object().unwrap() {
        route[k] = v.clone();
    }
    route
}

async fn kube_gateway(
    kube: &FakeKube,
    provider: Value,
    routes: Vec<Value>,
    extra_settings: &str,
) -> Gateway {
    let cfg =
        json!({"Routes": routes, "GlobalConfiguration": {"ServiceDiscoveryProvider": provider}});
    Gateway::builder(cfg)
        .settings(&kube.settings(extra_settings, 200))
        .file("kube-token", kube.token())
        .file("kube-ca.pem", kube.ca_pem())
        .start()
        .await
}

/// The scenario: a service scaled 1 → 3 → 1 while traffic flows.
/// Requests reach all three instances while scaled up, only the remaining one
/// after the scale-down, and none fails: the service never has zero
/// instances, so Ocelot would never answer ServicesAreEmpty either.
async fn scale_one_three_one(provider_type: &str, extra_settings: &str) -> (FakeKube, Gateway) {
    let kube = FakeKube::start();
    let a = EchoServer::start("a");
    let b = EchoServer::start("b");
    let c = EchoServer::start("c");
    kube.set_pods("shop", "orders", &[Pod::at(a.addr())]);
    let gw = kube_gateway(
        &kube,
        json!({"Type": provider_type, "Namespace": "shop", "PollingInterval": 200}),
        vec![kube_route(json!({}))],
        extra_settings,
    )
    .await;

    let load = Load::to(&gw.url("/orders/items?page=2"), 2, Duration::from_millis(5));
    let mark = load
        .wait(0, "traffic to a", |o| {
            servers(o).contains("a") && o.len() >= 20
        })
        .await;
    assert_eq!(servers(&load.since(0)), BTreeSet::from(["a".to_string()]));

    // Scale up: two more pods become ready.
    kube.set_pods(
        "shop",
        "orders",
        &[Pod::at(a.addr()), Pod::at(b.addr()), Pod::at(c.addr())],
    );
    let mark = load
        .wait(mark, "all three instances", |o| servers(o).len() == 3)
        .await;
    // Round robin over three: any 30 consecutive requests reach every one.
    let up = load.wait(mark, "30 more requests", |o| o.len() >= 30).await;
    let window = load.since(mark);
    assert_eq!(
        servers(&window[..30]).len(),
        3,
        "not balanced over three: {:?}",
        summary(&window)
    );

    // Scale down: the endpoints controller drops b and c first...
    kube.set_pods("shop", "orders", &[Pod::at(a.addr())]);
    let down = load
        .wait(up, "only a again", |o| last_all_from(o, 30, "a"))
        .await;
    // ...then the pods stop.
    drop(b);
    drop(c);
    let end = load
        .wait(down, "traffic after the scale-down", |o| o.len() >= 40)
        .await;
    let after = load.since(down);
    assert!(
        after.iter().all(|o| o.server.as_deref() == Some("a")),
        "after scale-down: {:?}",
        summary(&after)
    );

    let all = load.finish().await;
    assert!(all.len() >= end);
    let failed: Vec<&Outcome> = all.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        all.len(),
        summary(&all)
    );
    // The downstream path was built as for any route.
    assert!(a
        .requests()
        .iter()
        .all(|s| s.target() == "/api/items?page=2"));
    (kube, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_scales_a_service_from_one_to_three_and_back_under_traffic() {
    bounded(async {
        let (kube, _gw) = scale_one_three_one("Kube", "").await;
        assert_eq!(kube.unauthorized(), 0, "the token was not sent");
        assert!(
            kube.requests()
                .iter()
                .any(|r| r.starts_with("GET /api/v1/namespaces/shop/endpoints/orders")),
            "{:?}",
            kube.requests()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_kube_follows_the_watch_stream_while_scaling() {
    bounded(async {
        let (kube, _gw) = scale_one_three_one("WatchKube", "").await;
        let requests = kube.requests();
        let watches = requests.iter().filter(|r| r.contains("watch=true")).count();
        let lists = requests
            .iter()
            .filter(|r| !r.contains("watch=true"))
            .count();
        assert!(watches >= 1, "no watch: {requests:?}");
        // One list, then the stream: no polling.
        assert!(lists <= 2, "WatchKube polled: {requests:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_kube_with_endpoint_slices_scales_too() {
    bounded(async {
        let (kube, _gw) = scale_one_three_one("PollKube", "    endpoint_slices: true\n").await;
        assert!(
            kube.requests()
                .iter()
                .any(|r| r.contains("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices")),
            "{:?}",
            kube.requests()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_unreachable_keeps_the_last_good_list() {
    bounded(async {
        let mut kube = FakeKube::start();
        let a = EchoServer::start("a");
        let b = EchoServer::start("b");
        let c = EchoServer::start("c");
        kube.set_pods("shop", "orders", &[Pod::at(a.addr()), Pod::at(b.addr())]);
        let gw = kube_gateway(
            &kube,
            json!({"Type": "PollKube", "Namespace": "shop", "PollingInterval": 200}),
            vec![kube_route(json!({}))],
            "",
        )
        .await;
        eventually_answered_by(&gw, "/orders/x", &["a", "b"]).await;

        // The API server goes away for a while: several polls fail.
        kube.stop();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            who_answers(&gw, "/orders/x", 10).await,
            BTreeSet::from(["a".to_string(), "b".to_string()])
        );
        assert!(
            gw.stderr().contains("keeping its last 2 instance(s)"),
            "{}",
            gw.stderr()
        );

        // It comes back with the service moved to c.
        kube.set_pods("shop", "orders", &[Pod::at(c.addr())]);
        kube.restart();
        eventually_answered_by(&gw, "/orders/x", &["c"]).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_kube_resumes_after_the_api_server_restarts() {
    bounded(async {
        let mut kube = FakeKube::start();
        let a = EchoServer::start("a");
        let b = EchoServer::start("b");
        kube.set_pods("shop", "orders", &[Pod::at(a.addr())]);
        let gw = kube_gateway(
            &kube,
            json!({"Type": "WatchKube", "Namespace": "shop"}),
            vec![kube_route(json!({}))],
            "",
        )
        .await;
        eventually_answered_by(&gw, "/orders/x", &["a"]).await;
        kube.stop();
        // Changed while the gateway cannot see: the watch resumes from its
        // last resourceVersion and gets the change from the history.
        kube.set_pods("shop", "orders", &[Pod::at(a.addr()), Pod::at(b.addr())]);
        assert_eq!(
            who_answers(&gw, "/orders/x", 4).await,
            BTreeSet::from(["a".to_string()])
        );
        kube.restart();
        eventually_answered_by(&gw, "/orders/x", &["a", "b"]).await;
        let resumed = kube
            .requests()
            .iter()
            .filter(|r| r.contains("watch=true") && r.contains("resourceVersion="))
            .count();
        assert!(resumed >= 1, "{:?}", kube.requests());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_service_without_ready_pods_answers_404() {
    bounded(async {
        let kube = FakeKube::start();
        let a = EchoServer::start("a");
        // A pod that is not ready is no instance.
        kube.set_pods("shop", "orders", &[Pod::at(a.addr()).not_ready()]);
        let gw = kube_gateway(
            &kube,
            json!({"Type": "Kube", "Namespace": "shop"}),
            vec![kube_route(json!({}))],
            "",
        )
        .await;
        let r = get(&gw.url("/orders/x"), &[]).await;
        assert_eq!(r.status, 404, "ServicesAreEmpty: {}", r.text());
        assert!(r.body.is_empty());
        assert_eq!(a.count(), 0);

        kube.set_pods("shop", "orders", &[Pod::at(a.addr())]);
        eventually_answered_by(&gw, "/orders/x", &["a"]).await;

        // The Service is deleted: Ocelot answers 404 again.
        kube.delete("shop", "orders");
        eventually_status(&gw, "/orders/x", 404).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_route_service_namespace_overrides_the_global_one() {
    bounded(async {
        let kube = FakeKube::start();
        let (a, b) = (EchoServer::start("a"), EchoServer::start("b"));
        kube.set_pods("shop", "orders", &[Pod::at(a.addr())]);
        kube.set_pods("payments", "orders", &[Pod::at(b.addr())]);
        let routes = vec![
            kube_route(json!({})),
            kube_route(json!({"UpstreamPathTemplate": "/pay/{everything}", "ServiceNamespace": "payments"})),
        ];
        let gw = kube_gateway(&kube, json!({"Type": "Kube", "Namespace": "shop"}), routes, "").await;
        assert_eq!(who_answers(&gw, "/orders/x", 3).await, BTreeSet::from(["a".to_string()]));
        assert_eq!(who_answers(&gw, "/pay/x", 3).await, BTreeSet::from(["b".to_string()]));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_serves_passing_instances_with_the_acl_token() {
    bounded(async {
        let consul = FakeConsul::start(Some("s3cret"));
        let (a, b, c) = (EchoServer::start("a"), EchoServer::start("b"), EchoServer::start("c"));
        let mut failing = ConsulInstance::new("c", "localhost", c.addr());
        failing.passing = false;
        // Ocelot sends requests to the node name ("localhost" here).
        consul.set(
            "orders",
            vec![ConsulInstance::new("a", "localhost", a.addr()), ConsulInstance::new("b", "localhost", b.addr()), failing.clone()],
        );
        let cfg = json!({
            "Routes": [{
                "UpstreamPathTemplate": "/orders/{everything}", "DownstreamPathTemplate": "/{everything}",
                "DownstreamScheme": "http", "ServiceName": "orders", "LoadBalancerOptions": {"Type": "RoundRobin"}
            }],
            "GlobalConfiguration": {"ServiceDiscoveryProvider": {
                "Scheme": "http", "Host": "127.0.0.1", "Port": consul.port(), "Type": "PollConsul", "Token": "s3cret", "PollingInterval": 200
            }}
        });
        let gw = Gateway::start(cfg).await;
        eventually_answered_by(&gw, "/orders/x", &["a", "b"]).await;
        let seen = a.requests();
        assert_eq!(seen[0].header("host"), Some(format!("localhost:{}", a.port()).as_str()));
        let requests = consul.requests();
        assert!(requests.iter().all(|(uri, token)| uri.starts_with("/v1/health/service/orders?passing") && token.as_deref() == Some("s3cret")), "{requests:?}");

        // c's checks pass again: it joins.
        failing.passing = true;
        consul.set("orders", vec![ConsulInstance::new("a", "localhost", a.addr()), ConsulInstance::new("b", "localhost", b.addr()), failing]);
        eventually_answered_by(&gw, "/orders/x", &["a", "b", "c"]).await;
        // And everything deregistered: ServicesAreEmpty.
        consul.set("orders", vec![]);
        eventually_status(&gw, "/orders/x", 404).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_unreachable_keeps_the_last_good_list_and_service_address_setting() {
    bounded(async {
        let mut consul = FakeConsul::start(None);
        let (a, b) = (EchoServer::start("a"), EchoServer::start("b"));
        // Node names that resolve nowhere: Ocelot's builder would use them;
        // `use_service_address` takes the registered address instead.
        consul.set(
            "orders",
            vec![ConsulInstance::new("a", "node-a.invalid", a.addr()), ConsulInstance::new("b", "node-b.invalid", b.addr())],
        );
        let cfg = json!({
            "Routes": [{
                "UpstreamPathTemplate": "/orders/{everything}", "DownstreamPathTemplate": "/{everything}",
                "DownstreamScheme": "http", "ServiceName": "orders", "LoadBalancerOptions": {"Type": "RoundRobin"}
            }],
            "GlobalConfiguration": {"ServiceDiscoveryProvider": {"Host": "127.0.0.1", "Port": consul.port(), "Type": "Consul"}}
        });
        let gw = Gateway::builder(cfg)
            .settings("discovery:\n  poll_interval_ms: 200\n  consul:\n    use_service_address: true\n")
            .start()
            .await;
        eventually_answered_by(&gw, "/orders/x", &["a", "b"]).await;
        assert_eq!(a.requests()[0].header("host"), Some(a.addr().to_string().as_str()));

        consul.stop();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(who_answers(&gw, "/orders/x", 8).await, BTreeSet::from(["a".to_string(), "b".to_string()]));
        consul.set("orders", vec![ConsulInstance::new("b", "node-b.invalid", b.addr())]);
        consul.restart();
        eventually_answered_by(&gw, "/orders/x", &["b"]).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eureka_serves_up_instances() {
    bounded(async {
        let eureka = FakeEureka::start();
        let (a, b) = (EchoServer::start("a"), EchoServer::start("b"));
        let mut down = EurekaInstance::up("localhost", b.addr());
        down.status = "DOWN".into();
        eureka.set("orders", vec![EurekaInstance::up("localhost", a.addr()), down.clone()]);
        let cfg = json!({
            "Routes": [{
                "UpstreamPathTemplate": "/orders/{everything}", "DownstreamPathTemplate": "/{everything}",
                "DownstreamScheme": "http", "ServiceName": "orders", "LoadBalancerOptions": {"Type": "LeastConnection"}
            }],
            "GlobalConfiguration": {"ServiceDiscoveryProvider": {"Type": "Eureka"}}
        });
        let settings = format!("discovery:\n  poll_interval_ms: 200\n  eureka:\n    service_url: \"{}\"\n", eureka.service_url());
        let gw = Gateway::builder(cfg).settings(&settings).start().await;
        eventually_answered_by(&gw, "/orders/x", &["a"]).await;
        assert!(eureka.accepts().iter().all(|a| a == "application/json"), "{:?}", eureka.accepts());

        down.status = "UP".into();
        eureka.set("orders", vec![EurekaInstance::up("localhost", a.addr()), down]);
        // LeastConnection over sequential requests always finds both idle and
        // takes the first; park one request so the next goes to the other.
        let deadline = Instant::now() + Duration::from_secs(15);
        for round in 0.. {
            let key = format!("hold-{round}");
            let before = a.count() + b.count();
            let url = gw.url("/orders/x");
            let hold = key.clone();
            let held = tokio::spawn(async move {
                Reply::read(client().get(url).header("x-echo-hold", hold).send().await.unwrap()).await
            });
            while a.count() + b.count() == before {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let r = get(&gw.url("/orders/y"), &[]).await;
            a.release(&key);
            b.release(&key);
            assert_eq!(held.await.unwrap().status, 200);
            assert_eq!(r.status, 200);
            if b.count() > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "b never joined");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Deregistered: 404 from Eureka, ServicesAreEmpty from the gateway.
        eureka.set("orders", vec![]);
        eventually_status(&gw, "/orders/x", 404).await;
    })
    .await
}

/// Echo servers on distinct loopback addresses and one port, as pods of a
/// headless Service are: A records give addresses only.
fn same_port_servers(names: &[(&str, [u8; 4])]) -> (u16, Vec<EchoServer>) {
    for _ in 0..20 {
        let port = free_port();
        let started: Result<Vec<EchoServer>, _> = names
            .iter()
            .map(|(name, ip)| EchoServer::start_on(name, SocketAddr::from((*ip, port))))
            .collect();
        if let Ok(servers) = started {
            return (port, servers);
        }
    }
    panic!("no port free on every loopback address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_a_records_are_followed_within_their_ttl() {
    bounded(async {
        let (port, _servers) = same_port_servers(&[("pod-2", [127, 0, 0, 2]), ("pod-3", [127, 0, 0, 3])]);
        let ttl = 3;
        let dns = Dnsmasq::start(&[("orders.shop.test", "127.0.0.2"), ("orders.shop.test", "127.0.0.3")], &[], ttl);
        // ocelot.json says Consul (for Ocelot); the gateway setting picks DNS.
        let cfg = json!({
            "Routes": [{
                "UpstreamPathTemplate": "/orders/{everything}", "DownstreamPathTemplate": "/{everything}",
                "DownstreamScheme": "http", "ServiceName": "orders",
                "DownstreamHostAndPorts": [{"Host": "orders", "Port": port}],
                "LoadBalancerOptions": {"Type": "RoundRobin"}
            }],
            "GlobalConfiguration": {"ServiceDiscoveryProvider": {"Type": "Consul", "Host": "consul", "Port": 8500, "Namespace": "shop"}}
        });
        let settings = format!(
            "discovery:\n  type: Dns\n  poll_interval_ms: 200\n  dns:\n    name: \"{{service}}.{{namespace}}.test\"\n    nameservers: [\"{}\"]\n",
            dns.addr()
        );
        let gw = Gateway::builder(cfg).settings(&settings).start().await;
        eventually_answered_by(&gw, "/orders/x", &["pod-2", "pod-3"]).await;
        let r = get(&gw.url("/orders/x"), &[]).await;
        assert_eq!(r.seen().header("host"), Some(format!("orders.shop.test:{port}").as_str()));

        // The TTL, not the 200 ms polling interval, paces the lookups.
        let before = dns.queries("A", "orders.shop.test");
        tokio::time::sleep(Duration::from_secs(6)).await;
        let lookups = dns.queries("A", "orders.shop.test") - before;
        assert!((1..=3).contains(&lookups), "{lookups} A lookups in 6 s with a {ttl} s TTL");

        // A pod goes: its record is gone once the TTL ends.
        dns.set_hosts(&[("orders.shop.test", "127.0.0.3")]);
        eventually_answered_by(&gw, "/orders/x", &["pod-3"]).await;
        // No pod left: NXDOMAIN, ServicesAreEmpty.
        dns.set_hosts(&[]);
        eventually_status(&gw, "/orders/x", 404).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_srv_records_give_targets_and_ports() {
    bounded(async {
        let (a, b) = (EchoServer::start("a"), EchoServer::start("b"));
        let dns = Dnsmasq::start(
            &[("inst-a.shop.test", "127.0.0.1"), ("inst-b.shop.test", "127.0.0.1")],
            &[("_http._tcp.orders.shop.test", "inst-a.shop.test", a.port()), ("_http._tcp.orders.shop.test", "inst-b.shop.test", b.port())],
            1,
        );
        let cfg = json!({
            "Routes": [{
                "UpstreamPathTemplate": "/orders/{everything}", "DownstreamPathTemplate": "/{everything}",
                "DownstreamScheme": "http", "ServiceName": "orders", "ServiceNamespace": "shop",
                "LoadBalancerOptions": {"Type": "RoundRobin"}
            }],
            "GlobalConfiguration": {"ServiceDiscoveryProvider": {"Type": "Dns"}}
        });
        let settings = format!(
            "discovery:\n  dns:\n    records: srv\n    name: \"_{{scheme}}._tcp.{{service}}.{{namespace}}.test\"\n    nameservers: [\"{}\"]\n",
            dns.addr()
        );
        let gw = Gateway::builder(cfg).settings(&settings).start().await;
        eventually_answered_by(&gw, "/orders/x", &["a", "b"]).await;
        assert_eq!(a.requests()[0].header("host"), Some(format!("inst-a.shop.test:{}", a.port()).as_str()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_routing_sends_the_first_segment_to_that_service() {
    bounded(async {
        let consul = FakeConsul::start(None);
        let (a, b, c, d) = (EchoServer::start("a"), EchoServer::start("b"), EchoServer::start("c"), EchoServer::start("d"));
        consul.set("orders", vec![ConsulInstance::new("a", "localhost", a.addr()), ConsulInstance::new("b", "localhost", b.addr())]);
        consul.set("catalog", vec![ConsulInstance::new("c", "localhost", c.addr()), ConsulInstance::new("d", "localhost", d.addr())]);
        let cfg = json!({
            "Routes": [],
            "DynamicRoutes": [
                {"ServiceName": "orders", "LoadBalancerOptions": {"Type": "RoundRobin"}},
                {"ServiceName": "catalog", "RateLimitOptions": {"EnableRateLimiting": true, "Limit": 3, "Period": "1m"}}
            ],
            "GlobalConfiguration": {
                "DownstreamScheme": "http",
                "LoadBalancerOptions": {"Type": "NoLoadBalancer"},
                "ServiceDiscoveryProvider": {"Host": "127.0.0.1", "Port": consul.port(), "Type": "PollConsul", "PollingInterval": 200}
            }
        });
        let gw = Gateway::start(cfg).await;

        // /{service}/{rest}: the rest and the query go to the service.
        let r = get(&gw.url("/orders/api/items?x=1&y=2"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.seen().target(), "/api/items?x=1&y=2");
        assert_eq!(get(&gw.url("/orders"), &[]).await.seen().target(), "/");
        // The DynamicRoutes entry's RoundRobin overrides the global NoLoadBalancer.
        assert_eq!(who_answers(&gw, "/orders/x", 4).await, BTreeSet::from(["a".to_string(), "b".to_string()]));
        // Other services get the global options: always the first instance,
        // and the catalog entry's rate limit.
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let r = get(&gw.url("/catalog/x"), &[("Oc-Client", "t")]).await;
            if r.status == 200 {
                assert_eq!(r.seen().server, "c");
            }
            statuses.push(r.status);
        }
        assert_eq!(statuses, vec![200, 200, 200, 429]);
        // An unknown service: ServicesAreEmpty.
        let r = get(&gw.url("/nosuch/x"), &[]).await;
        assert_eq!(r.status, 404);
        // A service registered later is found.
        consul.set("late", vec![ConsulInstance::new("d", "localhost", d.addr())]);
        eventually_answered_by(&gw, "/late/x", &["d"]).await;
        // And a dynamic service follows its registry as static routes do.
        consul.set("orders", vec![ConsulInstance::new("b", "localhost", b.addr())]);
        eventually_answered_by(&gw, "/orders/x", &["b"]).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_routes_turn_dynamic_routing_off() {
    bounded(async {
        let consul = FakeConsul::start(None);
        let a = EchoServer::start("a");
        consul.set("orders", vec![ConsulInstance::new("a", "localhost", a.addr())]);
        let cfg = json!({
            "Routes": [{"UpstreamPathTemplate": "/static", "DownstreamPathTemplate": "/", "ServiceName": "orders"}],
            "GlobalConfiguration": {"ServiceDiscoveryProvider": {"Host": "127.0.0.1", "Port": consul.port()}}
        });
        let gw = Gateway::start(cfg).await;
        // Ocelot's default provider type is Consul.
        eventually_answered_by(&gw, "/static", &["a"]).await;
        assert_eq!(get(&gw.url("/orders/x"), &[]).await.status, 404);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_provider_type_answers_404_with_a_warning() {
    bounded(async {
        let cfg = json!({
            "Routes": [{"UpstreamPathTemplate": "/x", "DownstreamPathTemplate": "/", "ServiceName": "orders"}],
            "GlobalConfiguration": {"ServiceDiscoveryProvider": {"Type": "ServiceFabric", "Host": "localhost", "Port": 19081}}
        });
        let gw = Gateway::start(cfg).await;
        assert_eq!(get(&gw.url("/x"), &[]).await.status, 404);
        assert!(gw.stderr().contains("no service discovery provider of type 'ServiceFabric'"), "{}", gw.stderr());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_instances_of_an_unchanged_service_route() {
    bounded(async {
        let mut kube = FakeKube::start();
        let (a, b) = (EchoServer::start("a"), EchoServer::start("b"));
        kube.set_pods("shop", "orders", &[Pod::at(a.addr())]);
        let provider = json!({"Type": "PollKube", "Namespace": "shop", "PollingInterval": 200});
        let gw = kube_gateway(&kube, provider.clone(), vec![kube_route(json!({}))], "").await;
        eventually_answered_by(&gw, "/orders/x", &["a"]).await;
        // With the API server gone, a new pool would have no instance at all:
        // serving after the reload proves the route kept its pool.
        kube.stop();
        let other = json!({
            "UpstreamPathTemplate": "/other", "DownstreamPathTemplate": "/", "DownstreamScheme": "http",
            "DownstreamHostAndPorts": [b.host_and_port()]
        });
        let cfg = json!({"Routes": [kube_route(json!({})), other], "GlobalConfiguration": {"ServiceDiscoveryProvider": provider}});
        std::fs::write(gw.dir().join("ocelot.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        eventually_answered_by(&gw, "/other", &["b"]).await;
        assert_eq!(who_answers(&gw, "/orders/x", 4).await, BTreeSet::from(["a".to_string()]));
    })
    .await
}
