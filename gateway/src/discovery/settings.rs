//! The `discovery` section of the gateway settings, installed once for the
//! process ([`install`]) with the in-cluster defaults found at start-up, so
//! no refresh reads the environment or the file system for them.

use super::dns;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `discovery` section of the gateway settings: what `ocelot.json`
/// cannot say about registries (where the Kubernetes API is, DNS servers,
/// token files), and the refresh schedule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverySettings {
    /// Provider used instead of `ServiceDiscoveryProvider.Type` (e.g. `Dns`,
    /// so one `ocelot.json` serves Ocelot with Consul and the gateway with DNS).
    #[serde(rename = "type")]
    pub(crate) provider_type: Option<String>,
    /// How often a registry is asked when `ocelot.json` gives no
    /// `PollingInterval` (Ocelot asks `Consul` and `Kube` on every request).
    pub(crate) poll_interval_ms: u64,
    /// Longest a registry query may take.
    pub(crate) request_timeout_ms: u64,
    /// Services dynamic routing keeps routes for (memory bound).
    pub(crate) max_dynamic_services: usize,
    pub(crate) kubernetes: KubeSettings,
    pub(crate) consul: ConsulSettings,
    pub(crate) eureka: EurekaSettings,
    pub(crate) dns: DnsSettings,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            provider_type: None,
            poll_interval_ms: 1000,
            request_timeout_ms: 5000,
            max_dynamic_services: 1024,
            kubernetes: KubeSettings::default(),
            consul: ConsulSettings::default(),
            eureka: EurekaSettings::default(),
            dns: DnsSettings::default(),
        }
    }
}

/// `discovery.kubernetes`: the API server and credentials. In a pod the
/// defaults are the in-cluster ones (`KUBERNETES_SERVICE_HOST`/`_PORT`, the
/// service-account token, CA and namespace).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KubeSettings {
    /// API server URL (default: in-cluster, else `ServiceDiscoveryProvider`'s
    /// `Scheme://Host:Port`).
    pub(crate) api_server: Option<String>,
    /// Bearer token file, re-read as the kubelet rotates it (default: the
    /// service-account token, else `ServiceDiscoveryProvider.Token`).
    pub(crate) token_file: Option<PathBuf>,
    /// CA bundle (PEM) for the API server (default: the service-account `ca.crt`).
    pub(crate) ca_file: Option<PathBuf>,
    /// Namespace when neither the route's `ServiceNamespace` nor
    /// `ServiceDiscoveryProvider.Namespace` names one (default: the pod's, else `default`).
    pub(crate) namespace: Option<String>,
    /// Accept any API server certificate (development only).
    pub(crate) insecure_skip_tls_verify: bool,
    /// Read `discovery.k8s.io/v1` EndpointSlices instead of v1 Endpoints
    /// (which Kubernetes 1.33 deprecates; Ocelot reads Endpoints).
    pub(crate) endpoint_slices: bool,
}

/// `discovery.consul`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ConsulSettings {
    /// Send requests to the service's `Address` rather than its node's name.
    /// Ocelot uses the node name (its `DefaultConsulServiceBuilder`); many
    /// deployments override that to the address, which this does without code.
    pub(crate) use_service_address: bool,
    /// ACL token file, read at each query (wins over `ServiceDiscoveryProvider.Token`).
    pub(crate) token_file: Option<PathBuf>,
    /// CA bundle (PEM) for an `https` Consul.
    pub(crate) ca_file: Option<PathBuf>,
}

/// `discovery.eureka`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EurekaSettings {
    /// The Eureka server's base URL (Steeltoe's `eureka:client:serviceUrl`).
    pub(crate) service_url: String,
}

impl Default for EurekaSettings {
    fn default() -> Self {
        EurekaSettings {
            service_url: "http://localhost:8761/eureka/".to_string(),
        }
    }
}

/// Which DNS records describe a service.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DnsRecords {
    /// A and AAAA: every address is an instance, on the route's port.
    #[default]
    A,
    /// SRV: targets and ports (e.g. `_http._tcp.orders.default.svc.cluster.local`).
    Srv,
}

/// `discovery.dns`: a headless Kubernetes Service (or any name with one
/// record per instance), resolved asynchronously; records are asked again
/// when their TTL ends.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    pub(crate) records: DnsRecords,
    /// The name asked for: `{service}`, `{namespace}` and `{scheme}` (the
    /// route's `DownstreamScheme`, a Kubernetes port name) are replaced.
    /// Default: `{service}.{namespace}.svc.cluster.local` for A records,
    /// `_{scheme}._tcp.{service}.{namespace}.svc.cluster.local` for SRV.
    pub(crate) name: Option<String>,
    /// Port for A/AAAA instances when the route's `DownstreamHostAndPorts`
    /// gives none (default: 80, or 443 for `https`).
    pub(crate) port: Option<u16>,
    /// Name servers (`ip` or `ip:port`); default: `/etc/resolv.conf`.
    pub(crate) nameservers: Vec<String>,
    /// Bounds on how soon records are asked again, whatever their TTL says.
    pub(crate) min_ttl_seconds: u64,
    pub(crate) max_ttl_seconds: u64,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            records: DnsRecords::A,
            name: None,
            port: None,
            nameservers: Vec::new(),
            min_ttl_seconds: 1,
            max_ttl_seconds: 300,
        }
    }
}

