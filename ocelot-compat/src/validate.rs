//! Startup validation, as Ocelot's `src/Configuration/Validator/*` does it, but
//! reporting every problem at once, each naming its route and field. Things
//! Ocelot only discovers per request (an unknown balancer, a scheme nobody
//! registered) are warnings here: the config still loads, as it would in Ocelot.

use crate::diag::Diagnostic;
use crate::model::{FileAggregateRoute, FileConfiguration, FileRateLimitOptions, FileRoute};
use crate::template::{path_template_literal_metachars, placeholder_names};

/// Balancers Ocelot ships; its lookup is exact and case-sensitive.
pub(crate) const KNOWN_BALANCERS: [&str; 4] = [
    "NoLoadBalancer",
    "RoundRobin",
    "LeastConnection",
    "CookieStickySessions",
];

/// Every problem in the file model. The caller decides what to do with warnings.
pub(crate) fn validate(config: &FileConfiguration) -> Vec<Diagnostic> {
    let mut d = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        validate_route(route, &route.describe(i), &mut d);
    }
    validate_duplicate_routes(config, &mut d);
    for (i, agg) in config.aggregates.iter().enumerate() {
        validate_aggregate(config, agg, &agg.describe(i), &mut d);
    }
    validate_duplicate_aggregates(config, &mut d);
    validate_swagger(config, &mut d);
    if let Some(rl) = &config.global.rate_limit_options {
        validate_rate_limit(rl, "GlobalConfiguration", "RateLimitOptions", false, &mut d);
    }
    for (i, route) in config.dynamic_routes.iter().enumerate() {
        let location = match &route.service_name {
            Some(name) => format!("DynamicRoutes[{i}] ({name})"),
            None => format!("DynamicRoutes[{i}]"),
        };
        if let Some(rl) = &route.rate_limit_options {
            validate_rate_limit(rl, &location, "RateLimitOptions", true, &mut d);
        }
        validate_http_version(
            route.downstream_http_version.as_deref(),
            route.downstream_http_version_policy.as_deref(),
            &location,
            &mut d,
        );
    }
    validate_http_version(
        config.global.downstream_http_version.as_deref(),
        config.global.downstream_http_version_policy.as_deref(),
        "GlobalConfiguration",
        &mut d,
    );
    d
}

/// The checks Ocelot applies to a path template, upstream or downstream.
fn validate_path_template(
    template: Option<&str>,
    location: &str,
    field: &str,
    d: &mut Vec<Diagnostic>,
) {
    let Some(template) = template.filter(|t| !t.is_empty()) else {
        d.push(Diagnostic::error(location, field, "is required"));
        return;
    };
    if !template.starts_with('/') {
        d.push(Diagnostic::error(
            location,
            field,
            format!("'{template}' must start with '/'"),
        ));
    }
    if template.contains("//") {
        d.push(Diagnostic::error(
            location,
            field,
            format!("'{template}' must not contain '//'"),
        ));
    }
    let lower = template.to_ascii_lowercase();
    if lower.contains("http://") || lower.contains("https://") {
        d.push(Diagnostic::error(
            location,
            field,
            format!("'{template}' must not contain a scheme"),
        ));
    }
    if template.matches('{').count() != template.matches('}').count() {
        d.push(Diagnostic::error(
            location,
            field,
            format!("'{template}' has unbalanced braces"),
        ));
    }
}

