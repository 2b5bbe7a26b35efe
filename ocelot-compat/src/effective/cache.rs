//! `CacheOptions` (Ocelot's `src/Configuration/Creator/CacheOptionsCreator.cs`).
//! Whether caching is on (`TtlSeconds` > 0) and the default region (the
//! route's load-balancer key) are decided by the gateway (`gateway/src/cache/mod.rs`).

use super::{applies, non_empty};
use crate::model::{FileCacheOptions, FileGlobalConfiguration, FileRoute};

/// The route's cache options merged with the applicable global ones, property
/// by property. An empty `Region` or `Header` counts as not given, so they come
/// back `None` rather than empty.
pub fn cache(route: &FileRoute, global: &FileGlobalConfiguration) -> FileCacheOptions {
    let global = global
        .cache_options
        .as_ref()
        .filter(|g| applies(g.route_keys.as_ref(), route.key.as_deref()));
    let (ttl_seconds, region, header, enable_content_hashing) =
        match (route.cache_options.as_ref(), global) {
            (None, None) => return FileCacheOptions::default(),
            (Some(r), None) => (
                r.ttl_seconds,
                non_empty(&r.region),
                non_empty(&r.header),
                r.enable_content_hashing,
            ),
            (None, Some(g)) => (
                g.ttl_seconds,
                non_empty(&g.region),
                non_empty(&g.header),
                g.enable_content_hashing,
            ),
            (Some(r), Some(g)) => (
                r.ttl_seconds.or(g.ttl_seconds),
                non_empty(&r.region).or(non_empty(&g.region)),
                non_empty(&r.header).or(non_empty(&g.header)),
                r.enable_content_hashing.or(g.enable_content_hashing),
            ),
        };
    FileCacheOptions {
        ttl_seconds,
        region,
        header,
        enable_content_hashing,
        route_keys: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::from_value;
    use serde_json::json;

    #[test]
    fn options_merge_like_ocelot() {
        let (c, _) = from_value(&json!({
            "Routes": [
                {"Key": "a", "FileCacheOptions": {"TtlSeconds": 5, "Region": "ra"}},
                {"Key": "b"},
                {"Key": "c", "CacheOptions": {"TtlSeconds": 0}},
                {"Key": "d", "CacheOptions": {"Header": "X-Tenant", "Region": ""}},
                {"Key": "e"}
            ],
            "GlobalConfiguration": {"CacheOptions": {"TtlSeconds": 30, "Header": "Authorization", "EnableContentHashing": true, "RouteKeys": ["a", "b", "d"]}}
        }));
        let a = cache(&c.routes[0], &c.global);
        assert_eq!(
            (
                a.ttl_seconds,
                a.region.as_deref(),
                a.header.as_deref(),
                a.enable_content_hashing
            ),
            (Some(5), Some("ra"), Some("Authorization"), Some(true))
        );
        let b = cache(&c.routes[1], &c.global);
        assert_eq!(
            (b.ttl_seconds, b.region, b.route_keys),
            (Some(30), None, None)
        );
        let not_in_group = cache(&c.routes[2], &c.global);
        assert_eq!(
            (not_in_group.ttl_seconds, not_in_group.header),
            (Some(0), None)
        );
        let d = cache(&c.routes[3], &c.global);
        assert_eq!(
            (d.ttl_seconds, d.header.as_deref(), d.region),
            (Some(30), Some("X-Tenant"), None)
        );
        assert_eq!(cache(&c.routes[4], &c.global), FileCacheOptions::default());
    }

    #[test]
    fn route_only_options_drop_empty_strings() {
        let (c, _) = from_value(
            &json!({"Routes": [{"CacheOptions": {"TtlSeconds": 1, "Region": "", "Header": ""}}]}),
        );
        assert_eq!(
            cache(&c.routes[0], &c.global),
            FileCacheOptions {
                ttl_seconds: Some(1),
                ..FileCacheOptions::default()
            }
        );
    }
}
