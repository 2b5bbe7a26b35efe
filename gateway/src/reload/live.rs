//! Settings that change without a restart. When the settings file changes,
//! the parts that can be swapped while serving (authentication providers,
//! CORS, the access log switch) are rebuilt, checked against the routes being
//! served, and swapped in; a settings file that does not load is refused and
//! the running settings stay. Listeners, threads, rate-limiting storage and
//! health checks are read at start: a change to them is logged as needing a
//! restart.

use super::hash_files;
use crate::auth::Authenticator;
use crate::cors::Cors;
use crate::metrics::METRICS;
use crate::settings::Settings;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Settings that take effect without a restart: swapped whole when the
/// settings file changes.
pub struct LiveSettings {
    /// Write one JSON access-log line per request on stdout.
    pub(crate) access_log: bool,
    /// JWT providers named by the routes' `AuthenticationProviderKey(s)`.
    pub(crate) auth: Arc<Authenticator>,
    /// The gateway's CORS policy, if any.
    pub(crate) cors: Option<Arc<Cors>>,
}

impl LiveSettings {
    /// Builds the live part of `settings`, refusing providers that the routes
    /// of `snapshot` would miss.
    pub(crate) fn build(settings: &Settings, snapshot: &Snapshot) -> Result<LiveSettings, String> {
        LiveSettings::assemble(
            settings,
            snapshot,
            Authenticator::from_settings(&settings.auth_providers)?,
        )
    }

    /// As [`LiveSettings::build`], with the providers already built (at start
    /// they are needed before the first snapshot, for its warnings).
    pub fn assemble(
        settings: &Settings,
        snapshot: &Snapshot,
        auth: Authenticator,
    ) -> Result<LiveSettings, String> {
        // Ocelot refuses to start when a route names an unregistered scheme; so
        // does the gateway once `auth_providers` is configured. Without any
        // provider the routes only warn (and answer 401), so an Ocelot file can
        // be tried before its providers are set up.
        let unknown = snapshot.unknown_schemes(&auth);
        if !unknown.is_empty() && !auth.is_empty() {
            return Err(unknown.join("\n"));
        }
        let cors = settings
            .cors
            .as_ref()
            .map(Cors::from_settings)
            .transpose()?
            .map(Arc::new);
        Ok(LiveSettings {
            access_log: settings.access_log,
            auth: Arc::new(auth),
            cors,
        })
    }
}

/// Keeps the current providers' keys fresh, restarting the refresh tasks when
/// a settings reload brings new providers.
pub struct KeyRefresher {
    pub live: Arc<ArcSwap<LiveSettings>>,
}

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let auth = self.live.load().auth.clone();
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let task = tokio::spawn({
                let auth = auth.clone();
                async move { auth.run_refresh(stopped).await }
            });
            let finished = loop {
                tokio::select! {
                    _ = shutdown.changed() => break true,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if !Arc::ptr_eq(&self.live.load().auth, &auth) {
                            break false;
                        }
                    }
                }
            };
            let _ = stop.send(true);
            let _ = task.await;
            if finished {
                return;
            }
        }
    }
}

/// Watches the settings file and swaps the live settings when it changes.
pub struct SettingsWatcher {
    pub(crate) path: PathBuf,
    /// The settings as the process started with them (flags applied), to
    /// tell which changes need a restart.
    pub(crate) started_with: Settings,
    /// Applies the command-line flags that override the file.
    pub(crate) overrides: Box<dyn Fn(&mut Settings) + Send + Sync>,
    pub(crate) live: Arc<ArcSwap<LiveSettings>>,
    pub(crate) state: Arc<ArcSwap<Snapshot>>,
    pub(crate) poll: Duration,
    pending_restart: Mutex<Vec<&'static str>>,
}

impl SettingsWatcher {
    pub fn new(
        path: PathBuf,
        started_with: Settings,
        overrides: Box<dyn Fn(&mut Settings) + Send + Sync>,
        live: Arc<ArcSwap<LiveSettings>>,
        state: Arc<ArcSwap<Snapshot>>,
        poll: Duration,
    ) -> SettingsWatcher {
        SettingsWatcher {
            path,
            started_with,
            overrides,
            live,
            state,
            poll,
            pending_restart: Mutex::new(Vec::new()),
        }
    }

