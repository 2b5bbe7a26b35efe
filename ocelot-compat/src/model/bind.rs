//! [`from_value`]: binds the lenient JSON value to the file model the way
//! ASP.NET's `ConfigurationBinder` does, so a file Ocelot accepts is read the
//! same here. Each reader names the JSON path of what it reports, and every
//! legacy spelling is folded into the current field here, once.

use super::*;
use crate::diag::Diagnostic;
use serde_json::{Map, Value};

/// Reads the file model out of a (merged) JSON value. Type errors are errors;
/// unknown properties are warnings. Both carry the JSON path of the field.
pub fn from_value(value: &Value) -> (FileConfiguration, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut config = FileConfiguration::default();
    let Some(map) = value.as_object() else {
        diags.push(Diagnostic::error(
            "",
            "",
            "the configuration must be a JSON object",
        ));
        return (config, diags);
    };
    let mut root = Obj::new(map, String::new());
    for (name, items) in root.arrays(&["Routes", "ReRoutes"], &mut diags) {
        for (i, item) in items.iter().enumerate() {
            let index = config.routes.len();
            let location = format!("Routes[{index}]");
            match item.as_object() {
                Some(m) => config.routes.push(read_route(m, &location, &mut diags)),
                None => diags.push(Diagnostic::error(
                    location,
                    format!("{name}[{i}]"),
                    "must be an object",
                )),
            }
        }
    }
    for (name, items) in root.arrays(&["DynamicRoutes", "DynamicReRoutes"], &mut diags) {
        for (i, item) in items.iter().enumerate() {
            let index = config.dynamic_routes.len();
            let location = format!("DynamicRoutes[{index}]");
            match item.as_object() {
                Some(m) => config
                    .dynamic_routes
                    .push(read_dynamic_route(m, &location, &mut diags)),
                None => diags.push(Diagnostic::error(
                    location,
                    format!("{name}[{i}]"),
                    "must be an object",
                )),
            }
        }
    }
    for (name, items) in root.arrays(&["Aggregates"], &mut diags) {
        for (i, item) in items.iter().enumerate() {
            let index = config.aggregates.len();
            let location = format!("Aggregates[{index}]");
            match item.as_object() {
                Some(m) => config
                    .aggregates
                    .push(read_aggregate(m, &location, &mut diags)),
                None => diags.push(Diagnostic::error(
                    location,
                    format!("{name}[{i}]"),
                    "must be an object",
                )),
            }
        }
    }
    if let Some(m) = root.object(&["GlobalConfiguration"], &mut diags) {
        config.global = read_global(m, &mut diags);
    }
    if let Some(items) = root.array(&["SwaggerEndPoints"], &mut diags) {
        for (i, item) in items.iter().enumerate() {
            let location = format!("SwaggerEndPoints[{i}]");
            match item.as_object() {
                Some(m) => config
                    .swagger_end_points
                    .push(read_swagger_end_point(m, &location, &mut diags)),
                None => diags.push(Diagnostic::error(location, "", "must be an object")),
            }
        }
    }
    // Top-level custom properties are legitimate in Ocelot 25 (they are merged and
    // ignored), so they are not worth a warning.
    let _ = root;
    (config, diags)
}

