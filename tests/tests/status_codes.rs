//! Gateway errors (unreachable or broken services are 502)
//! and upstream statuses passed through. Timeouts are in `qos.rs`.

use e2e::{bounded, closed_addr, config, get, raw, route, EchoServer, Gateway};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_502_with_empty_body() {
    bounded(async {
        let dead = closed_addr();
        let gw = Gateway::start(config(vec![json!({
            "UpstreamPathTemplate": "/dead",
            "DownstreamPathTemplate": "/dead",
            "DownstreamScheme": "http",
            "DownstreamHostAndPorts": [{ "Host": "127.0.0.1", "Port": dead.port() }],
        })]))
        .await;
        let r = get(&gw.url("/dead"), &[]).await;
        assert_eq!(r.status, 502);
        assert!(r.body.is_empty(), "{:?}", r.text());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_500_is_passed_through_verbatim() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/e", "/e", &[&up])])).await;
        let r = get(
            &gw.url("/e"),
            &[("x-echo-status", "500"), ("x-echo-header", "X-Err: boom")],
        )
        .await;
        assert_eq!(r.status, 500);
        assert_eq!(r.header("x-err"), Some("boom"));
        // The upstream's body, not a gateway error page.
        assert_eq!(r.seen().server, "up");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_4xx_and_5xx_pass_through() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/s", "/s", &[&up])])).await;
        for status in [400u16, 401, 403, 404, 409, 418, 429, 502, 503, 504] {
            let r = get(&gw.url("/s"), &[("x-echo-status", &status.to_string())]).await;
            assert_eq!(r.status, status);
            assert_eq!(
                r.seen().server,
                "up",
                "status {status} body should be the upstream's"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reason_phrase_is_passed_through() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/rp", "/rp", &[&up])])).await;
        let r = gw
            .raw_get(
                "/rp",
                &["x-echo-status: 503", "x-echo-reason: Custom Reason"],
            )
            .await;
        assert_eq!(
            r.status_line().as_deref(),
            Some("HTTP/1.1 503 Custom Reason"),
            "{}",
            r.describe()
        );

        let r = gw
            .raw_get("/rp", &["x-echo-status: 200", "x-echo-reason: Fine Thanks"])
            .await;
        assert_eq!(
            r.status_line().as_deref(),
            Some("HTTP/1.1 200 Fine Thanks"),
            "{}",
            r.describe()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_modified_is_passed_through_without_body() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::start(config(vec![route("/nm", "/nm", &[&up])])).await;
        let req = raw::get_request(
            "/nm",
            &gw.authority(),
            &[
                "If-None-Match: \"v1\"",
                "x-echo-status: 304",
                "x-echo-header: ETag: \"v1\"",
            ],
        );
        let r = raw::exchange_to_close(gw.addr(), &req).await;
        assert_eq!(r.status(), Some(304), "{}", r.describe());
        assert!(
            r.closed && !r.timed_out,
            "Connection: close not honoured: {}",
            r.describe()
        );
        assert_eq!(r.header("etag").as_deref(), Some("\"v1\""));
        assert!(r.body().is_empty(), "{}", r.describe());
        let seen = up.only_request();
        assert_eq!(seen.header("if-none-match"), Some("\"v1\""));
    })
    .await
}

fn route_to(addr: std::net::SocketAddr) -> serde_json::Value {
    config(vec![json!({
        "UpstreamPathTemplate": "/bad",
        "DownstreamPathTemplate": "/bad",
        "DownstreamScheme": "http",
        "DownstreamHostAndPorts": [{ "Host": "127.0.0.1", "Port": addr.port() }],
    })])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_without_answer_is_502() {
    bounded(async {
        let bad = e2e::upstream::bad_upstream(b"").await;
        let gw = Gateway::start(route_to(bad)).await;
        let r = get(&gw.url("/bad"), &[]).await;
        assert_eq!(r.status, 502);
        assert!(r.body.is_empty(), "{:?}", r.text());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answering_garbage_is_502() {
    bounded(async {
        let bad = e2e::upstream::bad_upstream(b"this is not HTTP at all\r\n\r\n").await;
        let gw = Gateway::start(route_to(bad)).await;
        let r = get(&gw.url("/bad"), &[]).await;
        assert_eq!(r.status, 502);
        assert!(r.body.is_empty(), "{:?}", r.text());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_with_a_bad_status_line_is_502() {
    bounded(async {
        let bad =
            e2e::upstream::bad_upstream(b"HTTP/1.1 2000 Way Too Big\r\nContent-Length: 0\r\n\r\n")
                .await;
        let gw = Gateway::start(route_to(bad)).await;
        let r = get(&gw.url("/bad"), &[]).await;
        assert_eq!(r.status, 502);
    })
    .await
}
