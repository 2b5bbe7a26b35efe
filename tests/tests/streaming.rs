//! Bodies are streamed, not buffered: 1 GiB each way passes through while the
//! gateway's peak RSS (VmHWM) stays far below the body size. The test side
//! streams too (pattern chunks out, counting in), and the bytes are checked
//! against the pattern so a stream that reorders or drops data fails.

use std::time::Duration;

use e2e::{bounded_for, config, pattern, route, streaming_client, EchoServer, Gateway, Reply};

const GIB: u64 = 1024 * 1024 * 1024;
/// Far below 1 GiB, far above what a streaming proxy needs.
const MAX_PEAK_RSS: u64 = 150 * 1024 * 1024;
const LIMIT: Duration = Duration::from_secs(600);

fn mib(b: u64) -> u64 {
    b / (1024 * 1024)
}

async fn download(gw: &Gateway, total: u64, chunked: bool) {
    let mut req = streaming_client()
        .get(gw.url("/big/download"))
        .header("x-echo-body-bytes", total.to_string());
    if chunked {
        req = req.header("x-echo-chunked", "1");
    }
    let mut resp = req.send().await.expect("download request");
    assert_eq!(resp.status(), 200);
    if !chunked {
        assert_eq!(resp.content_length(), Some(total));
    }
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await.expect("download body") {
        assert!(
            pattern::matches_at(got, &chunk),
            "download corrupt at byte {got}"
        );
        got += chunk.len() as u64;
    }
    assert_eq!(got, total, "download truncated");
}

async fn upload(gw: &Gateway, total: u64, with_length: bool) {
    let mut req = streaming_client()
        .post(gw.url("/big/upload"))
        .header("x-echo-expect-pattern", "1")
        .body(reqwest::Body::wrap_stream(pattern::stream(total)));
    if with_length {
        req = req.header("content-length", total.to_string());
    }
    let r = Reply::read(req.send().await.expect("upload request")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_eq!(seen.body_len, total, "upload truncated");
    assert_eq!(seen.body_pattern_ok, Some(true), "upload corrupted");
}

async fn big_gateway(up: &EchoServer) -> Gateway {
    Gateway::start(config(vec![route("/big/{rest}", "/{rest}", &[up])])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_streams_with_flat_rss() {
    bounded_for(LIMIT, async {
        let up = EchoServer::start("big");
        let gw = big_gateway(&up).await;
        let start = std::time::Instant::now();
        download(&gw, GIB, false).await;
        let peak = gw.peak_rss();
        eprintln!(
            "1 GiB download in {:?}, gateway peak RSS {} MiB",
            start.elapsed(),
            mib(peak)
        );
        assert!(
            peak < MAX_PEAK_RSS,
            "gateway peak RSS {} MiB during a 1 GiB download",
            mib(peak)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_with_flat_rss() {
    bounded_for(LIMIT, async {
        let up = EchoServer::start("big");
        let gw = big_gateway(&up).await;
        let start = std::time::Instant::now();
        upload(&gw, GIB, true).await;
        let peak = gw.peak_rss();
        eprintln!(
            "1 GiB upload in {:?}, gateway peak RSS {} MiB",
            start.elapsed(),
            mib(peak)
        );
        assert!(
            peak < MAX_PEAK_RSS,
            "gateway peak RSS {} MiB during a 1 GiB upload",
            mib(peak)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_stream_both_ways() {
    bounded_for(LIMIT, async {
        let up = EchoServer::start("big");
        let gw = big_gateway(&up).await;
        let total = 64 * 1024 * 1024 + 3;
        download(&gw, total, true).await;
        upload(&gw, total, false).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_abandoning_a_download_does_not_hurt_the_gateway() {
    bounded_for(LIMIT, async {
        let up = EchoServer::start("big");
        let mut gw = big_gateway(&up).await;
        for _ in 0..3 {
            let mut resp = streaming_client()
                .get(gw.url("/big/download"))
                .header("x-echo-body-bytes", GIB.to_string())
                .send()
                .await
                .unwrap();
            let mut got = 0usize;
            while got < 4 * 1024 * 1024 {
                got += resp.chunk().await.unwrap().expect("more body").len();
            }
            drop(resp); // hang up mid-body
        }
        assert!(gw.is_running());
        download(&gw, 1024 * 1024, false).await;
        let peak = gw.peak_rss();
        assert!(peak < MAX_PEAK_RSS, "gateway peak RSS {} MiB", mib(peak));
    })
    .await
}
