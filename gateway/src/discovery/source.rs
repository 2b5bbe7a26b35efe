//! The instance list of one service, asked of its registry on a schedule
//! (or followed by a `WatchKube` stream) and shared by every pool that names
//! the service. A failed query keeps the last good list.

use super::pool::ServiceRef;
use super::provider::ProviderKind;
use super::runtime::{on_discovery_runtime, spawn_on_discovery_runtime};
use super::settings::MIN_INTERVAL;
use super::{consul, dns, eureka, kube};
use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// One instance as a registry lists it: a host (name or address) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The address, when the registry gave one besides a name (DNS).
    pub(crate) addr: Option<IpAddr>,
}

/// A registry's answer.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    pub(crate) endpoints: Vec<Endpoint>,
    /// How long the answer holds (DNS TTL); `None`: the provider's interval.
    pub(crate) valid_for: Option<Duration>,
}

/// An instance ready for the balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instance {
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) port: u16,
}

#[derive(Default)]
struct SourceState {
    /// The last good list; `None` until a query succeeded once.
    instances: Option<Arc<[Instance]>>,
    /// Bumped whenever `instances` changes, so pools know to rebuild.
    generation: u64,
    next_fetch: Option<Instant>,
    /// The last query failed (logged once per outage).
    failing: bool,
}

/// The instance list of one service, shared by the pools of every route that
/// names it, and refreshed by whichever of them finds it due.
pub(crate) struct Source {
    service: ServiceRef,
    name: String,
    state: Mutex<SourceState>,
    /// Serialises queries: pools due at once ask the registry once.
    fetching: tokio::sync::Mutex<()>,
    /// The `WatchKube` stream, while it runs.
    watch: Mutex<Option<WatchHandle>>,
}

struct WatchHandle {
    abort: tokio::task::AbortHandle,
    alive: Arc<AtomicBool>,
    pid: u32,
}

impl WatchHandle {
    fn running(&self) -> bool {
        self.alive.load(Ordering::Acquire) && self.pid == std::process::id()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Ok(mut watch) = self.watch.lock() {
            if let Some(handle) = watch.take() {
                handle.abort.abort();
            }
        }
    }
}

/// Sources by [`ServiceRef::key`], weakly: a source lives as long as a pool uses it.
static SOURCES: Lazy<Mutex<HashMap<String, Weak<Source>>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));

/// Wakes the [`DiscoveryRefresher`](super::DiscoveryRefresher) when a watch brought news.
pub(super) static CHANGED: Notify = Notify::const_new();

impl Source {
    pub(super) fn shared(service: &ServiceRef) -> Arc<Source> {
        let key = service.key();
        let make = || {
            Arc::new(Source {
                service: service.clone(),
                name: service.describe(),
                state: Mutex::new(SourceState::default()),
                fetching: tokio::sync::Mutex::new(()),
                watch: Mutex::new(None),
            })
        };
        let Ok(mut sources) = SOURCES.lock() else {
            return make();
        };
        if let Some(existing) = sources.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        sources.retain(|_, weak| weak.strong_count() > 0);
        let source = make();
        sources.insert(key, Arc::downgrade(&source));
        source
    }