fn validate_route(route: &FileRoute, location: &str, d: &mut Vec<Diagnostic>) {
    validate_path_template(
        route.upstream_path_template.as_deref(),
        location,
        "UpstreamPathTemplate",
        d,
    );
    validate_path_template(
        route.downstream_path_template.as_deref(),
        location,
        "DownstreamPathTemplate",
        d,
    );
    if let Some(template) = &route.upstream_path_template {
        let names = placeholder_names(template);
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                d.push(Diagnostic::error(
                    location,
                    "UpstreamPathTemplate",
                    format!("placeholder {name} appears more than once"),
                ));
            }
        }
    }
    if let Some(template) = &route.upstream_path_template {
        let metachars = path_template_literal_metachars(template);
        if !metachars.is_empty() {
            let list: String = metachars.iter().collect();
            d.push(Diagnostic::warning(
                location,
                "UpstreamPathTemplate",
                format!("'{template}' contains regex characters ({list}) that Ocelot interprets as a pattern; they are matched literally here"),
            ));
        }
    }
    let uses_discovery = route
        .service_name
        .as_deref()
        .is_some_and(|s| !s.trim().is_empty());
    if !uses_discovery {
        if route.downstream_host_and_ports.is_empty() {
            d.push(Diagnostic::error(
                location,
                "DownstreamHostAndPorts",
                "at least one host and port is required when ServiceName is not set",
            ));
        }
        for (i, hp) in route.downstream_host_and_ports.iter().enumerate() {
            if hp.host.trim().is_empty() {
                d.push(Diagnostic::error(
                    location,
                    format!("DownstreamHostAndPorts[{i}].Host"),
                    "must not be empty",
                ));
            }
            if !(1..=65535).contains(&hp.port) {
                d.push(Diagnostic::error(
                    location,
                    format!("DownstreamHostAndPorts[{i}].Port"),
                    format!("{} is not a port number (1-65535)", hp.port),
                ));
            }
        }
    }
    if let Some(scheme) = route.downstream_scheme.as_deref().filter(|s| !s.is_empty()) {
        if !["http", "https", "ws", "wss"]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(scheme))
        {
            d.push(Diagnostic::error(
                location,
                "DownstreamScheme",
                format!("'{scheme}' is not one of http, https, ws, wss"),
            ));
        }
    }
    if let Some(method) = route
        .downstream_http_method
        .as_deref()
        .filter(|m| !m.is_empty())
    {
        if !method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            d.push(Diagnostic::error(
                location,
                "DownstreamHttpMethod",
                format!("'{method}' is not a valid HTTP method"),
            ));
        }
    }
    validate_http_version(
        route.downstream_http_version.as_deref(),
        route.downstream_http_version_policy.as_deref(),
        location,
        d,
    );
    if let Some(rl) = &route.rate_limit_options {
        validate_rate_limit(rl, location, "RateLimitOptions", true, d);
    }
    if let Some(lb) = &route.load_balancer_options {
        if let Some(kind) = lb.r#type.as_deref().filter(|t| !t.is_empty()) {
            if !KNOWN_BALANCERS.contains(&kind) {
                d.push(Diagnostic::warning(
                    location,
                    "LoadBalancerOptions.Type",
                    format!("unknown load balancer '{kind}' (known: {}); requests to this route will get 500, as in Ocelot", KNOWN_BALANCERS.join(", ")),
                ));
            }
        }
    }
    for (name, value) in &route.upstream_header_templates {
        if name.trim().is_empty() {
            d.push(Diagnostic::error(
                location,
                "UpstreamHeaderTemplates",
                format!("empty header name (template '{value}')"),
            ));
        }
    }
}

/// `DownstreamHttpVersion` must look like `1`, `1.1` or `2,0`; the policy is one of three exact names.
fn validate_http_version(
    version: Option<&str>,
    policy: Option<&str>,
    location: &str,
    d: &mut Vec<Diagnostic>,
) {
    if let Some(v) = version.filter(|v| !v.is_empty()) {
        let b = v.as_bytes();
        let ok = match b.len() {
            1 => b[0].is_ascii_digit(),
            3 => b[0].is_ascii_digit() && (b[1] == b'.' || b[1] == b',') && b[2].is_ascii_digit(),
            _ => false,
        };
        if !ok {
            d.push(Diagnostic::error(
                location,
                "DownstreamHttpVersion",
                format!("'{v}' is not an HTTP version such as 1.1 or 2.0"),
            ));
        }
    }
    if let Some(p) = policy.filter(|p| !p.is_empty()) {
        const POLICIES: [&str; 3] = [
            "RequestVersionExact",
            "RequestVersionOrLower",
            "RequestVersionOrHigher",
        ];
        if !POLICIES.contains(&p) {
            d.push(Diagnostic::error(
                location,
                "DownstreamHttpVersionPolicy",
                format!("'{p}' is not one of {}", POLICIES.join(", ")),
            ));
        }
    }
}

/// Parses an Ocelot rate-limit duration: a number (decimals allowed) and an
/// optional unit `ms`, `s`, `m`, `h` or `d`; no unit means milliseconds.
pub(crate) fn parse_duration_ms(text: &str) -> Option<f64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().ok()?;
    // Ocelot parses units case-insensitively ("1S" is one second).
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    let ms = value * factor;
    ms.is_finite().then_some(ms)
}

