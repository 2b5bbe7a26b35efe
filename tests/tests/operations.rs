//! Operations (issue #5): hot reload, state kept across reloads, the admin
//! API, metrics and access log, SIGTERM drain and `-u` upgrade under load.

use e2e::pki::TestPki;
use e2e::protocol_clients::{request, tls_handshake, Transport};
use e2e::wait_listening;
use e2e::{
    bounded, bounded_for, client, config, free_port, gateway_bin, get, route, with, EchoServer,
    Gateway,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Replaces a file atomically, as editors and config management do.
fn write_atomically(path: &Path, contents: &[u8]) {
    let temp = path.with_extension("tmp-write");
    std::fs::write(&temp, contents).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Polls `check` until it holds, or panics after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_of(url: &str) -> u16 {
    match client().get(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn metrics(gw: &Gateway) -> String {
    gw.metrics().await
}

/// The value of one sample line of the exposition format, 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

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
                sample(
                    &metrics(&gw).await,
                    "gateway_config_reloads_total{result=\"failure\"}",
                ) >= 1.0
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
                sample(
                    &metrics(&gw).await,
                    "gateway_config_reloads_total{result=\"failure\"}",
                ) >= 2.0
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
        let before = sample(
            &metrics(&gw).await,
            "gateway_config_reloads_total{result=\"success\"}",
        );
        signal(gw.pid(), "HUP");
        eventually(Duration::from_secs(10), "SIGHUP reload", || async {
            sample(
                &metrics(&gw).await,
                "gateway_config_reloads_total{result=\"success\"}",
            ) > before
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
        write_atomically(
            &gw.dir().join("ocelot.json"),
            &serde_json::to_vec(&config(vec![rr, other])).unwrap(),
        );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_access_log_name_the_route_not_the_path() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/users/{id}", "/u/{id}", &[&up])])).await;
        for id in 1..=3 {
            assert_eq!(
                get(&gw.url(&format!("/users/{id}")), &[("x-request-id", "abc")])
                    .await
                    .status,
                200
            );
        }
        assert_eq!(get(&gw.url("/nothing"), &[]).await.status, 404);
        // Counters and access lines are written in the logging phase, just
        // after the response went out: poll until the last request is in.
        let series_2xx =
            "gateway_requests_total{method=\"GET\",route=\"/users/{id}\",status_class=\"2xx\"}";
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = metrics(&gw).await;
            let done = sample(&text, series_2xx) >= 3.0 && gw.stdout().contains("\"/nothing\"");
            if done || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            sample(
                &text,
                "gateway_requests_total{method=\"GET\",route=\"/users/{id}\",status_class=\"2xx\"}"
            ),
            3.0,
            "{text}"
        );
        assert!(
            text.contains("gateway_request_duration_seconds_bucket{route=\"/users/{id}\""),
            "{text}"
        );
        assert!(
            text.contains("gateway_upstream_duration_seconds_count{route=\"/users/{id}\"} 3"),
            "{text}"
        );
        assert!(text.contains("gateway_config_hash{hash=\""), "{text}");
        assert!(text.contains("gateway_build_info{version=\""), "{text}");
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        assert!(
            !text.contains("/users/1"),
            "raw paths must not become labels"
        );

        // Lines are written in blocks, at the latest after access_log_flush_ms.
        let logged = |path: &str| {
            gw.stdout()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["path"] == path)
        };
        eventually(
            Duration::from_secs(5),
            "access log lines for /users/2 and /nothing",
            || async { logged("/users/2").is_some() && logged("/nothing").is_some() },
        )
        .await;
        let (hit, miss) = (
            logged("/users/2").expect("line for /users/2"),
            logged("/nothing").expect("line for /nothing"),
        );
        assert_eq!(hit["route"], "/users/{id}");
        assert_eq!(hit["status"], 200);
        assert_eq!(hit["method"], "GET");
        assert_eq!(hit["upstream"], up.addr().to_string());
        assert!(
            hit["duration_ms"].as_f64().is_some() && hit["client"].as_str().is_some(),
            "{hit}"
        );
        assert_eq!(miss["status"], 404);
    })
    .await
}

/// Keep-alive clients hammering `targets()` until stopped; counts outcomes.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(workers: usize, targets: Arc<Mutex<Vec<String>>>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|w| {
                let (stop, ok, failed, targets) =
                    (stop.clone(), ok.clone(), failed.clone(), targets.clone());
                tokio::spawn(async move {
                    let http = client();
                    let mut n = w;
                    while !stop.load(Ordering::Relaxed) {
                        let url = {
                            let t = targets.lock().unwrap();
                            if t.is_empty() {
                                None
                            } else {
                                Some(t[n % t.len()].clone())
                            }
                        };
                        n += 1;
                        let Some(url) = url else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        match http.get(&url).send().await {
                            Ok(r) if r.status() == 200 => match r.bytes().await {
                                Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                                Err(e) => {
                                    failed.lock().unwrap().push(format!("{url}: body: {e}"));
                                    0
                                }
                            },
                            Ok(r) => {
                                failed
                                    .lock()
                                    .unwrap()
                                    .push(format!("{url}: status {}", r.status()));
                                0
                            }
                            Err(e) => {
                                failed.lock().unwrap().push(format!("{url}: {e:?}"));
                                0
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.lock().unwrap().clone(),
        )
    }
}

const FAST_SHUTDOWN: &str = "drain_seconds: 2\ngrace_period_seconds: 2\ngraceful_shutdown_timeout_seconds: 1\naccess_log: false\n";

/// A Kubernetes Service stand-in: only instances whose /readyz answers 200
/// receive traffic, refreshed every 100 ms.
fn endpoints_controller(
    instances: Vec<(String, String)>,
    targets: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let mut ready = Vec::new();
            for (readyz, url) in &instances {
                if status_of(readyz).await == 200 {
                    ready.push(url.clone());
                }
            }
            *targets.lock().unwrap() = ready;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffered_access_log_lines_are_written_by_the_exit() {
    bounded(async {
        let up = EchoServer::start("up");
        // A buffer and an interval the test never fills nor waits for: only
        // the flush at exit can write these lines.
        let settings = "drain_seconds: 0\ngrace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 1\naccess_log_buffer_kib: 1024\naccess_log_flush_ms: 600000\n";
        let mut gw = Gateway::builder(config(vec![route("/logged/{id}", "/l/{id}", &[&up])]))
            .settings(settings)
            .start()
            .await;
        for id in 1..=5 {
            assert_eq!(status_of(&gw.url(&format!("/logged/{id}"))).await, 200);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let logged = |text: &str| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|l| l["route"] == "/logged/{id}")
                .count()
        };
        assert_eq!(logged(&gw.stdout()), 0, "lines are held in the buffer");
        signal(gw.pid(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while gw.is_running() {
            assert!(Instant::now() < deadline, "the gateway did not exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = gw.stdout();
        assert_eq!(logged(&text), 5, "every line written at exit:\n{text}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_without_failing_a_request() {
    bounded(async {
        let up = EchoServer::start("up");
        let cfg = config(vec![route("/a", "/a", &[&up])]);
        let mut first = Gateway::builder(cfg.clone())
            .settings(FAST_SHUTDOWN)
            .start()
            .await;
        let second = Gateway::builder(cfg).settings(FAST_SHUTDOWN).start().await;
        let instances = vec![
            (first.admin_url("/readyz"), first.url("/a")),
            (second.admin_url("/readyz"), second.url("/a")),
        ];
        let targets = Arc::new(Mutex::new(Vec::new()));
        let stop_controller = Arc::new(AtomicBool::new(false));
        let controller = endpoints_controller(instances, targets.clone(), stop_controller.clone());
        let load = Load::start(8, targets.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;

        signal(first.pid(), "TERM");
        // /readyz fails at once while the listener keeps serving for the drain.
        eventually(
            Duration::from_secs(2),
            "/readyz fails after SIGTERM",
            || async { status_of(&first.admin_url("/readyz")).await == 503 },
        )
        .await;
        assert_eq!(
            status_of(&first.url("/a")).await,
            200,
            "still serving during the drain"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while first.is_running() {
            assert!(
                Instant::now() < deadline,
                "the first gateway did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (ok, failed) = load.finish().await;
        stop_controller.store(true, Ordering::Relaxed);
        let _ = controller.await;
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {:?}",
            failed.len(),
            ok + failed.len() as u64,
            &failed[..failed.len().min(10)]
        );
        assert!(ok > 100, "too little load to mean anything: {ok}");
        assert!(
            first.exit_status().is_some_and(|s| s.success()),
            "{:?}",
            first.exit_status()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_hands_over_the_socket_without_failing_a_request() {
    bounded_for(Duration::from_secs(90), async {
        let up = EchoServer::start("up");
        let settings = format!("{FAST_SHUTDOWN}upgrade_sock: \"{{dir}}/upgrade.sock\"\npid_file: \"{{dir}}/gateway.pid\"\n");
        let mut old = Gateway::builder(config(vec![route("/a", "/a", &[&up])])).settings(&settings).start().await;
        let dir = old.dir().to_path_buf();
        let targets = Arc::new(Mutex::new(vec![old.url("/a")]));
        let load = Load::start(8, targets);
        tokio::time::sleep(Duration::from_millis(800)).await;

        let mut new = Command::new(gateway_bin())
            .arg("--ocelot")
            .arg(dir.join("ocelot.json"))
            .arg("--listen")
            .arg(old.addr().to_string())
            .arg("--admin-listen")
            .arg(old.admin_addr().to_string())
            .arg("--settings")
            .arg(dir.join("gateway.yaml"))
            .arg("-u")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("new.stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("new.stderr")).unwrap())
            .spawn()
            .unwrap();
        let sock = dir.join("upgrade.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "the new process never opened its upgrade socket");
            assert!(new.try_wait().unwrap().is_none(), "new process exited: {}", std::fs::read_to_string(dir.join("new.stderr")).unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        signal(old.pid(), "QUIT");

        let deadline = Instant::now() + Duration::from_secs(30);
        while old.is_running() {
            assert!(Instant::now() < deadline, "the old process did not exit after handing over");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (ok, failed) = load.finish().await;
        let new_alive = new.try_wait().unwrap().is_none();
        let served_after = status_of(&old.url("/a")).await;
        let _ = new.kill();
        let _ = new.wait();
        assert!(new_alive, "new process died: {}", std::fs::read_to_string(dir.join("new.stderr")).unwrap_or_default());
        assert_eq!(served_after, 200, "the new process serves the same port");
        assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), ok + failed.len() as u64, &failed[..failed.len().min(10)]);
        assert!(ok > 100, "too little load to mean anything: {ok}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rate_limiting_and_show_backend_health() {
    bounded(async {
        let up = EchoServer::start("up");
        let limited = with(
            route("/limited", "/limited", &[&up]),
            json!({ "RateLimitOptions": { "Limit": 1, "Period": "1m" } }),
        );
        let gw = Gateway::start(config(vec![limited])).await;
        let client_id = ("oc-client", "metrics-test");
        assert_eq!(get(&gw.url("/limited"), &[client_id]).await.status, 200);
        assert_eq!(get(&gw.url("/limited"), &[client_id]).await.status, 429);
        let text = metrics(&gw).await;
        assert_eq!(
            sample(&text, "gateway_rate_limited_total{route=\"/limited\"}"),
            1.0,
            "{text}"
        );
        let backend = format!(
            "gateway_backend_healthy{{backend=\"{}\",route=\"/limited\"}}",
            up.addr()
        );
        assert_eq!(sample(&text, &backend), 1.0, "{text}");
        assert_eq!(
            sample(&text, "gateway_config_reloads_total{result=\"failure\"}"),
            0.0,
            "{text}"
        );
        assert!(
            text.contains("gateway_config_reloads_total{result=\"failure\"} 0"),
            "{text}"
        );
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
            sample(&metrics(&gw).await, "gateway_settings_reloads_total{result=\"failure\"}") >= 1.0
        })
        .await;
        assert_eq!(preflight().await.as_deref(), Some("https://app.example"));
        assert!(gw.stderr().contains("allowed_origns"), "{}", gw.stderr());
    })
    .await
}

/// A gateway with a TLS listener serving `pki`'s certificate from
/// `gateway-cert.pem` / `gateway-key.pem` in its folder.
async fn tls_gateway(up: &EchoServer, pki: &TestPki, poll_seconds: u64) -> (Gateway, SocketAddr) {
    let tls: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let gw = Gateway::builder(config(vec![route("/a", "/a", &[up])]))
        .file("gateway-cert.pem", pki.chain_pem.as_bytes())
        .file("gateway-key.pem", pki.key_pem.as_bytes())
        .settings(&format!(
            "config_poll_seconds: {poll_seconds}\ntls_listen:\n  - addr: \"{tls}\"\n    cert: gateway-cert.pem\n    key: gateway-key.pem\n"
        ))
        .start()
        .await;
    wait_listening(tls).await;
    (gw, tls)
}

async fn served_by(tls: SocketAddr, pki: &TestPki) -> bool {
    tls_handshake(tls, &pki.ca_pem).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_tls_certificate_is_served_without_a_restart() {
    bounded(async {
        let up = EchoServer::start("up");
        let (old, new) = (TestPki::localhost(), TestPki::localhost());
        let (gw, tls) = tls_gateway(&up, &old, 1).await;
        assert!(served_by(tls, &old).await);
        assert!(!served_by(tls, &new).await);
        let listener = format!("listener=\"{tls}\"");
        let not_after = format!("gateway_tls_certificate_not_after_seconds{{{listener}}}");
        assert!(sample(&metrics(&gw).await, &not_after) > 1.7e9);

        // Renewal as a careless script does it: the key first, so for a while
        // the key does not belong to the certificate. Refused, old one kept.
        write_atomically(&gw.dir().join("gateway-key.pem"), new.key_pem.as_bytes());
        eventually(
            Duration::from_secs(10),
            "mismatched pair refused",
            || async { gw.stderr().contains("is not the key of the certificate") },
        )
        .await;
        // Two more polls see the same refused pair.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            served_by(tls, &old).await,
            "a half-written pair replaced the certificate"
        );
        let failures =
            format!("gateway_tls_certificate_reloads_total{{{listener},result=\"failure\"}}");
        assert_eq!(sample(&metrics(&gw).await, &failures), 1.0);

        write_atomically(&gw.dir().join("gateway-cert.pem"), new.chain_pem.as_bytes());
        eventually(
            Duration::from_secs(10),
            "new certificate served",
            || async { served_by(tls, &new).await },
        )
        .await;
        assert!(!served_by(tls, &old).await);
        let text = metrics(&gw).await;
        let successes =
            format!("gateway_tls_certificate_reloads_total{{{listener},result=\"success\"}}");
        assert_eq!(sample(&text, &successes), 1.0);
        // Reported once, not at every poll while it lasted.
        assert_eq!(sample(&text, &failures), 1.0);
        assert_eq!(
            gw.stderr()
                .matches("is not the key of the certificate")
                .count(),
            1
        );

        // Requests through the renewed listener reach the upstream.
        let h1 = Transport::Tls {
            ca_pem: &new.ca_pem,
            alpn: &["http/1.1"],
        };
        let r = request(tls, h1, http::Method::GET, "/a", &[], bytes::Bytes::new()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.seen().target(), "/a");

        // A broken file never replaces a working certificate.
        write_atomically(
            &gw.dir().join("gateway-cert.pem"),
            b"-----BEGIN CERTIFICATE-----\nbroken\n",
        );
        eventually(
            Duration::from_secs(10),
            "broken certificate refused",
            || async { sample(&metrics(&gw).await, &failures) == 2.0 },
        )
        .await;
        assert!(served_by(tls, &new).await);
        assert!(gw.stderr().contains("gateway-cert.pem"), "{}", gw.stderr());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_tls_certificate_at_once() {
    bounded(async {
        let up = EchoServer::start("up");
        let (old, new) = (TestPki::localhost(), TestPki::localhost());
        // A poll too slow to matter here: only the signal can bring it in.
        let (gw, tls) = tls_gateway(&up, &old, 3600).await;
        write_atomically(&gw.dir().join("gateway-key.pem"), new.key_pem.as_bytes());
        write_atomically(&gw.dir().join("gateway-cert.pem"), new.chain_pem.as_bytes());
        assert!(served_by(tls, &old).await);
        signal(gw.pid(), "HUP");
        eventually(
            Duration::from_secs(10),
            "new certificate served",
            || async { served_by(tls, &new).await },
        )
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_is_logged_in_the_access_log_not_as_an_error() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::builder(config(vec![route("/slow", "/slow", &[&up])]))
            .settings("access_log: true\naccess_log_flush_ms: 50\n")
            .start()
            .await;
        let mut conn = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut conn,
            format!(
                "GET /slow HTTP/1.1\r\nHost: {}\r\nx-echo-hold: k\r\n\r\n",
                gw.authority()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        up.wait_for_requests(1, Duration::from_secs(5)).await;
        drop(conn);
        let aborted = || {
            gw.stdout()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["path"] == "/slow")
        };
        eventually(
            Duration::from_secs(10),
            "access log line of the aborted request",
            || async { aborted().is_some() },
        )
        .await;
        up.release("k");
        let line = aborted().unwrap();
        assert_eq!(line["status"], 0, "{line}");
        assert!(
            line["error"]
                .as_str()
                .is_some_and(|e| e.contains("Downstream")),
            "{line}"
        );
        // A client that hangs up halfway through its request head.
        let mut half = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut half, b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Par")
            .await
            .unwrap();
        drop(half);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!gw.stderr().contains("Fail to proxy"), "{}", gw.stderr());
        assert!(!gw.stderr().contains("ERROR"), "{}", gw.stderr());
        // The gateway keeps serving.
        assert_eq!(get(&gw.url("/slow"), &[]).await.status, 200);
    })
    .await
}