    pub(super) fn generation(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.generation)
    }

    fn watching(&self) -> bool {
        self.watch
            .lock()
            .is_ok_and(|w| w.as_ref().is_some_and(WatchHandle::running))
    }

    /// Whether the registry should be asked now.
    pub(super) fn due(&self, now: Instant) -> bool {
        if self.service.provider.kind == ProviderKind::WatchKube {
            return !self.watching();
        }
        self.state
            .lock()
            .map_or(true, |s| s.next_fetch.is_none_or(|t| now >= t))
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        if self.service.provider.kind == ProviderKind::WatchKube && self.watching() {
            return None;
        }
        self.state.lock().ok().and_then(|s| s.next_fetch)
    }

    /// The current list and its generation, asking the registry first when
    /// that is due (or starting the watch). `None`: never got a good answer.
    pub(super) async fn instances(self: &Arc<Self>) -> (Option<Arc<[Instance]>>, u64) {
        if self.due(Instant::now()) {
            let _serial = self.fetching.lock().await;
            // Another pool may have asked while this one waited.
            if self.due(Instant::now()) {
                if self.service.provider.kind == ProviderKind::WatchKube {
                    self.start_watch().await;
                } else {
                    let result = Source::fetch(self.service.clone()).await;
                    self.apply(result, Instant::now()).await;
                }
            }
        }
        match self.state.lock() {
            Ok(s) => (s.instances.clone(), s.generation),
            Err(_) => (None, 0),
        }
    }

    /// One query, run on the discovery runtime.
    async fn fetch(service: ServiceRef) -> Result<Fetched, String> {
        on_discovery_runtime(async move {
            let provider = service.provider.clone();
            let query = async {
                match provider.kind {
                    ProviderKind::Consul | ProviderKind::PollConsul => {
                        consul::fetch(&provider, &service).await
                    }
                    ProviderKind::Kube | ProviderKind::PollKube | ProviderKind::WatchKube => {
                        kube::fetch(&provider, &service).await
                    }
                    ProviderKind::Eureka => eureka::fetch(&provider, &service).await,
                    ProviderKind::Dns => dns::fetch(&provider, &service).await,
                    ProviderKind::Unsupported => Ok(Fetched::default()),
                }
            };
            // DNS has its own timeouts; the HTTP registries get one overall bound.
            match tokio::time::timeout(provider.timeout() + Duration::from_secs(1), query).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {:?}", provider.timeout())),
            }
        })
        .await
    }

    /// Records a query's outcome: a new list on success (its names resolved),
    /// the last good list kept on failure.
    async fn apply(&self, result: Result<Fetched, String>, now: Instant) {
        let interval = self.service.provider.interval();
        match result {
            Ok(fetched) => {
                let instances = resolve(fetched.endpoints).await;
                let settings = &self.service.provider.settings.dns;
                let valid_for = fetched.valid_for.map(|ttl| {
                    ttl.clamp(
                        Duration::from_secs(settings.min_ttl_seconds),
                        Duration::from_secs(settings.max_ttl_seconds.max(1)),
                    )
                });
                self.store(
                    instances,
                    Some(now + valid_for.unwrap_or(interval).max(MIN_INTERVAL)),
                );
            }
            Err(e) => {
                let Ok(mut state) = self.state.lock() else {
                    return;
                };
                if !state.failing {
                    match &state.instances {
                        Some(last) => log::warn!(
                            "{}: {e}; keeping its last {} instance(s)",
                            self.name,
                            last.len()
                        ),
                        None => log::warn!("{}: {e}; no instances known yet", self.name),
                    }
                } else {
                    log::debug!("{}: {e}", self.name);
                }
                state.failing = true;
                state.next_fetch = Some(now + interval);
            }
        }
    }

    /// A new good list (and when to ask again; `None` for a watch).
    pub(super) fn store(&self, instances: Vec<Instance>, next_fetch: Option<Instant>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.failing {
            log::info!(
                "{}: registry answers again ({} instance(s))",
                self.name,
                instances.len()
            );
        }
        state.failing = false;
        state.next_fetch = next_fetch;
        if state.instances.as_deref() != Some(instances.as_slice()) {
            log::info!(
                "{}: {} instance(s){}",
                self.name,
                instances.len(),
                if instances.is_empty() {
                    String::new()
                } else {
                    format!(": {}", summary(&instances))
                }
            );
            state.instances = Some(instances.into());
            state.generation += 1;
            drop(state);
            CHANGED.notify_one();
        }
    }

    /// Starts the `WatchKube` stream (after the first list, so a pool is
    /// filled before the stream runs), unless one runs.
    async fn start_watch(self: &Arc<Self>) {
        let alive = Arc::new(AtomicBool::new(true));
        let weak = Arc::downgrade(self);
        let service = self.service.clone();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let task = kube::watch(service, weak, alive.clone(), first_tx);
        let Some(abort) = spawn_on_discovery_runtime(task) else {
            return;
        };
        if let Ok(mut watch) = self.watch.lock() {
            if let Some(old) = watch.take() {
                old.abort.abort();
            }
            *watch = Some(WatchHandle {
                abort,
                alive,
                pid: std::process::id(),
            });
        }
        // Ocelot's WatchKube waits up to a second for its first results.
        let _ = tokio::time::timeout(
            Duration::from_secs(1).max(self.service.provider.timeout()),
            first_rx,
        )
        .await;
    }
}

/// Instances from endpoints, host names resolved (Consul node names, Eureka
/// host names); an instance whose name does not resolve is left out.
pub(super) async fn resolve(endpoints: Vec<Endpoint>) -> Vec<Instance> {
    let mut instances = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let ip = endpoint.addr.or_else(|| {
            endpoint
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        });
        let addr = match ip {
            Some(ip) => SocketAddr::new(ip, endpoint.port),
            None => match tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await {
                // Prefer IPv4, as HostDiscovery does for DownstreamHostAndPorts.
                Ok(addrs) => {
                    let addrs: Vec<SocketAddr> = addrs.collect();
                    match addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first()) {
                        Some(addr) => *addr,
                        None => continue,
                    }
                }
                Err(e) => {
                    log::warn!(
                        "cannot resolve discovered host {}: {e}; leaving it out",
                        endpoint.host
                    );
                    continue;
                }
            },
        };
        let instance = Instance {
            addr,
            host: endpoint.host,
            port: endpoint.port,
        };
        if !instances.contains(&instance) {
            instances.push(instance);
        }
    }
    instances
}

fn summary(instances: &[Instance]) -> String {
    let mut text: Vec<String> = instances
        .iter()
        .take(8)
        .map(|i| i.addr.to_string())
        .collect();
    if instances.len() > 8 {
        text.push("…".into());
    }
    text.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocelot_compat::model::{FileConfiguration, FileRoute};
    use serde_json::json;

    fn global(sd: serde_json::Value) -> FileConfiguration {
        ocelot_compat::model::from_value(
            &json!({"Routes": [], "GlobalConfiguration": {"ServiceDiscoveryProvider": sd}}),
        )
        .0
    }

    #[tokio::test]
    async fn a_failed_query_keeps_the_last_good_list() {
        let c = global(json!({"Type": "Eureka"}));
        let route = FileRoute {
            service_name: Some("keep-last-good".into()),
            ..Default::default()
        };
        let service = ServiceRef::for_route(
            &route,
            &c,
            &crate::discovery::Discovery::from_settings(&Default::default()).unwrap(),
        )
        .expect("a service");
        let source = Source::shared(&service);
        let now = Instant::now();
        let endpoint = |port| Endpoint {
            host: "127.0.0.1".into(),
            port,
            addr: None,
        };
        source
            .apply(
                Ok(Fetched {
                    endpoints: vec![endpoint(1), endpoint(2)],
                    valid_for: None,
                }),
                now,
            )
            .await;
        assert_eq!(source.generation(), 1);
        source.apply(Err("connection refused".into()), now).await;
        let state = source.state.lock().expect("lock");
        assert_eq!(state.instances.as_ref().map(|i| i.len()), Some(2));
        assert_eq!(state.generation, 1);
        assert!(state.failing);
    }
}