fn validate_rate_limit(
    rl: &FileRateLimitOptions,
    location: &str,
    field: &str,
    per_route: bool,
    d: &mut Vec<Diagnostic>,
) {
    // Only a rule that limits something needs a limit and a period; a global
    // section may carry just the shared settings (client header, message...).
    let enabled = rl.enable_rate_limiting.unwrap_or(true);
    let has_rule = per_route || rl.limit.is_some() || rl.period.is_some();
    if !enabled || !has_rule {
        return;
    }
    match rl.limit {
        Some(limit) if limit <= 0 => d.push(Diagnostic::error(
            location,
            format!("{field}.Limit"),
            format!("must be greater than 0, got {limit}"),
        )),
        _ => {}
    }
    if let Some(period) = &rl.period {
        match parse_duration_ms(period) {
            Some(ms) if ms > 0.0 => {}
            _ => d.push(Diagnostic::error(
                location,
                format!("{field}.Period"),
                format!("'{period}' is not a period such as 500ms, 1s, 5m, 1h or 1d"),
            )),
        }
    }
    if let Some(wait) = rl.wait.as_deref().filter(|w| !w.is_empty()) {
        if parse_duration_ms(wait).is_none() {
            d.push(Diagnostic::error(
                location,
                format!("{field}.Wait"),
                format!("'{wait}' is not a duration such as 500ms or 1s"),
            ));
        }
    }
}

fn same_host(a: Option<&str>, b: Option<&str>) -> bool {
    a.unwrap_or("") == b.unwrap_or("")
}

fn methods_overlap(a: &[String], b: &[String]) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.iter()
            .any(|m| b.iter().any(|n| m.eq_ignore_ascii_case(n)))
}

fn same_headers(a: &[(String, String)], b: &[(String, String)]) -> bool {
    a.len() == b.len()
        && a.iter().all(|(k, v)| {
            b.iter()
                .any(|(k2, v2)| k.eq_ignore_ascii_case(k2) && v == v2)
        })
}

fn validate_duplicate_routes(config: &FileConfiguration, d: &mut Vec<Diagnostic>) {
    for (i, a) in config.routes.iter().enumerate() {
        let Some(template) = a.upstream_path_template.as_deref() else {
            continue;
        };
        for (j, b) in config.routes.iter().enumerate().take(i) {
            if b.upstream_path_template.as_deref() == Some(template)
                && same_host(a.upstream_host.as_deref(), b.upstream_host.as_deref())
                && same_headers(&a.upstream_header_templates, &b.upstream_header_templates)
                && methods_overlap(&a.upstream_http_method, &b.upstream_http_method)
            {
                // Ocelot's validator refuses this, but real configurations in
                // production carry such duplicates (abp-next-admin does), and the
                // first route wins every match anyway: warn, don't refuse.
                d.push(Diagnostic::warning(
                    a.describe(i),
                    "UpstreamPathTemplate",
                    format!(
                        "duplicates {} (same template, host, header templates and overlapping methods); the earlier route wins, this one is unreachable for the shared methods",
                        b.describe(j)
                    ),
                ));
            }
        }
        for (j, agg) in config.aggregates.iter().enumerate() {
            let route_allows_get = a.upstream_http_method.is_empty()
                || a.upstream_http_method
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case("GET"));
            if agg.upstream_path_template.as_deref() == Some(template)
                && same_host(a.upstream_host.as_deref(), agg.upstream_host.as_deref())
                && route_allows_get
            {
                d.push(Diagnostic::error(
                    a.describe(i),
                    "UpstreamPathTemplate",
                    format!("collides with {}", agg.describe(j)),
                ));
            }
        }
    }
}

