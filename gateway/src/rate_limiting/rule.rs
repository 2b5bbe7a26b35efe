//! A route's `RateLimitOptions` compiled into a [`RouteRule`], once per
//! configuration snapshot, from the merged options of
//! `ocelot_compat::effective::rate_limiting` (Ocelot 24.1+, its
//! `src/Configuration/Creator/RateLimitOptionsCreator.cs`) or
//! `ocelot_compat::effective::rate_limiting_legacy` (24.0 and older): the
//! defaults, the quota message, the client header and the counting window,
//! so a request only looks them up.

use super::algorithm::{current, legacy, Counter, SECOND};
use super::format::dotnet_format;
use super::settings::ClientIdentity;
use super::store::CounterKey;
use ocelot_compat::model::{FileGlobalConfiguration, FileRoute};

const DEFAULT_CLIENT_HEADER: &str = "Oc-Client";
const LEGACY_CLIENT_HEADER: &str = "ClientId";
const DEFAULT_QUOTA_MESSAGE: &str = "API calls quota exceeded! Maximum admitted {0} per {1}.";
const DEFAULT_KEY_PREFIX: &str = "Ocelot.RateLimiting";
const LEGACY_KEY_PREFIX: &str = "ocelot";
const DEFAULT_PERIOD: &str = "1s";
const ZERO_WAIT: &str = "0ms";

/// Ocelot's `RateLimitRule.ParseTimespan`: a number with an optional unit
/// `ms`, `s`, `m`, `h`, `d` (any case); no unit means milliseconds; empty
/// means zero. Returns microseconds.
pub(crate) fn parse_timespan(text: &str) -> Option<i64> {
    let t = text.trim();
    if t.is_empty() {
        return Some(0);
    }
    let end = t.rfind(|c: char| c.is_ascii_digit() || c == '.')? + 1;
    let (number, unit) = t.split_at(end);
    let value: f64 = number.trim().parse::<f64>().ok()?.abs();
    let micros_per_unit = match unit.trim().to_ascii_lowercase().as_str() {
        "d" => 86_400.0 * 1e6,
        "h" => 3_600.0 * 1e6,
        "m" => 60.0 * 1e6,
        "s" => 1e6,
        "ms" | "" => 1e3,
        _ => return None,
    };
    let micros = (value * micros_per_unit).round();
    (micros.is_finite() && micros < i64::MAX as f64).then_some(micros as i64)
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|v| !v.is_empty())
}

/// How the counter key and algorithm are chosen for a rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Algorithm {
    Current(current::Window),
    Legacy(legacy::Window),
}

/// A route's rate limiting, compiled.
pub(crate) struct RouteRule {
    pub(super) route_name: String,
    pub(super) route_key: String,
    pub(super) client_header: http::HeaderName,
    pub(super) whitelist: Vec<String>,
    pub(super) enable_headers: bool,
    pub(super) status: u16,
    pub(super) quota_body: String,
    pub(super) key_prefix: String,
    pub(super) rule_text: String,
    pub(super) period_text: String,
    pub(super) limit: u64,
    pub(super) algorithm: Algorithm,
    /// Who counts as one client (gateway settings).
    pub(super) identity: ClientIdentity,
}

impl std::fmt::Debug for RouteRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteRule")
            .field("route", &self.route_name)
            .field("rule", &self.rule_text)
            .field("client_header", &self.client_header)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl RouteRule {
    #[cfg(test)]
    /// `{Limit}/{Period}/w{Wait}`, as Ocelot logs and reports a rule.
    pub(crate) fn rule_text(&self) -> &str {
        &self.rule_text
    }

    pub(super) fn period(&self) -> i64 {
        match self.algorithm {
            Algorithm::Current(w) => w.period,
            Algorithm::Legacy(w) => w.period,
        }
    }

    /// Whether the rule counts clients by a claim, and so must run after
    /// authentication.
    pub(crate) fn counts_by_claim(&self) -> bool {
        matches!(self.identity, ClientIdentity::Claim(_))
    }

    /// Who counts as one client.
    pub(crate) fn identity(&self) -> &ClientIdentity {
        &self.identity
    }

    /// The client id: the identity the pipeline found (address or claim), or
    /// from `ClientIdHeader`, where 24.1+ joins repeated headers with commas
    /// (`StringValues` to string) and may find none, and 24.0 took the first
    /// value, and "client" for everyone without one.
    pub(super) fn client(&self, headers: &http::HeaderMap, given: Option<&str>) -> String {
        if self.identity != ClientIdentity::ClientIdHeader {
            return given.unwrap_or_default().to_string();
        }
        let values = headers.get_all(&self.client_header);
        match self.algorithm {
            Algorithm::Current(_) => values
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
                .collect::<Vec<_>>()
                .join(","),
            Algorithm::Legacy(_) => match values.iter().next() {
                Some(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
                None => "client".to_string(),
            },
        }
    }

    /// The counter a request of `client` counts in: per (client, route) from
    /// 24.1, per (client, period, method, path) in 24.0.
    pub(super) fn counter_key(&self, client: &str, method: &str, path: &str) -> CounterKey<'_> {
        let text = match self.algorithm {
            Algorithm::Current(_) => format!(
                "{}_{}:{}_{}",
                self.key_prefix, client, self.route_key, self.rule_text
            ),
            Algorithm::Legacy(_) => format!(
                "{}_{}_{}_{}_{}",
                self.key_prefix,
                client,
                self.period_text,
                method.to_ascii_lowercase(),
                path.to_lowercase()
            ),
        };
        CounterKey {
            prefix: &self.key_prefix,
            route: &self.route_key,
            rule: &self.rule_text,
            text,
        }
    }

    /// `RetryAfter` in seconds for a counter over the limit.
    pub(super) fn retry_after(&self, c: &Counter, now: i64) -> f64 {
        match &self.algorithm {
            Algorithm::Current(w) => current::retry_after(c, w, now),
            Algorithm::Legacy(w) => legacy::retry_after(c, w, now),
        }
    }
}

