//! OpenTelemetry tracing: a server span per request, a client span per
//! downstream attempt, W3C trace context from the client to the service,
//! exported over OTLP (HTTP/protobuf or gRPC) off the request path.
//!
//! Off unless the settings' `tracing.endpoint` or the standard
//! `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` names a collector. With it off the
//! proxy holds `None` and each hook's tracing is one branch.
//!
//! The configuration follows the OpenTelemetry specification's environment
//! variables (`OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_SDK_DISABLED`); the settings file wins
//! where it says something.

mod export;
mod span;

pub use export::TraceExporter;
pub(crate) use span::{Finished, RequestTrace, TraceParent};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The `tracing` block of the settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSettings {
    /// The collector's OTLP base URL (`http://collector:4318` for
    /// HTTP/protobuf, `http://collector:4317` for gRPC); HTTP/protobuf adds
    /// `/v1/traces` unless the URL ends with it.
    pub(crate) endpoint: Option<String>,
    /// `http/protobuf` (the specification's default) or `grpc`.
    pub(crate) protocol: Option<String>,
    /// `service.name` of the gateway's spans (default `gateway`).
    pub(crate) service_name: Option<String>,
    /// Parent-based ratio sampling: a request without a sampled parent is
    /// traced with this probability (default 1.0); a client's decision in
    /// `traceparent` is followed.
    pub(crate) sampler_ratio: Option<f64>,
    /// Extra headers (gRPC metadata) on every export, e.g. an API key.
    pub(crate) headers: BTreeMap<String, String>,
    /// Finished spans waiting for export (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048);
    /// beyond it spans are dropped and counted, so memory stays bounded when
    /// the collector is away.
    pub(crate) queue_size: Option<usize>,
    /// Most spans in one export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512).
    pub(crate) batch_size: Option<usize>,
    /// Longest a finished span waits for its export
    /// (`OTEL_BSP_SCHEDULE_DELAY`, 5000).
    pub(crate) export_interval_ms: Option<u64>,
    /// Longest one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`, 10000).
    pub(crate) export_timeout_ms: Option<u64>,
    /// `false` turns tracing off whatever the environment says.
    pub(crate) enabled: bool,
}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            endpoint: None,
            protocol: None,
            service_name: None,
            sampler_ratio: None,
            headers: BTreeMap::new(),
            queue_size: None,
            batch_size: None,
            export_interval_ms: None,
            export_timeout_ms: None,
            enabled: true,
        }
    }
}

/// How spans leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// The sampler, as the settings or `OTEL_TRACES_SAMPLER` name it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

impl SamplerChoice {
    fn sampler(self) -> Sampler {
        match self {
            SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
            SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
            SamplerChoice::Ratio(r) => Sampler::TraceIdRatioBased(r),
            SamplerChoice::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerChoice::ParentBasedAlwaysOff => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
            }
            SamplerChoice::ParentBasedRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

/// Tracing as resolved from the settings and the environment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TraceConfig {
    /// The URL spans are sent to, as the exporter takes it.
    pub(crate) url: String,
    pub(crate) protocol: Protocol,
    pub(crate) service_name: String,
    pub(crate) sampler: SamplerChoice,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) queue_size: usize,
    pub(crate) batch_size: usize,
    pub(crate) export_interval: Duration,
    pub(crate) export_timeout: Duration,
}

const TRACES_PATH: &str = "/v1/traces";

fn ratio(value: &str, name: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{name}: \"{value}\" is not a ratio between 0 and 1"
        )),
    }
}

