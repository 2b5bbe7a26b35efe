//! IP security (Ocelot's `SecurityOptions`; Ocelot's Security
//! acceptance tests): allow and block lists for IPv4 and IPv6 clients, ranges
//! and masks, and `X-Forwarded-For` from trusted proxies only.

use e2e::{bounded, config, get, route, with, EchoServer, Gateway, Reply};
use serde_json::{json, Value};

fn secured(path: &str, up: &EchoServer, options: Value) -> Value {
    with(
        route(path, path, &[up]),
        json!({ "SecurityOptions": options }),
    )
}

async fn status_from(url: &str) -> (u16, usize) {
    let r = get(url, &[]).await;
    (r.status, r.body.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_allow_and_block_lists() {
    bounded(async {
        let up = EchoServer::start("up");
        let cfg = json!({
            "Routes": [
                secured("/blocked", &up, json!({ "IPBlockedList": ["127.0.0.1"] })),
                secured("/allowed", &up, json!({ "IPAllowedList": ["127.0.0.0/8"] })),
                secured("/elsewhere", &up, json!({ "IPAllowedList": ["10.0.0.0/8", "192.168.1.1-192.168.1.9"] })),
                secured("/short-range", &up, json!({ "IPBlockedList": ["127.0.0.0-5"] })),
                secured("/mask", &up, json!({ "IPBlockedList": ["127.0.0.0/255.0.0.0"] })),
                secured("/excluded", &up, json!({ "IPAllowedList": ["127.0.0.1"], "IPBlockedList": ["127.0.0.0/24"], "ExcludeAllowedFromBlocked": true })),
                secured("/not-excluded", &up, json!({ "IPAllowedList": ["127.0.0.1"], "IPBlockedList": ["127.0.0.0/24"] })),
                route("/global", "/global", &[&up]),
            ],
            "GlobalConfiguration": { "SecurityOptions": { "IPBlockedList": ["127.0.0.1"] } }
        });
        let gw = Gateway::start(cfg).await;
        for (path, status) in [
            ("/blocked", 403),
            ("/allowed", 200),
            ("/elsewhere", 403),
            ("/short-range", 403),
            ("/mask", 403),
            ("/excluded", 200),
            ("/not-excluded", 403),
            ("/global", 403),
        ] {
            let (got, body) = status_from(&gw.url(path)).await;
            assert_eq!(got, status, "{path}");
            if got == 403 {
                assert_eq!(body, 0, "{path}: 403 has an empty body");
            }
        }
        assert_eq!(up.count(), 2, "denied requests never reach the service");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_matched_against_ipv6_entries() {
    bounded(async {
        let up = EchoServer::start("up");
        let cfg = config(vec![
            secured("/v6-blocked", &up, json!({ "IPBlockedList": ["::1"] })),
            secured("/v6-cidr", &up, json!({ "IPAllowedList": ["::/127"] })),
            secured("/v6-range", &up, json!({ "IPBlockedList": ["::0 - ::5"] })),
            secured("/v4-only", &up, json!({ "IPAllowedList": ["0.0.0.0/0"] })),
        ]);
        let v6_port = e2e::free_port();
        let gw = Gateway::builder(cfg)
            .arg("--listen")
            .arg(format!("[::1]:{v6_port}"))
            .start()
            .await;
        let v6 = |path: &str| format!("http://[::1]:{v6_port}{path}");
        assert_eq!(status_from(&v6("/v6-blocked")).await, (403, 0));
        assert_eq!(status_from(&gw.url("/v6-blocked")).await.0, 200);
        assert_eq!(status_from(&v6("/v6-cidr")).await.0, 200);
        assert_eq!(status_from(&gw.url("/v6-cidr")).await.0, 403);
        assert_eq!(status_from(&v6("/v6-range")).await.0, 403);
        assert_eq!(
            status_from(&v6("/v4-only")).await.0,
            403,
            "an IPv4 range never holds an IPv6 client"
        );
        assert_eq!(status_from(&gw.url("/v4-only")).await.0, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    bounded(async {
        let up = EchoServer::start("up");
        let cfg = config(vec![secured(
            "/s",
            &up,
            json!({ "IPBlockedList": ["203.0.113.0/24"] }),
        )]);
        let trusting = Gateway::builder(cfg.clone())
            .settings("trusted_proxies: [\"127.0.0.1\"]\n")
            .start()
            .await;
        let plain = Gateway::start(cfg).await;
        let forwarded = |ip: &'static str| [("X-Forwarded-For", ip)];
        let r: Reply = get(&trusting.url("/s"), &forwarded("203.0.113.9")).await;
        assert_eq!(r.status, 403);
        assert_eq!(
            get(&trusting.url("/s"), &forwarded("198.51.100.1"))
                .await
                .status,
            200
        );
        // A client claiming to be behind the blocked address, through a trusted proxy.
        assert_eq!(
            get(&trusting.url("/s"), &forwarded("203.0.113.9, 198.51.100.1"))
                .await
                .status,
            200
        );
        assert_eq!(
            get(&plain.url("/s"), &forwarded("203.0.113.9"))
                .await
                .status,
            200,
            "not trusted: the socket peer counts"
        );
    })
    .await
}
