//! A loaded configuration compiled for serving: the route table plus, per
//! route, each feature's own compiled policy (`route.rs`), resolved once. A
//! [`Snapshot`] never changes; a reload builds a new one with
//! [`Snapshot::build`], the same function start-up uses.
//!
//! What must outlive a snapshot (breaker states, rate-limit counters,
//! backend health, cached responses, the aggregation client) lives in the
//! [`Env`] that every build is given, keyed by the route's identity, so an
//! unchanged route keeps its state across reloads.

pub(crate) mod dynamic;
mod refresh;
mod route;

pub use refresh::BackendRefresher;
#[cfg(test)]
pub(crate) use route::route_identity;
pub use route::CompiledRoute;

use crate::aggregate::{Aggregation, CompiledAggregate};
use crate::auth::Authenticator;
use crate::balancing::{BalancerKind, Pool};
use crate::cache::store::MemoryStore;
use crate::diagnostics::Warnings;
use crate::discovery::Discovery;
use crate::health::HealthState;
use crate::metrics::METRICS;
use crate::qos::{BreakerStore, CircuitState};
use crate::rate_limiting::RateLimiter;
use crate::retries::{RetryPolicy, RetrySettings};
use crate::security::TrustedProxies;
use crate::settings::Settings;
use crate::swagger::{Docs, ServiceBackend, ServicePools, SwaggerSettings};
use ocelot_compat::table::RouteTable;
use ocelot_compat::{Diagnostic, LoadedConfig};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// What snapshots are built with and what outlives them: built once from the
/// settings at start-up and handed to every build and every request.
pub struct Env {
    pub(crate) breakers: BreakerStore,
    pub(crate) limiter: RateLimiter,
    pub health: Arc<HealthState>,
    pub(crate) trusted_proxies: TrustedProxies,
    pub(crate) aggregation: Arc<Aggregation>,
    /// The output cache's storage; Pingora's cache phases take it `'static`.
    pub cache: &'static MemoryStore,
    /// Service discovery settings and providers.
    pub discovery: Discovery,
    /// How `SwaggerEndPoints` are served (paths, cache, server).
    pub(crate) swagger: SwaggerSettings,
    /// Retry policies by route.
    pub(crate) retries: RetrySettings,
}

impl Env {
    /// Builds the stores the settings describe.
    pub fn from_settings(settings: &Settings) -> Result<Env, String> {
        crate::qos::export_metrics();
        crate::health::export_metrics();
        crate::rate_limiting::export_metrics();
        let ca_file = settings.upstream_ca_file.as_deref();
        Ok(Env {
            breakers: BreakerStore::default(),
            limiter: RateLimiter::new(&settings.rate_limiting)?,
            health: Arc::new(HealthState::new(&settings.health_checks, ca_file)?),
            trusted_proxies: TrustedProxies::from_settings(&settings.trusted_proxies)?,
            aggregation: Arc::new(Aggregation::from_settings(
                &settings.aggregators,
                settings.aggregate_max_body_bytes,
                ca_file,
            )?),
            // One store for the life of the process: Pingora's cache API
            // holds `'static` storage.
            cache: Box::leak(Box::new(MemoryStore::new(
                settings.cache.max_bytes,
                settings.cache.max_object_bytes,
            ))),
            discovery: Discovery::from_settings(&settings.discovery)?,
            swagger: settings.swagger.clone().checked()?,
            retries: checked_retries(&settings.retries)?,
        })
    }

    /// The client address for IP security and `{RemoteIpAddress}`: the
    /// socket peer, or what a trusted proxy says in `X-Forwarded-For`.
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        self.trusted_proxies.client_ip(peer, forwarded)
    }
}

/// The retry settings, once every policy in them compiles: a mistake stops
/// start-up (or the settings reload) instead of turning a route's retries off.
fn checked_retries(settings: &RetrySettings) -> Result<RetrySettings, String> {
    RetryPolicy::compile(settings, None, "", "")?;
    for key in settings.retries_routes() {
        RetryPolicy::compile(settings, Some(key), key, key)
            .map_err(|e| format!("{e} (routes.{key})"))?;
    }
    Ok(settings.clone())
}

/// An immutable, compiled configuration. Requests hold the snapshot they
/// started with, whatever reloads happen meanwhile.
pub struct Snapshot {
    pub(crate) table: RouteTable,
    pub routes: Vec<CompiledRoute>,
    /// The merged configuration as Ocelot JSON.
    pub(crate) value: serde_json::Value,
    pub config: ocelot_compat::model::FileConfiguration,
    pub warnings: Vec<Diagnostic>,
    /// `Aggregates`, in the order of `config.aggregates` (the table's indexes).
    pub(crate) aggregates: Vec<CompiledAggregate>,
    /// Dynamic routing (service discovery without static routes): routes
    /// made per service on first use, numbered after `routes`.
    pub(crate) dynamic: Option<dynamic::DynamicRoutes>,
    /// `SwaggerEndPoints` compiled (off without them).
    pub(crate) docs: Option<Arc<Docs>>,
    /// Pools of services that only `SwaggerEndPoints` name (no route does),
    /// by pool key, so an unchanged one carries over a reload.
    docs_pools: Vec<(String, Arc<Pool>)>,
}