fn header_name(name: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("ClientIdHeader '{name}' is not a valid header name"))
}

/// Compiles a route's rule in the schema of the chosen Ocelot version.
/// `route_key` identifies the route for counters (stable across reloads and
/// replicas); `route_name` is how messages name it. `Ok(None)`: not rate
/// limited.
pub(super) fn compile(
    route: &FileRoute,
    global: &FileGlobalConfiguration,
    route_key: &str,
    route_name: &str,
    legacy: bool,
) -> Result<Option<RouteRule>, String> {
    if legacy {
        compile_legacy(route, global, route_key, route_name)
    } else {
        compile_current(route, global, route_key, route_name)
    }
}

fn compile_current(
    route: &FileRoute,
    global: &FileGlobalConfiguration,
    route_key: &str,
    route_name: &str,
) -> Result<Option<RouteRule>, String> {
    let Some(o) = ocelot_compat::effective::rate_limiting(route, global) else {
        return Ok(None);
    };
    if o.enable_rate_limiting == Some(false) {
        return Ok(None);
    }
    let period_text = non_empty(&o.period).unwrap_or(DEFAULT_PERIOD).to_string();
    let wait_text = non_empty(&o.wait).unwrap_or(ZERO_WAIT).to_string();
    let period = parse_timespan(&period_text).ok_or_else(|| {
        format!("RateLimitOptions.Period: '{period_text}' is not a period such as 1s")
    })?;
    let wait = parse_timespan(&wait_text).ok_or_else(|| {
        format!("RateLimitOptions.Wait: '{wait_text}' is not a duration such as 500ms")
    })?;
    let limit = o.limit.unwrap_or(0).unsigned_abs();
    let quota = non_empty(&o.quota_message).unwrap_or(DEFAULT_QUOTA_MESSAGE);
    let client_header =
        header_name(non_empty(&o.client_id_header).unwrap_or(DEFAULT_CLIENT_HEADER))?;
    let status = o.status_code.unwrap_or(429);
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| format!("RateLimitOptions.StatusCode: {status} is not an HTTP status"))?;
    Ok(Some(RouteRule {
        route_name: route_name.to_string(),
        route_key: route_key.to_string(),
        client_header,
        whitelist: o.client_whitelist.clone().unwrap_or_default(),
        enable_headers: o.enable_headers.unwrap_or(true),
        status,
        quota_body: dotnet_format(quota, &[&limit.to_string(), &period_text]),
        key_prefix: non_empty(&o.key_prefix)
            .unwrap_or(DEFAULT_KEY_PREFIX)
            .to_string(),
        rule_text: format!("{limit}/{period_text}/w{wait_text}"),
        period_text,
        limit,
        identity: ClientIdentity::ClientIdHeader,
        algorithm: Algorithm::Current(current::Window {
            limit,
            period,
            wait,
        }),
    }))
}

