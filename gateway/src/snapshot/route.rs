//! One route compiled for serving: each feature's own policy, built once
//! from the route's effective options (route over global, as Ocelot's
//! `src/Configuration/Creator/` merges them).

use super::Env;
use crate::auth::Authenticator;
use crate::authorization::Authorization;
use crate::balancing::{BalancerKind, Pool, Target};
use crate::cache::CachePolicy;
use crate::claims::{ClaimsConfig, ClaimsTransforms};
use crate::diagnostics::Warnings;
use crate::headers::{self, HeaderTransforms};
use crate::metrics::RouteMetrics;
use crate::protocols::UpstreamProtocol;
use crate::qos::{QosPolicy, RouteQos};
use crate::rate_limiting::RouteRule;
use crate::request_id::RequestIdPolicy;
use crate::retries::RetryPolicy;
use crate::security::IpPolicy;
use ocelot_compat::effective;
use ocelot_compat::model::{FileConfiguration, FileRoute};
use ocelot_compat::template::DownstreamTemplate;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// One route, ready to serve.
pub struct CompiledRoute {
    /// How logs and metrics name the route: its upstream template.
    pub(crate) name: String,
    /// How Ocelot names the route in messages (`DownstreamRoute.Name()`).
    pub(crate) ocelot_name: String,
    pub(crate) downstream: DownstreamTemplate,
    /// TLS to the downstream service (`https`/`wss`).
    pub(crate) tls: bool,
    /// HTTP version and ALPN to the downstream service (`DownstreamHttpVersion`/`Policy`).
    pub(crate) protocol: UpstreamProtocol,
    pub(crate) method: Option<http::Method>,
    pub(crate) timeout: Duration,
    pub(crate) verify_cert: bool,
    /// The route gets its hosts from service discovery (`ServiceName`).
    pub(crate) uses_discovery: bool,
    pub(crate) pool: Arc<Pool>,
    /// What the pool was built from: an unchanged key after a reload means the
    /// pool (round-robin position, in-flight counts, health) carries over.
    pub(crate) pool_key: String,
    /// `SecurityOptions`.
    pub(crate) security: Option<IpPolicy>,
    /// `UpstreamHeaderTransform` and `DownstreamHeaderTransform`.
    pub(crate) headers: HeaderTransforms,
    /// `RateLimitOptions`.
    pub(crate) rate_limit: Option<RouteRule>,
    /// `RequestIdKey`.
    pub(crate) request_id: RequestIdPolicy,
    /// Authentication schemes in Ocelot's order; empty: anonymous.
    pub(crate) authentication: Vec<String>,
    /// `AllowedScopes` and `RouteClaimsRequirement`.
    pub(crate) authorization: Authorization,
    /// `AddClaimsToRequest`, `AddHeadersToRequest`, `AddQueriesToRequest`,
    /// `ChangeDownstreamPathTemplate`.
    pub(crate) claims: ClaimsTransforms,
    /// Retries of the downstream call (the gateway's `retries` settings).
    pub(crate) retry: Option<RetryPolicy>,
    /// `QoSOptions`: timeout and circuit breaker.
    pub(crate) qos: Option<RouteQos>,
    /// `CacheOptions` with `TtlSeconds` > 0.
    pub(crate) cache: Option<CachePolicy>,
    /// Handles into the request metrics, labelled with `name`.
    pub(crate) metrics: RouteMetrics,
    /// Some step needs the request id (`RequestIdKey`, `{TraceId}`).
    pub(crate) needs_request_id: bool,
}

impl CompiledRoute {
    /// Compiles one route; `previous` are pools to take over by pool key.
    /// `auth`, when given, names the configured providers, so a route naming
    /// another one is reported.
    pub(crate) fn compile(
        route: &FileRoute,
        config: &FileConfiguration,
        previous: &HashMap<&str, Arc<Pool>>,
        env: &Env,
        auth: Option<&Authenticator>,
        warnings: &mut Warnings<'_>,
    ) -> CompiledRoute {
        let global = &config.global;
        let identity = route_identity(route, config);
        let ocelot_name = route_name(route);
        let lb = effective::load_balancer(route, global);
        let kind = BalancerKind::from_options(lb.r#type.as_deref(), lb.key.as_deref(), lb.expiry);
        let targets: Vec<Target> = route
            .downstream_host_and_ports
            .iter()
            .filter_map(|hp| {
                let port = u16::try_from(hp.port).ok()?;
                Some(Target {
                    host: hp.host.trim().to_string(),
                    port,
                })
            })
            .collect();
        // With a ServiceName the hosts come from the registry (Ocelot ignores
        // DownstreamHostAndPorts then); the key names provider and service so
        // a reload that changes neither keeps the pool and its instances.
        let service = crate::discovery::ServiceRef::for_route(route, config, &env.discovery);
        if let Some(warning) = service.as_ref().and_then(|s| s.warning()) {
            warnings.warn("ServiceName", warning);
        }
        let pool_key = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}",
            route.upstream_path_template,
            route.key,
            kind,
            targets,
            service.as_ref().map(|s| s.key())
        );
        let pool = previous.get(pool_key.as_str()).cloned().unwrap_or_else(|| {
            let registry = env.health.registry();
            Arc::new(match &service {
                Some(service) => Pool::with_discovery(kind, service.discovery(), registry),
                None => Pool::with_health_registry(kind, targets, registry),
            })
        });
        let scheme = route
            .downstream_scheme
            .as_deref()
            .unwrap_or("http")
            .to_ascii_lowercase();
        let tls = scheme == "https" || scheme == "wss";
        let protocol = UpstreamProtocol::compile(
            route.downstream_http_version.as_deref(),
            route.downstream_http_version_policy.as_deref(),
            tls,
            warnings,
        );

