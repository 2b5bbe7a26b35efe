//! Route-over-global option merges: what a route actually runs with once
//! `GlobalConfiguration` is taken into account.
//!
//! Ocelot does this once per route in `src/Configuration/Creator/`, one creator
//! per options object (`LoadBalancerOptionsCreator`, `QoSOptionsCreator`,
//! `RateLimitOptionsCreator`, …); this folder has one file per options object
//! in the same way, so a merge rule is found by the option's name. Each
//! function returns the merged `File*` object (or, for values, the value), so
//! the gateway compiles its policies from one answer instead of repeating the
//! rule. The rule most of them share (24.1+): a global section applies to a
//! route when its `RouteKeys` is absent or empty or names the route's `Key`;
//! then each property comes from the route if set, else from the global
//! section, else from Ocelot's default.

mod authentication;
mod cache;
mod header_transforms;
mod http_handler;
mod load_balancer;
mod qos;
mod rate_limiting;
mod request_id;
mod security;
mod timeout;

pub use authentication::{authentication, authentication_schemes};
pub use cache::cache;
pub use header_transforms::{base_url, downstream_header_transform, upstream_header_transform};
pub use http_handler::http_handler;
pub use load_balancer::load_balancer;
pub use qos::qos;
pub use rate_limiting::{rate_limiting, rate_limiting_legacy};
pub use request_id::request_id_key;
pub use security::security;
pub use timeout::timeout;

/// Whether a global section with these `RouteKeys` applies to a route with
/// this `Key`: absent or empty keys apply to every route.
fn applies(route_keys: Option<&Vec<String>>, route_key: Option<&str>) -> bool {
    match route_keys {
        None => true,
        Some(keys) if keys.is_empty() => true,
        Some(keys) => route_key.is_some_and(|k| keys.iter().any(|rk| rk == k)),
    }
}

/// A string that is not empty or whitespace.
fn non_blank(s: &Option<String>) -> Option<String> {
    s.as_ref().filter(|v| !v.trim().is_empty()).cloned()
}

/// A string that is not empty (whitespace counts as a value).
fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_ref().filter(|v| !v.is_empty()).cloned()
}
