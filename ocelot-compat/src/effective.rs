//! Global ↔ route option merging (Ocelot 24.1+, `src/Configuration/Creator/*OptionsCreator.cs`):
//! a global section applies to a route when its `RouteKeys` is empty or names the
//! route's `Key`; then each property comes from the route if set, else from the
//! global section, else from Ocelot's default.

use crate::model::{
    FileAuthenticationOptions, FileGlobalConfiguration, FileLoadBalancerOptions, FileRoute,
};
use std::time::Duration;

/// Ocelot's `DownstreamRoute.DefaultTimeoutSeconds`.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 90;

fn applies(route_keys: Option<&Vec<String>>, route_key: Option<&str>) -> bool {
    match route_keys {
        None => true,
        Some(keys) if keys.is_empty() => true,
        Some(keys) => route_key.is_some_and(|k| keys.iter().any(|rk| rk == k)),
    }
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_ref().filter(|v| !v.trim().is_empty()).cloned()
}

/// Route `Timeout` if > 0, else global `Timeout` if > 0, else 90 s.
pub fn timeout(route: &FileRoute, global: &FileGlobalConfiguration) -> Duration {
    let secs = route
        .timeout
        .filter(|t| *t > 0)
        .or(global.timeout.filter(|t| *t > 0))
        .map_or(DEFAULT_TIMEOUT_SECONDS, |t| t as u64);
    Duration::from_secs(secs)
}

/// The route's load balancer options merged with the applicable global ones.
pub fn load_balancer(
    route: &FileRoute,
    global: &FileGlobalConfiguration,
) -> FileLoadBalancerOptions {
    let global_lb = global
        .load_balancer_options
        .as_ref()
        .filter(|g| applies(g.route_keys.as_ref(), route.key.as_deref()));
    match (&route.load_balancer_options, global_lb) {
        (None, None) => FileLoadBalancerOptions::default(),
        (Some(r), None) => r.clone(),
        (None, Some(g)) => FileLoadBalancerOptions {
            route_keys: None,
            ..g.clone()
        },
        (Some(r), Some(g)) => FileLoadBalancerOptions {
            r#type: non_empty(&r.r#type).or_else(|| non_empty(&g.r#type)),
            key: non_empty(&r.key).or_else(|| non_empty(&g.key)),
            expiry: r.expiry.filter(|e| *e > 0).or(g.expiry),
            route_keys: None,
        },
    }
}

/// The route's authentication options merged with the applicable global ones.
pub fn authentication(
    route: &FileRoute,
    global: &FileGlobalConfiguration,
) -> FileAuthenticationOptions {
    let global_auth = global
        .authentication_options
        .as_ref()
        .filter(|g| applies(g.route_keys.as_ref(), route.key.as_deref()));
    match (&route.authentication_options, global_auth) {
        (None, None) => FileAuthenticationOptions::default(),
        (Some(r), None) => r.clone(),
        (None, Some(g)) => FileAuthenticationOptions {
            route_keys: None,
            ..g.clone()
        },
        (Some(r), Some(g)) => {
            let route_has_keys = non_empty(&r.authentication_provider_key).is_some()
                || r.authentication_provider_keys
                    .iter()
                    .any(|k| !k.trim().is_empty());
            FileAuthenticationOptions {
                authentication_provider_key: if route_has_keys {
                    r.authentication_provider_key.clone()
                } else {
                    g.authentication_provider_key.clone()
                },
                authentication_provider_keys: if route_has_keys {
                    r.authentication_provider_keys.clone()
                } else {
                    g.authentication_provider_keys.clone()
                },
                allowed_scopes: r
                    .allowed_scopes
                    .clone()
                    .or_else(|| g.allowed_scopes.clone()),
                allow_anonymous: r.allow_anonymous.or(g.allow_anonymous),
                route_keys: None,
            }
        }
    }
}

/// The schemes a request must authenticate with, in Ocelot's order (the
/// deprecated single key first). Empty when the route is anonymous.
pub fn authentication_schemes(options: &FileAuthenticationOptions) -> Vec<String> {
    if options.allow_anonymous == Some(true) {
        return Vec::new();
    }
    options
        .authentication_provider_key
        .iter()
        .chain(options.authentication_provider_keys.iter())
        .filter(|k| !k.trim().is_empty())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::from_value;
    use serde_json::json;

    #[test]
    fn timeouts_fall_back_to_global_then_ninety_seconds() {
        let (c, _) = from_value(
            &json!({"Routes": [{"Timeout": 5}, {}, {"Timeout": 0}], "GlobalConfiguration": {"Timeout": 7}}),
        );
        assert_eq!(timeout(&c.routes[0], &c.global), Duration::from_secs(5));
        assert_eq!(timeout(&c.routes[1], &c.global), Duration::from_secs(7));
        assert_eq!(timeout(&c.routes[2], &c.global), Duration::from_secs(7));
        let (c, _) = from_value(&json!({"Routes": [{}]}));
        assert_eq!(timeout(&c.routes[0], &c.global), Duration::from_secs(90));
    }

    #[test]
    fn global_load_balancer_applies_by_route_keys() {
        let (c, _) = from_value(&json!({
            "Routes": [{"Key": "a"}, {"Key": "b"}, {"Key": "a", "LoadBalancerOptions": {"Key": "cookie"}}],
            "GlobalConfiguration": {"LoadBalancerOptions": {"Type": "RoundRobin", "RouteKeys": ["a"]}}
        }));
        assert_eq!(
            load_balancer(&c.routes[0], &c.global).r#type.as_deref(),
            Some("RoundRobin")
        );
        assert_eq!(load_balancer(&c.routes[1], &c.global).r#type, None);
        let merged = load_balancer(&c.routes[2], &c.global);
        assert_eq!(
            (merged.r#type.as_deref(), merged.key.as_deref()),
            (Some("RoundRobin"), Some("cookie"))
        );
    }

    #[test]
    fn authentication_schemes_and_anonymous() {
        let (c, _) = from_value(&json!({
            "Routes": [{}, {"AuthenticationOptions": {"AllowAnonymous": true}}, {"AuthenticationOptions": {"AuthenticationProviderKeys": ["X"]}}],
            "GlobalConfiguration": {"AuthenticationOptions": {"AuthenticationProviderKey": "Bearer"}}
        }));
        assert_eq!(
            authentication_schemes(&authentication(&c.routes[0], &c.global)),
            vec!["Bearer"]
        );
        assert!(authentication_schemes(&authentication(&c.routes[1], &c.global)).is_empty());
        assert_eq!(
            authentication_schemes(&authentication(&c.routes[2], &c.global)),
            vec!["X"]
        );
    }
}
