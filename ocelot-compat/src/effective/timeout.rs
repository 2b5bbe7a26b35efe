//! `Timeout`: the route's if positive, else the global one if positive, else
//! Ocelot's `DownstreamRoute.DefaultTimeoutSeconds` (`src/Configuration/DownstreamRoute.cs`),
//! as Ocelot's route creators in `src/Configuration/Creator/` resolve it.

use crate::model::{FileGlobalConfiguration, FileRoute};
use std::time::Duration;

/// Ocelot's `DownstreamRoute.DefaultTimeoutSeconds`.
pub(crate) const DEFAULT_TIMEOUT_SECONDS: u64 = 90;

/// Route `Timeout` if > 0, else global `Timeout` if > 0, else 90 s.
pub fn timeout(route: &FileRoute, global: &FileGlobalConfiguration) -> Duration {
    let secs = route
        .timeout
        .filter(|t| *t > 0)
        .or(global.timeout.filter(|t| *t > 0))
        .map_or(DEFAULT_TIMEOUT_SECONDS, |t| t as u64);
    Duration::from_secs(secs)
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
}
