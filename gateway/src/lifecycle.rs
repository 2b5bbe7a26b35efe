//! Process lifecycle: readiness, signals, draining.
//!
//! Pingora stops accepting the moment it sees SIGTERM. Behind a Kubernetes
//! Service that loses requests: the endpoint is still listed for a few seconds.
//! So the gateway takes the signals itself: on SIGTERM it fails `/readyz`, keeps
//! serving for `drain_seconds` (answering with `Connection: close` so clients
//! move to other replicas), and only then hands Pingora its graceful
//! terminate; in-flight requests then get `grace_period_seconds` to finish.
//! SIGQUIT is Pingora's graceful upgrade (`gateway -u`), SIGINT a fast exit,
//! SIGHUP a configuration reload.

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Whether this process should receive new traffic.
#[derive(Default)]
pub struct Readiness {
    serving: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Ready: serving and not shutting down.
    pub(crate) fn is_ready(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Shutting down or handing over to a new process: responses should close
    /// their connections so clients reconnect elsewhere.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// While draining, tells a keep-alive client to reconnect (to another
    /// replica or the new process) instead of having the connection closed
    /// under its next request.
    pub(crate) fn close_when_draining(
        &self,
        session: &mut pingora_proxy::Session,
        response: &mut pingora_http::ResponseHeader,
    ) -> pingora_error::Result<()> {
        if self.is_draining() {
            session.set_keepalive(None);
            response.insert_header(http::header::CONNECTION, "close")?;
        }
        Ok(())
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
    }
}

/// Marks the process ready once Pingora runs its services, and draining as
/// soon as Pingora broadcasts shutdown (whatever triggered it).
pub struct ReadinessService {
    pub readiness: Arc<Readiness>,
}

#[async_trait]
impl BackgroundService for ReadinessService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.readiness.set_serving(true);
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        self.readiness.start_draining();
    }
}

/// Something to run on SIGHUP (a configuration reload).
pub type ReloadHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Pingora's shutdown trigger, with the drain period in front of SIGTERM.
pub struct Signals {
    pub readiness: Arc<Readiness>,
    pub drain: Duration,
    pub on_reload: Option<ReloadHook>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut quit), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            log::error!("cannot install signal handlers; the gateway will only stop when killed");
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    log::info!("SIGTERM: not ready any more; serving for {:?} more before closing the listeners", self.drain);
                    self.readiness.start_draining();
                    tokio::select! {
                        _ = tokio::time::sleep(self.drain) => {}
                        _ = int.recv() => return ShutdownSignal::FastShutdown,
                    }
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = quit.recv() => {
                    log::info!("SIGQUIT: handing the listeners to the new process");
                    self.readiness.start_draining();
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                _ = hup.recv() => {
                    log::info!("SIGHUP: reloading the configuration");
                    if let Some(reload) = &self.on_reload {
                        reload().await;
                    }
                }
            }
        }
    }
}
