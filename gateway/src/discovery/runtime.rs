//! The tokio runtime registry queries and watches run on.

use std::future::Future;
use std::sync::Mutex;

/// Registry queries and watches run on a runtime of their own: a query
/// started while the gateway boots (on a throw-away runtime) or from a reload
/// must not die with the runtime that asked, and a watch must outlive it.
fn discovery_runtime() -> Option<tokio::runtime::Handle> {
    static RUNTIME: Mutex<Option<(u32, tokio::runtime::Handle)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().ok()?;
    if let Some((owner, handle)) = slot.as_ref() {
        // After a fork (`-d`) the runtime's thread stayed behind in the parent.
        if *owner == pid {
            return Some(handle.clone());
        }
    }
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("discovery")
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            let handle = runtime.handle().clone();
            // Lives as long as the process.
            std::mem::forget(runtime);
            *slot = Some((pid, handle.clone()));
            Some(handle)
        }
        Err(e) => {
            log::error!("cannot start the service discovery runtime: {e}");
            None
        }
    }
}

pub(super) async fn on_discovery_runtime<T: Send + 'static>(
    f: impl Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    match discovery_runtime() {
        Some(rt) => rt
            .spawn(f)
            .await
            .unwrap_or_else(|e| Err(format!("query task failed: {e}"))),
        None => f.await,
    }
}

pub(super) fn spawn_on_discovery_runtime(
    f: impl Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::AbortHandle> {
    discovery_runtime().map(|rt| rt.spawn(f).abort_handle())
}