impl TraceConfig {
    /// Tracing from the settings, then the environment (`env` looks a
    /// variable up); `None` when no collector is named or tracing is off.
    pub(crate) fn resolve(
        settings: &TracingSettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<TraceConfig>, String> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim() == "true");
        if !settings.enabled || (disabled && settings.endpoint.is_none()) {
            return Ok(None);
        }
        let protocol_name = settings
            .protocol
            .clone()
            .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        let protocol = match protocol_name.trim() {
            "http/protobuf" => Protocol::HttpProtobuf,
            "grpc" => Protocol::Grpc,
            other => {
                return Err(format!(
                    "tracing.protocol: \"{other}\" is not supported (http/protobuf or grpc)"
                ))
            }
        };
        // A signal-specific URL is used as it is; a base URL gets the
        // signal's path (HTTP only), as the specification says.
        let base = |url: String| match protocol {
            Protocol::HttpProtobuf if !url.trim_end_matches('/').ends_with(TRACES_PATH) => {
                format!("{}{TRACES_PATH}", url.trim_end_matches('/'))
            }
            _ => url,
        };
        let url = match (
            &settings.endpoint,
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ) {
            (Some(endpoint), _) => base(endpoint.clone()),
            (None, Some(url)) => url,
            (None, None) => match var("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(endpoint) => base(endpoint),
                None => return Ok(None),
            },
        };
        match url.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) => {}
            _ => {
                return Err(format!(
                    "tracing.endpoint: \"{url}\" is not an http:// or https:// URL"
                ))
            }
        }
        if protocol == Protocol::Grpc && url.starts_with("https://") {
            return Err(format!(
                "tracing.endpoint: \"{url}\": gRPC export is plaintext only; use http/protobuf for https"
            ));
        }
        let sampler = match settings.sampler_ratio {
            Some(r) => {
                SamplerChoice::ParentBasedRatio(ratio(&r.to_string(), "tracing.sampler_ratio")?)
            }
            None => {
                let arg = var("OTEL_TRACES_SAMPLER_ARG");
                let arg_ratio = || match &arg {
                    Some(a) => ratio(a, "OTEL_TRACES_SAMPLER_ARG"),
                    None => Ok(1.0),
                };
                match var("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
                    None | Some("parentbased_always_on") => SamplerChoice::ParentBasedAlwaysOn,
                    Some("always_on") => SamplerChoice::AlwaysOn,
                    Some("always_off") => SamplerChoice::AlwaysOff,
                    Some("traceidratio") => SamplerChoice::Ratio(arg_ratio()?),
                    Some("parentbased_always_off") => SamplerChoice::ParentBasedAlwaysOff,
                    Some("parentbased_traceidratio") => {
                        SamplerChoice::ParentBasedRatio(arg_ratio()?)
                    }
                    Some(other) => {
                        return Err(format!("OTEL_TRACES_SAMPLER: \"{other}\" is not supported"))
                    }
                }
            }
        };
        let service_name = settings
            .service_name
            .clone()
            .or_else(|| var("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| "gateway".into());
        // The specification's defaults for the batch span processor and the
        // OTLP exporter.
        let number = |set: Option<u64>, name: &str, default: u64| -> Result<u64, String> {
            let value = match (set, var(name)) {
                (Some(v), _) => v,
                (None, Some(v)) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}: \"{v}\" is not a number"))?,
                (None, None) => default,
            };
            if value == 0 {
                return Err(format!("tracing: {name} must be above 0"));
            }
            Ok(value)
        };
        let queue_size = number(
            settings.queue_size.map(|v| v as u64),
            "OTEL_BSP_MAX_QUEUE_SIZE",
            2048,
        )?;
        let batch_size = number(
            settings.batch_size.map(|v| v as u64),
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            512,
        )?;
        let interval = number(settings.export_interval_ms, "OTEL_BSP_SCHEDULE_DELAY", 5000)?;
        let timeout = number(
            settings.export_timeout_ms,
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            10_000,
        )?;
        Ok(Some(TraceConfig {
            url,
            protocol,
            service_name,
            sampler,
            headers: settings.headers.clone(),
            queue_size: queue_size as usize,
            batch_size: batch_size.min(queue_size) as usize,
            export_interval: Duration::from_millis(interval),
            export_timeout: Duration::from_millis(timeout),
        }))
    }
}

/// The tracer the proxy and the multiplexer start spans with.
pub struct Tracing {
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    /// Keeps the provider (and its processor) alive for the process.
    _provider: SdkTracerProvider,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracing")
    }
}

