//! `HttpHandlerOptions` (Ocelot's `src/Configuration/Creator/HttpHandlerOptionsCreator.cs`):
//! the usual route-over-global property merge with `RouteKeys`. Ocelot's
//! defaults (no redirects, unlimited connections, 120 s pooled lifetime, …)
//! are left to the caller, so "not given" stays visible.

use super::applies;
use crate::model::{FileGlobalConfiguration, FileHttpHandlerOptions, FileRoute};

/// The route's HTTP handler options merged with the applicable global ones.
pub fn http_handler(route: &FileRoute, global: &FileGlobalConfiguration) -> FileHttpHandlerOptions {
    let global = global
        .http_handler_options
        .as_ref()
        .filter(|g| applies(g.route_keys.as_ref(), route.key.as_deref()));
    match (&route.http_handler_options, global) {
        (None, None) => FileHttpHandlerOptions::default(),
        (Some(r), None) => r.clone(),
        (None, Some(g)) => FileHttpHandlerOptions {
            route_keys: None,
            ..g.clone()
        },
        (Some(r), Some(g)) => FileHttpHandlerOptions {
            allow_auto_redirect: r.allow_auto_redirect.or(g.allow_auto_redirect),
            max_connections_per_server: r
                .max_connections_per_server
                .or(g.max_connections_per_server),
            pooled_connection_lifetime_seconds: r
                .pooled_connection_lifetime_seconds
                .or(g.pooled_connection_lifetime_seconds),
            use_cookie_container: r.use_cookie_container.or(g.use_cookie_container),
            use_proxy: r.use_proxy.or(g.use_proxy),
            use_tracing: r.use_tracing.or(g.use_tracing),
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
    fn global_handler_options_merge_by_route_keys() {
        let (c, _) = from_value(&json!({
            "Routes": [
                {"Key": "a"},
                {"Key": "b", "HttpHandlerOptions": {"UseProxy": true}},
                {"Key": "a", "HttpHandlerOptions": {"AllowAutoRedirect": false}}
            ],
            "GlobalConfiguration": {"HttpHandlerOptions": {"AllowAutoRedirect": true, "MaxConnectionsPerServer": 10, "RouteKeys": ["a"]}}
        }));
        let a = http_handler(&c.routes[0], &c.global);
        assert_eq!(
            (
                a.allow_auto_redirect,
                a.max_connections_per_server,
                a.route_keys
            ),
            (Some(true), Some(10), None)
        );
        let b = http_handler(&c.routes[1], &c.global);
        assert_eq!(
            (b.use_proxy, b.max_connections_per_server),
            (Some(true), None)
        );
        let merged = http_handler(&c.routes[2], &c.global);
        assert_eq!(
            (
                merged.allow_auto_redirect,
                merged.max_connections_per_server
            ),
            (Some(false), Some(10))
        );
    }
}
