//! Request aggregation (`Aggregates`; spec §1.4, §6; Ocelot's
//! `src/Multiplexer/*`).
//!
//! An aggregate is matched like a route. With one route key Ocelot simply
//! proxies that route (the proxy does the same, see [`single_route`]).
//! Otherwise the gateway answers by itself from `request_filter`: it calls
//! every route of `RouteKeys` in parallel through its own HTTP client, each
//! as Ocelot's pipeline would (see [`subrequest`]), then builds one response
//! with the aggregator. With `RouteKeysConfig` the first route is called
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

pub mod aggregators;
pub mod jsonpath;
mod subrequest;

use crate::auth::Authenticator;
use crate::balancing::StickySessions;
use crate::routing::Snapshot;
use aggregators::{Answer, Outcome, Part};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use jsonpath::JsonPath;
use ocelot_compat::model::FileConfiguration;
use ocelot_compat::table::Placeholders;
use ocelot_compat::Diagnostic;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The name abp-next-admin's gateway gives its aggregator.
pub const ABP_AGGREGATOR: &str = "AbpResponseMergeAggregator";

/// Default for `aggregate_max_body_bytes`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Sub-requests of one aggregate in flight at once. Ocelot starts them all;
/// a `JsonPath` over a long array would otherwise open that many
/// connections together.
const MAX_PARALLEL: usize = 64;

/// What an aggregator does with the responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregatorKind {
    /// Deep JSON merge of every response (abp's `AbpResponseMergeAggregator`).
    AbpMerge,
    /// Ocelot's built-in `{"Key":<body>,...}`, under a name.
    Simple,
}

/// One named aggregator of the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    pub kind: AggregatorKind,
    /// Leave failed sub-requests out instead of answering their error.
    #[serde(default)]
    pub ignore_errors: bool,
}

/// The `aggregators` section: aggregators by the name `Aggregator` gives.
pub type AggregatorSettings = BTreeMap<String, AggregatorConfig>;

/// The process-wide aggregation service: named aggregators, the HTTP
/// clients for sub-requests, the body bound.
pub struct Aggregation {
    named: HashMap<String, AggregatorConfig>,
    max_body_bytes: usize,
    /// Verifies certificates (with `upstream_ca_file`).
    verifying: reqwest::Client,
    /// For `DangerousAcceptAnyServerCertificateValidator` routes.
    insecure: reqwest::Client,
}

static CURRENT: OnceLock<Arc<Aggregation>> = OnceLock::new();

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
    pub fn from_settings(
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

    /// Makes this the process-wide service (once; later calls keep the first).
    pub fn install(self) -> Arc<Aggregation> {
        CURRENT.get_or_init(|| Arc::new(self)).clone()
    }

    /// The installed service, or the defaults if none was installed (`None`
    /// only if not even a default HTTP client can be built).
    pub fn current() -> Option<&'static Arc<Aggregation>> {
        if let Some(a) = CURRENT.get() {
            return Some(a);
        }
        match Aggregation::from_settings(&AggregatorSettings::new(), DEFAULT_MAX_BODY_BYTES, None) {
            Ok(a) => Some(CURRENT.get_or_init(|| Arc::new(a))),
            Err(e) => {
                log::error!("{e}");
                None
            }
        }
    }

    /// The aggregator configured under `name` (exact, as .NET type names are).
    pub fn aggregator(&self, name: &str) -> Option<AggregatorConfig> {
        self.named.get(name).copied()
    }

    fn http(&self, verify: bool) -> &reqwest::Client {
        if verify {
            &self.verifying
        } else {
            &self.insecure
        }
    }
}

/// `RouteKeysConfig` for one route key: call it once per value.
#[derive(Debug, Clone)]
pub struct FanOut {
    /// `{Parameter}`, braces included.
    pub placeholder: String,
    /// `Err`: the path cannot be evaluated (answered 500, as Newtonsoft's
    /// exception is in Ocelot).
    pub path: Result<JsonPath, String>,
}

/// An aggregate, compiled with its snapshot.
#[derive(Debug)]
pub struct CompiledAggregate {
    /// The upstream template, for logs.
    pub name: String,
    /// `RouteKeys` as route indexes; `None` when a key names no route: Ocelot
    /// drops such an aggregate, so it answers 404.
    pub routes: Option<Vec<usize>>,
    pub keys: Vec<String>,
    /// By position in `RouteKeys`: the fan-out configured for that key.
    pub fan_out: Vec<Option<FanOut>>,
    /// `RouteKeysConfig` is not empty: the first route is called first.
    pub chained: bool,
    pub aggregator: Option<String>,
    /// The aggregate's own requests (its sub-requests count for their routes).
    pub metrics: crate::metrics::RouteMetrics,
}