    fn fingerprint(&self) -> u64 {
        hash_files(vec![self.path.clone()])
    }

    /// Reloads the settings file; errors leave the running settings in place.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let mut settings = Settings::load(&self.path)?;
        (self.overrides)(&mut settings);
        let live = LiveSettings::build(&settings, &self.state.load_full())
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.live.store(Arc::new(live));
        let restart = restart_needed(&self.started_with, &settings);
        if !restart.is_empty() {
            log::warn!(
                "{}: changes to {} take effect after a restart",
                self.path.display(),
                restart.join(", ")
            );
        }
        if let Ok(mut pending) = self.pending_restart.lock() {
            *pending = restart;
        }
        Ok(())
    }
}

/// The keys whose change needs a restart, by name.
fn restart_needed(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name: &'static str, changed: bool| {
        if changed {
            out.push(name);
        }
    };
    check("listen", old.listen != new.listen);
    check("admin_listen", old.admin_listen != new.admin_listen);
    check(
        "admin_token",
        old.admin_token != new.admin_token || old.admin_token_file != new.admin_token_file,
    );
    check("ocelot", old.ocelot != new.ocelot);
    check("environment", old.environment != new.environment);
    check("threads", old.threads != new.threads);
    check(
        "access_log_buffer_kib",
        old.access_log_buffer_kib != new.access_log_buffer_kib,
    );
    check(
        "access_log_flush_ms",
        old.access_log_flush_ms != new.access_log_flush_ms,
    );
    check(
        "upstream_ca_file",
        old.upstream_ca_file != new.upstream_ca_file,
    );
    check("rate_limiting", old.rate_limiting != new.rate_limiting);
    check("health_checks", old.health_checks != new.health_checks);
    check(
        "trusted_proxies",
        old.trusted_proxies != new.trusted_proxies,
    );
    check("tls_listen", old.tls_listen != new.tls_listen);
    check("h2c_listen", old.h2c_listen != new.h2c_listen);
    check(
        "websocket_idle_timeout_seconds",
        old.websocket_idle_timeout_seconds != new.websocket_idle_timeout_seconds,
    );
    check(
        "aggregators",
        old.aggregators != new.aggregators
            || old.aggregate_max_body_bytes != new.aggregate_max_body_bytes,
    );
    check("cache", old.cache != new.cache);
    check("discovery", old.discovery != new.discovery);
    check("retries", old.retries != new.retries);
    check("tracing", old.tracing != new.tracing);
    check("client_limits", old.client_limits != new.client_limits);
    check("swagger", old.swagger != new.swagger);
    out
}

#[async_trait]
impl BackgroundService for SettingsWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut seen = self.fingerprint();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.poll) => {}
            }
            let now = self.fingerprint();
            if now == seen {
                continue;
            }
            seen = now;
            match self.reload() {
                Ok(()) => {
                    METRICS
                        .settings_reloads
                        .with_label_values(&["success"])
                        .inc();
                    log::info!("{}: settings reloaded", self.path.display());
                }
                Err(e) => {
                    METRICS
                        .settings_reloads
                        .with_label_values(&["failure"])
                        .inc();
                    log::error!("settings refused; the running ones stay:\n{e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> Settings {
        serde_yaml::from_str(yaml).expect("settings")
    }

    #[test]
    fn changes_read_only_at_start_up_are_named() {
        let before = settings("{}");
        let after = settings(
            "retries: {default: {attempts: 2}}\ntracing: {endpoint: 'http://c:4318'}\nclient_limits: {keep_alive_timeout_seconds: 5}\naccess_log: false",
        );
        assert_eq!(
            restart_needed(&before, &after),
            vec!["retries", "tracing", "client_limits"]
        );
        assert!(restart_needed(&before, &settings("access_log: false")).is_empty());
    }
}