fn read_route(map: &Map<String, Value>, location: &str, d: &mut Vec<Diagnostic>) -> FileRoute {
    let mut o = Obj::new(map, location.to_string());
    let mut r = FileRoute {
        upstream_path_template: o.string(&["UpstreamPathTemplate", "UpstreamTemplate"], d),
        upstream_http_method: o
            .string_list(&["UpstreamHttpMethod"], d)
            .unwrap_or_default(),
        upstream_host: o.string(&["UpstreamHost"], d),
        upstream_header_templates: o.dict(&["UpstreamHeaderTemplates"], d).unwrap_or_default(),
        route_is_case_sensitive: o
            .bool(&["RouteIsCaseSensitive", "ReRouteIsCaseSensitive"], d)
            .unwrap_or(false),
        priority: o.int(&["Priority"], d).unwrap_or(1),
        downstream_path_template: o.string(&["DownstreamPathTemplate"], d),
        downstream_scheme: o.string(&["DownstreamScheme"], d),
        downstream_host_and_ports: Vec::new(),
        downstream_http_method: o.string(&["DownstreamHttpMethod"], d),
        downstream_http_version: o.string(&["DownstreamHttpVersion"], d),
        downstream_http_version_policy: o.string(&["DownstreamHttpVersionPolicy"], d),
        key: o.string(&["Key"], d),
        timeout: o.int(&["Timeout"], d),
        service_name: o.string(&["ServiceName"], d),
        service_namespace: o.string(&["ServiceNamespace"], d),
        request_id_key: o.string(&["RequestIdKey"], d),
        dangerous_accept_any_server_certificate_validator: o
            .bool(&["DangerousAcceptAnyServerCertificateValidator"], d)
            .unwrap_or(false),
        delegating_handlers: o
            .string_list(&["DelegatingHandlers"], d)
            .unwrap_or_default(),
        add_headers_to_request: o.dict(&["AddHeadersToRequest"], d).unwrap_or_default(),
        add_claims_to_request: o.dict(&["AddClaimsToRequest"], d).unwrap_or_default(),
        add_queries_to_request: o.dict(&["AddQueriesToRequest"], d).unwrap_or_default(),
        change_downstream_path_template: o
            .dict(&["ChangeDownstreamPathTemplate"], d)
            .unwrap_or_default(),
        route_claims_requirement: o.dict(&["RouteClaimsRequirement"], d).unwrap_or_default(),
        upstream_header_transform: o.dict(&["UpstreamHeaderTransform"], d).unwrap_or_default(),
        downstream_header_transform: o
            .dict(&["DownstreamHeaderTransform"], d)
            .unwrap_or_default(),
        authentication_options: o
            .object(&["AuthenticationOptions"], d)
            .map(|m| read_auth(m, &o.child("AuthenticationOptions"), false, d)),
        // The deprecated `FileCacheOptions` takes precedence over `CacheOptions`, as in Ocelot 24.1+.
        cache_options: None,
        http_handler_options: o
            .object(&["HttpHandlerOptions"], d)
            .map(|m| read_http_handler(m, &o.child("HttpHandlerOptions"), false, d)),
        load_balancer_options: o
            .object(&["LoadBalancerOptions"], d)
            .map(|m| read_load_balancer(m, &o.child("LoadBalancerOptions"), false, d)),
        qos_options: o
            .object(&["QoSOptions"], d)
            .map(|m| read_qos(m, &o.child("QoSOptions"), false, d)),
        rate_limit_options: o
            .object(&["RateLimitOptions"], d)
            .map(|m| read_rate_limit(m, &o.child("RateLimitOptions"), false, d)),
        security_options: o
            .object(&["SecurityOptions"], d)
            .map(|m| read_security(m, &o.child("SecurityOptions"), d)),
        metadata: o.metadata(d),
        swagger_key: o.string(&["SwaggerKey"], d),
        virtual_directory: o.string(&["VirtualDirectory"], d),
        parameters_map: o.dict(&["ParametersMap"], d).unwrap_or_default(),
    };
    let legacy_cache = o
        .object(&["FileCacheOptions"], d)
        .map(|m| read_cache(m, &o.child("FileCacheOptions"), false, d));
    let cache = o
        .object(&["CacheOptions"], d)
        .map(|m| read_cache(m, &o.child("CacheOptions"), false, d));
    r.cache_options = legacy_cache.or(cache);
    for (field, template) in [
        ("UpstreamPathTemplate", &mut r.upstream_path_template),
        ("DownstreamPathTemplate", &mut r.downstream_path_template),
    ] {
        add_leading_slash(template, location, field, d);
    }

    if let Some(items) = o.array(&["DownstreamHostAndPorts"], d) {
        for (i, item) in items.iter().enumerate() {
            let field = format!("DownstreamHostAndPorts[{i}]");
            match item.as_object() {
                Some(m) => {
                    let mut hp = Obj::new(m, o.child(&field));
                    let host = hp.string(&["Host"], d).unwrap_or_default();
                    let port = hp.int(&["Port"], d).unwrap_or(0);
                    hp.finish(d);
                    r.downstream_host_and_ports
                        .push(FileHostAndPort { host, port });
                }
                None => d.push(Diagnostic::error(
                    location,
                    field,
                    "must be an object with Host and Port",
                )),
            }
        }
    }
    // Ocelot before 5.0 named a single downstream with route-level DownstreamHost/DownstreamPort.
    let legacy_host = o.string(&["DownstreamHost"], d);
    let legacy_port = o.int(&["DownstreamPort"], d);
    if let Some(host) = legacy_host {
        if r.downstream_host_and_ports.is_empty() {
            r.downstream_host_and_ports.push(FileHostAndPort {
                host,
                port: legacy_port.unwrap_or(80),
            });
        }
    }
    // Very old configs name the balancer with a plain `LoadBalancer` string.
    if let Some(name) = o.string(&["LoadBalancer"], d) {
        let lb = r
            .load_balancer_options
            .get_or_insert_with(FileLoadBalancerOptions::default);
        if lb.r#type.is_none() {
            lb.r#type = Some(normalize_balancer_name(name));
        }
    }
    // Old names Ocelot ignores today; accept them silently.
    o.mark_known(&["UseServiceDiscovery", "ReRouteIsCaseSensitive"]);
    o.finish(d);
    r
}

fn read_dynamic_route(
    map: &Map<String, Value>,
    location: &str,
    d: &mut Vec<Diagnostic>,
) -> FileDynamicRoute {
    let mut o = Obj::new(map, location.to_string());
    let legacy_rule = o
        .object(&["RateLimitRule"], d)
        .map(|m| read_rate_limit(m, &o.child("RateLimitRule"), false, d));
    let rule = o
        .object(&["RateLimitOptions"], d)
        .map(|m| read_rate_limit(m, &o.child("RateLimitOptions"), false, d));
    let legacy_cache = o
        .object(&["FileCacheOptions"], d)
        .map(|m| read_cache(m, &o.child("FileCacheOptions"), false, d));
    let cache = o
        .object(&["CacheOptions"], d)
        .map(|m| read_cache(m, &o.child("CacheOptions"), false, d));
    let r = FileDynamicRoute {
        service_name: o.string(&["ServiceName"], d),
        service_namespace: o.string(&["ServiceNamespace"], d),
        key: o.string(&["Key"], d),
        authentication_options: o
            .object(&["AuthenticationOptions"], d)
            .map(|m| read_auth(m, &o.child("AuthenticationOptions"), false, d)),
        cache_options: legacy_cache.or(cache),
        downstream_http_version: o.string(&["DownstreamHttpVersion"], d),
        downstream_http_version_policy: o.string(&["DownstreamHttpVersionPolicy"], d),
        downstream_scheme: o.string(&["DownstreamScheme"], d),
        http_handler_options: o
            .object(&["HttpHandlerOptions"], d)
            .map(|m| read_http_handler(m, &o.child("HttpHandlerOptions"), false, d)),
        load_balancer_options: o
            .object(&["LoadBalancerOptions"], d)
            .map(|m| read_load_balancer(m, &o.child("LoadBalancerOptions"), false, d)),
        metadata: o.metadata(d),
        qos_options: o
            .object(&["QoSOptions"], d)
            .map(|m| read_qos(m, &o.child("QoSOptions"), false, d)),
        rate_limit_options: legacy_rule.or(rule),
        timeout: o.int(&["Timeout"], d),
    };
    o.finish(d);
    r
}