fn compile_legacy(
    route: &FileRoute,
    global: &FileGlobalConfiguration,
    route_key: &str,
    route_name: &str,
) -> Result<Option<RouteRule>, String> {
    let Some(o) = ocelot_compat::effective::rate_limiting_legacy(route, global) else {
        return Ok(None);
    };
    let period_text = o.period.clone().unwrap_or_default();
    let period = parse_timespan(&period_text).ok_or_else(|| {
        format!("RateLimitOptions.Period: '{period_text}' is not a period such as 1s")
    })?;
    let ban_seconds = o.period_timespan.unwrap_or(0.0);
    let ban = (ban_seconds * SECOND as f64).round();
    let ban = if ban.is_finite() {
        ban.clamp(0.0, i64::MAX as f64) as i64
    } else {
        0
    };
    // A 24.0 Limit of 0 or less counts nothing (the headers are still sent).
    let limit = u64::try_from(o.limit.unwrap_or(0)).unwrap_or(0);
    let quota_body = match non_empty(&o.quota_message) {
        Some(message) => message.to_string(),
        None => format!("API calls quota exceeded! maximum admitted {limit} per {period_text}."),
    };
    let status = o.status_code.unwrap_or(429);
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| {
            format!("RateLimitOptions.HttpStatusCode: {status} is not an HTTP status")
        })?;
    Ok(Some(RouteRule {
        route_name: route_name.to_string(),
        route_key: route_key.to_string(),
        client_header: header_name(non_empty(&o.client_id_header).unwrap_or(LEGACY_CLIENT_HEADER))?,
        whitelist: o.client_whitelist.clone().unwrap_or_default(),
        enable_headers: o.enable_headers.unwrap_or(true),
        status,
        quota_body,
        key_prefix: non_empty(&o.key_prefix)
            .unwrap_or(LEGACY_KEY_PREFIX)
            .to_string(),
        rule_text: format!("{limit}/{period_text}/w{ban_seconds}s"),
        period_text,
        limit,
        algorithm: Algorithm::Legacy(legacy::Window { limit, period, ban }),
        identity: ClientIdentity::ClientIdHeader,
    }))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use ocelot_compat::model::from_value;
    use serde_json::json;

    fn config(v: serde_json::Value) -> ocelot_compat::model::FileConfiguration {
        let (c, d) = from_value(&v);
        assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
        c
    }

    /// Route `i` of `v` compiled, keyed `route-{i}` and named by its template.
    pub(in super::super) fn rule(
        v: serde_json::Value,
        i: usize,
        legacy: bool,
    ) -> Option<RouteRule> {
        let c = config(v);
        compile(
            &c.routes[i],
            &c.global,
            &format!("route-{i}"),
            c.routes[i].upstream_path_template.as_deref().unwrap_or("?"),
            legacy,
        )
        .expect("compiles")
    }

    #[test]
    fn timespans() {
        assert_eq!(parse_timespan("1s"), Some(SECOND));
        assert_eq!(parse_timespan("1S"), Some(SECOND));
        assert_eq!(parse_timespan("500ms"), Some(500_000));
        assert_eq!(parse_timespan("250"), Some(250_000));
        assert_eq!(parse_timespan("1.5m"), Some(90 * SECOND));
        assert_eq!(parse_timespan("2h"), Some(7200 * SECOND));
        assert_eq!(parse_timespan("1d"), Some(86_400 * SECOND));
        assert_eq!(parse_timespan(""), Some(0));
        assert_eq!(parse_timespan("1w"), None);
        assert_eq!(parse_timespan("s"), None);
    }

    #[test]
    fn global_options_and_route_keys() {
        let v = json!({
            "Routes": [
                {"UpstreamPathTemplate": "/a", "Key": "R2"},
                {"UpstreamPathTemplate": "/b"},
                {"UpstreamPathTemplate": "/c", "Key": "R2", "RateLimitOptions": {"Limit": 9}},
                {"UpstreamPathTemplate": "/d", "Key": "R2", "RateLimitOptions": {"EnableRateLimiting": false}},
            ],
            "GlobalConfiguration": {"RateLimitOptions": {"RouteKeys": ["R2"], "Limit": 3, "Period": "1s", "Wait": "500ms", "QuotaMessage": "Exceeding!", "ClientIdHeader": "Who"}}
        });
        let a = rule(v.clone(), 0, false).expect("global applies");
        assert_eq!(
            (
                a.rule_text(),
                a.quota_body.as_str(),
                a.client_header.as_str()
            ),
            ("3/1s/w500ms", "Exceeding!", "who")
        );
        assert!(rule(v.clone(), 1, false).is_none(), "not in the group");
        let c = rule(v.clone(), 2, false).expect("merged");
        assert_eq!(c.rule_text(), "9/1s/w500ms");
        assert!(rule(v, 3, false).is_none(), "route switched it off");
        let off = json!({"Routes": [{"RateLimitOptions": {"Limit": 1}}], "GlobalConfiguration": {"RateLimitOptions": {"EnableRateLimiting": false}}});
        assert!(rule(off, 0, false).is_none(), "global switched it off");
    }

    #[test]
    fn bad_rules_are_errors() {
        let c = config(
            json!({"Routes": [{"RateLimitOptions": {"Limit": 1, "ClientIdHeader": "bad header"}}]}),
        );
        assert!(compile(&c.routes[0], &c.global, "k", "n", false).is_err());
    }
}
