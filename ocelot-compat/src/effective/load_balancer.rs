//! `LoadBalancerOptions` (Ocelot's `src/Configuration/Creator/LoadBalancerOptionsCreator.cs`).

use super::{applies, non_blank};
use crate::model::{FileGlobalConfiguration, FileLoadBalancerOptions, FileRoute};

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
            r#type: non_blank(&r.r#type).or_else(|| non_blank(&g.r#type)),
            key: non_blank(&r.key).or_else(|| non_blank(&g.key)),
            expiry: r.expiry.filter(|e| *e > 0).or(g.expiry),
            route_keys: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::from_value;
    use serde_json::json;

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
}
