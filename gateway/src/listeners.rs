//! The proxy's client-facing listeners beyond plain HTTP/1: TLS (with
//! certificates that reload) and h2c; and the client limits
//! (`client_limits.rs`) every proxy service holds its clients to.

use crate::certificates::ListenerCertificate;
use crate::protocols::TlsListenSettings;
use crate::proxy::Gateway;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::http::downstream_limits::DownstreamLimits;
use pingora_core::services::listening::Service;
use pingora_proxy::HttpProxy;
use std::sync::Arc;

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
