//! `RateLimitOptions`, in both schemas the gateway can run
//! (`gateway/src/rate_limiting/rule.rs` picks one by setting):
//!
//! - [`rate_limiting`]: Ocelot 24.1+ (`src/Configuration/Creator/RateLimitOptionsCreator.cs`),
//!   route-over-global with `RouteKeys`, where either side can switch rate
//!   limiting off.
//! - [`rate_limiting_legacy`]: Ocelot ≤ 24.0, where the rule (`Period`,
//!   `PeriodTimespan`, `Limit`, `ClientWhitelist`) is the route's alone and
//!   everything about the answer comes from the global section, which had no
//!   `RouteKeys` then.

use super::{applies, non_empty};
use crate::model::{FileGlobalConfiguration, FileRateLimitOptions, FileRoute};

/// The route's 24.1+ rate-limit options merged with the applicable global ones;
/// `None` when rate limiting is off for the route (no section applies, or the
/// route or an applicable global section says `EnableRateLimiting: false`).
pub fn rate_limiting(
    route: &FileRoute,
    global: &FileGlobalConfiguration,
) -> Option<FileRateLimitOptions> {
    let g = global.rate_limit_options.as_ref();
    let applies = g.is_none_or(|g| applies(g.route_keys.as_ref(), route.key.as_deref()));
    let r = route.rate_limit_options.as_ref();
    if r.is_some_and(|r| r.enable_rate_limiting == Some(false))
        || (applies && g.is_some_and(|g| g.enable_rate_limiting == Some(false)))
    {
        return None;
    }
    match (r, g.filter(|_| applies)) {
        (None, None) => None,
        (None, Some(g)) => Some(g.clone()),
        (Some(r), None) => Some(r.clone()),
        (Some(r), Some(g)) => {
            let or_else = |a: &Option<String>, b: &Option<String>| non_empty(a).or(non_empty(b));
            Some(FileRateLimitOptions {
                enable_rate_limiting: r.enable_rate_limiting.or(g.enable_rate_limiting),
                enable_headers: r.enable_headers.or(g.enable_headers),
                limit: r.limit.or(g.limit),
                period: or_else(&r.period, &g.period),
                wait: or_else(&r.wait, &g.wait),
                period_timespan: r.period_timespan.or(g.period_timespan),
                status_code: r.status_code.or(g.status_code),
                quota_message: or_else(&r.quota_message, &g.quota_message),
                key_prefix: or_else(&r.key_prefix, &g.key_prefix),
                client_id_header: or_else(&r.client_id_header, &g.client_id_header),
                client_whitelist: match &r.client_whitelist {
                    Some(list) if !list.is_empty() => Some(list.clone()),
                    _ => g.client_whitelist.clone(),
                },
                route_keys: None,
            })
        }
    }
}

