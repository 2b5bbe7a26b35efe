//! Gateway settings: everything `ocelot.json` cannot say (listeners, TLS trust,
//! process options). One YAML file, every key optional; command-line flags win.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The settings file. Unknown keys are rejected so a typo never silently turns
/// a setting off.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `ocelot.json` file, or a folder of `ocelot.*.json` files to merge.
    pub ocelot: Option<PathBuf>,
    /// Environment name for the `ocelot.{Environment}.json` overlay.
    pub environment: Option<String>,
    /// Proxy listeners (`host:port`).
    pub listen: Vec<String>,
    /// Admin listener serving `/healthz`, `/readyz`, `/metrics` and the admin API.
    pub admin_listen: Option<String>,
    /// Bearer token for the admin API (`/admin/*`); without one the API is off.
    /// `$GATEWAY_ADMIN_TOKEN` or `admin_token_file` keep it out of the file.
    pub(crate) admin_token: Option<String>,
    /// A file holding the admin token (e.g. a mounted Kubernetes Secret).
    pub(crate) admin_token_file: Option<PathBuf>,
    /// One JSON access-log line per request on stdout.
    pub(crate) access_log: bool,
    /// KiB of access-log lines gathered before they are written (0: each
    /// line at once; default 64).
    pub access_log_buffer_kib: usize,
    /// Milliseconds after which gathered access-log lines are written anyway
    /// (default 200).
    pub access_log_flush_ms: u64,
    /// Seconds between checks of the configuration files, besides file-system
    /// events (which some volumes never send).
    pub config_poll_seconds: u64,
    /// Seconds to keep serving after SIGTERM with `/readyz` failing, so the
    /// orchestrator stops sending before the listeners close.
    pub drain_seconds: u64,
    /// Worker threads for the proxy service (default: one per core).
    pub threads: Option<usize>,
    /// Extra CA bundle (PEM) trusted when verifying upstream TLS certificates.
    pub upstream_ca_file: Option<PathBuf>,
    /// How often host names in `DownstreamHostAndPorts` are re-resolved.
    pub dns_refresh_seconds: u64,
    /// Seconds in-flight requests get after the listeners close (default 10,
    /// so drain + grace + shutdown fit Kubernetes' 30 s; Pingora's own is 300).
    pub grace_period_seconds: Option<u64>,
    /// Seconds the final shutdown step may take (default 5).
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    /// Idle upstream connections kept per process (default 1024).
    pub upstream_keepalive_pool_size: Option<usize>,
    /// Pingora's upgrade socket (`gateway -u` hands the listeners over through it).
    pub upgrade_sock: Option<String>,
    /// Pid file written by Pingora.
    pub pid_file: Option<String>,
    /// Rate limiting: Ocelot version to follow, Redis, failure policy, memory bound.
    pub(crate) rate_limiting: crate::rate_limiting::RateLimitSettings,
    /// Deadlines and limits for clients, Kestrel's by default.
    pub client_limits: crate::client_limits::ClientLimitsSettings,
    /// OpenTelemetry tracing (off unless a collector is named here or in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; restart to change).
    pub tracing: crate::otel::TracingSettings,
    /// Retries of downstream calls (off by default), per route.
    pub(crate) retries: crate::retries::RetrySettings,
    /// Active health checks per downstream service, and passive health.
    pub(crate) health_checks: crate::health::HealthCheckSettings,
    /// Proxies whose `X-Forwarded-For` is believed for the client address.
    pub(crate) trusted_proxies: crate::security::TrustedProxiesSettings,
    /// JWT bearer providers named by `AuthenticationProviderKey(s)`.
    pub auth_providers: crate::auth::AuthSettings,
    /// CORS policy answered by the gateway (off when absent).
    pub(crate) cors: Option<crate::cors::CorsSettings>,
    /// Service discovery: registry addresses and credentials `ocelot.json`
    /// cannot hold, polling, DNS (restart to change).
    pub discovery: crate::discovery::DiscoverySettings,
    /// Aggregators by the name an aggregate's `Aggregator` gives
    /// (`AbpResponseMergeAggregator` exists by default).
    pub(crate) aggregators: crate::aggregate::AggregatorSettings,
    /// Most sub-response bytes one aggregate buffers (and most request body
    /// bytes it copies to its sub-requests).
    pub(crate) aggregate_max_body_bytes: usize,
    /// Memory bounds of the output cache (`CacheOptions`).
    pub(crate) cache: crate::cache::CacheSettings,
    /// Seconds an upgraded (WebSocket) connection may stay silent before it
    /// is closed; replaces the route `Timeout` for upgrades (default 3600).
    pub websocket_idle_timeout_seconds: u64,
    /// TLS proxy listeners (`addr`, `cert`, `key` PEM files), HTTP/2 through ALPN.
    pub tls_listen: Vec<crate::protocols::TlsListenSettings>,
    /// Plain proxy listeners that also accept HTTP/2 with prior knowledge (h2c).
    pub h2c_listen: Vec<String>,
    /// API documentation of `SwaggerEndPoints` (MMLib.SwaggerForOcelot):
    /// paths, cache, server, security scheme names.
    pub(crate) swagger: crate::swagger::SwaggerSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ocelot: None,
            environment: None,
            listen: Vec::new(),
            admin_listen: None,
            admin_token: None,
            admin_token_file: None,
            access_log: true,
            access_log_buffer_kib: crate::access_log::DEFAULT_BUFFER_KIB,
            access_log_flush_ms: crate::access_log::DEFAULT_FLUSH_MS,
            config_poll_seconds: 5,
            drain_seconds: 5,
            threads: None,
            upstream_ca_file: None,
            dns_refresh_seconds: 30,
            grace_period_seconds: None,
            graceful_shutdown_timeout_seconds: None,
            upstream_keepalive_pool_size: None,
            upgrade_sock: None,
            pid_file: None,
            rate_limiting: Default::default(),
            client_limits: Default::default(),
            tracing: Default::default(),
            retries: Default::default(),
            health_checks: Default::default(),
            trusted_proxies: Default::default(),
            auth_providers: Default::default(),
            cors: None,
            discovery: Default::default(),
            aggregators: Default::default(),
            aggregate_max_body_bytes: crate::aggregate::DEFAULT_MAX_BODY_BYTES,
            cache: Default::default(),
            websocket_idle_timeout_seconds:
                crate::protocols::DEFAULT_WEBSOCKET_IDLE_TIMEOUT_SECONDS,
            tls_listen: Vec::new(),
            h2c_listen: Vec::new(),
            swagger: Default::default(),
        }
    }
}