/// Compiles every aggregate of `config`; problems Ocelot would only meet
/// per request are returned as warnings.
pub fn compile(config: &FileConfiguration) -> (Vec<CompiledAggregate>, Vec<Diagnostic>) {
    let mut warnings = Vec::new();
    let aggregation = CURRENT.get();
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
            if let (Some(name), Some(registry)) = (&aggregator, aggregation) {
                if registry.aggregator(name).is_none() {
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

/// Ocelot proxies an aggregate with a single route key as that route: its
/// index, if so.
pub fn single_route(snapshot: &Snapshot, aggregate: usize) -> Option<usize> {
    match snapshot.aggregates.get(aggregate)?.routes.as_deref() {
        Some([only]) => Some(*only),
        _ => None,
    }
}

/// A request that matched an aggregate.
#[derive(Debug, Clone)]
pub struct Matched {
    pub index: usize,
    pub placeholders: Placeholders,
    /// The normalized request path.
    pub path: String,
}

/// What sub-requests share (owned, so they can run as tasks).
struct Shared {
    snapshot: Arc<Snapshot>,
    auth: Arc<Authenticator>,
    sticky: Arc<StickySessions>,
    aggregation: Arc<Aggregation>,
    /// The client's request as it arrived.
    req: pingora_http::RequestHeader,
    path: String,
    peer: Option<IpAddr>,
    body: Option<Bytes>,
    /// Bytes of sub-responses this aggregate may still buffer.
    budget: AtomicUsize,
    /// Bounds the sub-requests in flight ([`MAX_PARALLEL`]).
    parallel: Arc<tokio::sync::Semaphore>,
}

/// One sub-request: a route with the placeholders to render it with.
struct Job {
    route: usize,
    key: String,
    placeholders: Placeholders,
}

/// What the proxy hands over.
pub struct Env {
    pub snapshot: Arc<Snapshot>,
    pub auth: Arc<Authenticator>,
    pub sticky: Arc<StickySessions>,
}

/// Answers an aggregate request: the sub-requests, the aggregator, the
/// response (with `extra` headers: CORS). Always `Ok(true)` unless the
/// response cannot be written.
pub async fn respond(
    session: &mut Session,
    env: Env,
    matched: Matched,
    extra: &[(HeaderName, HeaderValue)],
) -> Result<bool> {
    let answer = aggregate(session, env, matched).await?;
    write(session, answer, extra).await?;
    Ok(true)
}

async fn aggregate(session: &mut Session, env: Env, matched: Matched) -> Result<Answer> {
    let empty = |status| Answer {
        status,
        headers: Vec::new(),
        content_type: None,
        body: Bytes::new(),
    };
    let snapshot = env.snapshot.clone();
    let Some(aggregate) = snapshot.aggregates.get(matched.index) else {
        return Ok(empty(404));
    };
    let Some(routes) = aggregate.routes.clone() else {
        log::debug!("aggregate {}: a route key names no route", aggregate.name);
        return Ok(empty(404));
    };
    let Some(aggregation) = Aggregation::current().cloned() else {
        return Ok(empty(500));
    };
    let kind = match &aggregate.aggregator {
        None => None,
        Some(name) => match aggregation.aggregator(name) {
            Some(config) => Some(config),
            None => {
                log::warn!("aggregate {}: no aggregator named '{name}'", aggregate.name);
                return Ok(empty(404));
            }
        },
    };
    let body = match read_body(session, aggregation.max_body_bytes).await? {
        Ok(body) => body,
        Err(status) => return Ok(empty(status)),
    };
    let shared = Arc::new(Shared {
        snapshot: env.snapshot.clone(),
        auth: env.auth,
        sticky: env.sticky,
        aggregation: aggregation.clone(),
        req: session.req_header().clone(),
        path: matched.path,
        peer: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        body,
        budget: AtomicUsize::new(aggregation.max_body_bytes),
        parallel: Arc::new(tokio::sync::Semaphore::new(MAX_PARALLEL)),
    });
    let job = |position: usize, placeholders: Placeholders| Job {
        route: routes[position],
        key: aggregate.keys[position].clone(),
        placeholders,
    };
    let parts = if aggregate.chained {
        let first = run(&shared, vec![job(0, matched.placeholders.clone())]).await;
        let Some(main) = first.into_iter().next() else {
            return Ok(empty(500));
        };
        let json = match &main.outcome {
            Outcome::Error(e) => return Ok(Answer::error(e)),
            Outcome::Response { body, .. } => serde_json::from_slice::<serde_json::Value>(body),
        };
        let Ok(json) = json else {
            log::warn!(
                "aggregate {}: the first route's body is not JSON; cannot apply RouteKeysConfig",
                aggregate.name
            );
            return Ok(empty(500));
        };
        let mut jobs = Vec::new();
        for position in 1..routes.len() {
            match &aggregate.fan_out[position] {
                None => jobs.push(job(position, matched.placeholders.clone())),
                Some(fan_out) => {
                    let Ok(path) = &fan_out.path else {
                        return Ok(empty(500));
                    };
                    let mut values: Vec<String> = Vec::new();
                    for v in path.select(&json) {
                        let v = jsonpath::token_string(v);
                        if !values.contains(&v) {
                            values.push(v);
                        }
                    }
                    for value in values {
                        let mut placeholders = matched.placeholders.clone();
                        placeholders.push(fan_out.placeholder.clone(), value);
                        jobs.push(job(position, placeholders));
                    }
                }
            }
        }
        let mut parts = vec![main];
        parts.extend(run(&shared, jobs).await);
        parts
    } else {
        let jobs = (0..routes.len())
            .map(|p| job(p, matched.placeholders.clone()))
            .collect();
        run(&shared, jobs).await
    };
    Ok(match kind {
        Some(AggregatorConfig {
            kind: AggregatorKind::AbpMerge,
            ignore_errors,
        }) => aggregators::abp_merge(&parts, ignore_errors),
        _ => aggregators::simple(&parts),
    })
}

/// Runs the jobs in parallel; results in job order.
async fn run(shared: &Arc<Shared>, jobs: Vec<Job>) -> Vec<Part> {
    let mut tasks = tokio::task::JoinSet::new();
    let keys: Vec<String> = jobs.iter().map(|j| j.key.clone()).collect();
    for (i, job) in jobs.into_iter().enumerate() {
        let shared = shared.clone();
        tasks.spawn(async move {
            // The semaphore is never closed, so this waits for a slot.
            let _slot = shared.parallel.clone().acquire_owned().await;
            (i, subrequest::call(&shared, &job).await)
        });
    }
    let mut outcomes: Vec<Option<Outcome>> = vec![None; keys.len()];
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((i, outcome)) => outcomes[i] = Some(outcome),
            Err(e) => log::error!("aggregate sub-request failed: {e}"),
        }
    }
    keys.into_iter()
        .zip(outcomes)
        .map(|(key, outcome)| Part {
            key,
            outcome: outcome.unwrap_or_else(|| {
                Outcome::Error(aggregators::SubError::new(500, "sub-request failed"))
            }),
        })
        .collect()
}

/// The request body, copied to every sub-request as Ocelot does when it
/// has a `Content-Length` (without one it is not copied). `Err(413)` when it
/// is larger than the aggregation bound.
async fn read_body(
    session: &mut Session,
    limit: usize,
) -> Result<std::result::Result<Option<Bytes>, u16>> {
    let headers = &session.req_header().headers;
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if chunked {
        // Unread: the connection cannot be reused for another request.
        session.set_keepalive(None);
        return Ok(Ok(None));
    }
    let Some(length) = length.filter(|l| *l > 0) else {
        return Ok(Ok(None));
    };
    if length > limit {
        session.set_keepalive(None);
        return Ok(Err(413));
    }
    let mut body = Vec::with_capacity(length);
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > limit {
            session.set_keepalive(None);
            return Ok(Err(413));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(Some(Bytes::from(body))))
}

async fn write(
    session: &mut Session,
    answer: Answer,
    extra: &[(HeaderName, HeaderValue)],
) -> Result<()> {
    let mut resp =
        ResponseHeader::build(answer.status, Some(answer.headers.len() + extra.len() + 2))?;
    for (name, value) in &answer.headers {
        resp.insert_header(*name, value.as_str())?;
    }
    if let Some(content_type) = answer.content_type {
        resp.insert_header(header::CONTENT_TYPE, content_type)?;
    }
    resp.insert_header(header::CONTENT_LENGTH, answer.body.len().to_string())?;
    for (name, value) in extra {
        resp.append_header(name.clone(), value.clone())?;
    }
    let head_only = answer.body.is_empty() || session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(answer.body), true).await?;
    }
    Ok(())
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
        let (a, warnings) = compile(&c);
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