fn validate_aggregate(
    config: &FileConfiguration,
    agg: &FileAggregateRoute,
    location: &str,
    d: &mut Vec<Diagnostic>,
) {
    validate_path_template(
        agg.upstream_path_template.as_deref(),
        location,
        "UpstreamPathTemplate",
        d,
    );
    if agg.route_keys.is_empty() {
        d.push(Diagnostic::error(
            location,
            "RouteKeys",
            "an aggregate needs at least one route key",
        ));
    }
    for key in &agg.route_keys {
        match config
            .routes
            .iter()
            .find(|r| r.key.as_deref() == Some(key.as_str()))
        {
            // Ocelot refuses to start here; a fragment of a split configuration
            // (an ocelot.aggregate.json checked on its own) hits it legitimately.
            None => d.push(Diagnostic::warning(
                location,
                "RouteKeys",
                format!("no route has Key '{key}'; requests to this aggregate will fail"),
            )),
            Some(route)
                if route
                    .request_id_key
                    .as_deref()
                    .is_some_and(|k| !k.is_empty()) =>
            {
                d.push(Diagnostic::error(
                    location,
                    "RouteKeys",
                    format!("route '{key}' sets RequestIdKey, which aggregated routes may not"),
                ))
            }
            Some(_) => {}
        }
    }
    for (i, c) in agg.route_keys_config.iter().enumerate() {
        if let Some(key) = &c.route_key {
            if !agg.route_keys.contains(key) {
                d.push(Diagnostic::error(
                    location,
                    format!("RouteKeysConfig[{i}].RouteKey"),
                    format!("'{key}' is not one of RouteKeys"),
                ));
            }
        }
    }
}

fn validate_duplicate_aggregates(config: &FileConfiguration, d: &mut Vec<Diagnostic>) {
    for (i, a) in config.aggregates.iter().enumerate() {
        for (j, b) in config.aggregates.iter().enumerate().take(i) {
            if a.upstream_path_template.is_some()
                && a.upstream_path_template == b.upstream_path_template
                && same_host(a.upstream_host.as_deref(), b.upstream_host.as_deref())
                && same_headers(&a.upstream_header_templates, &b.upstream_header_templates)
            {
                d.push(Diagnostic::error(
                    a.describe(i),
                    "UpstreamPathTemplate",
                    format!("duplicates {}", b.describe(j)),
                ));
            }
        }
    }
}

