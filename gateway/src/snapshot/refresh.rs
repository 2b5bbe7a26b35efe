//! Keeping the downstream hosts of the served snapshot resolved.

use super::Snapshot;
use crate::balancing::Pool;
use std::sync::Arc;
use std::time::Duration;

/// Refreshes pools side by side, so a slow DNS server or registry costs one
/// timeout rather than one per route (at start and on reloads), at most 16 at once.
pub(super) async fn refresh_all(pools: Vec<Arc<Pool>>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(16));
    let mut refreshes = tokio::task::JoinSet::new();
    for pool in pools {
        let permits = permits.clone();
        refreshes.spawn(async move {
            let _permit = permits.acquire_owned().await;
            pool.refresh().await;
        });
    }
    while refreshes.join_next().await.is_some() {}
}

/// Re-resolves downstream host names of the current snapshot on a schedule, so
/// a DNS change reaches the balancers without a restart.
pub struct BackendRefresher {
    pub state: Arc<arc_swap::ArcSwap<Snapshot>>,
    pub every: Duration,
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for BackendRefresher {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => self.state.load_full().refresh_backends().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
