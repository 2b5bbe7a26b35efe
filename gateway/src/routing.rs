//! A loaded configuration compiled for serving: the route table plus, per
//! route, everything the request path needs, resolved once (downstream
//! template, scheme, balancer, timeout). A [`Snapshot`] never changes; a reload
//! builds a new one.

use crate::balancing::{BalancerKind, Pool, Target};
use crate::traffic::{Traffic, TrafficPolicy};
use ocelot_compat::effective;
use ocelot_compat::model::{FileConfiguration, FileRoute};
use ocelot_compat::table::RouteTable;
use ocelot_compat::template::DownstreamTemplate;
use ocelot_compat::{Diagnostic, LoadedConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// One route, ready to serve.
pub struct CompiledRoute {
    /// How logs and error bodies name the route: its upstream template.
    pub name: String,
    pub downstream: DownstreamTemplate,
    /// TLS to the downstream service (`https`/`wss`).
    pub tls: bool,
    /// HTTP version and ALPN to the downstream service (`DownstreamHttpVersion`/`Policy`).
    pub protocol: crate::protocols::UpstreamProtocol,
    pub method: Option<http::Method>,
    pub timeout: Duration,
    pub verify_cert: bool,
    /// Authentication schemes the route requires (empty: anonymous).
    pub auth_schemes: Vec<String>,
    /// The route gets its hosts from service discovery (`ServiceName`).
    pub uses_discovery: bool,
    pub pool: Arc<Pool>,
    /// What the pool was built from: an unchanged key after a reload means the
    /// pool (round-robin position, in-flight counts, health) carries over.
    pub pool_key: String,
    /// IP security, rate limiting and QoS (state lives in `Traffic`).
    pub traffic: TrafficPolicy,
    /// Authentication, authorization, claims and header transforms, request id.
    pub policies: crate::policies::RoutePolicies,
    /// Handles into the request metrics, labelled with `name`.
    pub metrics: crate::metrics::RouteMetrics,
    /// Output cache options (`CacheOptions` with `TtlSeconds` > 0).
    pub cache: Option<crate::cache::CachePolicy>,
}

impl CompiledRoute {
    /// Compiles one route; `previous` are pools to take over by pool key.
    pub(crate) fn compile(
        route: &FileRoute,
        config: &FileConfiguration,
        previous: &HashMap<&str, Arc<Pool>>,
    ) -> CompiledRoute {
        let global = &config.global;
        let lb = effective::load_balancer(route, global);
        let kind = BalancerKind::from_options(lb.r#type.as_deref(), lb.key.as_deref(), lb.expiry);
        let targets: Vec<Target> = route
            .downstream_host_and_ports
            .iter()
            .filter_map(|hp| {
                let port = u16::try_from(hp.port).ok()?;
                Some(Target {
                    host: hp.host.trim().to_string(),
                    port,
                })
            })
            .collect();
        // With a ServiceName the hosts come from the registry (Ocelot ignores
        // DownstreamHostAndPorts then); the key names provider and service so
        // a reload that changes neither keeps the pool and its instances.
        let service = crate::discovery::ServiceRef::for_route(route, config);
        let pool_key = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}",
            route.upstream_path_template,
            route.key,
            kind,
            targets,
            service.as_ref().map(|s| s.key())
        );
        let pool = previous.get(pool_key.as_str()).cloned().unwrap_or_else(|| {
            let registry = Traffic::current().health.registry();
            Arc::new(match &service {
                Some(service) => Pool::with_discovery(kind, service.discovery(), registry),
                None => Pool::with_health_registry(kind, targets, registry),
            })
        });
        let scheme = route
            .downstream_scheme
            .as_deref()
            .unwrap_or("http")
            .to_ascii_lowercase();
        CompiledRoute {
            name: route.upstream_path_template.clone().unwrap_or_default(),
            downstream: DownstreamTemplate::parse(
                route.downstream_path_template.as_deref().unwrap_or("/"),
            ),
            tls: scheme == "https" || scheme == "wss",
            protocol: crate::protocols::UpstreamProtocol::compile(
                route.downstream_http_version.as_deref(),
                route.downstream_http_version_policy.as_deref(),
                scheme == "https" || scheme == "wss",
            ),
            method: route
                .downstream_http_method
                .as_deref()
                .filter(|m| !m.is_empty())
                .and_then(|m| http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok()),
            timeout: effective::timeout(route, global),
            verify_cert: !route.dangerous_accept_any_server_certificate_validator,
            auth_schemes: effective::authentication_schemes(&effective::authentication(
                route, global,
            )),
            uses_discovery: route
                .service_name
                .as_deref()
                .is_some_and(|s| !s.trim().is_empty()),
            pool,
            pool_key,
            traffic: Traffic::current().compile(route, config),
            policies: crate::policies::RoutePolicies::compile(route, global),
            metrics: Default::default(),
            cache: crate::cache::CachePolicy::compile(route, config),
        }
    }
}

