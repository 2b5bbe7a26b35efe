//! The background service that keeps discovered pools current.

use super::source::CHANGED;
use crate::balancing::Pool;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keeps the pools of discovered services current: wakes when a registry is
/// due (or a watch brought news) and rebuilds the pools concerned, so a
/// route's balancer sees instances come and go without a restart.
pub struct DiscoveryRefresher {
    /// The pools fed by discovery in the snapshot being served.
    pub pools: Box<dyn Fn() -> Vec<Arc<Pool>> + Send + Sync>,
}

/// At most this many pools refresh at once.
const PARALLEL_REFRESHES: usize = 16;

#[async_trait]
impl BackgroundService for DiscoveryRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL_REFRESHES));
        loop {
            let pools = (self.pools)();
            let now = Instant::now();
            // Also the longest sleep, so a reload's new pools are picked up.
            let mut wake = now + Duration::from_secs(1);
            let mut refreshes = tokio::task::JoinSet::new();
            for pool in pools {
                let Some(discovery) = pool.discovery().cloned() else {
                    continue;
                };
                if discovery.needs_refresh(now) {
                    let permits = permits.clone();
                    refreshes.spawn(async move {
                        let _permit = permits.acquire_owned().await;
                        pool.refresh().await;
                    });
                }
                if let Some(due) = discovery.next_due() {
                    wake = wake.min(due);
                }
            }
            while refreshes.join_next().await.is_some() {}
            let wake = wake.max(Instant::now() + Duration::from_millis(20));
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = CHANGED.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