impl DiscoverySettings {
    /// Makes relative file names relative to the settings file's folder.
    pub(crate) fn resolve_paths(&mut self, dir: &Path) {
        for p in [
            &mut self.kubernetes.token_file,
            &mut self.kubernetes.ca_file,
            &mut self.consul.token_file,
            &mut self.consul.ca_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }

    /// Errors in values serde cannot check.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.kubernetes.api_server {
            reqwest::Url::parse(url)
                .map_err(|e| format!("discovery.kubernetes.api_server {url:?}: {e}"))?;
        }
        reqwest::Url::parse(&self.eureka.service_url).map_err(|e| {
            format!(
                "discovery.eureka.service_url {:?}: {e}",
                self.eureka.service_url
            )
        })?;
        for server in &self.dns.nameservers {
            dns::parse_nameserver(server).map_err(|e| format!("discovery.dns.nameservers: {e}"))?;
        }
        if self.dns.min_ttl_seconds > self.dns.max_ttl_seconds {
            return Err("discovery.dns: min_ttl_seconds is above max_ttl_seconds".into());
        }
        Ok(())
    }
}

/// Where the in-cluster defaults come from; read once at start-up so no
/// request or refresh touches the file system for them.
#[derive(Debug, Clone, Default, PartialEq, Hash)]
pub(super) struct Environment {
    /// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub(super) in_cluster_api: Option<String>,
    pub(super) sa_token: Option<PathBuf>,
    pub(super) sa_ca: Option<PathBuf>,
    pub(super) pod_namespace: Option<String>,
}

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl Environment {
    fn detect() -> Environment {
        let in_cluster_api = std::env::var("KUBERNETES_SERVICE_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .map(|host| {
                let port = std::env::var("KUBERNETES_SERVICE_PORT")
                    .ok()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "443".into());
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("https://{host}:{port}")
            });
        let dir = Path::new(SERVICE_ACCOUNT);
        let existing = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        Environment {
            in_cluster_api,
            sa_token: existing("token"),
            sa_ca: existing("ca.crt"),
            pod_namespace: std::fs::read_to_string(dir.join("namespace"))
                .ok()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty()),
        }
    }
}

/// Service discovery as the settings configure it, with the in-cluster
/// defaults found at start-up: what every snapshot's routes take their
/// provider from (`snapshot::Env` holds it).
pub struct Discovery {
    pub(super) settings: DiscoverySettings,
    pub(super) environment: Environment,
    /// The provider of the last snapshot, shared with the next one when
    /// nothing about it changed (its registry state carries over).
    pub(super) last: Mutex<Option<Arc<super::Provider>>>,
}

impl Discovery {
    /// Checks the settings and looks for in-cluster defaults.
    pub fn from_settings(settings: &DiscoverySettings) -> Result<Discovery, String> {
        settings.validate()?;
        Ok(Discovery {
            settings: settings.clone(),
            environment: Environment::detect(),
            last: Mutex::new(None),
        })
    }

    /// What dynamic routing may keep: at most this many services, and how
    /// long a service without instances is remembered as such (one polling
    /// interval).
    pub(crate) fn dynamic_route_limits(&self) -> (usize, Duration) {
        (
            self.settings.max_dynamic_services.max(1),
            Duration::from_millis(self.settings.poll_interval_ms).max(MIN_INTERVAL),
        )
    }
}

/// The shortest interval between two queries of a registry: a
/// `PollingInterval` of 1 ms would otherwise ask it a thousand times a second.
pub(super) const MIN_INTERVAL: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_reject_typos() {
        let s: DiscoverySettings = serde_yaml::from_str(
            "type: Dns\npoll_interval_ms: 200\nkubernetes: {api_server: 'https://127.0.0.1:6443', endpoint_slices: true}\ndns: {records: srv, nameservers: ['127.0.0.1:5353']}\n",
        )
        .expect("yaml");
        assert_eq!(s.provider_type.as_deref(), Some("Dns"));
        assert_eq!(s.dns.records, DnsRecords::Srv);
        assert!(s.kubernetes.endpoint_slices);
        s.validate().expect("valid");
        assert!(serde_yaml::from_str::<DiscoverySettings>("kubernets: {}\n").is_err());
        let bad = DiscoverySettings {
            dns: DnsSettings {
                nameservers: vec!["not an address".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
