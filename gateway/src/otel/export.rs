//! Finished spans leave the request path through a bounded queue; a Pingora
//! background service batches them to the collector.
//!
//! Hand-written rather than the SDK's `BatchSpanProcessor`: that one counts
//! the spans it drops but only logs the count at shutdown, and a gateway must
//! show in `/metrics` that it is losing traces while the collector is away.
//! Running the export loop as a background service also starts it after
//! `--daemon` forks and gives it the shutdown signal, to flush what is left.

use super::{Protocol, TraceConfig};
use async_trait::async_trait;
use opentelemetry::Context;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);
static EXPORT_FAILURES: AtomicU64 = AtomicU64::new(0);
static QUEUED: AtomicU64 = AtomicU64::new(0);

pub(super) fn export_metrics() {
    use crate::metrics::{export_counter, export_gauge};
    export_counter(
        "gateway_trace_spans_exported_total",
        "Spans the collector accepted",
        &EXPORTED,
    );
    export_counter(
        "gateway_trace_spans_dropped_queue_full_total",
        "Spans dropped because the export queue was full (collector slow or away)",
        &DROPPED_QUEUE_FULL,
    );
    export_counter(
        "gateway_trace_spans_dropped_export_failed_total",
        "Spans dropped because their export failed",
        &DROPPED_EXPORT_FAILED,
    );
    export_counter(
        "gateway_trace_export_failures_total",
        "Exports to the collector that failed or timed out",
        &EXPORT_FAILURES,
    );
    export_gauge(
        "gateway_trace_queue_spans",
        "Finished spans waiting for export",
        &QUEUED,
    );
}

/// The processor the tracer provider ends spans into.
#[derive(Debug)]
pub(super) struct SpanQueue {
    tx: mpsc::Sender<SpanData>,
}

/// The queue and the service that empties it.
pub(super) fn channel(config: &TraceConfig, resource: Resource) -> (SpanQueue, TraceExporter) {
    let (tx, rx) = mpsc::channel(config.queue_size);
    (
        SpanQueue { tx },
        TraceExporter {
            rx: Mutex::new(Some(rx)),
            config: config.clone(),
            resource,
        },
    )
}

impl SpanProcessor for SpanQueue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(span) {
            Ok(()) => {
                QUEUED.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                DROPPED_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The background service that exports queued spans in batches.
pub struct TraceExporter {
    rx: Mutex<Option<mpsc::Receiver<SpanData>>>,
    config: TraceConfig,
    resource: Resource,
}

/// Logs a collector outage once and its end once.
struct Outage(AtomicBool);

impl Outage {
    fn failed(&self, url: &str, why: &str) {
        EXPORT_FAILURES.fetch_add(1, Ordering::Relaxed);
        if !self.0.swap(true, Ordering::Relaxed) {
            log::warn!(
                "tracing: export to {url} failed ({why}); spans are dropped until it answers"
            );
        }
    }

    fn succeeded(&self, url: &str) {
        if self.0.swap(false, Ordering::Relaxed) {
            log::info!("tracing: export to {url} works again");
        }
    }
}

enum Exporter {
    Otlp(Box<opentelemetry_otlp::SpanExporter>),
    /// The exporter could not be built (logged): spans are counted as
    /// failed exports rather than piling up.
    Broken(String),
}

impl TraceExporter {
    fn build(&self) -> Exporter {
        let config = &self.config;
        let built = match config.protocol {
            Protocol::HttpProtobuf => {
                // Our own client: no proxy from the environment, the TLS
                // provider the gateway installs.
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .build()
                    .map_err(|e| e.to_string());
                client.and_then(|client| {
                    opentelemetry_otlp::SpanExporter::builder()
                        .with_http()
                        .with_endpoint(config.url.clone())
                        .with_timeout(config.export_timeout)
                        .with_http_client(client)
                        .with_headers(config.headers.clone().into_iter().collect())
                        .build()
                        .map_err(|e| e.to_string())
                })
            }
            Protocol::Grpc => {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (name, value) in &config.headers {
                    match (
                        tonic::metadata::MetadataKey::from_bytes(
                            name.to_ascii_lowercase().as_bytes(),
                        ),
                        value.parse(),
                    ) {
                        (Ok(key), Ok(value)) => {
                            metadata.insert(key, value);
                        }
                        _ => {
                            log::warn!("tracing: header {name:?} cannot be gRPC metadata; left out")
                        }
                    }
                }
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(config.url.clone())
                    .with_timeout(config.export_timeout)
                    .with_metadata(metadata)
                    .build()
                    .map_err(|e| e.to_string())
            }
        };
        match built {
            Ok(mut exporter) => {
                exporter.set_resource(&self.resource);
                Exporter::Otlp(Box::new(exporter))
            }
            Err(e) => {
                log::error!("tracing: cannot export to {}: {e}", config.url);
                Exporter::Broken(e)
            }
        }
    }

    async fn export(&self, exporter: &Exporter, batch: Vec<SpanData>, outage: &Outage) {
        let n = batch.len() as u64;
        QUEUED.fetch_sub(n, Ordering::Relaxed);
        let result = match exporter {
            Exporter::Otlp(exporter) => {
                // The exporter has its own timeout; this one also bounds
                // connecting to a collector that does not answer.
                match tokio::time::timeout(self.config.export_timeout, exporter.export(batch)).await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".to_string()),
                }
            }
            Exporter::Broken(e) => Err(e.clone()),
        };
        match result {
            Ok(()) => {
                EXPORTED.fetch_add(n, Ordering::Relaxed);
                outage.succeeded(&self.config.url);
            }
            Err(why) => {
                DROPPED_EXPORT_FAILED.fetch_add(n, Ordering::Relaxed);
                outage.failed(&self.config.url, &why);
            }
        }
    }
}

#[async_trait]
impl BackgroundService for TraceExporter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = self.rx.lock().ok().and_then(|mut rx| rx.take()) else {
            return;
        };
        let exporter = self.build();
        let outage = Outage(AtomicBool::new(false));
        let batch_size = self.config.batch_size;
        let mut batch = Vec::with_capacity(batch_size);
        loop {
            let deadline = tokio::time::sleep(self.config.export_interval);
            tokio::pin!(deadline);
            // Gather until the batch is full or the oldest span waited long
            // enough.
            let stop = loop {
                tokio::select! {
                    span = rx.recv() => match span {
                        Some(span) => {
                            batch.push(span);
                            if batch.len() >= batch_size {
                                break false;
                            }
                        }
                        None => break true,
                    },
                    _ = &mut deadline => break false,
                    _ = shutdown.changed() => break true,
                }
            };
            if !batch.is_empty() {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                self.export(&exporter, full, &outage).await;
            }
            if stop {
                break;
            }
        }
        // What the last requests finished, within one export timeout.
        rx.close();
        let mut rest = Vec::new();
        while let Ok(span) = rx.try_recv() {
            rest.push(span);
        }
        for chunk in rest.chunks(batch_size) {
            self.export(&exporter, chunk.to_vec(), &outage).await;
        }
    }
}
