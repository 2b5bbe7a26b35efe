//! Load balancers: NoLoadBalancer, RoundRobin, LeastConnection,
//! CookieStickySessions. Backends are told apart by the echo server's name.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use e2e::{
    bounded, client, config, eventually, get, route, send, status_of, with, EchoServer, Gateway,
    Reply,
};
use serde_json::json;

fn backends(names: &[&str]) -> Vec<EchoServer> {
    names.iter().map(|n| EchoServer::start(n)).collect()
}

fn balanced(up: &str, servers: &[EchoServer], lb: serde_json::Value) -> serde_json::Value {
    let refs: Vec<&EchoServer> = servers.iter().collect();
    let mut r = route(up, "/lb", &refs);
    if !lb.is_null() {
        r = with(r, json!({ "LoadBalancerOptions": lb }));
    }
    config(vec![r])
}

async fn who(gw: &Gateway, headers: &[(&str, &str)]) -> String {
    let r = get(&gw.url("/lb"), headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.seen().server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_load_balancer_always_uses_the_first_host() {
    bounded(async {
        let s = backends(&["first", "second", "third"]);
        let gw = Gateway::start(balanced("/lb", &s, json!({ "Type": "NoLoadBalancer" }))).await;
        for _ in 0..6 {
            assert_eq!(who(&gw, &[]).await, "first");
        }
        assert_eq!((s[1].count(), s[2].count()), (0, 0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_load_balancer_options_means_first_host() {
    bounded(async {
        let s = backends(&["first", "second"]);
        let gw = Gateway::start(balanced("/lb", &s, serde_json::Value::Null)).await;
        for _ in 0..4 {
            assert_eq!(who(&gw, &[]).await, "first");
        }
        assert_eq!(s[1].count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_rotates_through_every_host() {
    bounded(async {
        let s = backends(&["a", "b", "c"]);
        let gw = Gateway::start(balanced("/lb", &s, json!({ "Type": "RoundRobin" }))).await;
        let mut seq = Vec::new();
        for _ in 0..9 {
            seq.push(who(&gw, &[]).await);
        }
        // A rotation: every window of three distinct, and period three.
        for w in seq.windows(3) {
            let distinct: HashSet<_> = w.iter().collect();
            assert_eq!(distinct.len(), 3, "not rotating: {seq:?}");
        }
        for i in 3..seq.len() {
            assert_eq!(seq[i], seq[i - 3], "not a fixed rotation: {seq:?}");
        }
        assert_eq!((s[0].count(), s[1].count(), s[2].count()), (3, 3, 3));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connection_avoids_the_busy_host() {
    bounded(async {
        // Three hosts, so the check cannot race with the gateway releasing the
        // previous request's lease (it does so just after the response): at
        // most one idle host can still count a finished request, the other
        // idle host then has none, and the busy host is never the least loaded.
        let s: Vec<Arc<EchoServer>> = ["a", "b", "c"]
            .iter()
            .map(|n| Arc::new(EchoServer::start(n)))
            .collect();
        let refs: Vec<&EchoServer> = s.iter().map(|a| a.as_ref()).collect();
        let cfg = config(vec![with(
            route("/lb", "/lb", &refs),
            json!({ "LoadBalancerOptions": { "Type": "LeastConnection" } }),
        )]);
        let gw = Gateway::start(cfg).await;

        // Park one request on whichever host gets it...
        let url = gw.url("/lb");
        let held = tokio::spawn(async move {
            Reply::read(
                client()
                    .get(url)
                    .header("x-echo-hold", "slow")
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let busy = loop {
            if let Some(b) = s.iter().find(|x| x.count() == 1) {
                break b.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "held request never reached a backend"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };

        // ...then, while it is in flight, no new request goes to that host
        // (round robin would send the third or fourth there).
        for _ in 0..4 {
            let to = who(&gw, &[]).await;
            assert_ne!(to, busy.name(), "sent to the busy host");
        }
        busy.release("slow");
        assert_eq!(held.await.unwrap().status, 200);
        assert_eq!(busy.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sticky_sessions_keep_a_client_on_one_host() {
    bounded(async {
        let s = backends(&["a", "b", "c"]);
        let gw = Gateway::start(balanced(
            "/lb",
            &s,
            json!({ "Type": "CookieStickySessions", "Key": "sid", "Expiry": 300000 }),
        ))
        .await;

        let mut first_pick = BTreeMap::new();
        for round in 0..4 {
            for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
                let cookie = format!("other=x; sid={user}");
                let r = send(client().get(gw.url("/lb")), &[("cookie", &cookie)]).await;
                assert_eq!(r.status, 200);
                // The gateway never sets the stickiness cookie itself.
                assert!(r.headers.get("set-cookie").is_none(), "{:?}", r.headers);
                let server = r.seen().server;
                let expected = first_pick.entry(user).or_insert_with(|| server.clone());
                assert_eq!(&server, expected, "{user} moved hosts in round {round}");
            }
        }
        // New sessions are spread (first pick is round robin), not all on one host.
        let used: HashSet<_> = first_pick.values().collect();
        assert!(used.len() >= 2, "all sessions on one host: {first_pick:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_state_is_per_route() {
    bounded(async {
        let s = backends(&["a", "b"]);
        let refs: Vec<&EchoServer> = s.iter().collect();
        let rr = json!({ "LoadBalancerOptions": { "Type": "RoundRobin" } });
        let gw = Gateway::start(config(vec![
            with(route("/one", "/lb", &refs), rr.clone()),
            with(route("/two", "/lb", &refs), rr),
        ]))
        .await;
        let mut per_route = BTreeMap::<&str, Vec<String>>::new();
        for _ in 0..4 {
            for p in ["/one", "/two"] {
                let r = get(&gw.url(p), &[]).await;
                per_route.entry(p).or_default().push(r.seen().server);
            }
        }
        // Interleaving the two routes must not break either route's rotation.
        for (p, seq) in &per_route {
            for w in seq.windows(2) {
                assert_ne!(w[0], w[1], "{p} did not alternate: {seq:?}");
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_exact_under_concurrency() {
    bounded(async {
        let s = backends(&["a", "b", "c"]);
        let gw = Gateway::start(balanced("/lb", &s, json!({ "Type": "RoundRobin" }))).await;
        let c = client();
        let requests = (0..60).map(|_| {
            let req = c.get(gw.url("/lb"));
            async move { Reply::read(req.send().await.unwrap()).await.status }
        });
        let statuses = futures_util::future::join_all(requests).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        // One shared rotation: 60 picks over 3 hosts is exactly 20 each.
        assert_eq!((s[0].count(), s[1].count(), s[2].count()), (20, 20, 20));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_route_keeps_its_round_robin_position_across_a_reload() {
    bounded(async {
        let a = EchoServer::start("a");
        let b = EchoServer::start("b");
        let rr = with(
            route("/rr", "/rr", &[&a, &b]),
            json!({ "LoadBalancerOptions": { "Type": "RoundRobin" } }),
        );
        let gw = Gateway::start(config(vec![rr.clone()])).await;
        let first = get(&gw.url("/rr"), &[]).await.seen().server;

        let other = route("/other", "/other", &[&a]);
        gw.write_config(&config(vec![rr, other]));
        eventually(Duration::from_secs(15), "/other after reload", || async {
            status_of(&gw.url("/other")).await == 200
        })
        .await;

        // A rebuilt balancer would start over at the first backend again.
        let second = get(&gw.url("/rr"), &[]).await.seen().server;
        assert_ne!(
            first, second,
            "round robin restarted after an unrelated reload"
        );
    })
    .await
}
