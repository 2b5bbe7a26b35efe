//! Request aggregation (`Aggregates`; Ocelot's `src/Multiplexer/`).
//!
//! An aggregate is matched like a route. With one route key Ocelot simply
//! proxies that route (the proxy does the same, see [`CompiledAggregate::single_route`]).
//! Otherwise the gateway answers by itself (the `multiplexer` module): it
//! calls every route of `RouteKeys` in parallel through its own HTTP client,
//! each through the same pipeline as a direct request, then builds one
//! response with the aggregator. With `RouteKeysConfig` the first route is called
//! first and its JSON drives one call per distinct `JsonPath` value to the
//! configured routes (`{Parameter}` set to the value).
//!
//! `Aggregator` names a .NET class in Ocelot; here it names an aggregator of
//! the gateway settings (`aggregators:`), built from the kinds in
//! [`aggregators`]. `AbpResponseMergeAggregator` is there by default, so
//! abp-next-admin's configuration works unchanged. An unknown name answers
//! 404 (Ocelot's `CouldNotFindAggregatorError`), before any call is made.
//!
//! Memory: one aggregate buffers at most `aggregate_max_body_bytes` (settings,
//! default 32 MiB) of sub-responses in all, and a request body of at most as
//! much (larger: 413); a sub-response that does not fit fails the aggregate
//! with 502.

pub(crate) mod aggregators;
pub(crate) mod jsonpath;

use jsonpath::JsonPath;
use ocelot_compat::model::FileConfiguration;
use ocelot_compat::Diagnostic;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

/// The name abp-next-admin's gateway gives its aggregator.
pub(crate) const ABP_AGGREGATOR: &str = "AbpResponseMergeAggregator";

/// Default for `aggregate_max_body_bytes`.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// What an aggregator does with the responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AggregatorKind {
    /// Deep JSON merge of every response (abp's `AbpResponseMergeAggregator`).
    AbpMerge,
    /// Ocelot's built-in `{"Key":<body>,...}`, under a name.
    Simple,
}

/// One named aggregator of the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AggregatorConfig {
    pub(crate) kind: AggregatorKind,
    /// Leave failed sub-requests out instead of answering their error.
    #[serde(default)]
    pub(crate) ignore_errors: bool,
}

/// The `aggregators` section: aggregators by the name `Aggregator` gives.
pub(crate) type AggregatorSettings = BTreeMap<String, AggregatorConfig>;

/// The process-wide aggregation service: named aggregators, the HTTP
/// clients for sub-requests, the body bound.
pub(crate) struct Aggregation {
    named: HashMap<String, AggregatorConfig>,
    pub(crate) max_body_bytes: usize,
    /// Verifies certificates (with `upstream_ca_file`).
    verifying: reqwest::Client,
    /// For `DangerousAcceptAnyServerCertificateValidator` routes.
    insecure: reqwest::Client,
}

fn client(ca_file: Option<&Path>, insecure: bool) -> Result<reqwest::Client, String> {
    crate::auth::install_crypto_providers();
    // Like Ocelot's HttpClient: no proxy, no redirects followed, HTTP/1.1.
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60));
    if insecure {
        builder = builder.tls_danger_accept_invalid_certs(true);
    } else if let Some(ca) = ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| format!("upstream_ca_file {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("upstream_ca_file {}: {e}", ca.display()))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the aggregation HTTP client: {e}"))
}

impl Aggregation {
    /// From the settings. `AbpResponseMergeAggregator` (abp_merge, errors
    /// not ignored) exists unless the settings define that name themselves.
    pub(crate) fn from_settings(
        named: &AggregatorSettings,
        max_body_bytes: usize,
        ca_file: Option<&Path>,
    ) -> Result<Aggregation, String> {
        let mut all = HashMap::from([(
            ABP_AGGREGATOR.to_string(),
            AggregatorConfig {
                kind: AggregatorKind::AbpMerge,
                ignore_errors: false,
            },
        )]);
        all.extend(named.iter().map(|(k, v)| (k.clone(), *v)));
        Ok(Aggregation {
            named: all,
            max_body_bytes: max_body_bytes.max(1),
            verifying: client(ca_file, false)?,
            insecure: client(None, true)?,
        })
    }

    /// The aggregator configured under `name` (exact, as .NET type names are).
    pub(crate) fn aggregator(&self, name: &str) -> Option<AggregatorConfig> {
        self.named.get(name).copied()
    }

    /// The HTTP client for a route that does (or does not) verify certificates.
    pub(crate) fn http(&self, verify: bool) -> &reqwest::Client {
        if verify {
            &self.verifying
        } else {
            &self.insecure
        }
    }
}

/// `RouteKeysConfig` for one route key: call it once per value.
#[derive(Debug, Clone)]
pub(crate) struct FanOut {
    /// `{Parameter}`, braces included.
    pub(crate) placeholder: String,
    /// `Err`: the path cannot be evaluated (answered 500, as Newtonsoft's
    /// exception is in Ocelot).
    pub(crate) path: Result<JsonPath, String>,
}