impl Snapshot {
    /// Compiles a loaded configuration: a pure function of its inputs. Pools
    /// of routes that did not change are taken over from `previous`, so their
    /// state survives the reload; `auth` names the providers routes may use.
    pub fn build(
        loaded: LoadedConfig,
        previous: Option<&Snapshot>,
        env: &Env,
        auth: &Authenticator,
    ) -> Snapshot {
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
            .enumerate()
            .map(|(i, r)| {
                let mut sink = Warnings::new(r.describe(i), &mut warnings);
                CompiledRoute::compile(r, &config, &reusable, env, Some(auth), &mut sink)
            })
            .collect();
        let (aggregates, aggregate_warnings) = crate::aggregate::compile(&config, &env.aggregation);
        warnings.extend(aggregate_warnings);
        let dynamic = dynamic::DynamicRoutes::new(
            &config,
            routes.len(),
            previous.and_then(|p| p.dynamic.as_ref()),
            env,
        );
        // A `Service` document is fetched from the instances discovery gives
        // the first route naming that service, with its scheme and TLS check.
        let mut pools = ServicePools::new();
        for (file, route) in config.routes.iter().zip(&routes) {
            if let Some(name) = file
                .service_name
                .as_deref()
                .filter(|_| route.uses_discovery)
            {
                pools
                    .entry(name.trim().to_ascii_lowercase())
                    .or_insert_with(|| ServiceBackend {
                        pool: route.pool.clone(),
                        tls: route.tls,
                        verify: route.verify_cert,
                    });
            }
        }
        let docs_pools = docs_only_pools(&config, &mut pools, previous, env);
        let docs = crate::swagger::compile(&config, &env.swagger, &pools).map(Arc::new);
        Snapshot {
            table: ocelot_compat::route_table(&config),
            routes,
            value,
            config,
            warnings,
            aggregates,
            dynamic,
            docs,
            docs_pools,
        }
    }

    /// Route number `index`: a static route, or a dynamic one made since.
    pub(crate) fn route(&self, index: usize) -> Option<&CompiledRoute> {
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
            .chain(self.docs_pools.iter().map(|(_, pool)| pool.clone()))
            .collect()
    }

    /// Resolves the hosts of the pools that `previous` did not already have.
    pub(crate) async fn refresh_new_backends(&self, previous: &Snapshot) {
        let new = self.routes.iter().filter(|route| {
            !previous
                .routes
                .iter()
                .any(|p| Arc::ptr_eq(&p.pool, &route.pool))
        });
        refresh::refresh_all(new.map(|r| r.pool.clone()).collect()).await;
    }

    /// Resolves every route's downstream hosts (again).
    pub async fn refresh_backends(&self) {
        refresh::refresh_all(self.routes.iter().map(|r| r.pool.clone()).collect()).await;
    }

    /// One message per route scheme that is not a configured provider (Ocelot
    /// refuses to start on an unregistered scheme).
    pub(crate) fn unknown_schemes(&self, auth: &Authenticator) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (route, file)) in self.routes.iter().zip(&self.config.routes).enumerate() {
            for scheme in &route.authentication {
                if !auth.has(scheme) {
                    out.push(format!(
                        "{}: AuthenticationOptions: provider \"{scheme}\" is not configured in the settings' auth_providers",
                        file.describe(i)
                    ));
                }
            }
        }
        out
    }

    /// Sets the gauges that describe the current state (breakers, backend
    /// health) just before a scrape.
    pub(crate) fn observe(&self) {
        METRICS.breaker_open.reset();
        METRICS.backend_healthy.reset();
        for route in &self.routes {
            if let Some(qos) = &route.qos {
                let open = qos.breaker.state() != CircuitState::Closed;
                METRICS
                    .breaker_open
                    .with_label_values(&[&route.name])
                    .set(i64::from(open));
            }
            for (backend, ready) in route.pool.backend_health() {
                METRICS
                    .backend_healthy
                    .with_label_values(&[&route.name, &backend])
                    .set(i64::from(ready));
            }
        }
    }
}

/// A pool for each `Service` of `SwaggerEndPoints` that no route names:
/// the service found with the global `ServiceDiscoveryProvider` and
/// `DownstreamScheme`, as MMLib asks discovery for it by name. Added to
/// `pools`; returned with their keys.
fn docs_only_pools(
    config: &ocelot_compat::model::FileConfiguration,
    pools: &mut ServicePools,
    previous: Option<&Snapshot>,
    env: &Env,
) -> Vec<(String, Arc<Pool>)> {
    let names = config
        .swagger_end_points
        .iter()
        .flat_map(|e| &e.config)
        .filter(|c| c.url.as_deref().is_none_or(|u| u.trim().is_empty()))
        .filter_map(|c| c.service.as_ref()?.name.as_deref())
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let mut out: Vec<(String, Arc<Pool>)> = Vec::new();
    for name in names {
        let lower = name.to_ascii_lowercase();
        if pools.contains_key(&lower) {
            continue;
        }
        let route = ocelot_compat::model::FileRoute {
            service_name: Some(name.to_string()),
            downstream_scheme: config.global.downstream_scheme.clone(),
            ..Default::default()
        };
        let Some(service) = crate::discovery::ServiceRef::for_route(&route, config, &env.discovery)
        else {
            continue;
        };
        let key = format!("swagger|{}", service.key());
        let pool = previous
            .and_then(|p| p.docs_pools.iter().find(|(k, _)| *k == key))
            .map(|(_, pool)| pool.clone())
            .unwrap_or_else(|| {
                Arc::new(Pool::with_discovery(
                    BalancerKind::NoLoadBalancer,
                    service.discovery(),
                    env.health.registry(),
                ))
            });
        let tls = config
            .global
            .downstream_scheme
            .as_deref()
            .is_some_and(|s| s.trim().eq_ignore_ascii_case("https"));
        pools.insert(
            lower,
            ServiceBackend {
                pool: pool.clone(),
                tls,
                verify: true,
            },
        );
        out.push((key, pool));
    }
    out
}
