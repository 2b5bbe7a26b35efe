//! Dynamic routing (Ocelot's `DiscoveryDownstreamRouteFinder`):
//! with a service discovery provider and no static route, `/{service}/{rest}`
//! goes to `{rest}` (or `/`) on an instance of `service`, the query as it
//! came; `/{namespace}.{service}/…` names a namespace too. A route takes the
//! global options, overridden by the `DynamicRoutes` entry of its service.
//!
//! Routes are made on a service's first request and kept in the snapshot (as
//! Ocelot caches them per load-balancer key), up to
//! `discovery.max_dynamic_services`; a name the registry knows no instance of
//! is answered 404 (`ServicesAreEmpty`) without being kept, and remembered for
//! one polling interval; and at most 100 unknown names a second are looked up,
//! so a flood of made-up names cannot flood the registry.

use super::{CompiledRoute, Env};
use crate::balancing::Pool;
use crate::diagnostics::Warnings;
use crate::discovery::Provider;
use ocelot_compat::model::{FileConfiguration, FileDynamicRoute, FileRoute};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Names remembered as having no instances, at most.
const MAX_MISSES: usize = 10_000;
/// Registry lookups for services without a route yet, per second at most:
/// requests for made-up names must not turn into a flood of registry queries.
const NEW_LOOKUPS_PER_SECOND: u32 = 100;

/// The dynamic routes of one snapshot.
pub(crate) struct DynamicRoutes {
    /// What routes are compiled against: the file, less what Ocelot applies
    /// to static routes only (`SecurityOptions`, global header transforms).
    config: FileConfiguration,
    /// Route number of the first slot (after the snapshot's static routes).
    base: usize,
    /// Routes made so far; a slot never changes once set, so a request can
    /// hold a plain reference for as long as it holds the snapshot.
    slots: Box<[OnceLock<Box<CompiledRoute>>]>,
    /// Slot by `namespace.service`, and the next free slot.
    index: Mutex<(HashMap<String, usize>, usize)>,
    /// Names found without instances, until when.
    misses: Mutex<HashMap<String, Instant>>,
    miss_ttl: Duration,
    /// Lookups of unknown services in the current second: (second's start, count).
    lookups: Mutex<(Instant, u32)>,
}

/// Ocelot's condition for dynamic routing (`DownstreamRouteProviderFactory`):
/// no route has an `UpstreamPathTemplate`, and the provider has a host, a
/// port and a type.
pub(crate) fn enabled(config: &FileConfiguration) -> bool {
    config.routes.iter().all(|r| {
        r.upstream_path_template
            .as_deref()
            .is_none_or(str::is_empty)
    }) && Provider::enables_dynamic_routing(config.global.service_discovery_provider.as_ref())
}

/// Splits a request path as Ocelot does: the first segment is the service
/// (`ns.service` gives a namespace), the rest from the next `/` is the
/// downstream path (`/` when nothing follows).
pub(crate) fn split(path: &str) -> (Option<&str>, &str, &str) {
    let tail = path.strip_prefix('/').unwrap_or(path);
    let (first, rest) = match tail.find('/') {
        Some(i) => (&tail[..i], &tail[i..]),
        None => (tail, "/"),
    };
    match first.split_once('.') {
        Some((namespace, service)) => (Some(namespace).filter(|n| !n.is_empty()), service, rest),
        None => (None, first, rest),
    }
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value.as_ref().filter(|v| !v.trim().is_empty()).cloned()
}

