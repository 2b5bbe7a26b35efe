//! What a route's pool is fed from: the [`ServiceRef`] a route names and the
//! [`PoolDiscovery`] that gives `pingora-load-balancing` its instances from
//! the service's shared [`Source`] (`source.rs`).

use super::provider::{Provider, ProviderKind};
use super::settings::Discovery;
use super::source::Source;
use crate::balancing::{BackendMeta, DiscoveredService};
use async_trait::async_trait;
use ocelot_compat::model::{FileConfiguration, FileRoute};
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::Backend;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One service of one provider: what a route's pool is fed from.
#[derive(Debug, Clone)]
pub(crate) struct ServiceRef {
    pub(super) provider: Arc<Provider>,
    pub(crate) service: String,
    /// The route's `ServiceNamespace`, when not empty.
    pub(crate) namespace: Option<String>,
    /// The route's `DownstreamScheme`: Ocelot's Kubernetes provider picks the
    /// port named so, and DNS SRV names use it.
    pub(super) scheme: String,
    /// A port from the route's `DownstreamHostAndPorts`, for DNS A records.
    pub(super) port: Option<u16>,
}

impl ServiceRef {
    /// The service a route asks for, or `None` when it has no `ServiceName`.
    pub(crate) fn for_route(
        route: &FileRoute,
        config: &FileConfiguration,
        discovery: &Discovery,
    ) -> Option<ServiceRef> {
        let service = route
            .service_name
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())?;
        Some(ServiceRef {
            provider: Provider::for_config(&config.global, discovery),
            service: service.to_string(),
            namespace: route
                .service_namespace
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            scheme: route
                .downstream_scheme
                .as_deref()
                .map(str::trim)
                .unwrap_or("")
                .to_ascii_lowercase(),
            port: route
                .downstream_host_and_ports
                .iter()
                .find_map(|hp| u16::try_from(hp.port).ok().filter(|p| *p > 0)),
        })
    }

    /// Identifies the provider and service, for the pool key (an unchanged key
    /// keeps the pool across reloads) and for sharing sources.
    pub(crate) fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{:?}",
            self.provider.fingerprint,
            self.namespace.as_deref().unwrap_or(""),
            self.service,
            self.scheme,
            self.port
        )
    }

    /// Why routes of this service will find nothing, if they will not.
    pub(crate) fn warning(&self) -> Option<String> {
        (self.provider.kind == ProviderKind::Unsupported).then(|| {
            format!(
                "no service discovery provider of type '{}' (supported: Consul, PollConsul, Kube, PollKube, WatchKube, Eureka, Dns); requests get 404",
                self.provider.type_name
            )
        })
    }

    /// The discovery for a new pool of this service, sharing the service's
    /// source with every other pool of it.
    pub(crate) fn discovery(&self) -> Arc<PoolDiscovery> {
        Arc::new(PoolDiscovery {
            source: Source::shared(self),
            seen: AtomicU64::new(0),
        })
    }

    pub(super) fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} service {ns}.{}", self.provider.type_name, self.service),
            None => format!("{} service {}", self.provider.type_name, self.service),
        }
    }
}

/// A pool's view of its service's [`Source`]: what the pool last took from
/// it, so the refresher rebuilds only pools whose list changed.
pub(crate) struct PoolDiscovery {
    source: Arc<Source>,
    seen: AtomicU64,
}

impl DiscoveredService for PoolDiscovery {
    fn boxed(self: Arc<Self>) -> Box<dyn ServiceDiscovery + Send + Sync> {
        Box::new(SharedDiscovery(self))
    }

    fn needs_refresh(&self, now: Instant) -> bool {
        self.source.due(now) || self.seen.load(Ordering::Acquire) != self.source.generation()
    }

    fn next_due(&self) -> Option<Instant> {
        self.source.next_due()
    }
}

struct SharedDiscovery(Arc<PoolDiscovery>);

#[async_trait]
impl ServiceDiscovery for SharedDiscovery {
    async fn discover(&self) -> pingora_error::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let (instances, generation) = self.0.source.instances().await;
        self.0.seen.store(generation, Ordering::Release);
        // Err keeps the pool's current backends (Backends::update).
        let instances = instances.ok_or_else(|| {
            pingora_error::Error::explain(
                pingora_error::ErrorType::ConnectError,
                "registry not answering yet",
            )
        })?;
        let mut backends = BTreeSet::new();
        for (index, instance) in instances.iter().enumerate() {
            let mut backend = Backend {
                addr: PingoraAddr::Inet(instance.addr),
                weight: 1,
                ext: Default::default(),
            };
            backend
                .ext
                .insert(BackendMeta::new(index, &instance.host, instance.port));
            backends.insert(backend);
        }
        Ok((backends, HashMap::new()))
    }
}
