//! `QoSOptions` (Ocelot's `src/Configuration/Creator/QoSOptionsCreator.cs`).
//! Whether QoS is then "on" and which fall-backs apply is the gateway's
//! business (`gateway/src/qos.rs`); this is only the merge.

use super::applies;
use crate::model::{FileGlobalConfiguration, FileQoSOptions, FileRoute};

/// The route's QoS options merged with the applicable global ones, property by
/// property (the deprecated aliases were already folded in by the reader).
pub fn qos(route: &FileRoute, global: &FileGlobalConfiguration) -> FileQoSOptions {
    let global = global
        .qos_options
        .as_ref()
        .filter(|g| applies(g.route_keys.as_ref(), route.key.as_deref()));
    match (&route.qos_options, global) {
        (None, None) => FileQoSOptions::default(),
        (Some(r), None) => r.clone(),
        (None, Some(g)) => FileQoSOptions {
            route_keys: None,
            ..g.clone()
        },
        (Some(r), Some(g)) => FileQoSOptions {
            minimum_throughput: r.minimum_throughput.or(g.minimum_throughput),
            break_duration: r.break_duration.or(g.break_duration),
            failure_ratio: r.failure_ratio.or(g.failure_ratio),
            sampling_duration: r.sampling_duration.or(g.sampling_duration),
            timeout: r.timeout.or(g.timeout),
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
    fn global_qos_merges_by_route_keys() {
        let (c, _) = from_value(&json!({
            "Routes": [
                {"Key": "a"},
                {"Key": "b"},
                {"Key": "a", "QoSOptions": {"Timeout": 250}},
                {"Key": "b", "QoSOptions": {"FailureRatio": 0.5}}
            ],
            "GlobalConfiguration": {"QoSOptions": {"MinimumThroughput": 4, "Timeout": 900, "RouteKeys": ["a"]}}
        }));
        let global = qos(&c.routes[0], &c.global);
        assert_eq!(
            (global.minimum_throughput, global.timeout, global.route_keys),
            (Some(4), Some(900), None)
        );
        assert_eq!(qos(&c.routes[1], &c.global), FileQoSOptions::default());
        let merged = qos(&c.routes[2], &c.global);
        assert_eq!(
            (merged.minimum_throughput, merged.timeout),
            (Some(4), Some(250))
        );
        let own = qos(&c.routes[3], &c.global);
        assert_eq!(
            (own.failure_ratio, own.minimum_throughput),
            (Some(0.5), None)
        );
    }

    #[test]
    fn global_qos_without_route_keys_applies_to_every_route() {
        let (c, _) = from_value(&json!({
            "Routes": [{}, {"Key": "x", "QoSOptions": {"BreakDuration": 1000}}],
            "GlobalConfiguration": {"QoSOptions": {"BreakDuration": 5000, "SamplingDuration": 200, "RouteKeys": []}}
        }));
        assert_eq!(qos(&c.routes[0], &c.global).break_duration, Some(5000));
        let merged = qos(&c.routes[1], &c.global);
        assert_eq!(
            (merged.break_duration, merged.sampling_duration),
            (Some(1000), Some(200))
        );
    }
}
