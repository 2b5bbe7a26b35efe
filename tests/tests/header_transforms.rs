//! Header transforms (Ocelot's `UpstreamHeaderTransform` and
//! `DownstreamHeaderTransform`; Ocelot's Headers acceptance tests):
//! placeholders, find-and-replace, and the `Location` rewrite.

use e2e::{bounded, config, get, route, with, EchoServer, Gateway};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_transforms_with_placeholders_and_location_rewrite() {
    bounded(async {
        let up = EchoServer::start("up");
        let r = with(
            route("/pay/{rest}", "/pay/{rest}", &[&up]),
            json!({
                "UpstreamHeaderTransform": {
                    "Laz": "D, GP",
                    "X-Forwarded-For": "{RemoteIpAddress}",
                    "X-Original-Host": "{UpstreamHost}"
                },
                "DownstreamHeaderTransform": {
                    "Location": "{DownstreamBaseUrl}, {BaseUrl}",
                    "X-Powered-By": "gateway"
                }
            }),
        );
        let mut cfg = config(vec![r]);
        cfg["GlobalConfiguration"] = json!({
            "BaseUrl": "https://gateway.example.com",
            "UpstreamHeaderTransform": {"X-Global": "g", "Laz": "not used: the route's wins"},
            "DownstreamHeaderTransform": {"X-Served-By": "{BaseUrl}"}
        });
        let gw = Gateway::start(cfg).await;
        let location = format!("Location: http://127.0.0.1:{}/pay/Receive?x=1", up.port());
        let reply = get(
            &gw.url("/pay/now"),
            &[
                ("laz", "D and D"),
                ("x-echo-status", "302"),
                ("x-echo-header", &location),
                ("x-echo-header", "X-Powered-By: service"),
                ("__tenant", "tenant-1"),
            ],
        )
        .await;
        assert_eq!(reply.status, 302);
        assert_eq!(
            reply.header("location"),
            Some("https://gateway.example.com/pay/Receive?x=1")
        );
        assert_eq!(
            reply.header("x-powered-by"),
            Some("service"),
            "a header the service sent wins over an added one"
        );
        assert_eq!(
            reply.header("x-served-by"),
            Some("https://gateway.example.com")
        );
        let seen = reply.seen();
        assert_eq!(seen.header("laz"), Some("GP and GP"));
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(
            seen.header("x-original-host"),
            Some(gw.authority().as_str())
        );
        assert_eq!(seen.header("x-global"), Some("g"));
        assert_eq!(
            seen.header("__tenant"),
            Some("tenant-1"),
            "the ABP tenant header passes through unchanged"
        );
    })
    .await
}

/// The Ocelot idiom: `"Oc-Client": "{RemoteIpAddress}"` turns client-id
/// limiting into per-IP limiting, whatever `Oc-Client` the client sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_transforms_come_before_the_rate_limiter() {
    bounded(async {
        let svc = EchoServer::start("svc");
        let limited = with(
            route("/limited", "/limited", &[&svc]),
            json!({
                "UpstreamHeaderTransform": { "Oc-Client": "{RemoteIpAddress}" },
                "RateLimitOptions": {
                    "EnableRateLimiting": true, "Limit": 2, "Period": "1m", "PeriodTimespan": 60
                },
            }),
        );
        let gw = Gateway::builder(json!({
            "Routes": [limited],
            "GlobalConfiguration": { "RateLimitOptions": { "ClientIdHeader": "Oc-Client" } },
        }))
        .settings("access_log: true\naccess_log_flush_ms: 50\n")
        .start()
        .await;

        // No id, then a forged one, then another forged one: all the same
        // client (the address), so the third is over the limit.
        let first = get(&gw.url("/limited"), &[]).await;
        assert_eq!(first.status, 200, "{}", first.text());
        assert_eq!(first.seen().header("oc-client"), Some("127.0.0.1"));
        let forged = get(&gw.url("/limited"), &[("Oc-Client", "forged-1")]).await;
        assert_eq!(forged.status, 200, "{}", forged.text());
        assert_eq!(forged.seen().header("oc-client"), Some("127.0.0.1"));
        let third = get(&gw.url("/limited"), &[("Oc-Client", "forged-2")]).await;
        assert_eq!(third.status, 429, "{}", third.text());
        assert_eq!(
            svc.count(),
            2,
            "the refused request never reached the service"
        );

        let quota =
            "gateway_refused_requests_total{reason=\"quota_exceeded\",route=\"/limited\"} 1";
        gw.wait_for_metrics(&[quota]).await;
        let lines = gw.wait_for_access_log("/limited", 3).await;
        let refusals: Vec<&Value> = lines.iter().map(|l| &l["refusal"]).collect();
        assert_eq!(
            refusals,
            [&Value::Null, &Value::Null, &json!("quota_exceeded")],
            "{lines:?}"
        );
    })
    .await
}