fn read_aggregate(
    map: &Map<String, Value>,
    location: &str,
    d: &mut Vec<Diagnostic>,
) -> FileAggregateRoute {
    let mut o = Obj::new(map, location.to_string());
    let mut a = FileAggregateRoute {
        upstream_path_template: o.string(&["UpstreamPathTemplate", "UpstreamTemplate"], d),
        upstream_host: o.string(&["UpstreamHost"], d),
        upstream_header_templates: o.dict(&["UpstreamHeaderTemplates"], d).unwrap_or_default(),
        route_is_case_sensitive: o
            .bool(&["RouteIsCaseSensitive", "ReRouteIsCaseSensitive"], d)
            .unwrap_or(false),
        priority: o.int(&["Priority"], d).unwrap_or(1),
        aggregator: o.string(&["Aggregator"], d),
        description: o.string(&["Description"], d),
        ..FileAggregateRoute::default()
    };
    add_leading_slash(
        &mut a.upstream_path_template,
        location,
        "UpstreamPathTemplate",
        d,
    );
    // An empty list binds to nothing in ASP.NET, so the GET default stays.
    if let Some(methods) = o.string_list(&["UpstreamHttpMethod"], d) {
        if !methods.is_empty() {
            a.upstream_http_method = methods;
        }
    }
    a.route_keys = o
        .string_list(&["RouteKeys", "ReRouteKeys"], d)
        .unwrap_or_default();
    if let Some(items) = o.array(&["RouteKeysConfig", "ReRouteKeysConfig"], d) {
        for (i, item) in items.iter().enumerate() {
            let field = format!("RouteKeysConfig[{i}]");
            match item.as_object() {
                Some(m) => {
                    let mut c = Obj::new(m, o.child(&field));
                    a.route_keys_config.push(FileAggregateRouteConfig {
                        route_key: c.string(&["RouteKey", "ReRouteKey"], d),
                        json_path: c.string(&["JsonPath"], d),
                        parameter: c.string(&["Parameter"], d),
                    });
                    c.finish(d);
                }
                None => d.push(Diagnostic::error(location, field, "must be an object")),
            }
        }
    }
    o.finish(d);
    a
}

fn read_global(map: &Map<String, Value>, d: &mut Vec<Diagnostic>) -> FileGlobalConfiguration {
    let mut o = Obj::new(map, "GlobalConfiguration".to_string());
    let legacy_cache = o
        .object(&["FileCacheOptions"], d)
        .map(|m| read_cache(m, &o.child("FileCacheOptions"), true, d));
    let cache = o
        .object(&["CacheOptions"], d)
        .map(|m| read_cache(m, &o.child("CacheOptions"), true, d));
    let g = FileGlobalConfiguration {
        base_url: o.string(&["BaseUrl"], d),
        request_id_key: o.string(&["RequestIdKey"], d),
        service_discovery_provider: o
            .object(&["ServiceDiscoveryProvider"], d)
            .map(|m| read_sd_provider(m, &o.child("ServiceDiscoveryProvider"), d)),
        rate_limit_options: o
            .object(&["RateLimitOptions"], d)
            .map(|m| read_rate_limit(m, &o.child("RateLimitOptions"), true, d)),
        qos_options: o
            .object(&["QoSOptions"], d)
            .map(|m| read_qos(m, &o.child("QoSOptions"), true, d)),
        load_balancer_options: o
            .object(&["LoadBalancerOptions"], d)
            .map(|m| read_load_balancer(m, &o.child("LoadBalancerOptions"), true, d)),
        cache_options: legacy_cache.or(cache),
        http_handler_options: o
            .object(&["HttpHandlerOptions"], d)
            .map(|m| read_http_handler(m, &o.child("HttpHandlerOptions"), true, d)),
        authentication_options: o
            .object(&["AuthenticationOptions"], d)
            .map(|m| read_auth(m, &o.child("AuthenticationOptions"), true, d)),
        downstream_scheme: o.string(&["DownstreamScheme"], d),
        downstream_http_version: o.string(&["DownstreamHttpVersion"], d),
        downstream_http_version_policy: o.string(&["DownstreamHttpVersionPolicy"], d),
        security_options: o
            .object(&["SecurityOptions"], d)
            .map(|m| read_security(m, &o.child("SecurityOptions"), d)),
        upstream_header_transform: o.dict(&["UpstreamHeaderTransform"], d).unwrap_or_default(),
        downstream_header_transform: o
            .dict(&["DownstreamHeaderTransform"], d)
            .unwrap_or_default(),
        metadata: o.metadata(d),
        metadata_options: o
            .object(&["MetadataOptions"], d)
            .map(|m| read_metadata_options(m, &o.child("MetadataOptions"), d)),
        timeout: o.int(&["Timeout"], d),
    };
    // Keys older Ocelot versions read at global level; harmless today.
    o.mark_known(&["AdministrationPath", "ServiceDiscoveryProviderType"]);
    o.finish(d);
    g
}

