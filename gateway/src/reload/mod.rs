//! Hot reload, off the request path: the configuration (here: load →
//! validate → compile → swap; a configuration that fails validation is
//! refused with its errors and the running one keeps serving, where Ocelot
//! would be left with none) and the settings that change without a restart
//! (`live.rs`).

mod live;

pub use live::{KeyRefresher, LiveSettings, SettingsWatcher};

use crate::metrics::METRICS;
use crate::snapshot::{Env, Snapshot};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use ocelot_compat::{Diagnostics, LoadedConfig};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub environment: Option<String>,
}

/// Swaps snapshots. Reloads are serialised so two never interleave.
pub struct Reloader {
    pub(crate) state: Arc<ArcSwap<Snapshot>>,
    pub(crate) source: ConfigSource,
    /// What snapshots are built with.
    env: Arc<Env>,
    /// For the providers routes may name.
    live: Arc<ArcSwap<LiveSettings>>,
    serial: tokio::sync::Mutex<()>,
}

/// A stable short hash of a configuration, exported as a metric so a fleet's
/// replicas can be checked to serve the same thing.
pub fn config_hash(value: &serde_json::Value) -> String {
    let mut hasher = DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

impl Reloader {
    pub fn new(
        state: Arc<ArcSwap<Snapshot>>,
        source: ConfigSource,
        env: Arc<Env>,
        live: Arc<ArcSwap<LiveSettings>>,
    ) -> Reloader {
        Reloader {
            state,
            source,
            env,
            live,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// Reloads from disk. On failure the errors are logged, counted, and returned.
    pub async fn reload_from_disk(&self) -> Result<(), Diagnostics> {
        let _serial = self.serial.lock().await;
        let source = self.source.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            ocelot_compat::load(&source.path, source.environment.as_deref())
        })
        .await
        .unwrap_or_else(|e| {
            Err(Diagnostics(vec![ocelot_compat::Diagnostic::error(
                "",
                "",
                format!("reload task failed: {e}"),
            )]))
        });
        self.finish(loaded).await
    }

    /// Replaces the configuration with one given as JSON; with `persist`, also
    /// writes it to the configuration file (only when that is a single file).
    pub(crate) async fn apply_json(
        &self,
        value: serde_json::Value,
        persist: bool,
    ) -> Result<(), Diagnostics> {
        let _serial = self.serial.lock().await;
        let loaded = ocelot_compat::from_json(value, Path::new("<admin API>"));
        if let (Ok(config), true) = (&loaded, persist) {
            if self.source.path.is_dir() {
                return Err(one_error(
                    "the configuration is a folder of files; it cannot be written back as one file",
                ));
            }
            let text = serde_json::to_string_pretty(&config.value)
                .map_err(|e| one_error(format!("cannot serialise: {e}")))?;
            // Write beside the file and rename, so a reader never sees half a file.
            let temp = self.source.path.with_extension("json.tmp");
            std::fs::write(&temp, text)
                .and_then(|()| std::fs::rename(&temp, &self.source.path))
                .map_err(|e| {
                    one_error(format!("{}: cannot write: {e}", self.source.path.display()))
                })?;
        }
        self.finish(loaded).await
    }

    async fn finish(&self, loaded: Result<LoadedConfig, Diagnostics>) -> Result<(), Diagnostics> {
        match loaded {
            Ok(loaded) => {
                let hash = config_hash(&loaded.value);
                let previous = self.state.load_full();
                let auth = self.live.load().auth.clone();
                let snapshot = Snapshot::build(loaded, Some(&previous), &self.env, &auth);
                snapshot.refresh_new_backends(&previous).await;
                for warning in &snapshot.warnings {
                    log::warn!("{warning}");
                }
                METRICS.config_loaded(&hash, snapshot.routes.len());
                METRICS.config_reloads.with_label_values(&["success"]).inc();
                log::info!(
                    "configuration {hash} loaded: {} routes",
                    snapshot.routes.len()
                );
                self.state.store(Arc::new(snapshot));
                Ok(())
            }
            Err(diags) => {
                METRICS.config_reloads.with_label_values(&["failure"]).inc();
                log::error!("configuration refused; the previous one keeps serving:\n{diags}");
                Err(diags)
            }
        }
    }
}

fn one_error(message: impl Into<String>) -> Diagnostics {
    Diagnostics(vec![ocelot_compat::Diagnostic::error("", "", message)])
}

/// What the configuration files look like on disk: their resolved paths (a
/// Kubernetes ConfigMap update swaps a `..data` symlink, which changes them),
/// sizes and modification times.
fn fingerprint(source: &ConfigSource) -> u64 {
    let mut files: Vec<PathBuf> = Vec::new();
    if source.path.is_dir() {
        if let Ok(entries) = std::fs::read_dir(&source.path) {
            files.extend(
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension()
                            .is_some_and(|x| x.eq_ignore_ascii_case("json"))
                    }),
            );
        }
    } else {
        files.push(source.path.clone());
        if let Some(dir) = source.path.parent() {
            if let Ok(entries) = std::fs::read_dir(dir) {
                files.extend(
                    entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.path())
                        .filter(|p| {
                            p.file_name().is_some_and(|n| {
                                let n = n.to_string_lossy().to_ascii_lowercase();
                                n.starts_with("ocelot.") && n.ends_with(".json")
                            })
                        }),
                );
            }
        }
    }
    hash_files(files)
}

/// A hash of what `files` look like on disk: resolved path, size, modification time.
pub(crate) fn hash_files(mut files: Vec<PathBuf>) -> u64 {
    let mut hasher = DefaultHasher::new();
    files.sort();
    for file in files {
        file.hash(&mut hasher);
        std::fs::canonicalize(&file).ok().hash(&mut hasher);
        if let Ok(meta) = std::fs::metadata(&file) {
            meta.len().hash(&mut hasher);
            meta.modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .hash(&mut hasher);
        }
    }
    hasher.finish()
}

/// Watches the configuration's folder (inotify through `notify`) and reloads
/// when the files really changed; a slow poll backs the watch up for
/// filesystems that send no events.
pub struct ConfigWatcher {
    pub reloader: Arc<Reloader>,
    pub poll: Duration,
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let source = &self.reloader.source;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
        let watch_dir = if source.path.is_dir() {
            source.path.clone()
        } else {
            source
                .path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        };
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                // A full channel already holds a pending wake-up: dropping is fine.
                let _ = tx.try_send(());
            }
        })
        .and_then(|mut w| w.watch(&watch_dir, RecursiveMode::NonRecursive).map(|()| w));
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!(
                    "cannot watch {}: {e}; polling every {:?}",
                    watch_dir.display(),
                    self.poll
                );
                None
            }
        };
        let mut seen = fingerprint(source);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = rx.recv() => {
                    // Editors and ConfigMap updates touch several files; let them settle.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(self.poll) => {}
            }
            let now = fingerprint(source);
            if now != seen {
                seen = now;
                log::info!("{} changed; reloading", source.path.display());
                let _ = self.reloader.reload_from_disk().await;
            }
        }
    }
}
