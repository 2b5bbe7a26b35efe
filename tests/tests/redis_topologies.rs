//! Rate limits shared through Redis Sentinel and Redis Cluster (issue #14,
//! item 4): real `redis-server`, `redis-sentinel` and
//! `redis-cli --cluster create` on loopback, two gateways, exact counts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::load::rate_limited_burst;
use e2e::redis::{RedisCluster, RedisSentinels, MASTER_NAME};
use e2e::{bounded, config, eventually, get, route, with, EchoServer, Gateway};
use serde_json::json;

const LIMIT: usize = 10;
const PASSWORD: &str = "s3cret-for-counters";

/// Stated in the README: after the master is killed, every gateway counts
/// on the promoted replica again within this long. It is the sentinels'
/// `down-after-milliseconds` (500 ms here), their vote and the promotion
/// (about 1 s on loopback; Sentinel may wait up to a second more before
/// starting a failover), plus `redis_retry_ms` (300 ms here), with margin
/// for a loaded machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

fn limited(path: &str, up: &EchoServer) -> serde_json::Value {
    with(
        route(path, path, &[up]),
        json!({ "RateLimitOptions": { "Limit": LIMIT, "Period": "1m" } }),
    )
}

/// One steady-traffic request: which gateway, when it was sent, its status,
/// whether it was counted, whether its body was empty.
#[derive(Debug, Clone)]
struct Sent {
    gateway: usize,
    at: Instant,
    status: u16,
    counted: bool,
    empty: bool,
}