fn read_swagger_end_point(
    map: &Map<String, Value>,
    location: &str,
    d: &mut Vec<Diagnostic>,
) -> FileSwaggerEndPoint {
    let mut o = Obj::new(map, location.to_string());
    let defaults = FileSwaggerEndPoint::default();
    let mut e = FileSwaggerEndPoint {
        key: o.string(&["Key"], d),
        version_placeholder: o
            .string(&["VersionPlaceholder"], d)
            .filter(|p| !p.is_empty())
            .unwrap_or(defaults.version_placeholder),
        config: Vec::new(),
        host_override: o.string(&["HostOverride"], d),
        transform_by_ocelot_config: o
            .bool(&["TransformByOcelotConfig"], d)
            .unwrap_or(defaults.transform_by_ocelot_config),
        remove_unused_components_from_scheme: o
            .bool(&["RemoveUnusedComponentsFromScheme"], d)
            .unwrap_or(defaults.remove_unused_components_from_scheme),
        take_servers_from_downstream_service: o
            .bool(&["TakeServersFromDownstreamService"], d)
            .unwrap_or(defaults.take_servers_from_downstream_service),
    };
    if let Some(items) = o.array(&["Config"], d) {
        for (i, item) in items.iter().enumerate() {
            let field = format!("Config[{i}]");
            let Some(m) = item.as_object() else {
                d.push(Diagnostic::error(location, field, "must be an object"));
                continue;
            };
            let mut c = Obj::new(m, o.child(&field));
            let service = c.object(&["Service"], d).map(|m| {
                let mut s = Obj::new(m, c.child("Service"));
                let service = FileSwaggerService {
                    name: s.string(&["Name"], d),
                    path: s.string(&["Path"], d),
                };
                s.finish(d);
                service
            });
            e.config.push(FileSwaggerEndPointConfig {
                name: c.string(&["Name"], d),
                version: c.string(&["Version"], d),
                url: c.string(&["Url"], d),
                service,
            });
            c.finish(d);
        }
    }
    o.finish(d);
    e
}

fn read_auth(
    map: &Map<String, Value>,
    path: &str,
    global: bool,
    d: &mut Vec<Diagnostic>,
) -> FileAuthenticationOptions {
    let mut o = Obj::new(map, path.to_string());
    let a = FileAuthenticationOptions {
        authentication_provider_key: o.string(&["AuthenticationProviderKey"], d),
        authentication_provider_keys: o
            .string_list(&["AuthenticationProviderKeys"], d)
            .unwrap_or_default(),
        allowed_scopes: o.string_list(&["AllowedScopes"], d),
        allow_anonymous: o.bool(&["AllowAnonymous"], d),
        route_keys: o.route_keys(global, d),
    };
    o.finish(d);
    a
}

fn read_cache(
    map: &Map<String, Value>,
    path: &str,
    global: bool,
    d: &mut Vec<Diagnostic>,
) -> FileCacheOptions {
    let mut o = Obj::new(map, path.to_string());
    let c = FileCacheOptions {
        ttl_seconds: o.int(&["TtlSeconds"], d),
        region: o.string(&["Region"], d),
        header: o.string(&["Header"], d),
        enable_content_hashing: o.bool(&["EnableContentHashing"], d),
        route_keys: o.route_keys(global, d),
    };
    o.finish(d);
    c
}

fn read_http_handler(
    map: &Map<String, Value>,
    path: &str,
    global: bool,
    d: &mut Vec<Diagnostic>,
) -> FileHttpHandlerOptions {
    let mut o = Obj::new(map, path.to_string());
    let h = FileHttpHandlerOptions {
        allow_auto_redirect: o.bool(&["AllowAutoRedirect"], d),
        max_connections_per_server: o.int(&["MaxConnectionsPerServer"], d),
        pooled_connection_lifetime_seconds: o.int(&["PooledConnectionLifetimeSeconds"], d),
        use_cookie_container: o.bool(&["UseCookieContainer"], d),
        use_proxy: o.bool(&["UseProxy"], d),
        use_tracing: o.bool(&["UseTracing"], d),
        route_keys: o.route_keys(global, d),
    };
    o.finish(d);
    h
}

/// Ocelot refuses a path template without its leading '/', yet configurations
/// written that way exist in the wild (their authors meant the obvious path), so
/// the slash is added and the reader told.
fn add_leading_slash(
    template: &mut Option<String>,
    location: &str,
    field: &str,
    d: &mut Vec<Diagnostic>,
) {
    if let Some(t) = template {
        if !t.is_empty() && !t.starts_with('/') {
            d.push(Diagnostic::warning(
                location,
                field,
                format!(
                    "'{t}' does not start with '/'; read as '/{t}' (Ocelot would refuse to start)"
                ),
            ));
            t.insert(0, '/');
        }
    }
}

/// Ocelot once spelled the default balancer `NoLoadBalance`; both mean the same.
fn normalize_balancer_name(name: String) -> String {
    if name == "NoLoadBalance" {
        "NoLoadBalancer".to_string()
    } else {
        name
    }
}

fn read_load_balancer(
    map: &Map<String, Value>,
    path: &str,
    global: bool,
    d: &mut Vec<Diagnostic>,
) -> FileLoadBalancerOptions {
    let mut o = Obj::new(map, path.to_string());
    let l = FileLoadBalancerOptions {
        r#type: o.string(&["Type"], d).map(normalize_balancer_name),
        key: o.string(&["Key"], d),
        expiry: o.int(&["Expiry"], d),
        route_keys: o.route_keys(global, d),
    };
    o.finish(d);
    l
}