/// The proxy listener when neither the settings nor `--listen` name one.
pub(crate) const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// The admin listener when neither the settings nor `--admin-listen` name one.
pub(crate) const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9901";

impl Settings {
    /// The proxy's plain HTTP listeners.
    pub fn listen_addresses(&self) -> Vec<String> {
        if self.listen.is_empty() {
            vec![DEFAULT_LISTEN.to_string()]
        } else {
            self.listen.clone()
        }
    }

    /// The admin listener.
    pub fn admin_address(&self) -> &str {
        self.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN)
    }

    /// The admin token from `$GATEWAY_ADMIN_TOKEN`, `admin_token_file` or
    /// `admin_token`, in that order; `None` (API off) when none is set.
    pub fn resolve_admin_token(&self) -> Result<Option<String>, String> {
        if let Ok(token) = std::env::var("GATEWAY_ADMIN_TOKEN") {
            return Ok(Some(token).filter(|t| !t.trim().is_empty()));
        }
        if let Some(file) = &self.admin_token_file {
            let token = std::fs::read_to_string(file)
                .map_err(|e| format!("{}: cannot read admin token: {e}", file.display()))?;
            return Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty()));
        }
        Ok(self.admin_token.clone().filter(|t| !t.trim().is_empty()))
    }

    /// Reads a settings file; errors name the file and, for YAML errors, the line.
    pub fn load(path: &Path) -> Result<Settings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read settings: {e}", path.display()))?;
        if text.trim().is_empty() {
            return Ok(Settings::default());
        }
        let mut settings: Settings =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        // Relative paths in the settings file are relative to the file, not to the
        // working directory, so a settings file can be moved with its config.
        if let Some(dir) = path.parent() {
            for p in [
                &mut settings.ocelot,
                &mut settings.upstream_ca_file,
                &mut settings.admin_token_file,
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
            settings.auth_providers.resolve_paths(dir);
            settings.discovery.resolve_paths(dir);
            for listener in &mut settings.tls_listen {
                listener.resolve_paths(dir);
            }
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let s: Settings =
            serde_yaml::from_str("listen: ['127.0.0.1:1']\nthreads: 3\n").expect("yaml");
        assert_eq!(s.listen, vec!["127.0.0.1:1"]);
        assert_eq!(s.threads, Some(3));
        assert_eq!(s.grace_period_seconds, None);
        assert_eq!(s.drain_seconds, 5);
        assert!(s.access_log);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = serde_yaml::from_str::<Settings>("lissten: []\n").expect_err("typo must fail");
        assert!(e.to_string().contains("lissten"), "{e}");
    }
}
