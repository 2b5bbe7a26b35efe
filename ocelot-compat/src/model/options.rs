//! The options objects a route, a dynamic route and `GlobalConfiguration` have
//! in common (Ocelot's `src/Configuration/File/File*Options.cs`). Every field is
//! an `Option` so that "not given" stays distinguishable from a default: the
//! route-over-global merges in `crate::effective` depend on it. `route_keys` is
//! only read in `GlobalConfiguration`.

/// `AuthenticationOptions`. `route_keys` is only read in `GlobalConfiguration`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileAuthenticationOptions {
    /// Deprecated single key; Ocelot tries it before `authentication_provider_keys`.
    pub authentication_provider_key: Option<String>,
    pub authentication_provider_keys: Vec<String>,
    pub allowed_scopes: Option<Vec<String>>,
    pub allow_anonymous: Option<bool>,
    pub route_keys: Option<Vec<String>>,
}

/// `CacheOptions` (legacy `FileCacheOptions`, which wins when both are given).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileCacheOptions {
    pub ttl_seconds: Option<i64>,
    pub region: Option<String>,
    pub header: Option<String>,
    pub enable_content_hashing: Option<bool>,
    pub route_keys: Option<Vec<String>>,
}

/// `HttpHandlerOptions`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileHttpHandlerOptions {
    pub allow_auto_redirect: Option<bool>,
    pub max_connections_per_server: Option<i64>,
    pub pooled_connection_lifetime_seconds: Option<i64>,
    pub use_cookie_container: Option<bool>,
    pub use_proxy: Option<bool>,
    pub use_tracing: Option<bool>,
    pub route_keys: Option<Vec<String>>,
}

/// `LoadBalancerOptions` (or a legacy route-level `LoadBalancer` string).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileLoadBalancerOptions {
    /// Balancer name; the legacy `NoLoadBalance` spelling is mapped to `NoLoadBalancer`.
    pub r#type: Option<String>,
    pub key: Option<String>,
    pub expiry: Option<i64>,
    pub route_keys: Option<Vec<String>>,
}

/// `QoSOptions`, with the deprecated aliases already folded in (they win, as in Ocelot).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileQoSOptions {
    pub minimum_throughput: Option<i64>,
    pub break_duration: Option<i64>,
    pub failure_ratio: Option<f64>,
    pub sampling_duration: Option<i64>,
    pub timeout: Option<i64>,
    pub route_keys: Option<Vec<String>>,
}

/// `RateLimitOptions` (route, global, or a dynamic route's legacy `RateLimitRule`),
/// with deprecated aliases folded into the current names (they win, as in Ocelot).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileRateLimitOptions {
    pub enable_rate_limiting: Option<bool>,
    pub enable_headers: Option<bool>,
    pub limit: Option<i64>,
    pub period: Option<String>,
    pub wait: Option<String>,
    /// The legacy ban length in seconds, kept as given for the ≤24.0 behaviour.
    pub period_timespan: Option<f64>,
    pub status_code: Option<i64>,
    pub quota_message: Option<String>,
    pub key_prefix: Option<String>,
    pub client_id_header: Option<String>,
    pub client_whitelist: Option<Vec<String>>,
    pub route_keys: Option<Vec<String>>,
}

/// `SecurityOptions`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileSecurityOptions {
    pub ip_allowed_list: Vec<String>,
    pub ip_blocked_list: Vec<String>,
    pub exclude_allowed_from_blocked: bool,
}
