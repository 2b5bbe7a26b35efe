//! The process's life: not ready while the proxy port is taken, SIGTERM
//! drains without failing a request, and `-u` hands the listening socket to
//! a new process under load, whatever the clients do with their connections
//! (kept alive, `Connection: close`, a new one per request).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::gateway::admin_status;
use e2e::load::{ClientKind, Load};
use e2e::raw::RawConnection;
use e2e::{
    assert_routed, bounded, bounded_for, config, eventually, gateway_bin, get, route, status_of,
    EchoServer, Gateway,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_the_proxy_port_is_taken() {
    bounded(async {
        let up = EchoServer::start("up");
        // Another process (here: the test) already listens on the proxy port.
        let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = blocker.local_addr().unwrap();
        let mut gw = Gateway::builder(config(vec![route("/r", "/r", &[&up])]))
            .listen(taken)
            .launch();

        // Exiting with an error is fine; answering ready is not: traffic sent
        // to the port would reach the other process.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if let Some(status) = gw.exit_status() {
                assert!(!status.success(), "exited 0 without serving");
                return;
            }
            let ready = admin_status(gw.admin_addr(), "/readyz").await;
            assert_ne!(
                ready,
                Some(200),
                "/readyz is 200 while {taken} belongs to another process"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Once the port is free, the gateway may still come up.
        drop(blocker);
        if gw.wait_ready().await.is_ok() {
            assert_routed(&get(&gw.url("/r"), &[]).await, "up", "/r");
        }
    })
    .await
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
        // Keep-alive, `Connection: close` and new-connection-per-request clients.
        let load = Load::start_kinds(&ClientKind::ALL, 3, targets.clone(), Duration::ZERO);
        tokio::time::sleep(Duration::from_secs(1)).await;

        first.signal("TERM");
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
        let (ok, failed) = load.finish_counts().await;
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

/// `gateway -u` with `old`'s files and addresses, once it waits on the
/// upgrade socket; then `old` is told to hand its sockets over (SIGQUIT).
async fn upgrade(old: &Gateway) -> std::process::Child {
    let dir = old.dir().to_path_buf();
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
        .stdout(std::fs::File::create(dir.join("new.stdout")).expect("new.stdout"))
        .stderr(std::fs::File::create(dir.join("new.stderr")).expect("new.stderr"))
        .spawn()
        .expect("spawn the new gateway");
    let sock = dir.join("upgrade.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the new process never opened its upgrade socket"
        );
        assert!(
            new.try_wait().expect("wait").is_none(),
            "new process exited: {}",
            std::fs::read_to_string(dir.join("new.stderr")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    old.signal("QUIT");
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_hands_over_the_socket_without_failing_a_request() {
    bounded_for(Duration::from_secs(90), async {
        let up = EchoServer::start("up");
        let settings = format!("{FAST_SHUTDOWN}upgrade_sock: \"{{dir}}/upgrade.sock\"\npid_file: \"{{dir}}/gateway.pid\"\n");
        let mut old = Gateway::builder(config(vec![route("/a", "/a", &[&up])])).settings(&settings).start().await;
        let dir = old.dir().to_path_buf();
        let targets = Arc::new(Mutex::new(vec![old.url("/a")]));
        // Keep-alive, `Connection: close` and new-connection-per-request clients.
        let load = Load::start_kinds(&ClientKind::ALL, 3, targets, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(800)).await;

        let mut new = upgrade(&old).await;
        let quit_at = Instant::now();

        let deadline = Instant::now() + Duration::from_secs(30);
        while old.is_running() {
            assert!(Instant::now() < deadline, "the old process did not exit after handing over");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let outcomes = load.finish().await;
        let ok = outcomes.iter().filter(|o| o.status == 200).count();
        // Each failure with when it was sent, from the SIGQUIT on.
        let failed: Vec<String> = outcomes
            .iter()
            .filter(|o| o.status != 200)
            .map(|o| {
                let at = match o.started.checked_duration_since(quit_at) {
                    Some(after) => format!("+{} ms", after.as_millis()),
                    None => format!("-{} ms", quit_at.duration_since(o.started).as_millis()),
                };
                format!("{at}: {}", o.describe())
            })
            .collect();
        let new_alive = new.try_wait().unwrap().is_none();
        let served_after = status_of(&old.url("/a")).await;
        let _ = new.kill();
        let _ = new.wait();
        assert!(new_alive, "new process died: {}", std::fs::read_to_string(dir.join("new.stderr")).unwrap_or_default());
        assert_eq!(served_after, 200, "the new process serves the same port");
        assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(10)]);
        assert!(ok > 100, "too little load to mean anything: {ok}");
    })
    .await
}

/// Connections that wait for a request when the listeners close: `fresh`
/// ones accepted without a request yet, and kept-alive ones that have had an
/// answer. Returns them, each with its kind.
async fn waiting_connections(
    gw: &Gateway,
    fresh: usize,
    kept: usize,
) -> Vec<(&'static str, RawConnection)> {
    let mut conns = Vec::new();
    for _ in 0..kept {
        let mut c = RawConnection::connect(gw.addr()).await.expect("connect");
        assert!(c.send(b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n").await);
        let r = c.read_response(Duration::from_secs(5)).await;
        assert_eq!(r.status(), Some(200), "{}", r.describe());
        conns.push(("kept-alive", c));
    }
    for _ in 0..fresh {
        conns.push((
            "fresh",
            RawConnection::connect(gw.addr()).await.expect("connect"),
        ));
    }
    conns
}

/// Each connection sends its request now: every one is answered, with
/// `Connection: close`.
async fn all_answered_with_close(conns: Vec<(&'static str, RawConnection)>) {
    let mut failures = Vec::new();
    let total = conns.len();
    for (kind, mut c) in conns {
        if !c.send(b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n").await {
            failures.push(format!("{kind}: closed before the request"));
            continue;
        }
        let r = c.read_response(Duration::from_secs(5)).await;
        if r.status() != Some(200) || r.header("connection").as_deref() != Some("close") {
            failures.push(format!("{kind}: {}", r.describe()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} connections: {failures:?}",
        failures.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_for_a_request_are_answered_when_the_listeners_close() {
    bounded(async {
        let up = EchoServer::start("up");
        let settings = "drain_seconds: 0\ngrace_period_seconds: 3\ngraceful_shutdown_timeout_seconds: 1\nclient_limits: {shutdown_request_wait_ms: 2000}\n";
        let mut gw = Gateway::builder(config(vec![route("/a", "/a", &[&up])]))
            .settings(settings)
            .start()
            .await;
        let conns = waiting_connections(&gw, 10, 10).await;
        gw.signal("TERM");
        // The listener is closed once a new connection is refused.
        eventually(Duration::from_secs(5), "the listener closes", || async {
            tokio::net::TcpStream::connect(gw.addr()).await.is_err()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        all_answered_with_close(conns).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.is_running() {
            assert!(Instant::now() < deadline, "the gateway did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_for_a_request_are_answered_at_the_upgrade_hand_over() {
    bounded_for(Duration::from_secs(60), async {
        let up = EchoServer::start("up");
        let settings = format!("{FAST_SHUTDOWN}upgrade_sock: \"{{dir}}/upgrade.sock\"\npid_file: \"{{dir}}/gateway.pid\"\n");
        let old = Gateway::builder(config(vec![route("/a", "/a", &[&up])])).settings(&settings).start().await;
        // Accepted by the old process: the new one does not run yet.
        let conns = waiting_connections(&old, 10, 10).await;
        let mut new = upgrade(&old).await;
        // The old process hands the sockets over, then closes its listeners.
        eventually(Duration::from_secs(15), "the old process closes its listeners", || async {
            old.stderr().contains("Shutting down")
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        all_answered_with_close(conns).await;
        assert_eq!(status_of(&old.url("/a")).await, 200, "the new process serves the port");
        let _ = new.kill();
        let _ = new.wait();
    })
    .await
}