/// An aggregate, compiled with its snapshot.
#[derive(Debug)]
pub(crate) struct CompiledAggregate {
    /// The upstream template, for logs.
    pub(crate) name: String,
    /// `RouteKeys` as route indexes; `None` when a key names no route: Ocelot
    /// drops such an aggregate, so it answers 404.
    pub(crate) routes: Option<Vec<usize>>,
    pub(crate) keys: Vec<String>,
    /// By position in `RouteKeys`: the fan-out configured for that key.
    pub(crate) fan_out: Vec<Option<FanOut>>,
    /// `RouteKeysConfig` is not empty: the first route is called first.
    pub(crate) chained: bool,
    pub(crate) aggregator: Option<String>,
    /// The aggregate's own requests (its sub-requests count for their routes).
    pub(crate) metrics: crate::metrics::RouteMetrics,
}

impl CompiledAggregate {
    /// Ocelot proxies an aggregate with a single route key as that route:
    /// its index, if so.
    pub(crate) fn single_route(&self) -> Option<usize> {
        match self.routes.as_deref() {
            Some([only]) => Some(*only),
            _ => None,
        }
    }
}

/// Compiles every aggregate of `config`; problems Ocelot would only meet
/// per request are returned as warnings.
pub(crate) fn compile(
    config: &FileConfiguration,
    aggregation: &Aggregation,
) -> (Vec<CompiledAggregate>, Vec<Diagnostic>) {
    let mut warnings = Vec::new();
    let aggregates = config
        .aggregates
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let location = a.describe(i);
            let routes: Option<Vec<usize>> = a
                .route_keys
                .iter()
                .map(|k| config.routes.iter().position(|r| r.key.as_deref() == Some(k.as_str())))
                .collect();
            let fan_out: Vec<Option<FanOut>> = a
                .route_keys
                .iter()
                .map(|k| {
                    let c = a.route_keys_config.iter().find(|c| c.route_key.as_deref() == Some(k.as_str()))?;
                    let path = match c.json_path.as_deref() {
                        Some(p) => JsonPath::parse(p),
                        None => Err("JsonPath is missing".to_string()),
                    };
                    if let Err(e) = &path {
                        warnings.push(Diagnostic::warning(
                            location.clone(),
                            "RouteKeysConfig",
                            format!("JsonPath for route key '{k}': {e}; requests to this aggregate answer 500"),
                        ));
                    }
                    Some(FanOut {
                        placeholder: format!("{{{}}}", c.parameter.as_deref().unwrap_or("")),
                        path,
                    })
                })
                .collect();
            let aggregator = a.aggregator.clone().filter(|n| !n.is_empty());
            if let Some(name) = &aggregator {
                if aggregation.aggregator(name).is_none() {
                    warnings.push(Diagnostic::warning(
                        location.clone(),
                        "Aggregator",
                        format!("no aggregator named '{name}' in the settings' aggregators; requests to this aggregate answer 404"),
                    ));
                }
            }
            CompiledAggregate {
                name: a.upstream_path_template.clone().unwrap_or_default(),
                routes,
                keys: a.route_keys.clone(),
                fan_out,
                chained: !a.route_keys_config.is_empty(),
                aggregator,
                metrics: Default::default(),
            }
        })
        .collect();
    (aggregates, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocelot_compat::model::from_value;
    use serde_json::json;

    #[test]
    fn compiles_keys_fan_out_and_warnings() {
        let (c, _) = from_value(&json!({
            "Routes": [{"UpstreamPathTemplate": "/c", "Key": "comments"}, {"UpstreamPathTemplate": "/u/{id}", "Key": "user"}],
            "Aggregates": [
                {"UpstreamPathTemplate": "/a", "RouteKeys": ["comments", "user"], "RouteKeysConfig": [{"RouteKey": "user", "JsonPath": "$[*].userId", "Parameter": "id"}]},
                {"UpstreamPathTemplate": "/b", "RouteKeys": ["comments", "nobody"]},
                {"UpstreamPathTemplate": "/c", "RouteKeys": ["user"], "RouteKeysConfig": [{"RouteKey": "user", "JsonPath": "$[?(@.x)]"}]},
            ]
        }));
        let aggregation =
            Aggregation::from_settings(&AggregatorSettings::new(), 1024, None).unwrap();
        let (a, warnings) = compile(&c, &aggregation);
        assert_eq!(a[0].routes.as_deref(), Some(&[0, 1][..]));
        assert!(a[0].chained && a[0].fan_out[0].is_none());
        assert_eq!(
            a[0].fan_out[1].as_ref().map(|f| f.placeholder.as_str()),
            Some("{id}")
        );
        assert_eq!(a[1].routes, None);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn abp_aggregator_is_there_by_default_and_can_be_configured() {
        let settings: AggregatorSettings = serde_yaml::from_str("Custom: {kind: simple}\nAbpResponseMergeAggregator: {kind: abp_merge, ignore_errors: true}\n").unwrap();
        let a = Aggregation::from_settings(&settings, 1024, None).unwrap();
        assert_eq!(
            a.aggregator("Custom").map(|c| c.kind),
            Some(AggregatorKind::Simple)
        );
        assert_eq!(
            a.aggregator(ABP_AGGREGATOR).map(|c| c.ignore_errors),
            Some(true)
        );
        let d = Aggregation::from_settings(&AggregatorSettings::new(), 1024, None).unwrap();
        assert_eq!(
            d.aggregator(ABP_AGGREGATOR)
                .map(|c| (c.kind, c.ignore_errors)),
            Some((AggregatorKind::AbpMerge, false))
        );
        assert!(d.aggregator("abpresponsemergeaggregator").is_none());
        assert!(serde_yaml::from_str::<AggregatorSettings>("X: {kind: nope}").is_err());
    }
}
