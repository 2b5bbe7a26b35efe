//! `UpstreamHeaderTransform` and `DownstreamHeaderTransform` (Ocelot's
//! `src/Configuration/Creator/HeaderFindAndReplaceCreator.cs`): the route's
//! dictionary plus the global entries it does not name. `BaseUrl` is here too
//! because `{BaseUrl}` is a header-transform placeholder (the creator takes
//! Ocelot's `IBaseUrlFinder`).

use crate::model::{Dict, FileGlobalConfiguration, FileRoute};

/// Route entries first, then global entries whose key the route does not
/// have (compared case-insensitively, as header names are).
pub(crate) fn merge_header_transform(route: &Dict, global: &Dict) -> Dict {
    let mut out = route.clone();
    for (k, v) in global {
        if !route.iter().any(|(rk, _)| rk.eq_ignore_ascii_case(k)) {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

/// The route's `UpstreamHeaderTransform` merged with the global one.
pub fn upstream_header_transform(route: &FileRoute, global: &FileGlobalConfiguration) -> Dict {
    merge_header_transform(
        &route.upstream_header_transform,
        &global.upstream_header_transform,
    )
}

/// The route's `DownstreamHeaderTransform` merged with the global one.
pub fn downstream_header_transform(route: &FileRoute, global: &FileGlobalConfiguration) -> Dict {
    merge_header_transform(
        &route.downstream_header_transform,
        &global.downstream_header_transform,
    )
}

/// `GlobalConfiguration.BaseUrl` if set (Ocelot's `{BaseUrl}`).
pub fn base_url(global: &FileGlobalConfiguration) -> Option<&str> {
    global.base_url.as_deref().filter(|b| !b.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::from_value;
    use serde_json::json;

    #[test]
    fn header_transforms_route_wins_then_global() {
        let (c, _) = from_value(&json!({
            "Routes": [{"UpstreamHeaderTransform": {"X-A": "route"}}, {}],
            "GlobalConfiguration": {"UpstreamHeaderTransform": {"x-a": "global", "X-B": "global"}, "DownstreamHeaderTransform": {"X-C": "1"}}
        }));
        let up = upstream_header_transform(&c.routes[0], &c.global);
        assert_eq!(
            up,
            vec![
                ("X-A".to_string(), "route".to_string()),
                ("X-B".to_string(), "global".to_string())
            ]
        );
        assert_eq!(upstream_header_transform(&c.routes[1], &c.global).len(), 2);
        assert_eq!(
            downstream_header_transform(&c.routes[1], &c.global),
            vec![("X-C".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn base_url_only_when_given() {
        let (c, _) = from_value(&json!({"GlobalConfiguration": {"BaseUrl": "http://gw"}}));
        assert_eq!(base_url(&c.global), Some("http://gw"));
        let (c, _) = from_value(&json!({"GlobalConfiguration": {"BaseUrl": " "}}));
        assert_eq!(base_url(&c.global), None);
        let (c, _) = from_value(&json!({}));
        assert_eq!(base_url(&c.global), None);
    }
}
