//! What clients are held to (`client_limits`, Kestrel's limits): a request
//! head that drips is answered 408 at its deadline, an idle connection is
//! closed at the keep-alive timeout, a request body slower than the minimum
//! rate gets 408, and connections past the maximum are closed at once; normal
//! clients are served all along.

use std::time::{Duration, Instant};

use e2e::raw::RawConnection;
use e2e::{bounded, config, get, route, EchoServer, Gateway};

const HEAD: &[u8] = b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n";

async fn gateway(limits: &str) -> (Gateway, EchoServer) {
    let up = EchoServer::start("up");
    let gw = Gateway::builder(config(vec![route("/a", "/a", &[&up])]))
        .settings(&format!("client_limits: {{{limits}}}\n"))
        .start()
        .await;
    (gw, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_request_head_gets_408_at_its_deadline_while_others_are_served() {
    bounded(async {
        let (gw, _up) = gateway("request_headers_timeout_seconds: 1").await;
        let started = Instant::now();
        let mut drips = Vec::new();
        for _ in 0..20 {
            let mut c = RawConnection::connect(gw.addr()).await.expect("connect");
            assert!(c.send(b"GET /a HTTP/1.1\r\nHost: gw\r\n").await);
            drips.push(c);
        }
        // Each sends a header line every 200 ms: every read is on time, the
        // head as a whole is not.
        let dripping = tokio::spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..15 {
                for c in drips.iter_mut() {
                    c.send(b"X-Drip: 1\r\n").await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            for mut c in drips {
                let r = c.read_response(Duration::from_secs(2)).await;
                let closed = r.closed || c.closed_within(Duration::from_secs(1)).await;
                answers.push((r, closed));
            }
            answers
        });
        for i in 0..10 {
            assert_eq!(get(&gw.url("/a"), &[]).await.status, 200, "request {i}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let answers = dripping.await.expect("drips");
        for (r, closed) in &answers {
            assert_eq!(r.status(), Some(408), "{}", r.describe());
            assert_eq!(r.header("connection").as_deref(), Some("close"));
            assert!(closed, "closed after the 408: {}", r.describe());
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        gw.wait_for_metrics(&["gateway_client_request_headers_timeouts_total 20"])
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_at_the_keep_alive_timeout() {
    bounded(async {
        let (gw, _up) = gateway("keep_alive_timeout_seconds: 1").await;
        let mut idle = Vec::new();
        for _ in 0..20 {
            let mut c = RawConnection::connect(gw.addr()).await.expect("connect");
            assert!(c.send(HEAD).await);
            let r = c.read_response(Duration::from_secs(5)).await;
            assert_eq!(r.status(), Some(200), "{}", r.describe());
            idle.push(c);
        }
        for _ in 0..20 {
            idle.push(RawConnection::connect(gw.addr()).await.expect("connect"));
        }
        // A connection that keeps asking is not idle.
        let mut busy = RawConnection::connect(gw.addr()).await.expect("connect");
        for i in 0..6 {
            assert!(busy.send(HEAD).await, "busy connection closed at {i}");
            let r = busy.read_response(Duration::from_secs(5)).await;
            assert_eq!(r.status(), Some(200), "busy request {i}: {}", r.describe());
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        for (i, c) in idle.iter_mut().enumerate() {
            assert!(
                c.closed_within(Duration::from_secs(3)).await,
                "idle connection {i} still open"
            );
        }
        gw.wait_for_metrics(&["gateway_client_keep_alive_timeouts_total 40"])
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_slower_than_the_minimum_rate_gets_408() {
    bounded(async {
        let (gw, up) = gateway(
            "min_request_body_data_rate: 1000, min_request_body_data_rate_grace_seconds: 1",
        )
        .await;
        let mut slow = RawConnection::connect(gw.addr()).await.expect("connect");
        assert!(
            slow.send(b"POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n")
                .await
        );
        let dripping = async {
            for _ in 0..40 {
                if !slow.send(&[b'x'; 10]).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        dripping.await;
        let r = slow.read_response(Duration::from_secs(3)).await;
        assert_eq!(r.status(), Some(408), "{}", r.describe());
        // A body at a normal pace is fine.
        let body = vec![b'y'; 200_000];
        let r = e2e::send(e2e::client().post(gw.url("/a")).body(body), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.seen().body_len, 200_000);
        assert!(up.requests().iter().all(|s| s.body_len != 100_000));
        gw.wait_for_metrics(&["gateway_client_slow_request_bodies_total 1"])
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_past_the_maximum_does_not_stop_normal_clients() {
    bounded(async {
        let (gw, _up) =
            gateway("max_concurrent_connections: 50, keep_alive_timeout_seconds: 2").await;
        // A normal client with its kept-alive connection.
        let mut normal = RawConnection::connect(gw.addr()).await.expect("connect");
        assert!(normal.send(HEAD).await);
        assert_eq!(
            normal.read_response(Duration::from_secs(5)).await.status(),
            Some(200)
        );
        // The flood: 300 connections that send nothing.
        let mut flood = Vec::new();
        for _ in 0..300 {
            if let Ok(c) = RawConnection::connect(gw.addr()).await {
                flood.push(c);
            }
        }
        let mut closed_at_once = 0;
        for c in flood.iter_mut() {
            if c.closed_within(Duration::from_millis(20)).await {
                closed_at_once += 1;
            }
        }
        assert!(
            closed_at_once >= 250,
            "connections past the maximum are closed at once: {closed_at_once}"
        );
        // The normal client is served throughout.
        for i in 0..5 {
            assert!(normal.send(HEAD).await, "normal connection closed at {i}");
            let r = normal.read_response(Duration::from_secs(5)).await;
            assert_eq!(r.status(), Some(200), "request {i}: {}", r.describe());
        }
        let refused = gw.metric("gateway_client_connections_refused_total").await;
        assert!(refused >= 250.0, "refused: {refused}");
        // The flood's own connections end at the keep-alive timeout, and new
        // clients get in again.
        drop(flood);
        e2e::eventually(Duration::from_secs(6), "places free again", || async {
            get(&gw.url("/a"), &[]).await.status == 200
        })
        .await;
    })
    .await
}