        let security = IpPolicy::compile(&effective::security(route, global), warnings);
        let rate_limit = env
            .limiter
            .compile(route, global, &identity, &ocelot_name)
            .unwrap_or_else(|e| {
                warnings.warn(
                    "RateLimitOptions",
                    format!("{e}; rate limiting is off for this route"),
                );
                None
            });
        let qos = QosPolicy::from_options(&effective::qos(route, global)).map(|policy| {
            let breaker = env
                .breakers
                .breaker(&identity, &ocelot_name, policy.breaker);
            RouteQos { policy, breaker }
        });

        let name = route.upstream_path_template.clone().unwrap_or_default();
        // The settings were checked when they were loaded.
        let retry = RetryPolicy::compile(&env.retries, route.key.as_deref(), &name, &name)
            .unwrap_or_else(|e| {
                warnings.warn("retries", format!("{e}; retries are off for this route"));
                None
            });

        let auth_options = effective::authentication(route, global);
        let authentication = effective::authentication_schemes(&auth_options);
        if let Some(auth) = auth {
            for scheme in authentication.iter().filter(|s| !auth.has(s)) {
                warnings.warn(
                    "AuthenticationOptions",
                    format!("provider \"{scheme}\" is not in the gateway's auth_providers: requests to this route are refused with 401"),
                );
            }
        }
        let authorization = Authorization::compile(
            auth_options.allowed_scopes.as_deref().unwrap_or_default(),
            !authentication.is_empty(),
            &route.route_claims_requirement,
        );
        let claims = ClaimsTransforms::compile(
            ClaimsConfig {
                add_claims: &route.add_claims_to_request,
                add_headers: &route.add_headers_to_request,
                add_queries: &route.add_queries_to_request,
                change_path: &route.change_downstream_path_template,
                downstream_template: route.downstream_path_template.as_deref().unwrap_or(""),
            },
            warnings,
        );
        let base_url = effective::base_url(global).unwrap_or(headers::DEFAULT_BASE_URL);
        let headers = HeaderTransforms::compile(
            &effective::upstream_header_transform(route, global),
            &effective::downstream_header_transform(route, global),
            base_url,
            warnings,
        );
        let request_id = RequestIdPolicy::compile(effective::request_id_key(route, global))
            .unwrap_or_else(|e| {
                warnings.warn("RequestIdKey", format!("{e}; ignored"));
                RequestIdPolicy::default()
            });
        let needs_request_id = request_id.is_configured()
            || headers.upstream.needs_trace_id()
            || headers.downstream.needs_trace_id();
        let cache = CachePolicy::compile(route, config, &identity);

        CompiledRoute {
            name,
            ocelot_name,
            downstream: DownstreamTemplate::parse(
                route.downstream_path_template.as_deref().unwrap_or("/"),
            ),
            tls,
            protocol,
            method: route
                .downstream_http_method
                .as_deref()
                .filter(|m| !m.is_empty())
                .and_then(|m| http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok()),
            timeout: effective::timeout(route, global),
            verify_cert: !route.dangerous_accept_any_server_certificate_validator,
            uses_discovery: route
                .service_name
                .as_deref()
                .is_some_and(|s| !s.trim().is_empty()),
            pool,
            pool_key,
            security,
            headers,
            rate_limit,
            request_id,
            authentication,
            authorization,
            claims,
            retry,
            qos,
            cache,
            metrics: RouteMetrics::default(),
            needs_request_id,
        }
    }

    /// The timeout of the downstream call: the QoS `Timeout` when it is the
    /// shorter one, else the route timeout (itself doubled when not above the
    /// QoS one, as in Ocelot).
    pub(crate) fn downstream_timeout(&self) -> Duration {
        match &self.qos {
            Some(q) => q.policy.downstream_timeout(self.timeout),
            None => self.timeout,
        }
    }

    /// Whether a timeout of the downstream call is the QoS one (503 with a
    /// body, counted by the breaker) rather than the route one (503, empty).
    pub(crate) fn timeout_is_qos(&self) -> bool {
        self.qos.as_ref().is_some_and(|q| {
            q.policy
                .timeout_is_qos(q.policy.route_timeout(self.timeout))
        })
    }
}