impl DynamicRoutes {
    /// The dynamic routes for `config`, if it routes dynamically. Services the
    /// previous snapshot had routes for get theirs again now, keeping their
    /// pools when nothing about them changed.
    pub(crate) fn new(
        config: &FileConfiguration,
        base: usize,
        previous: Option<&DynamicRoutes>,
        env: &Env,
    ) -> Option<DynamicRoutes> {
        if !enabled(config) {
            return None;
        }
        let (capacity, miss_ttl) = env.discovery.dynamic_route_limits();
        let mut compiled = config.clone();
        compiled.routes.clear();
        compiled.aggregates.clear();
        compiled.global.security_options = None;
        compiled.global.upstream_header_transform.clear();
        compiled.global.downstream_header_transform.clear();
        let routes = DynamicRoutes {
            config: compiled,
            base,
            slots: (0..capacity).map(|_| OnceLock::new()).collect(),
            index: Mutex::new((HashMap::new(), 0)),
            misses: Mutex::new(HashMap::new()),
            miss_ttl,
            lookups: Mutex::new((Instant::now(), 0)),
        };
        if let Some(previous) = previous {
            let pools: HashMap<&str, Arc<Pool>> = previous
                .routes()
                .map(|r| (r.pool_key.as_str(), r.pool.clone()))
                .collect();
            let known: Vec<String> = previous
                .index
                .lock()
                .map(|i| i.0.keys().cloned().collect())
                .unwrap_or_default();
            for key in known {
                let (namespace, service) = match key.split_once('.') {
                    Some((ns, service)) if !ns.is_empty() => (Some(ns), service),
                    Some((_, service)) => (None, service),
                    None => (None, key.as_str()),
                };
                let route = routes.compile(namespace, service, &pools, env);
                routes.insert(&key, route);
            }
        }
        Some(routes)
    }

    /// The route numbered `index` in the snapshot, if it is a dynamic one.
    pub(crate) fn get(&self, index: usize) -> Option<&CompiledRoute> {
        self.slots
            .get(index.checked_sub(self.base)?)?
            .get()
            .map(|r| &**r)
    }

    /// Every dynamic route made so far.
    pub(crate) fn routes(&self) -> impl Iterator<Item = &CompiledRoute> {
        self.slots.iter().map_while(|slot| slot.get().map(|r| &**r))
    }

    /// The route number for a request to `service` (in `namespace`), making
    /// the route on first use. `Err` is the status to answer.
    pub(crate) async fn route(
        &self,
        namespace: Option<&str>,
        service: &str,
        env: &Env,
    ) -> Result<usize, u16> {
        if service.is_empty() {
            return Err(404);
        }
        let key = format!("{}.{service}", namespace.unwrap_or(""));
        if let Some(slot) = self.index.lock().ok().and_then(|i| i.0.get(&key).copied()) {
            return Ok(self.base + slot);
        }
        let now = Instant::now();
        if self
            .misses
            .lock()
            .is_ok_and(|m| m.get(&key).is_some_and(|until| *until > now))
        {
            return Err(404);
        }
        if !self.may_look_up(now) {
            log::debug!("dynamic routing: more than {NEW_LOOKUPS_PER_SECOND} new services a second; '{key}' gets 404");
            return Err(404);
        }
        let route = self.compile(namespace, service, &HashMap::new(), env);
        route.pool.refresh().await;
        if route.pool.backend_count() == 0 {
            log::debug!(
                "dynamic route {}: no instances of service '{service}'",
                route.name
            );
            if let Ok(mut misses) = self.misses.lock() {
                if misses.len() >= MAX_MISSES {
                    misses.retain(|_, until| *until > now);
                    if misses.len() >= MAX_MISSES {
                        misses.clear();
                    }
                }
                misses.insert(key, now + self.miss_ttl);
            }
            return Err(404);
        }
        self.insert(&key, route)
            .map(|slot| self.base + slot)
            .ok_or(404)
    }

    /// Whether one more unknown service may be looked up this second.
    fn may_look_up(&self, now: Instant) -> bool {
        let Ok(mut lookups) = self.lookups.lock() else {
            return false;
        };
        if now.duration_since(lookups.0) >= Duration::from_secs(1) {
            *lookups = (now, 0);
        }
        lookups.1 += 1;
        lookups.1 <= NEW_LOOKUPS_PER_SECOND
    }

    /// Keeps `route` for `key`; the slot, or `None` when full.
    fn insert(&self, key: &str, route: CompiledRoute) -> Option<usize> {
        let mut index = self.index.lock().ok()?;
        // A concurrent first request may have made it already.
        if let Some(slot) = index.0.get(key) {
            return Some(*slot);
        }
        let slot = index.1;
        let Some(cell) = self.slots.get(slot) else {
            log::error!(
                "dynamic routing: more than {} services; service '{key}' gets 404 (raise discovery.max_dynamic_services)",
                self.slots.len()
            );
            return None;
        };
        cell.set(Box::new(route)).ok()?;
        index.0.insert(key.to_string(), slot);
        index.1 += 1;
        Some(slot)
    }