fn read_qos(
    map: &Map<String, Value>,
    path: &str,
    global: bool,
    d: &mut Vec<Diagnostic>,
) -> FileQoSOptions {
    let mut o = Obj::new(map, path.to_string());
    // Deprecated names take precedence over the current ones (Ocelot 24.1–25).
    let legacy_min = o.int(&["ExceptionsAllowedBeforeBreaking"], d);
    let legacy_break = o.int(&["DurationOfBreak"], d);
    let legacy_timeout = o.int(&["TimeoutValue"], d);
    let q = FileQoSOptions {
        minimum_throughput: legacy_min.or(o.int(&["MinimumThroughput"], d)),
        break_duration: legacy_break.or(o.int(&["BreakDuration"], d)),
        failure_ratio: o.float(&["FailureRatio"], d),
        sampling_duration: o.int(&["SamplingDuration"], d),
        timeout: legacy_timeout.or(o.int(&["Timeout"], d)),
        route_keys: o.route_keys(global, d),
    };
    o.finish(d);
    q
}

fn read_rate_limit(
    map: &Map<String, Value>,
    path: &str,
    global: bool,
    d: &mut Vec<Diagnostic>,
) -> FileRateLimitOptions {
    let mut o = Obj::new(map, path.to_string());
    let disable_headers = o.bool(&["DisableRateLimitHeaders"], d);
    let enable_headers = o.bool(&["EnableHeaders"], d);
    let period_timespan = o.float(&["PeriodTimespan"], d);
    let wait = o.string(&["Wait"], d);
    let legacy_status = o.int(&["HttpStatusCode"], d);
    let status = o.int(&["StatusCode"], d);
    let legacy_message = o.string(&["QuotaExceededMessage"], d);
    let message = o.string(&["QuotaMessage"], d);
    let legacy_prefix = o.string(&["RateLimitCounterPrefix"], d);
    let prefix = o.string(&["KeyPrefix"], d);
    let r = FileRateLimitOptions {
        enable_rate_limiting: o.bool(&["EnableRateLimiting"], d),
        enable_headers: disable_headers.map(|disabled| !disabled).or(enable_headers),
        limit: o.int(&["Limit"], d),
        period: o.string(&["Period"], d),
        wait: period_timespan.map(format_seconds).or(wait),
        period_timespan,
        status_code: legacy_status.or(status),
        quota_message: legacy_message.or(message),
        key_prefix: legacy_prefix.or(prefix),
        client_id_header: o.string(&["ClientIdHeader"], d),
        client_whitelist: o.string_list(&["ClientWhitelist"], d),
        route_keys: o.route_keys(global, d),
    };
    o.finish(d);
    r
}

/// `PeriodTimespan` is a number of seconds; Ocelot turns it into a `Wait` of "{n}s".
fn format_seconds(seconds: f64) -> String {
    format!("{seconds}s")
}

fn read_security(
    map: &Map<String, Value>,
    path: &str,
    d: &mut Vec<Diagnostic>,
) -> FileSecurityOptions {
    let mut o = Obj::new(map, path.to_string());
    let s = FileSecurityOptions {
        ip_allowed_list: o.string_list(&["IPAllowedList"], d).unwrap_or_default(),
        ip_blocked_list: o.string_list(&["IPBlockedList"], d).unwrap_or_default(),
        exclude_allowed_from_blocked: o.bool(&["ExcludeAllowedFromBlocked"], d).unwrap_or(false),
    };
    o.finish(d);
    s
}

fn read_sd_provider(
    map: &Map<String, Value>,
    path: &str,
    d: &mut Vec<Diagnostic>,
) -> FileServiceDiscoveryProvider {
    let mut o = Obj::new(map, path.to_string());
    let s = FileServiceDiscoveryProvider {
        scheme: o.string(&["Scheme"], d),
        host: o.string(&["Host"], d),
        port: o.int(&["Port"], d),
        r#type: o.string(&["Type"], d),
        token: o.string(&["Token"], d),
        configuration_key: o.string(&["ConfigurationKey"], d),
        polling_interval: o.int(&["PollingInterval"], d),
        namespace: o.string(&["Namespace"], d),
    };
    o.finish(d);
    s
}

fn read_metadata_options(
    map: &Map<String, Value>,
    path: &str,
    d: &mut Vec<Diagnostic>,
) -> FileMetadataOptions {
    let mut o = Obj::new(map, path.to_string());
    let m = FileMetadataOptions {
        current_culture: o.string(&["CurrentCulture"], d),
        number_style: o.string(&["NumberStyle"], d),
        separators: o.string_list(&["Separators"], d),
        string_split_option: o.string(&["StringSplitOption"], d),
        trim_chars: o.string_list(&["TrimChars"], d),
    };
    o.finish(d);
    m
}

/// A JSON object read the way ASP.NET binds one: names compared
/// case-insensitively, the last of duplicate names winning, and every property
/// nobody asked for reported once at the end.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
    used: Vec<bool>,
}

impl<'a> Obj<'a> {
    fn new(map: &'a Map<String, Value>, path: String) -> Self {
        Obj {
            map,
            path,
            used: vec![false; map.len()],
        }
    }

    fn child(&self, field: &str) -> String {
        if self.path.is_empty() {
            field.to_string()
        } else {
            format!("{}.{}", self.path, field)
        }
    }