/// Ocelot's `RouteKeyCreator.Create` for a static route.
pub(crate) fn route_identity(route: &FileRoute, config: &FileConfiguration) -> String {
    let lb = effective::load_balancer(route, &config.global);
    let lb_type = lb.r#type.as_deref().filter(|t| !t.is_empty());
    let lb_key = lb.key.as_deref().filter(|k| !k.is_empty());
    if lb_type.is_some_and(|t| t.eq_ignore_ascii_case("CookieStickySessions")) {
        if let Some(key) = lb_key {
            return format!("CookieStickySessions:{key}");
        }
    }
    let hosts: Vec<String> = route
        .downstream_host_and_ports
        .iter()
        .map(|h| format!("{}:{}", h.host, h.port))
        .collect();
    let or = |v: Option<&str>, default: &'static str| {
        v.filter(|s| !s.is_empty()).unwrap_or(default).to_string()
    };
    [
        route.upstream_http_method.join(","),
        route.upstream_path_template.clone().unwrap_or_default(),
        or(route.upstream_host.as_deref(), "no-host"),
        or(Some(hosts.join(",").as_str()), "no-host-and-port"),
        or(route.service_namespace.as_deref(), "no-svc-ns"),
        or(route.service_name.as_deref(), "no-svc-name"),
        or(lb_type, "no-lb-type"),
        or(lb_key, "no-lb-key"),
    ]
    .join("|")
}

/// Ocelot's `DownstreamRoute.Name()`: the upstream template (else the
/// downstream one), prefixed by `namespace:service:` with service discovery.
fn route_name(route: &FileRoute) -> String {
    let path = route
        .upstream_path_template
        .as_deref()
        .filter(|t| !t.is_empty())
        .or(route
            .downstream_path_template
            .as_deref()
            .filter(|t| !t.is_empty()))
        .unwrap_or("?");
    match route.service_name.as_deref().filter(|s| !s.is_empty()) {
        Some(service) => format!(
            "{}:{service}:{path}",
            route.service_namespace.as_deref().unwrap_or("")
        ),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use ocelot_compat::model::from_value;
    use serde_json::json;

    fn config(v: serde_json::Value) -> FileConfiguration {
        from_value(&v).0
    }

    fn compile(
        c: &FileConfiguration,
        env: &Env,
    ) -> (CompiledRoute, Vec<ocelot_compat::Diagnostic>) {
        let mut out = Vec::new();
        let mut sink = Warnings::new("route 0".into(), &mut out);
        let route = CompiledRoute::compile(&c.routes[0], c, &HashMap::new(), env, None, &mut sink);
        (route, out)
    }

    #[test]
    fn identity_follows_ocelot_route_keys() {
        let c = config(json!({"Routes": [
            {"UpstreamPathTemplate": "/a/{x}", "UpstreamHttpMethod": ["Get", "Post"], "DownstreamHostAndPorts": [{"Host": "h", "Port": 1}, {"Host": "i", "Port": 2}]},
            {"UpstreamPathTemplate": "/b", "LoadBalancerOptions": {"Type": "CookieStickySessions", "Key": "sid"}},
            {"UpstreamPathTemplate": "/c", "ServiceName": "svc", "LoadBalancerOptions": {"Type": "RoundRobin"}},
        ]}));
        assert_eq!(
            route_identity(&c.routes[0], &c),
            "Get,Post|/a/{x}|no-host|h:1,i:2|no-svc-ns|no-svc-name|no-lb-type|no-lb-key"
        );
        assert_eq!(route_identity(&c.routes[1], &c), "CookieStickySessions:sid");
        assert_eq!(
            route_identity(&c.routes[2], &c),
            "|/c|no-host|no-host-and-port|no-svc-ns|svc|RoundRobin|no-lb-key"
        );
        assert_eq!(route_name(&c.routes[0]), "/a/{x}");
        assert_eq!(route_name(&c.routes[2]), ":svc:/c");
    }

    #[test]
    fn compile_collects_policies_and_warnings() {
        let env = Env::from_settings(&Settings::default()).unwrap();
        let c = config(json!({
            "Routes": [{"UpstreamPathTemplate": "/p", "QoSOptions": {"MinimumThroughput": 2, "Timeout": 500},
                        "RateLimitOptions": {"Limit": 1, "ClientIdHeader": "bad header"},
                        "SecurityOptions": {"IPBlockedList": ["nope", "10.0.0.1"]}}],
        }));
        let (p, warnings) = compile(&c, &env);
        assert!(p.security.is_some() && p.rate_limit.is_none() && p.qos.is_some());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings.iter().all(|w| w.to_string().contains("route 0")));
        assert_eq!(p.downstream_timeout(), Duration::from_millis(500));
        assert!(p.timeout_is_qos());
        let (again, _) = compile(&c, &env);
        assert!(
            Arc::ptr_eq(
                &p.qos.as_ref().expect("qos").breaker,
                &again.qos.as_ref().expect("qos").breaker
            ),
            "same breaker for the same route"
        );
        let plain = config(json!({"Routes": [{"UpstreamPathTemplate": "/p", "Timeout": 9}]}));
        let (plain, _) = compile(&plain, &env);
        assert_eq!(plain.downstream_timeout(), Duration::from_secs(9));
        assert!(!plain.timeout_is_qos());
    }
}
