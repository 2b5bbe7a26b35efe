//! The proxy's client-facing listeners beyond plain HTTP/1: TLS (with
//! certificates that reload) and h2c; and what every listener holds its
//! clients to: Kestrel's deadlines and connection limit.

use crate::certificates::ListenerCertificate;
use crate::protocols::TlsListenSettings;
use crate::proxy::Gateway;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::http::downstream_limits::{DownstreamLimits, MinDataRate};
use pingora_core::services::listening::Service;
use pingora_proxy::HttpProxy;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// What clients are held to (the `client_limits` settings). The defaults are
/// Kestrel's, the server Ocelot runs in: its `KestrelServerLimits`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimitsSettings {
    /// The whole request head must arrive within this from its first byte
    /// (`RequestHeadersTimeout`, 30 s); else 408 and the connection closes.
    pub request_headers_timeout_seconds: u64,
    /// A connection may wait this long for a request, its first or its next
    /// (`KeepAliveTimeout`, 130 s); then it is closed.
    pub keep_alive_timeout_seconds: u64,
    /// A request body must come at least this fast (`MinRequestBodyDataRate`,
    /// 240 bytes/s) …
    pub min_request_body_data_rate: u64,
    /// … once this grace period has passed (5 s); else 408 (when no
    /// response has started) and the connection closes. 0 turns it off.
    pub min_request_body_data_rate_grace_seconds: u64,
    /// Connections beyond this many open ones are closed at once
    /// (`MaxConcurrentConnections`; none by default, as in Kestrel).
    pub max_concurrent_connections: Option<u64>,
    /// At shutdown (SIGTERM after the drain, `-u` hand-over), a connection
    /// waiting for a request waits this much longer for it, so that a
    /// request already on its way is answered, with `Connection: close`.
    pub shutdown_request_wait_ms: u64,
}

impl Default for ClientLimitsSettings {
    fn default() -> Self {
        ClientLimitsSettings {
            request_headers_timeout_seconds: 30,
            keep_alive_timeout_seconds: 130,
            min_request_body_data_rate: 240,
            min_request_body_data_rate_grace_seconds: 5,
            max_concurrent_connections: None,
            shutdown_request_wait_ms: 2000,
        }
    }
}

impl ClientLimitsSettings {
    /// The limits every proxy service and session shares (one connection
    /// count across listeners); their counters are exported as metrics.
    pub fn limits(&self) -> Arc<DownstreamLimits> {
        let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        let limits = Arc::new(DownstreamLimits {
            request_header_timeout: seconds(self.request_headers_timeout_seconds),
            keepalive_idle_timeout: seconds(self.keep_alive_timeout_seconds),
            min_request_body_rate: (self.min_request_body_data_rate > 0
                && self.min_request_body_data_rate_grace_seconds > 0)
                .then(|| MinDataRate {
                    bytes_per_second: self.min_request_body_data_rate,
                    grace: Duration::from_secs(self.min_request_body_data_rate_grace_seconds),
                }),
            max_connections: self.max_concurrent_connections,
            shutdown_request_wait: (self.shutdown_request_wait_ms > 0)
                .then(|| Duration::from_millis(self.shutdown_request_wait_ms)),
            stats: Default::default(),
        });
        export_metrics(&limits);
        limits
    }
}

fn export_metrics(limits: &Arc<DownstreamLimits>) {
    use crate::metrics::{export_counter, export_gauge};
    // The process keeps one set of limits; the metrics read it for ever.
    let stats = &Box::leak(Box::new(limits.clone())).stats;
    export_gauge(
        "gateway_client_connections_open",
        "Client connections open",
        &stats.open_connections,
    );
    export_counter(
        "gateway_client_connections_refused_total",
        "Client connections closed at accept: max_concurrent_connections were open",
        &stats.refused_connections,
    );
    export_counter(
        "gateway_client_request_headers_timeouts_total",
        "Request heads not complete within request_headers_timeout_seconds (408)",
        &stats.request_header_timeouts,
    );
    export_counter(
        "gateway_client_keep_alive_timeouts_total",
        "Connections closed after keep_alive_timeout_seconds without a request",
        &stats.idle_closed,
    );
    export_counter(
        "gateway_client_slow_request_bodies_total",
        "Request bodies slower than min_request_body_data_rate (408)",
        &stats.slow_request_bodies,
    );
    export_counter(
        "gateway_client_accepted_during_shutdown_total",
        "Connections taken from the listen backlog as the listeners closed, and answered",
        &stats.accepted_during_shutdown,
    );
}

/// Holds a proxy service's clients to `limits`.
pub fn apply_limits(
    service: &mut Service<HttpProxy<Gateway>>,
    limits: &Arc<DownstreamLimits>,
    h2c: bool,
) {
    service.set_downstream_limits(limits.clone());
    if let Some(app) = service.app_logic_mut() {
        let mut options = app
            .server_options
            .take()
            .unwrap_or_else(HttpServerOptions::default);
        options.h2c = h2c;
        options.downstream_limits = Some(limits.clone());
        app.server_options = Some(options);
    }
}

/// Adds the TLS listeners to the proxy service. The certificate and key are
/// read now, so a missing or invalid file stops the gateway from starting;
/// afterwards each listener serves what its returned slot holds (reloaded by
/// `certificates::CertificateWatcher`).
pub fn add_tls_listeners(
    proxy: &mut Service<HttpProxy<Gateway>>,
    listeners: &[TlsListenSettings],
) -> std::result::Result<Vec<Arc<ListenerCertificate>>, String> {
    let mut certificates = Vec::with_capacity(listeners.len());
    for l in listeners {
        let certificate = ListenerCertificate::load(&l.addr, &l.cert, &l.key)?;
        let mut tls = TlsSettings::with_callbacks(certificate.callbacks())
            .map_err(|e| format!("tls_listen {}: {e}", l.addr))?;
        if l.h2 {
            tls.enable_h2();
        }
        proxy.add_tls_with_settings(&l.addr, None, tls);
        certificates.push(certificate);
    }
    Ok(certificates)
}

/// A second proxy service for the `h2c_listen` addresses: Pingora's h2c
/// switch belongs to a service, not to a listener, and it makes the listener
/// wait for 24 bytes (the HTTP/2 preface) before choosing a protocol — fine
/// for real HTTP/1.1 clients, whose requests are longer, but not something to
/// impose on every plain listener. `None` without such addresses.
pub fn h2c_service(
    conf: &std::sync::Arc<pingora_core::server::configuration::ServerConf>,
    gateway: Gateway,
    addrs: &[String],
    limits: &Arc<DownstreamLimits>,
) -> Option<Service<HttpProxy<Gateway>>> {
    if addrs.is_empty() {
        return None;
    }
    let mut service = pingora_proxy::http_proxy_service_with_name(conf, gateway, "gateway h2c");
    apply_limits(&mut service, limits, true);
    for addr in addrs {
        service.add_tcp(addr);
    }
    Some(service)
}