    /// The value of the first of `names` present (aliases in precedence order),
    /// with the spelling that was actually used for messages.
    fn lookup(&mut self, names: &[&str]) -> Option<(String, &'a Value)> {
        for name in names {
            let mut found = None;
            for (i, (key, value)) in self.map.iter().enumerate() {
                if key.eq_ignore_ascii_case(name) {
                    self.used[i] = true;
                    found = Some((key.clone(), value));
                }
            }
            if found.is_some() {
                return found;
            }
        }
        None
    }

    fn mark_known(&mut self, names: &[&str]) {
        for (i, key) in self.map.keys().enumerate() {
            if names.iter().any(|n| key.eq_ignore_ascii_case(n)) {
                self.used[i] = true;
            }
        }
    }

    fn type_error(&self, key: &str, expected: &str, d: &mut Vec<Diagnostic>) {
        d.push(Diagnostic::error(
            self.path.clone(),
            key.to_string(),
            format!("expected {expected}"),
        ));
    }

    fn string(&mut self, names: &[&str], d: &mut Vec<Diagnostic>) -> Option<String> {
        let (key, value) = self.lookup(names)?;
        match value {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            // ASP.NET stores JSON booleans as "True"/"False".
            Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
            _ => {
                self.type_error(&key, "a string", d);
                None
            }
        }
    }

    fn bool(&mut self, names: &[&str], d: &mut Vec<Diagnostic>) -> Option<bool> {
        let (key, value) = self.lookup(names)?;
        match value {
            Value::Null => None,
            Value::Bool(b) => Some(*b),
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
            Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
            _ => {
                self.type_error(&key, "true or false", d);
                None
            }
        }
    }

    fn int(&mut self, names: &[&str], d: &mut Vec<Diagnostic>) -> Option<i64> {
        let (key, value) = self.lookup(names)?;
        match value {
            Value::Null => None,
            Value::Number(n) if n.is_i64() => n.as_i64(),
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => match s.trim().parse::<i64>() {
                Ok(v) => Some(v),
                Err(_) => {
                    self.type_error(&key, "an integer", d);
                    None
                }
            },
            _ => {
                self.type_error(&key, "an integer", d);
                None
            }
        }
    }

    fn float(&mut self, names: &[&str], d: &mut Vec<Diagnostic>) -> Option<f64> {
        let (key, value) = self.lookup(names)?;
        match value {
            Value::Null => None,
            Value::Number(n) => n.as_f64(),
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => match s.trim().parse::<f64>() {
                Ok(v) if v.is_finite() => Some(v),
                _ => {
                    self.type_error(&key, "a number", d);
                    None
                }
            },
            _ => {
                self.type_error(&key, "a number", d);
                None
            }
        }
    }

    fn string_list(&mut self, names: &[&str], d: &mut Vec<Diagnostic>) -> Option<Vec<String>> {
        let (key, value) = self.lookup(names)?;
        match value {
            Value::Null => None,
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        Value::Number(n) => out.push(n.to_string()),
                        Value::Bool(b) => out.push(if *b { "True" } else { "False" }.to_string()),
                        Value::Null => {}
                        _ => self.type_error(&format!("{key}[{i}]"), "a string", d),
                    }
                }
                Some(out)
            }
            // ASP.NET would silently bind a lone string to an empty list (which for
            // UpstreamHttpMethod means "every method"); taking it as one entry is
            // what the author meant, and the warning says so.
            Value::String(s) => {
                d.push(Diagnostic::warning(
                    self.path.clone(),
                    key.clone(),
                    format!("expected a list; read \"{s}\" as a one-element list (Ocelot would ignore it)"),
                ));
                Some(vec![s.clone()])
            }
            _ => {
                self.type_error(&key, "a list of strings", d);
                None
            }
        }
    }

    /// `Metadata` values may be JSON objects or arrays (Ocelot's own Metadata
    /// sample does this); they are kept as their JSON text.
    fn metadata(&mut self, d: &mut Vec<Diagnostic>) -> Option<Dict> {
        self.dict_of(&["Metadata"], true, d)
    }

    fn dict(&mut self, names: &[&str], d: &mut Vec<Diagnostic>) -> Option<Dict> {
        self.dict_of(names, false, d)
    }

    fn dict_of(
        &mut self,
        names: &[&str],
        nested_as_json: bool,
        d: &mut Vec<Diagnostic>,
    ) -> Option<Dict> {
        let (key, value) = self.lookup(names)?;
        match value {
            Value::Null => None,
            Value::Object(m) => {
                let mut out: Dict = Vec::with_capacity(m.len());
                for (k, v) in m {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
                        Value::Null => String::new(),
                        nested if nested_as_json => nested.to_string(),
                        _ => {
                            self.type_error(&format!("{key}.{k}"), "a string", d);
                            continue;
                        }
                    };
                    // Keys are case-insensitive in ASP.NET configuration: a later
                    // duplicate replaces the earlier entry.
                    if let Some(existing) =
                        out.iter_mut().find(|(ek, _)| ek.eq_ignore_ascii_case(k))
                    {
                        existing.1 = text;
                    } else {
                        out.push((k.clone(), text));
                    }
                }
                out.sort_by(|a, b| config_key_cmp(&a.0, &b.0));
                Some(out)
            }
            _ => {
                self.type_error(&key, "an object of string values", d);
                None
            }
        }
    }

    fn object(
        &mut self,
        names: &[&str],
        d: &mut Vec<Diagnostic>,
    ) -> Option<&'a Map<String, Value>> {
        let (key, value) = self.lookup(names)?;
        match value {
            Value::Null => None,
            Value::Object(m) => Some(m),
            _ => {
                self.type_error(&key, "an object", d);
                None
            }
        }
    }

    fn array(&mut self, names: &[&str], d: &mut Vec<Diagnostic>) -> Option<&'a Vec<Value>> {
        let (key, value) = self.lookup(names)?;
        match value {
            Value::Null => None,
            Value::Array(items) => Some(items),
            _ => {
                self.type_error(&key, "a list", d);
                None
            }
        }
    }

    /// Every one of `names` that is present, each with its items: a file may carry
    /// both the legacy and the current name, and both are taken.
    fn arrays(&mut self, names: &[&str], d: &mut Vec<Diagnostic>) -> Vec<(String, &'a Vec<Value>)> {
        let mut out = Vec::new();
        for name in names {
            if let Some(items) = self.array(&[name], d) {
                out.push((name.to_string(), items));
            }
        }
        out
    }

    fn route_keys(&mut self, global: bool, d: &mut Vec<Diagnostic>) -> Option<Vec<String>> {
        if global {
            self.string_list(&["RouteKeys", "ReRouteKeys"], d)
        } else {
            None
        }
    }

    fn finish(self, d: &mut Vec<Diagnostic>) {
        for (i, key) in self.map.keys().enumerate() {
            if !self.used[i] {
                d.push(Diagnostic::warning(
                    self.path.clone(),
                    key.clone(),
                    "unknown property, ignored",
                ));
            }
        }
    }
}

