//! Client-facing TLS certificates that follow their files while serving.
//!
//! Certificates are short-lived where this gateway runs (cert-manager renews
//! a Secret every few weeks and Kubernetes swaps the mounted files in place),
//! so each `tls_listen` entry hands its certificate to every handshake from a
//! swappable slot instead of baking it into the TLS context. The files are
//! re-read every `config_poll_seconds` and on SIGHUP; a new pair is taken only
//! when it parses and the key belongs to the certificate, otherwise the
//! running one keeps serving and the error is logged once per content.

use crate::metrics::METRICS;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use pingora_core::listeners::{TlsAccept, TlsAcceptCallbacks};
use pingora_core::protocols::tls::TlsRef;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::tls::ext;
use pingora_core::tls::pkey::{PKey, Private};
use pingora_core::tls::x509::X509;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One certificate chain and its key, as read from the files.
struct CertifiedKey {
    leaf: X509,
    intermediates: Vec<X509>,
    key: PKey<Private>,
    /// Of both files' bytes: tells a real change from a rewrite of the same.
    content: u64,
}

/// The certificate one TLS listener serves, and where it comes from.
pub struct ListenerCertificate {
    addr: String,
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// Content of the last pair that was refused, so that a broken file is
    /// reported once rather than at every poll.
    refused: Mutex<Option<Option<u64>>>,
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn content_hash(cert_pem: &[u8], key_pem: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    cert_pem.hash(&mut hasher);
    key_pem.hash(&mut hasher);
    hasher.finish()
}

fn parse(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
    content: u64,
) -> Result<CertifiedKey, String> {
    let mut chain = X509::stack_from_pem(cert_pem)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?
        .into_iter();
    let leaf = chain
        .next()
        .ok_or_else(|| format!("{}: no PEM certificate in it", cert_path.display()))?;
    let key = PKey::private_key_from_pem(key_pem)
        .map_err(|e| format!("{}: no PEM private key in it: {e}", key_path.display()))?;
    let public = leaf
        .public_key()
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    // A mismatched pair would fail every handshake; it usually means the
    // files were caught between two writes.
    if !public.public_eq(&key) {
        return Err(format!(
            "{} is not the key of the certificate in {}",
            key_path.display(),
            cert_path.display()
        ));
    }
    Ok(CertifiedKey {
        leaf,
        intermediates: chain.collect(),
        key,
        content,
    })
}

fn seconds_since_epoch(time: &Asn1TimeRef) -> Option<i64> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(time).ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

impl ListenerCertificate {
    /// Reads the listener's files; errors name the listener and the file.
    pub(crate) fn load(addr: &str, cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, String> {
        let in_listener = |e: String| format!("tls_listen {addr}: {e}");
        let cert_pem = read_file(cert_path).map_err(in_listener)?;
        let key_pem = read_file(key_path).map_err(in_listener)?;
        let content = content_hash(&cert_pem, &key_pem);
        let loaded =
            parse(cert_path, key_path, &cert_pem, &key_pem, content).map_err(in_listener)?;
        let listener = ListenerCertificate {
            addr: addr.to_string(),
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: ArcSwap::from_pointee(loaded),
            refused: Mutex::new(None),
        };
        listener.export_expiry();
        // Both outcomes from the start, so that the first refusal is an
        // increase an alert can see rather than a new series.
        for result in ["success", "failure"] {
            METRICS
                .certificate_reloads
                .with_label_values(&[addr, result]);
        }
        Ok(Arc::new(listener))
    }

    /// The handshake callbacks for Pingora's `TlsSettings::with_callbacks`.
    pub(crate) fn callbacks(self: &Arc<Self>) -> TlsAcceptCallbacks {
        Box::new(ServeCurrent(self.clone()))
    }

    /// Re-reads the files; a changed pair that loads is served from the next
    /// handshake on. A refused pair is logged and counted once, until its
    /// files change again.
    pub fn refresh(&self) {
        let outcome = self.changed_pair();
        let refused_now = outcome.as_ref().err().map(|(content, _)| *content);
        let refused_before = match self.refused.lock() {
            Ok(mut refused) => std::mem::replace(&mut *refused, refused_now),
            Err(_) => None,
        };
        match outcome {
            Ok(None) => {}
            Ok(Some(loaded)) => {
                // Counted before it is served, so whoever sees the new
                // certificate also sees the count.
                self.count("success");
                self.current.store(Arc::new(loaded));
                self.export_expiry();
                log::info!(
                    "tls_listen {}: serving the new certificate from {}",
                    self.addr,
                    self.cert_path.display()
                );
            }
            Err((content, e)) => {
                if refused_before != Some(content) {
                    self.count("failure");
                    log::error!(
                        "tls_listen {}: keeping the certificate it serves: {e}",
                        self.addr
                    );
                }
            }
        }
    }

    /// The files' pair when it is not the one served. A refusal comes with
    /// the content it refused (`None` when a file could not be read).
    fn changed_pair(&self) -> Result<Option<CertifiedKey>, (Option<u64>, String)> {
        let cert_pem = read_file(&self.cert_path).map_err(|e| (None, e))?;
        let key_pem = read_file(&self.key_path).map_err(|e| (None, e))?;
        let content = content_hash(&cert_pem, &key_pem);
        if content == self.current.load().content {
            return Ok(None);
        }
        parse(
            &self.cert_path,
            &self.key_path,
            &cert_pem,
            &key_pem,
            content,
        )
        .map(Some)
        .map_err(|e| (Some(content), e))
    }

    fn count(&self, result: &str) {
        METRICS
            .certificate_reloads
            .with_label_values(&[self.addr.as_str(), result])
            .inc();
    }

    fn export_expiry(&self) {
        if let Some(not_after) = seconds_since_epoch(self.current.load().leaf.not_after()) {
            METRICS
                .certificate_not_after
                .with_label_values(&[self.addr.as_str()])
                .set(not_after);
        }
    }
}

/// Hands the listener's current certificate to each handshake.
struct ServeCurrent(Arc<ListenerCertificate>);

#[async_trait]
impl TlsAccept for ServeCurrent {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let current = self.0.current.load();
        let installed = ext::ssl_use_certificate(ssl, &current.leaf)
            .and_then(|()| {
                current
                    .intermediates
                    .iter()
                    .try_for_each(|cert| ext::ssl_add_chain_cert(ssl, cert))
            })
            .and_then(|()| ext::ssl_use_private_key(ssl, &current.key));
        // Without a certificate the handshake fails on its own; say why.
        if let Err(e) = installed {
            log::error!(
                "tls_listen {}: cannot use its certificate: {e}",
                self.0.addr
            );
        }
    }
}

/// Polls every listener's files.
pub struct CertificateWatcher {
    pub listeners: Vec<Arc<ListenerCertificate>>,
    pub poll: Duration,
}

#[async_trait]
impl BackgroundService for CertificateWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.poll) => {}
            }
            for listener in &self.listeners {
                listener.refresh();
            }
        }
    }
}
