//! The access log: buffered lines written by the exit, and a client that
//! goes away logged as such, not as an error.

use std::time::{Duration, Instant};

use e2e::{bounded, config, eventually, get, route, status_of, EchoServer, Gateway};
use serde_json::Value;

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
        gw.signal("TERM");
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
