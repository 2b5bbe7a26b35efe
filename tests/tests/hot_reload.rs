//! Hot reload: a changed `ocelot.json` (edited, replaced through a
//! ConfigMap-style symlink swap, or signalled with SIGHUP) is served without
//! a restart and a broken one refused; a changed settings file likewise.

use std::time::Duration;

use e2e::{
    bounded, client, config, eventually, get, route, status_of, write_atomically, EchoServer,
    Gateway,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_reloaded_and_a_broken_one_is_refused() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/a", "/a", &[&up])])).await;
        let file = gw.dir().join("ocelot.json");
        assert_eq!(get(&gw.url("/a"), &[]).await.status, 200);

        write_atomically(
            &file,
            &serde_json::to_vec(&config(vec![route("/b", "/b", &[&up])])).unwrap(),
        );
        eventually(
            Duration::from_secs(15),
            "/b served after the edit",
            || async { status_of(&gw.url("/b")).await == 200 },
        )
        .await;
        assert_eq!(status_of(&gw.url("/a")).await, 404);

        // A broken file: refused, counted, logged with its position; /b keeps serving.
        write_atomically(&file, b"{ \"Routes\": [ { \"UpstreamPathTemplate\": ");
        eventually(
            Duration::from_secs(15),
            "a failed reload is counted",
            || async {
                gw.metric("gateway_config_reloads_total{result=\"failure\"}")
                    .await
                    >= 1.0
            },
        )
        .await;
        assert_eq!(status_of(&gw.url("/b")).await, 200);
        assert!(gw.stderr().contains("ocelot.json:1:"), "{}", gw.stderr());

        // An invalid (well-formed) config names route and field, and is refused too.
        let mut bad = route("/c", "/c", &[&up]);
        bad["DownstreamHostAndPorts"] = json!([{ "Host": "localhost", "Port": 0 }]);
        write_atomically(&file, &serde_json::to_vec(&config(vec![bad])).unwrap());
        eventually(
            Duration::from_secs(15),
            "the invalid config is refused",
            || async {
                gw.metric("gateway_config_reloads_total{result=\"failure\"}")
                    .await
                    >= 2.0
            },
        )
        .await;
        assert!(
            gw.stderr()
                .contains("Routes[0] (/c): DownstreamHostAndPorts[0].Port"),
            "{}",
            gw.stderr()
        );
        assert_eq!(status_of(&gw.url("/b")).await, 200);
        assert_eq!(status_of(&gw.url("/c")).await, 404);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/a", "/a", &[&up])])).await;
        let before = gw
            .metric("gateway_config_reloads_total{result=\"success\"}")
            .await;
        gw.signal("HUP");
        eventually(Duration::from_secs(10), "SIGHUP reload", || async {
            gw.metric("gateway_config_reloads_total{result=\"success\"}")
                .await
                > before
        })
        .await;
        assert_eq!(status_of(&gw.url("/a")).await, 200);
    })
    .await
}

/// Kubernetes updates a mounted ConfigMap by pointing the folder's `..data`
/// symlink at a new timestamped folder; the file itself is a symlink into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_is_reloaded() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/v0", "/v0", &[&up])])).await;
        let dir = gw.dir();
        let version = |name: &str, template: &str| {
            let folder = dir.join(name);
            std::fs::create_dir(&folder).unwrap();
            std::fs::write(
                folder.join("ocelot.json"),
                serde_json::to_vec(&config(vec![route(template, template, &[&up])])).unwrap(),
            )
            .unwrap();
        };
        version("..2026_v1", "/v1");
        std::os::unix::fs::symlink("..2026_v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/ocelot.json", dir.join("ocelot.json.link")).unwrap();
        std::fs::rename(dir.join("ocelot.json.link"), dir.join("ocelot.json")).unwrap();
        eventually(
            Duration::from_secs(15),
            "/v1 after the first symlink",
            || async { status_of(&gw.url("/v1")).await == 200 },
        )
        .await;

        version("..2026_v2", "/v2");
        std::os::unix::fs::symlink("..2026_v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        eventually(
            Duration::from_secs(15),
            "/v2 after the ..data swap",
            || async { status_of(&gw.url("/v2")).await == 200 },
        )
        .await;
        assert_eq!(status_of(&gw.url("/v1")).await, 404);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_settings_file_swaps_cors_and_refuses_a_broken_one() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::builder(config(vec![route("/a", "/a", &[&up])]))
            .settings("config_poll_seconds: 1\n")
            .start()
            .await;
        let preflight = || async {
            let r = e2e::send(
                client().request(reqwest::Method::OPTIONS, gw.url("/a")),
                &[("origin", "https://app.example"), ("access-control-request-method", "GET")],
            )
            .await;
            r.header("access-control-allow-origin").map(str::to_string)
        };
        assert_eq!(preflight().await, None, "no CORS policy yet");

        let settings = gw.dir().join("gateway.yaml");
        write_atomically(
            &settings,
            b"config_poll_seconds: 1\ncors:\n  allowed_origins: [\"https://app.example\"]\n  allowed_methods: [\"GET\"]\n",
        );
        eventually(Duration::from_secs(15), "the CORS policy from the new settings", || async {
            preflight().await.as_deref() == Some("https://app.example")
        })
        .await;

        // A settings file that does not load is refused; the running settings stay.
        write_atomically(&settings, b"config_poll_seconds: 1\ncors:\n  allowed_origns: []\n");
        eventually(Duration::from_secs(15), "the broken settings are refused", || async {
            gw.metric("gateway_settings_reloads_total{result=\"failure\"}").await >= 1.0
        })
        .await;
        assert_eq!(preflight().await.as_deref(), Some("https://app.example"));
        assert!(gw.stderr().contains("allowed_origns"), "{}", gw.stderr());
    })
    .await
}
