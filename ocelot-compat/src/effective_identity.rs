//! Effective identity and transform options of a route (spec §1.6): header
//! transforms are the route's dictionary plus the global entries the route
//! does not name; `RequestIdKey` is the route's if non-empty, else the
//! global one. Authentication options merge in `effective::authentication`.

use crate::model::{Dict, FileGlobalConfiguration, FileRoute};

/// Route entries first, then global entries whose key the route does not
/// have (compared case-insensitively, as header names are).
pub fn merge_header_transform(route: &Dict, global: &Dict) -> Dict {
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

/// `RequestIdKey`: the route's if non-empty, else the global one if non-empty.
pub fn request_id_key<'a>(
    route: &'a FileRoute,
    global: &'a FileGlobalConfiguration,
) -> Option<&'a str> {
    let non_empty = |s: &'a Option<String>| s.as_deref().filter(|v| !v.is_empty());
    non_empty(&route.request_id_key).or_else(|| non_empty(&global.request_id_key))
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
    fn request_id_key_route_then_global() {
        let (c, _) = from_value(&json!({
            "Routes": [{"RequestIdKey": "R"}, {"RequestIdKey": ""}, {}],
            "GlobalConfiguration": {"RequestIdKey": "G", "BaseUrl": "http://gw"}
        }));
        assert_eq!(request_id_key(&c.routes[0], &c.global), Some("R"));
        assert_eq!(request_id_key(&c.routes[1], &c.global), Some("G"));
        assert_eq!(request_id_key(&c.routes[2], &c.global), Some("G"));
        assert_eq!(base_url(&c.global), Some("http://gw"));
        let (c, _) = from_value(&json!({"Routes": [{}]}));
        assert_eq!(request_id_key(&c.routes[0], &c.global), None);
        assert_eq!(base_url(&c.global), None);
    }
}
