//! Waiting for something to become true: polling with a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Polls `check` every 100 ms until it holds, or panics after `limit`
/// naming `what`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` every `every` until it returns `Ok`, and returns its value;
/// panics after `limit` with the last `Err` (what was seen instead).
pub async fn eventually_ok<T, F, Fut>(limit: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(why) => assert!(Instant::now() < deadline, "not within {limit:?}: {why}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls until something accepts TCP connections on `addr` (listeners other
/// than the one `/readyz` is checked through come up at their own pace).
pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}