/// `SwaggerEndPoints` and the routes' `SwaggerKey`, as MMLib.SwaggerForOcelot
/// needs them to serve a document: MMLib only fails on the request, so what
/// would make every request for a document fail is an error here, and what
/// only leaves something undocumented a warning.
fn validate_swagger(config: &FileConfiguration, d: &mut Vec<Diagnostic>) {
    for (i, e) in config.swagger_end_points.iter().enumerate() {
        let location = e.describe(i);
        match e.key.as_deref().map(str::trim) {
            None | Some("") => d.push(Diagnostic::error(&location, "Key", "is required")),
            Some(key) => {
                if let Some(j) = config.swagger_end_points[..i]
                    .iter()
                    .position(|o| o.key.as_deref().map(str::trim) == Some(key))
                {
                    d.push(Diagnostic::error(
                        &location,
                        "Key",
                        format!("duplicates SwaggerEndPoints[{j}]"),
                    ));
                }
            }
        }
        if e.config.is_empty() {
            d.push(Diagnostic::error(
                &location,
                "Config",
                "needs at least one document (Name, Version, Url or Service)",
            ));
        }
        for (j, c) in e.config.iter().enumerate() {
            let version = c.version.as_deref().map(str::trim).unwrap_or("");
            if version.is_empty() {
                d.push(Diagnostic::error(
                    &location,
                    format!("Config[{j}].Version"),
                    "is required (it is part of the document's URL)",
                ));
            } else if e.config[..j]
                .iter()
                .any(|o| o.version.as_deref().map(str::trim) == Some(version))
            {
                d.push(Diagnostic::warning(
                    &location,
                    format!("Config[{j}].Version"),
                    format!("'{version}' is listed twice; the first entry is served"),
                ));
            }
            let url = c.url.as_deref().map(str::trim).unwrap_or("");
            let service = c
                .service
                .as_ref()
                .and_then(|s| s.name.as_deref())
                .map(str::trim)
                .unwrap_or("");
            if !url.is_empty() {
                let absolute = ["http://", "https://"].iter().any(|scheme| {
                    url.len() > scheme.len() && url[..scheme.len()].eq_ignore_ascii_case(scheme)
                });
                if !absolute {
                    d.push(Diagnostic::error(
                        &location,
                        format!("Config[{j}].Url"),
                        format!("'{url}' must be an absolute http:// or https:// URL"),
                    ));
                }
            } else if service.is_empty() {
                d.push(Diagnostic::error(
                    &location,
                    format!("Config[{j}]"),
                    "needs Url, or Service.Name for service discovery",
                ));
            } else if config.global.service_discovery_provider.is_none() {
                d.push(Diagnostic::warning(
                    &location,
                    format!("Config[{j}].Service.Name"),
                    "GlobalConfiguration has no ServiceDiscoveryProvider to find the service with; \
                     the document cannot be fetched",
                ));
            }
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        let Some(key) = route.swagger_key.as_deref().filter(|k| !k.is_empty()) else {
            continue;
        };
        if !config
            .swagger_end_points
            .iter()
            .any(|e| e.key.as_deref() == Some(key))
        {
            d.push(Diagnostic::warning(
                route.describe(i),
                "SwaggerKey",
                format!("no SwaggerEndPoints entry has Key '{key}'; the route is in no document"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::from_value;
    use serde_json::json;

    fn errors(v: serde_json::Value) -> Vec<String> {
        let (c, diags) = from_value(&v);
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
        validate(&c).into_iter().map(|d| d.to_string()).collect()
    }

    fn route(up: &str, down: &str) -> serde_json::Value {
        json!({"UpstreamPathTemplate": up, "DownstreamPathTemplate": down, "DownstreamHostAndPorts": [{"Host": "localhost", "Port": 80}]})
    }

    #[test]
    fn a_valid_config_has_no_errors() {
        assert!(errors(json!({"Routes": [route("/a/{id}", "/b/{id}")]})).is_empty());
    }

    #[test]
    fn reports_every_problem_with_route_and_field() {
        let e = errors(json!({"Routes": [
            {"UpstreamPathTemplate": "api", "DownstreamPathTemplate": "//x", "DownstreamHostAndPorts": []},
            {"UpstreamPathTemplate": "/a/{id}/{id}", "DownstreamPathTemplate": "http://x/", "DownstreamHostAndPorts": [{"Host": "", "Port": 0}],
             "RateLimitOptions": {"Limit": 0, "Period": "1 fortnight"}, "DownstreamHttpVersion": "x", "DownstreamScheme": "ftp"}
        ]}));
        let expected = [
            "error: Routes[0] (/api): DownstreamPathTemplate: '//x' must not contain '//'",
            "error: Routes[0] (/api): DownstreamHostAndPorts: at least one host and port is required when ServiceName is not set",
            "error: Routes[1] (/a/{id}/{id}): UpstreamPathTemplate: placeholder {id} appears more than once",
            "error: Routes[1] (/a/{id}/{id}): DownstreamPathTemplate: '/http://x/' must not contain a scheme",
            "error: Routes[1] (/a/{id}/{id}): DownstreamHostAndPorts[0].Host: must not be empty",
            "error: Routes[1] (/a/{id}/{id}): DownstreamHostAndPorts[0].Port: 0 is not a port number (1-65535)",
            "error: Routes[1] (/a/{id}/{id}): DownstreamScheme: 'ftp' is not one of http, https, ws, wss",
            "error: Routes[1] (/a/{id}/{id}): DownstreamHttpVersion: 'x' is not an HTTP version such as 1.1 or 2.0",
            "error: Routes[1] (/a/{id}/{id}): RateLimitOptions.Limit: must be greater than 0, got 0",
            "error: Routes[1] (/a/{id}/{id}): RateLimitOptions.Period: '1 fortnight' is not a period such as 500ms, 1s, 5m, 1h or 1d",
        ];
        for x in expected {
            assert!(e.contains(&x.to_string()), "missing {x}\n got {e:#?}");
        }
    }

    #[test]
    fn duplicate_routes_and_aggregates() {
        let mut a = route("/x", "/x");
        a["UpstreamHttpMethod"] = json!(["Get"]);
        let mut b = route("/x", "/y");
        b["UpstreamHttpMethod"] = json!(["GET", "POST"]);
        let mut c = route("/x", "/z");
        c["UpstreamHttpMethod"] = json!(["Put"]);
        let mut k = route("/k", "/k");
        k["Key"] = json!("k");
        k["RequestIdKey"] = json!("X-Id");
        let e = errors(json!({"Routes": [a, b, c, k],
            "Aggregates": [{"UpstreamPathTemplate": "/x", "RouteKeys": ["k", "missing"]}, {"UpstreamPathTemplate": "/x", "RouteKeys": ["k"]}]}));
        assert!(
            e.iter().any(|m| m.starts_with(
                "warning: Routes[1] (/x): UpstreamPathTemplate: duplicates Routes[0] (/x)"
            )),
            "{e:#?}"
        );
        assert!(
            !e.iter()
                .any(|m| m.contains("Routes[2] (/x): UpstreamPathTemplate: duplicates")),
            "{e:#?}"
        );
        assert!(
            e.iter().any(|m| m.contains(
                "Routes[0] (/x): UpstreamPathTemplate: collides with Aggregates[0] (/x)"
            )),
            "{e:#?}"
        );
        assert!(
            !e.iter()
                .any(|m| m.contains("Routes[2] (/x): UpstreamPathTemplate: collides")),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("Aggregates[0] (/x): RouteKeys: no route has Key 'missing'")),
            "{e:#?}"
        );
        assert!(
            e.iter().any(|m| m.contains("route 'k' sets RequestIdKey")),
            "{e:#?}"
        );
        assert!(
            e.iter().any(|m| m.contains(
                "Aggregates[1] (/x): UpstreamPathTemplate: duplicates Aggregates[0] (/x)"
            )),
            "{e:#?}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("1s"), Some(1000.0));
        assert_eq!(parse_duration_ms("1.5m"), Some(90_000.0));
        assert_eq!(parse_duration_ms("250"), Some(250.0));
        assert_eq!(parse_duration_ms("250ms"), Some(250.0));
        assert_eq!(parse_duration_ms("2d"), Some(172_800_000.0));
        assert_eq!(parse_duration_ms("1w"), None);
        assert_eq!(parse_duration_ms("1S"), Some(1000.0));
        assert_eq!(parse_duration_ms("2MS"), Some(2.0));
        assert_eq!(parse_duration_ms(""), None);
    }

    #[test]
    fn swagger_end_points_are_checked_with_entry_and_field() {
        let mut documented = route("/orders/{everything}", "/api/{everything}");
        documented["SwaggerKey"] = json!("orders");
        let mut stray = route("/x", "/x");
        stray["SwaggerKey"] = json!("nobody");
        let e = errors(json!({
            "Routes": [documented, stray],
            "SwaggerEndPoints": [
                {"Key": "orders", "Config": [
                    {"Name": "Orders", "Version": "v1", "Url": "http://orders/swagger/v1/swagger.json"},
                    {"Name": "Orders", "Version": "v1", "Url": "http://orders/other.json"},
                    {"Name": "Orders", "Version": "v2", "Url": "orders/v2.json"},
                    {"Name": "Orders", "Version": "v3"},
                    {"Name": "Orders", "Version": "v4", "Service": {"Name": "orders"}}
                ]},
                {"Key": "orders", "Config": [{"Name": "Again", "Url": "http://a/b"}]},
                {"Config": []}
            ]
        }));
        let expected = [
            "warning: SwaggerEndPoints[0] (orders): Config[1].Version: 'v1' is listed twice; the first entry is served",
            "error: SwaggerEndPoints[0] (orders): Config[2].Url: 'orders/v2.json' must be an absolute http:// or https:// URL",
            "error: SwaggerEndPoints[0] (orders): Config[3]: needs Url, or Service.Name for service discovery",
            "warning: SwaggerEndPoints[0] (orders): Config[4].Service.Name: GlobalConfiguration has no ServiceDiscoveryProvider to find the service with; the document cannot be fetched",
            "error: SwaggerEndPoints[1] (orders): Key: duplicates SwaggerEndPoints[0]",
            "error: SwaggerEndPoints[1] (orders): Config[0].Version: is required (it is part of the document's URL)",
            "error: SwaggerEndPoints[2]: Key: is required",
            "error: SwaggerEndPoints[2]: Config: needs at least one document (Name, Version, Url or Service)",
            "warning: Routes[1] (/x): SwaggerKey: no SwaggerEndPoints entry has Key 'nobody'; the route is in no document",
        ];
        assert_eq!(e, expected);
    }
}