/// A client per gateway sending a request every 20 ms, each with a new
/// client id (so none is ever over the limit), until stopped.
struct Steady {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Steady {
    fn start(urls: &[String]) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let tasks = urls
            .iter()
            .enumerate()
            .map(|(gateway, url)| {
                let (stop, sent, url) = (stop.clone(), sent.clone(), url.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let at = Instant::now();
                        let id = format!("steady-{gateway}-{i}");
                        let r = get(&url, &[("Oc-Client", &id)]).await;
                        sent.lock().unwrap().push(Sent {
                            gateway,
                            at,
                            status: r.status,
                            counted: r.header("X-RateLimit-Remaining").is_some(),
                            empty: r.body.is_empty(),
                        });
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Steady { stop, sent, tasks }
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    async fn finish(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let sent = self.sent.lock().unwrap().clone();
        sent
    }
}

/// One master and one replica with a password, three sentinels; two
/// gateways name the sentinels. Under steady traffic from both, the master
/// is killed: the sentinels promote the replica, and every gateway counts
/// on it again within [`FAILOVER_BOUND`]. Meanwhile `open` serves every
/// request, `closed` refuses some with 503 and an empty body and serves the
/// rest counted. Afterwards a new client gets exactly the limit across both.
async fn sentinel_failover(policy: &str) {
    let mut set = RedisSentinels::start(PASSWORD);
    let up = EchoServer::start("up");
    let cfg = config(vec![limited("/shared", &up)]);
    let settings = format!(
        "access_log: false\nrate_limiting:\n  redis_sentinel:\n    sentinels: [{}]\n    master_name: {MASTER_NAME}\n    password: {PASSWORD}\n  redis_timeout_ms: 200\n  redis_retry_ms: 300\n  failure_policy: {policy}\n",
        set.addresses().join(", ")
    );
    let g1 = Gateway::builder(cfg.clone())
        .settings(&settings)
        .start()
        .await;
    let g2 = Gateway::builder(cfg).settings(&settings).start().await;
    let urls = [g1.url("/shared"), g2.url("/shared")];
    assert_eq!(
        rate_limited_burst(&urls, "before", LIMIT).await,
        (BTreeMap::from([(200, LIMIT), (429, LIMIT)]), LIMIT),
        "the limit holds through the first master"
    );

    let steady = Steady::start(&urls);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    set.master.kill();
    let replica = set.replica.port();
    eventually(FAILOVER_BOUND, "the sentinels promote the replica", || {
        let promoted = set.master_port() == Some(replica);
        async move { promoted }
    })
    .await;
    let promoted = killed.elapsed();
    eventually(
        FAILOVER_BOUND.saturating_sub(killed.elapsed()),
        "both gateways count on the promoted replica",
        || {
            let sent = steady.sent();
            async move {
                (0..2).all(|g| {
                    sent.iter()
                        .any(|s| s.gateway == g && s.at > killed && s.counted)
                })
            }
        },
    )
    .await;
    let counting = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = steady.finish().await;
    let after_kill: Vec<&Sent> = sent.iter().filter(|s| s.at > killed).collect();
    let statuses: BTreeSet<u16> = after_kill.iter().map(|s| s.status).collect();
    let not_counted = after_kill.iter().filter(|s| !s.counted).count();
    eprintln!(
        "failover ({policy}): replica promoted {} ms after the kill, both gateways counting {} ms after it; \
         {} requests since, {not_counted} under the failure policy",
        promoted.as_millis(),
        counting.as_millis(),
        after_kill.len()
    );
    match policy {
        "open" => assert_eq!(statuses, BTreeSet::from([200]), "every request served"),
        _ => {
            assert_eq!(statuses, BTreeSet::from([200, 503]), "served or refused");
            assert!(after_kill
                .iter()
                .all(|s| (s.status == 200) == s.counted && (s.status != 503 || s.empty)));
        }
    }
    assert!(not_counted > 0, "the outage was seen");

    assert_eq!(
        rate_limited_burst(&urls, "after", LIMIT).await,
        (BTreeMap::from([(200, LIMIT), (429, LIMIT)]), LIMIT),
        "the limit holds through the promoted replica"
    );
    for gw in [&g1, &g2] {
        gw.wait_for_metrics(&[
            "gateway_rate_limit_redis_down 0",
            "gateway_rate_limit_redis_outages_total 1",
            "gateway_rate_limit_redis_recoveries_total 1",
        ])
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_open_policy() {
    bounded(sentinel_failover("open")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_closed_policy() {
    bounded(sentinel_failover("closed")).await
}

/// Three masters; two gateways given one node each. Two rules (routes),
/// six clients each, every client limited exactly across both gateways;
/// each rule's counters are in one hash slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_master_cluster_enforces_one_limit_for_two_gateways() {
    bounded(async {
        let cluster = RedisCluster::start(3);
        let up = EchoServer::start("up");
        let cfg = config(vec![limited("/a", &up), limited("/b", &up)]);
        let nodes = cluster.addresses();
        let settings = |node: &str| {
            format!(
                "access_log: false\nrate_limiting:\n  redis_cluster:\n    nodes: ['{node}']\n  redis_timeout_ms: 500\n  failure_policy: closed\n"
            )
        };
        let g1 = Gateway::builder(cfg.clone())
            .settings(&settings(&nodes[0]))
            .start()
            .await;
        let g2 = Gateway::builder(cfg)
            .settings(&settings(&nodes[2]))
            .start()
            .await;
        for path in ["/a", "/b"] {
            let urls = [g1.url(path), g2.url(path)];
            for client in 0..6 {
                assert_eq!(
                    rate_limited_burst(&urls, &format!("client-{client}"), LIMIT).await,
                    (BTreeMap::from([(200, LIMIT), (429, LIMIT)]), LIMIT),
                    "client-{client} on {path}"
                );
            }
        }
        assert_eq!(up.count(), 2 * 6 * LIMIT);

        let keys = cluster.keys();
        let mut slots: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
        for (key, slot, _) in &keys {
            let tag = key
                .split_once('{')
                .and_then(|(_, rest)| rest.split_once('}'))
                .map(|(tag, _)| tag.to_string())
                .unwrap_or_else(|| panic!("no hash tag in {key}"));
            slots.entry(tag).or_default().insert(*slot);
        }
        assert_eq!(keys.len(), 12, "{keys:?}");
        assert_eq!(slots.len(), 2, "one hash tag per rule: {keys:?}");
        assert!(
            slots.values().all(|s| s.len() == 1),
            "one slot per rule: {slots:?}"
        );
        for gw in [&g1, &g2] {
            gw.wait_for_metrics(&["gateway_rate_limit_redis_outages_total 0"])
                .await;
        }
    })
    .await
}