/// An immutable, compiled configuration. Requests hold the snapshot they
/// started with, whatever reloads happen meanwhile.
pub struct Snapshot {
    pub table: RouteTable,
    pub routes: Vec<CompiledRoute>,
    /// The merged configuration as Ocelot JSON.
    pub value: serde_json::Value,
    pub config: FileConfiguration,
    pub warnings: Vec<Diagnostic>,
    /// `Aggregates`, in the order of `config.aggregates` (the table's indexes).
    pub aggregates: Vec<crate::aggregate::CompiledAggregate>,
    /// Dynamic routing (service discovery without static routes): routes
    /// made per service on first use, numbered after `routes`.
    pub dynamic: Option<crate::discovery::dynamic::DynamicRoutes>,
}

impl Snapshot {
    /// Compiles a loaded configuration. Pools of routes that did not change are
    /// taken over from `previous`, so their state survives the reload.
    pub fn build(loaded: LoadedConfig, previous: Option<&Snapshot>) -> Snapshot {
        let LoadedConfig {
            value,
            config,
            mut warnings,
            ..
        } = loaded;
        let reusable: HashMap<&str, Arc<Pool>> = previous
            .map(|p| {
                p.routes
                    .iter()
                    .map(|r| (r.pool_key.as_str(), r.pool.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let routes: Vec<CompiledRoute> = config
            .routes
            .iter()
            .map(|r| CompiledRoute::compile(r, &config, &reusable))
            .collect();
        for (i, route) in routes.iter().enumerate() {
            let location = config.routes[i].describe(i);
            for (field, message) in &route.traffic.warnings {
                warnings.push(Diagnostic::warning(
                    location.clone(),
                    field.clone(),
                    message.clone(),
                ));
            }
            for (field, message) in route.policies.warnings() {
                warnings.push(Diagnostic::warning(
                    location.clone(),
                    field.clone(),
                    message.clone(),
                ));
            }
            for (field, message) in &route.protocol.warnings {
                warnings.push(Diagnostic::warning(
                    location.clone(),
                    field.clone(),
                    message.clone(),
                ));
            }
            if let Some(warning) =
                crate::discovery::ServiceRef::for_route(&config.routes[i], &config)
                    .and_then(|s| s.warning())
            {
                warnings.push(Diagnostic::warning(location, "ServiceName", warning));
            }
        }
        let (aggregates, aggregate_warnings) = crate::aggregate::compile(&config);
        warnings.extend(aggregate_warnings);
        let dynamic = crate::discovery::dynamic::DynamicRoutes::new(
            &config,
            routes.len(),
            previous.and_then(|p| p.dynamic.as_ref()),
        );
        Snapshot {
            table: ocelot_compat::route_table(&config),
            routes,
            value,
            config,
            warnings,
            aggregates,
            dynamic,
        }
    }

    /// Route number `index`: a static route, or a dynamic one made since.
    pub fn route(&self, index: usize) -> Option<&CompiledRoute> {
        self.routes
            .get(index)
            .or_else(|| self.dynamic.as_ref()?.get(index))
    }

    /// The pools fed by service discovery, static and dynamic routes'.
    pub fn discovery_pools(&self) -> Vec<Arc<Pool>> {
        let dynamic = self.dynamic.iter().flat_map(|d| d.routes());
        self.routes
            .iter()
            .chain(dynamic)
            .filter(|r| r.pool.discovery().is_some())
            .map(|r| r.pool.clone())
            .collect()
    }

    /// Resolves the hosts of the pools that `previous` did not already have.
    pub async fn refresh_new_backends(&self, previous: &Snapshot) {
        let new = self.routes.iter().filter(|route| {
            !previous
                .routes
                .iter()
                .any(|p| Arc::ptr_eq(&p.pool, &route.pool))
        });
        refresh_all(new.map(|r| r.pool.clone()).collect()).await;
    }

    /// Resolves every route's downstream hosts (again).
    pub async fn refresh_backends(&self) {
        refresh_all(self.routes.iter().map(|r| r.pool.clone()).collect()).await;
    }
}

/// Refreshes pools side by side, so a slow DNS server or registry costs one
/// timeout rather than one per route (at start and on reloads), at most 16 at once.
async fn refresh_all(pools: Vec<Arc<Pool>>) {
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