/// ASP.NET's `ConfigurationKeyComparer`: case-insensitive, with numeric keys
/// ordered as numbers and before non-numeric ones.
fn config_key_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        _ => a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_case_insensitive_names_and_string_scalars() {
        let v = json!({
            "routes": [{
                "upstreampathtemplate": "/a/{id}",
                "DOWNSTREAMPATHTEMPLATE": "/b/{id}",
                "DownstreamHostAndPorts": [{"host": "localhost", "PORT": "5001"}],
                "Priority": "3",
                "RouteIsCaseSensitive": "true",
                "Timeout": 7
            }]
        });
        let (c, diags) = from_value(&v);
        assert!(diags.is_empty(), "{diags:?}");
        let r = &c.routes[0];
        assert_eq!(r.upstream_path_template.as_deref(), Some("/a/{id}"));
        assert_eq!(r.downstream_path_template.as_deref(), Some("/b/{id}"));
        assert_eq!(
            r.downstream_host_and_ports,
            vec![FileHostAndPort {
                host: "localhost".into(),
                port: 5001
            }]
        );
        assert_eq!(r.priority, 3);
        assert!(r.route_is_case_sensitive);
        assert_eq!(r.timeout, Some(7));
    }

    #[test]
    fn maps_legacy_names() {
        let v = json!({
            "ReRoutes": [{
                "UpstreamTemplate": "/old",
                "DownstreamPathTemplate": "/x",
                "DownstreamHost": "svc",
                "DownstreamPort": 81,
                "ReRouteIsCaseSensitive": true,
                "LoadBalancer": "NoLoadBalance",
                "FileCacheOptions": {"TtlSeconds": 5},
                "CacheOptions": {"TtlSeconds": 9},
                "QoSOptions": {"ExceptionsAllowedBeforeBreaking": 3, "MinimumThroughput": 9, "DurationOfBreak": 1000, "TimeoutValue": 500},
                "RateLimitOptions": {"EnableRateLimiting": true, "Period": "1s", "PeriodTimespan": 2, "Limit": 1, "HttpStatusCode": 418, "StatusCode": 429},
                "AuthenticationOptions": {"AuthenticationProviderKey": "Bearer"}
            }],
            "DynamicReRoutes": [{"ServiceName": "s", "RateLimitRule": {"Limit": 4}}],
            "Aggregates": [{"UpstreamPathTemplate": "/agg", "ReRouteKeys": ["a", "b"], "ReRouteKeysConfig": [{"ReRouteKey": "b", "JsonPath": "$.x", "Parameter": "p"}]}],
            "GlobalConfiguration": {"RateLimitOptions": {"DisableRateLimitHeaders": true, "QuotaExceededMessage": "no", "RateLimitCounterPrefix": "pfx", "ClientIdHeader": "ClientId"}}
        });
        let (c, diags) = from_value(&v);
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
        assert!(diags.is_empty(), "{diags:?}");
        let r = &c.routes[0];
        assert_eq!(r.upstream_path_template.as_deref(), Some("/old"));
        assert_eq!(
            r.downstream_host_and_ports,
            vec![FileHostAndPort {
                host: "svc".into(),
                port: 81
            }]
        );
        assert!(r.route_is_case_sensitive);
        assert_eq!(
            r.load_balancer_options
                .as_ref()
                .and_then(|l| l.r#type.as_deref()),
            Some("NoLoadBalancer")
        );
        assert_eq!(
            r.cache_options.as_ref().and_then(|c| c.ttl_seconds),
            Some(5)
        );
        let q = r.qos_options.as_ref().expect("qos");
        assert_eq!(
            (q.minimum_throughput, q.break_duration, q.timeout),
            (Some(3), Some(1000), Some(500))
        );
        let rl = r.rate_limit_options.as_ref().expect("rate limit");
        assert_eq!(rl.wait.as_deref(), Some("2s"));
        assert_eq!(rl.status_code, Some(418));
        assert_eq!(
            r.authentication_options
                .as_ref()
                .and_then(|a| a.authentication_provider_key.as_deref()),
            Some("Bearer")
        );
        assert_eq!(
            c.dynamic_routes[0]
                .rate_limit_options
                .as_ref()
                .and_then(|r| r.limit),
            Some(4)
        );
        assert_eq!(c.aggregates[0].route_keys, vec!["a", "b"]);
        assert_eq!(
            c.aggregates[0].route_keys_config[0].route_key.as_deref(),
            Some("b")
        );
        assert_eq!(c.aggregates[0].upstream_http_method, vec!["GET"]);
        let g = c.global.rate_limit_options.as_ref().expect("global rl");
        assert_eq!(g.enable_headers, Some(false));
        assert_eq!(g.quota_message.as_deref(), Some("no"));
        assert_eq!(g.key_prefix.as_deref(), Some("pfx"));
    }

    #[test]
    fn unknown_keys_are_warnings_with_paths_and_type_errors_are_errors() {
        let v = json!({
            "Routes": [{"UpstreamPathTemplate": "/a", "Bogus": 1, "DownstreamHostAndPorts": [{"Host": "h", "Port": "abc"}],
                        "QoSOptions": {"Nope": true}}],
            "GlobalConfiguration": {"Whatever": 1}
        });
        let (_, diags) = from_value(&v);
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        assert!(
            text.contains(&"warning: Routes[0]: Bogus: unknown property, ignored".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(
                &"warning: Routes[0].QoSOptions: Nope: unknown property, ignored".to_string()
            ),
            "{text:?}"
        );
        assert!(
            text.contains(
                &"warning: GlobalConfiguration: Whatever: unknown property, ignored".to_string()
            ),
            "{text:?}"
        );
        assert!(
            text.contains(
                &"error: Routes[0].DownstreamHostAndPorts[0]: Port: expected an integer"
                    .to_string()
            ),
            "{text:?}"
        );
    }

    #[test]
    fn templates_without_a_leading_slash_are_fixed_with_a_warning() {
        let (c, diags) = from_value(
            &json!({"ReRoutes": [{"UpstreamPathTemplate": "api/{x}", "DownstreamPathTemplate": "v1/{x}"}]}),
        );
        assert_eq!(
            c.routes[0].upstream_path_template.as_deref(),
            Some("/api/{x}")
        );
        assert_eq!(
            c.routes[0].downstream_path_template.as_deref(),
            Some("/v1/{x}")
        );
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert!(diags.iter().all(|d| !d.is_error()));
    }

    #[test]
    fn nested_metadata_values_are_kept_as_json() {
        let (c, diags) = from_value(&json!({"Routes": [{"Metadata": {"k": {"a": 1}, "s": "v"}}]}));
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(
            c.routes[0].metadata,
            Some(vec![
                ("k".to_string(), "{\"a\":1}".to_string()),
                ("s".to_string(), "v".to_string())
            ])
        );
    }

    #[test]
    fn dictionaries_are_sorted_and_case_insensitive() {
        let v = json!({"Routes": [{"AddQueriesToRequest": {"b": "2", "A": "1", "a": "3"}}]});
        let (c, _) = from_value(&v);
        assert_eq!(
            c.routes[0].add_queries_to_request,
            vec![
                ("A".to_string(), "3".to_string()),
                ("b".to_string(), "2".to_string())
            ]
        );
    }

    #[test]
    fn reads_swagger_end_points_and_the_route_extras() {
        let (c, d) = from_value(&json!({
            "Routes": [{"UpstreamPathTemplate": "/a", "swaggerKey": "orders",
                        "VirtualDirectory": "/vd", "ParametersMap": {"id": "orderId"}}],
            "Aggregates": [{"UpstreamPathTemplate": "/agg", "RouteKeys": ["a"], "Description": "both"}],
            "SwaggerEndPoints": [
                {"Key": "orders", "Config": [
                    {"Name": "Orders", "Version": "v1", "Url": "http://o/swagger.json"},
                    {"Name": "Orders", "Version": "v2", "Service": {"Name": "orders", "Path": "/doc.json"}}
                ]},
                {"Key": "raw", "VersionPlaceholder": "{api}", "HostOverride": "http://gw",
                 "TransformByOcelotConfig": "false", "RemoveUnusedComponentsFromScheme": false,
                 "TakeServersFromDownstreamService": true, "Config": [], "Extra": 1}
            ]
        }));
        let route = &c.routes[0];
        assert_eq!(route.swagger_key.as_deref(), Some("orders"));
        assert_eq!(route.virtual_directory.as_deref(), Some("/vd"));
        assert_eq!(
            route.parameters_map,
            vec![("id".to_string(), "orderId".to_string())]
        );
        assert_eq!(c.aggregates[0].description.as_deref(), Some("both"));
        let [orders, raw] = &c.swagger_end_points[..] else {
            panic!("{:?}", c.swagger_end_points);
        };
        assert_eq!(orders.version_placeholder, "{version}");
        assert!(orders.transform_by_ocelot_config && orders.remove_unused_components_from_scheme);
        assert!(!orders.take_servers_from_downstream_service);
        assert_eq!(
            orders.config[0].url.as_deref(),
            Some("http://o/swagger.json")
        );
        let service = orders.config[1].service.as_ref().expect("service");
        assert_eq!(
            (service.name.as_deref(), service.path.as_deref()),
            (Some("orders"), Some("/doc.json"))
        );
        assert_eq!(raw.version_placeholder, "{api}");
        assert_eq!(raw.host_override.as_deref(), Some("http://gw"));
        assert!(!raw.transform_by_ocelot_config && !raw.remove_unused_components_from_scheme);
        assert!(raw.take_servers_from_downstream_service);
        let warnings: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            warnings,
            ["warning: SwaggerEndPoints[1]: Extra: unknown property, ignored"]
        );
    }
}