impl Tracing {
    /// Tracing for these settings (and the process environment), with the
    /// background service that exports its spans; `None` when it is off.
    pub fn from_settings(
        settings: &TracingSettings,
    ) -> Result<Option<(Tracing, TraceExporter)>, String> {
        let Some(config) = TraceConfig::resolve(settings, |name| std::env::var(name).ok())? else {
            return Ok(None);
        };
        export::export_metrics();
        log::info!(
            "tracing: exporting to {} over {:?} as service {:?}, sampler {:?}",
            config.url,
            config.protocol,
            config.service_name,
            config.sampler
        );
        let resource = Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let (queue, exporter) = export::channel(&config, resource.clone());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .with_sampler(config.sampler.sampler())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("gateway");
        Ok(Some((
            Tracing {
                tracer,
                propagator: TraceContextPropagator::new(),
                _provider: provider,
            },
            exporter,
        )))
    }

    pub(crate) fn propagator(&self) -> &impl TextMapPropagator {
        &self.propagator
    }

    pub(crate) fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(yaml: &str, vars: &[(&str, &str)]) -> Result<Option<TraceConfig>, String> {
        let settings: TracingSettings = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        TraceConfig::resolve(&settings, |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(resolve("{}", &[]), Ok(None));
        assert_eq!(
            resolve(
                "{enabled: false}",
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]
            ),
            Ok(None)
        );
        assert_eq!(
            resolve(
                "{}",
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_SDK_DISABLED", "true")
                ]
            ),
            Ok(None)
        );
    }

    #[test]
    fn the_environment_as_the_specification_reads_it() {
        let c = resolve("{}", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])
            .expect("ok")
            .expect("on");
        assert_eq!(c.url, "http://c:4318/v1/traces");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.service_name, "gateway");
        assert_eq!(c.sampler, SamplerChoice::ParentBasedAlwaysOn);
        assert_eq!(
            (
                c.queue_size,
                c.batch_size,
                c.export_interval,
                c.export_timeout
            ),
            (2048, 512, Duration::from_secs(5), Duration::from_secs(10))
        );
        let c = resolve(
            "{}",
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
                ("OTEL_SERVICE_NAME", "edge"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ],
        )
        .expect("ok")
        .expect("on");
        assert_eq!(c.url, "http://c:4318/custom");
        assert_eq!(c.service_name, "edge");
        assert_eq!(c.sampler, SamplerChoice::ParentBasedRatio(0.25));
        let c = resolve(
            "{}",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        )
        .expect("ok")
        .expect("on");
        assert_eq!(
            (c.url.as_str(), c.protocol),
            ("http://c:4317", Protocol::Grpc)
        );
    }

    #[test]
    fn the_settings_win_over_the_environment() {
        let c = resolve(
            "{endpoint: 'http://mine:4318/v1/traces', service_name: gw, sampler_ratio: 0.5}",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://theirs:4318"),
                ("OTEL_SERVICE_NAME", "edge"),
                ("OTEL_TRACES_SAMPLER", "always_off"),
            ],
        )
        .expect("ok")
        .expect("on");
        assert_eq!(c.url, "http://mine:4318/v1/traces");
        assert_eq!(c.service_name, "gw");
        assert_eq!(c.sampler, SamplerChoice::ParentBasedRatio(0.5));
    }

    #[test]
    fn mistakes_are_named() {
        let e = |yaml: &str, vars: &[(&str, &str)]| resolve(yaml, vars).expect_err("refused");
        assert!(e("{endpoint: 'c:4318'}", &[]).contains("tracing.endpoint"));
        assert!(e("{endpoint: 'http://c', protocol: 'http/json'}", &[]).contains("http/json"));
        assert!(e("{endpoint: 'http://c', sampler_ratio: 2}", &[]).contains("sampler_ratio"));
        assert!(e(
            "{endpoint: 'http://c'}",
            &[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "x")
            ]
        )
        .contains("OTEL_TRACES_SAMPLER_ARG"));
        assert!(e("{endpoint: 'https://c', protocol: grpc}", &[]).contains("plaintext"));
        assert!(e("{endpoint: 'http://c', queue_size: 0}", &[]).contains("above 0"));
        assert!(e(
            "{endpoint: 'http://c'}",
            &[("OTEL_BSP_SCHEDULE_DELAY", "soon")]
        )
        .contains("OTEL_BSP_SCHEDULE_DELAY"));
    }
}
