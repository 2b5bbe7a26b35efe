//! What clients are held to: Kestrel's limits (`KestrelServerLimits`, the
//! server Ocelot runs in) with its defaults, enforced in Pingora's HTTP/1
//! server loop by our patch (patches/pingora-core-0.9.1-downstream-deadlines.patch).

use pingora_core::protocols::http::downstream_limits::{DownstreamLimits, MinDataRate};
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
    /// `grace` is Pingora's grace period: a request that arrives in the
    /// shutdown wait must still have time to be answered before the runtime
    /// stops, so the wait is at most half of it.
    pub fn limits(&self, grace: Option<Duration>) -> Arc<DownstreamLimits> {
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
            shutdown_request_wait: self.shutdown_request_wait(grace),
            stats: Default::default(),
        });
        export_metrics(&limits);
        limits
    }
}

impl ClientLimitsSettings {
    fn shutdown_request_wait(&self, grace: Option<Duration>) -> Option<Duration> {
        let wait = Duration::from_millis(self.shutdown_request_wait_ms);
        if wait.is_zero() {
            return None;
        }
        match grace.map(|g| g / 2) {
            Some(half) if wait > half => {
                log::warn!(
                    "client_limits.shutdown_request_wait_ms {} is more than half the grace period: {} ms",
                    self.shutdown_request_wait_ms,
                    half.as_millis()
                );
                Some(half)
            }
            _ => Some(wait),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_wait_leaves_half_the_grace_period_to_answer() {
        let settings = ClientLimitsSettings::default();
        let wait =
            |grace: Option<u64>| settings.shutdown_request_wait(grace.map(Duration::from_secs));
        assert_eq!(wait(Some(10)), Some(Duration::from_secs(2)));
        assert_eq!(wait(Some(2)), Some(Duration::from_secs(1)));
        assert_eq!(wait(None), Some(Duration::from_secs(2)));
        let off = ClientLimitsSettings {
            shutdown_request_wait_ms: 0,
            ..Default::default()
        };
        assert_eq!(
            off.shutdown_request_wait(Some(Duration::from_secs(10))),
            None
        );
    }
}