    /// The route for a service: the global options, overridden by its
    /// `DynamicRoutes` entry (matched by `ServiceName`, and by
    /// `ServiceNamespace` when the request names one).
    fn compile(
        &self,
        namespace: Option<&str>,
        service: &str,
        previous: &HashMap<&str, Arc<Pool>>,
        env: &Env,
    ) -> CompiledRoute {
        let global = &self.config.global;
        let entry = self.config.dynamic_routes.iter().find(|d| {
            d.service_name.as_deref() == Some(service)
                && namespace.is_none_or(|ns| d.service_namespace.as_deref() == Some(ns))
        });
        let empty = FileDynamicRoute::default();
        let d = entry.unwrap_or(&empty);
        let route = FileRoute {
            upstream_path_template: Some(match namespace {
                Some(ns) => format!("/{ns}.{service}/{{everything}}"),
                None => format!("/{service}/{{everything}}"),
            }),
            downstream_path_template: Some("/{everything}".into()),
            downstream_scheme: non_empty(&d.downstream_scheme)
                .or_else(|| non_empty(&global.downstream_scheme)),
            downstream_http_version: non_empty(&d.downstream_http_version)
                .or_else(|| non_empty(&global.downstream_http_version)),
            downstream_http_version_policy: non_empty(&d.downstream_http_version_policy)
                .or_else(|| non_empty(&global.downstream_http_version_policy)),
            key: d.key.clone(),
            timeout: d.timeout,
            service_name: Some(service.to_string()),
            service_namespace: namespace.map(str::to_string),
            authentication_options: d.authentication_options.clone(),
            cache_options: d.cache_options.clone(),
            http_handler_options: d.http_handler_options.clone(),
            load_balancer_options: d.load_balancer_options.clone(),
            qos_options: d.qos_options.clone(),
            rate_limit_options: d.rate_limit_options.clone(),
            metadata: d.metadata.clone(),
            ..FileRoute::default()
        };
        // Problems of the global options were reported with the snapshot.
        let mut ignored = Vec::new();
        let mut warnings = Warnings::new(String::new(), &mut ignored);
        CompiledRoute::compile(&route, &self.config, previous, env, None, &mut warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_split_like_ocelot() {
        assert_eq!(split("/orders/api/items"), (None, "orders", "/api/items"));
        assert_eq!(split("/orders"), (None, "orders", "/"));
        assert_eq!(split("/orders/"), (None, "orders", "/"));
        assert_eq!(split("/shop.orders/x/"), (Some("shop"), "orders", "/x/"));
        assert_eq!(split("/"), (None, "", "/"));
    }

    #[test]
    fn unknown_service_lookups_are_rate_limited() {
        let (config, _) = ocelot_compat::model::from_value(
            &json!({"Routes": [], "GlobalConfiguration": {"ServiceDiscoveryProvider": {"Port": 8500}}}),
        );
        let env = Env::from_settings(&crate::settings::Settings::default()).unwrap();
        let routes = DynamicRoutes::new(&config, 0, None, &env).expect("dynamic routing");
        let now = Instant::now();
        assert!((0..NEW_LOOKUPS_PER_SECOND).all(|_| routes.may_look_up(now)));
        assert!(!routes.may_look_up(now));
        assert!(routes.may_look_up(now + Duration::from_secs(1)));
    }

    #[test]
    fn only_without_static_routes_and_with_a_port() {
        let c = |v: serde_json::Value| ocelot_compat::model::from_value(&v).0;
        assert!(enabled(&c(
            json!({"Routes": [], "GlobalConfiguration": {"ServiceDiscoveryProvider": {"Port": 8500}}})
        )));
        assert!(!enabled(&c(
            json!({"Routes": [], "GlobalConfiguration": {"ServiceDiscoveryProvider": {"Type": "Kube"}}})
        )));
        assert!(!enabled(&c(json!({
            "Routes": [{"UpstreamPathTemplate": "/a", "DownstreamPathTemplate": "/a", "ServiceName": "a"}],
            "GlobalConfiguration": {"ServiceDiscoveryProvider": {"Port": 8500}}
        }))));
        assert!(!enabled(&c(json!({"Routes": []}))));
    }
}
