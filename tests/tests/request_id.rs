//! Request id (Ocelot's `RequestIdKey`; Ocelot's RequestId acceptance tests):
//! a client's id is forwarded, a missing one generated.

use e2e::{bounded, config, get, route, with, EchoServer, Gateway};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_forwarded_or_generated() {
    bounded(async {
        let up = EchoServer::start("up");
        let routes = vec![
            with(
                route("/own", "/own", &[&up]),
                json!({"RequestIdKey": "Oc-RequestId", "UpstreamHeaderTransform": {"X-Trace": "{TraceId}"}}),
            ),
            route("/global", "/global", &[&up]),
        ];
        let mut cfg = config(routes);
        cfg["GlobalConfiguration"]["RequestIdKey"] = json!("X-Correlation-Id");
        let gw = Gateway::start(cfg).await;

        let reply = get(&gw.url("/own"), &[("oc-requestid", "abc-123")]).await;
        let seen = reply.seen();
        assert_eq!(seen.header_values("oc-requestid"), vec!["abc-123"]);
        assert_eq!(seen.header("x-trace"), Some("abc-123"));
        assert!(!seen.has_header("x-correlation-id"), "the route's key wins over the global one");
        assert!(reply.header("oc-requestid").is_none(), "not added to the response");

        let first = get(&gw.url("/own"), &[]).await.seen();
        let second = get(&gw.url("/own"), &[]).await.seen();
        let id = first.header("oc-requestid").expect("generated id");
        assert!(!id.is_empty());
        assert_eq!(first.header("x-trace"), Some(id));
        assert_ne!(Some(id), second.header("oc-requestid"), "ids are unique");

        let seen = get(&gw.url("/global"), &[]).await.seen();
        assert!(seen.header("x-correlation-id").is_some_and(|v| !v.is_empty()));
        let seen = get(&gw.url("/global"), &[("x-correlation-id", "given")]).await.seen();
        assert_eq!(seen.header_values("x-correlation-id"), vec!["given"]);
    })
    .await
}
