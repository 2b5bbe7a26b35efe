//! A loaded configuration compiled for serving: the route table plus, per
//! route, everything the request path needs, resolved once (downstream
//! template, scheme, balancer, timeout). A [`Snapshot`] never changes; a reload
//! builds a new one.

use crate::balancing::{BalancerKind, Pool, Target};
use ocelot_compat::effective;
use ocelot_compat::model::{FileConfiguration, FileRoute};
use ocelot_compat::table::RouteTable;
use ocelot_compat::template::DownstreamTemplate;
use ocelot_compat::{Diagnostic, LoadedConfig};
use std::sync::Arc;
use std::time::Duration;

/// One route, ready to serve.
pub struct CompiledRoute {
    /// How logs and error bodies name the route: its upstream template.
    pub name: String,
    pub downstream: DownstreamTemplate,
    /// TLS to the downstream service (`https`/`wss`).
    pub tls: bool,
    pub method: Option<http::Method>,
    pub timeout: Duration,
    pub verify_cert: bool,
    /// Authentication schemes the route requires (empty: anonymous).
    pub auth_schemes: Vec<String>,
    /// The route gets its hosts from service discovery (`ServiceName`).
    pub uses_discovery: bool,
    pub pool: Arc<Pool>,
}

impl CompiledRoute {
    fn compile(route: &FileRoute, config: &FileConfiguration) -> CompiledRoute {
        let global = &config.global;
        let lb = effective::load_balancer(route, global);
        let kind = BalancerKind::from_options(lb.r#type.as_deref(), lb.key.as_deref(), lb.expiry);
        let targets = route
            .downstream_host_and_ports
            .iter()
            .filter_map(|hp| {
                let port = u16::try_from(hp.port).ok()?;
                Some(Target { host: hp.host.trim().to_string(), port })
            })
            .collect();
        let scheme = route.downstream_scheme.as_deref().unwrap_or("http").to_ascii_lowercase();
        CompiledRoute {
            name: route.upstream_path_template.clone().unwrap_or_default(),
            downstream: DownstreamTemplate::parse(route.downstream_path_template.as_deref().unwrap_or("/")),
            tls: scheme == "https" || scheme == "wss",
            method: route
                .downstream_http_method
                .as_deref()
                .filter(|m| !m.is_empty())
                .and_then(|m| http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok()),
            timeout: effective::timeout(route, global),
            verify_cert: !route.dangerous_accept_any_server_certificate_validator,
            auth_schemes: effective::authentication_schemes(&effective::authentication(route, global)),
            uses_discovery: route.service_name.as_deref().is_some_and(|s| !s.trim().is_empty()),
            pool: Arc::new(Pool::new(kind, targets)),
        }
    }
}

/// An immutable, compiled configuration. Requests hold the snapshot they
/// started with, whatever reloads happen meanwhile.
pub struct Snapshot {
    pub table: RouteTable,
    pub routes: Vec<CompiledRoute>,
    pub config: FileConfiguration,
    pub warnings: Vec<Diagnostic>,
}

impl Snapshot {
    pub fn build(loaded: LoadedConfig) -> Snapshot {
        let LoadedConfig { config, mut warnings, .. } = loaded;
        let routes: Vec<CompiledRoute> = config.routes.iter().map(|r| CompiledRoute::compile(r, &config)).collect();
        for (i, route) in routes.iter().enumerate() {
            let location = config.routes[i].describe(i);
            if !route.auth_schemes.is_empty() {
                warnings.push(Diagnostic::warning(
                    location.clone(),
                    "AuthenticationOptions",
                    format!(
                        "authentication ({}) is not available yet; requests to this route are refused with 401",
                        route.auth_schemes.join(", ")
                    ),
                ));
            }
            if route.uses_discovery {
                warnings.push(Diagnostic::warning(
                    location,
                    "ServiceName",
                    "service discovery is not available yet; requests to this route get 404 (ServicesAreEmpty)",
                ));
            }
        }
        if !config.aggregates.is_empty() {
            warnings.push(Diagnostic::warning(
                "Aggregates",
                "",
                "request aggregation is not available yet; aggregate routes answer 501",
            ));
        }
        Snapshot {
            table: ocelot_compat::route_table(&config),
            routes,
            config,
            warnings,
        }
    }

    /// Resolves every route's downstream hosts (again).
    pub async fn refresh_backends(&self) {
        for route in &self.routes {
            route.pool.refresh().await;
        }
    }
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
