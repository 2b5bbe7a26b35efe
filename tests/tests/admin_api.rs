//! The admin listener: health and readiness endpoints, and the configuration
//! API (Ocelot's administration API) reading and replacing `ocelot.json`.

use e2e::gateway::admin_status;
use e2e::{bounded, client, config, get, route, status_of, EchoServer, Gateway};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_health_and_readiness() {
    bounded(async {
        let gw = Gateway::start(json!({ "Routes": [] })).await;
        assert_eq!(admin_status(gw.admin_addr(), "/healthz").await, Some(200));
        assert_eq!(admin_status(gw.admin_addr(), "/readyz").await, Some(200));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_reads_and_replaces_the_configuration() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::builder(config(vec![route("/a/{id}", "/a/{id}", &[&up])]))
            .settings("admin_token: s3cret\n")
            .start()
            .await;
        let auth = ("authorization", "Bearer s3cret");

        let r = get(&gw.admin_url("/admin/configuration"), &[auth]).await;
        assert_eq!(r.status, 200);
        let current: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(current["Routes"][0]["UpstreamPathTemplate"], "/a/{id}");

        assert_eq!(
            get(
                &gw.admin_url("/admin/configuration"),
                &[("authorization", "Bearer nope")]
            )
            .await
            .status,
            401
        );
        assert_eq!(
            get(&gw.admin_url("/admin/configuration"), &[]).await.status,
            401
        );

        let routes: Value =
            serde_json::from_slice(&get(&gw.admin_url("/admin/routes"), &[auth]).await.body)
                .unwrap();
        assert_eq!(routes["routes"][0]["upstreamPathTemplate"], "/a/{id}");
        assert_eq!(routes["routes"][0]["loadBalancer"], "NoLoadBalancer");

        // Invalid: refused with the route and field named; the old table serves on.
        let mut bad = route("/x", "/x", &[&up]);
        bad["DownstreamHostAndPorts"] = json!([]);
        let r = e2e::send(
            client()
                .post(gw.admin_url("/admin/configuration"))
                .body(config(vec![bad]).to_string()),
            &[auth],
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(
            r.text().contains("Routes[0] (/x): DownstreamHostAndPorts"),
            "{}",
            r.text()
        );
        assert_eq!(status_of(&gw.url("/a/1")).await, 200);

        // Valid, persisted: served at once and written back to the file.
        let new = config(vec![route("/n", "/n", &[&up])]);
        let r = e2e::send(
            client()
                .post(gw.admin_url("/admin/configuration?persist=true"))
                .body(new.to_string()),
            &[auth],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(status_of(&gw.url("/n")).await, 200);
        assert_eq!(status_of(&gw.url("/a/1")).await, 404);
        let on_disk: Value =
            serde_json::from_slice(&std::fs::read(gw.dir().join("ocelot.json")).unwrap()).unwrap();
        assert_eq!(on_disk["Routes"][0]["UpstreamPathTemplate"], "/n");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_is_off_without_a_token() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/a", "/a", &[&up])])).await;
        assert_eq!(
            get(&gw.admin_url("/admin/configuration"), &[]).await.status,
            404
        );
        assert_eq!(get(&gw.admin_url("/healthz"), &[]).await.status, 200);
    })
    .await
}