/// The route's ≤ 24.0 rate-limit rule with the global answer settings
/// (`ClientIdHeader`, `QuotaExceededMessage`, `RateLimitCounterPrefix`,
/// `DisableRateLimitHeaders`, `HttpStatusCode`); `None` unless the route says
/// `EnableRateLimiting: true` (it defaulted to false then). Route-level answer
/// settings and `Wait` did not exist and are not read.
pub fn rate_limiting_legacy(
    route: &FileRoute,
    global: &FileGlobalConfiguration,
) -> Option<FileRateLimitOptions> {
    let r = route
        .rate_limit_options
        .as_ref()
        .filter(|r| r.enable_rate_limiting == Some(true))?;
    let g = global.rate_limit_options.clone().unwrap_or_default();
    Some(FileRateLimitOptions {
        enable_rate_limiting: Some(true),
        limit: r.limit,
        period: r.period.clone(),
        period_timespan: r.period_timespan,
        client_whitelist: r.client_whitelist.clone(),
        wait: None,
        enable_headers: g.enable_headers,
        status_code: g.status_code,
        quota_message: g.quota_message,
        key_prefix: g.key_prefix,
        client_id_header: g.client_id_header,
        route_keys: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{from_value, FileConfiguration};
    use serde_json::json;

    fn config(v: serde_json::Value) -> FileConfiguration {
        let (c, diags) = from_value(&v);
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
        c
    }

    #[test]
    fn global_options_and_route_keys() {
        let c = config(json!({
            "Routes": [
                {"Key": "R2"},
                {},
                {"Key": "R2", "RateLimitOptions": {"Limit": 9}},
                {"Key": "R2", "RateLimitOptions": {"EnableRateLimiting": false}},
            ],
            "GlobalConfiguration": {"RateLimitOptions": {"RouteKeys": ["R2"], "Limit": 3, "Period": "1s", "Wait": "500ms", "QuotaMessage": "Exceeding!", "ClientIdHeader": "Who"}}
        }));
        let a = rate_limiting(&c.routes[0], &c.global).expect("global applies");
        assert_eq!(
            (a.limit, a.period.as_deref(), a.wait.as_deref()),
            (Some(3), Some("1s"), Some("500ms"))
        );
        assert_eq!(
            (a.quota_message.as_deref(), a.client_id_header.as_deref()),
            (Some("Exceeding!"), Some("Who"))
        );
        assert_eq!(
            rate_limiting(&c.routes[1], &c.global),
            None,
            "not in the group"
        );
        let merged = rate_limiting(&c.routes[2], &c.global).expect("merged");
        assert_eq!(
            (merged.limit, merged.period.as_deref(), merged.route_keys),
            (Some(9), Some("1s"), None)
        );
        assert_eq!(
            rate_limiting(&c.routes[3], &c.global),
            None,
            "route switched it off"
        );
    }

    #[test]
    fn global_switch_and_empty_values() {
        let off = config(json!({
            "Routes": [{"RateLimitOptions": {"Limit": 1}}, {"Key": "other", "RateLimitOptions": {"Limit": 2}}],
            "GlobalConfiguration": {"RateLimitOptions": {"EnableRateLimiting": false, "RouteKeys": []}}
        }));
        assert_eq!(
            rate_limiting(&off.routes[0], &off.global),
            None,
            "global switched it off"
        );
        let scoped = config(json!({
            "Routes": [{"RateLimitOptions": {"Limit": 1}}],
            "GlobalConfiguration": {"RateLimitOptions": {"EnableRateLimiting": false, "RouteKeys": ["x"]}}
        }));
        assert_eq!(
            rate_limiting(&scoped.routes[0], &scoped.global).and_then(|o| o.limit),
            Some(1),
            "a global switch for other routes does not apply"
        );
        let c = config(json!({
            "Routes": [{"RateLimitOptions": {"Period": "", "ClientWhitelist": [], "KeyPrefix": " "}}, {}],
            "GlobalConfiguration": {"RateLimitOptions": {"Period": "2s", "ClientWhitelist": ["ops"], "KeyPrefix": "g"}}
        }));
        let merged = rate_limiting(&c.routes[0], &c.global).expect("merged");
        assert_eq!(merged.period.as_deref(), Some("2s"), "empty route value");
        assert_eq!(merged.client_whitelist, Some(vec!["ops".to_string()]));
        assert_eq!(
            merged.key_prefix.as_deref(),
            Some(" "),
            "whitespace is a value"
        );
        assert_eq!(
            rate_limiting(&c.routes[1], &c.global).and_then(|o| o.period),
            Some("2s".into())
        );
        assert_eq!(
            rate_limiting(
                &config(json!({"Routes": [{}]})).routes[0],
                &FileGlobalConfiguration::default()
            ),
            None
        );
    }

    #[test]
    fn legacy_rule_is_the_routes_and_the_answer_the_globals() {
        let c = config(json!({
            "Routes": [
                {"Key": "a", "RateLimitOptions": {"EnableRateLimiting": true, "Period": "1m", "PeriodTimespan": 30, "Limit": 2, "ClientWhitelist": ["w"], "ClientIdHeader": "Ignored"}},
                {"RateLimitOptions": {"Period": "1s", "Limit": 1}},
                {}
            ],
            "GlobalConfiguration": {"RateLimitOptions": {"HttpStatusCode": 418, "ClientIdHeader": "Cid", "QuotaExceededMessage": "Slow", "RateLimitCounterPrefix": "p", "DisableRateLimitHeaders": true, "RouteKeys": ["b"]}}
        }));
        let o = rate_limiting_legacy(&c.routes[0], &c.global).expect("on");
        assert_eq!(
            (
                o.limit,
                o.period.as_deref(),
                o.period_timespan,
                o.client_whitelist.clone()
            ),
            (Some(2), Some("1m"), Some(30.0), Some(vec!["w".to_string()]))
        );
        assert_eq!(
            (
                o.status_code,
                o.client_id_header.as_deref(),
                o.quota_message.as_deref(),
                o.key_prefix.as_deref(),
                o.enable_headers
            ),
            (Some(418), Some("Cid"), Some("Slow"), Some("p"), Some(false)),
            "global answer settings, RouteKeys not consulted"
        );
        assert_eq!(
            rate_limiting_legacy(&c.routes[1], &c.global),
            None,
            "24.0: off by default"
        );
        assert_eq!(rate_limiting_legacy(&c.routes[2], &c.global), None);
    }
}
