//! The registry a configuration names: Ocelot's global
//! `ServiceDiscoveryProvider` (its
//! `src/Configuration/Creator/ServiceProviderConfigurationCreator.cs`)
//! completed by the `discovery` settings, with the HTTP client and DNS
//! resolver its queries share.

use super::dns;
use super::settings::{Discovery, DiscoverySettings, Environment, MIN_INTERVAL};
use ocelot_compat::model::{FileGlobalConfiguration, FileServiceDiscoveryProvider};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which registry, as Ocelot names its provider types (matched ignoring case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ProviderKind {
    Consul,
    PollConsul,
    Kube,
    PollKube,
    WatchKube,
    Eureka,
    /// Beyond Ocelot: A/AAAA/SRV records.
    Dns,
    /// A type no provider here serves (`ServiceFabric`, a custom .NET provider):
    /// Ocelot's `UnableToFindServiceDiscoveryProviderError`, answered 404.
    Unsupported,
}

impl ProviderKind {
    fn parse(name: &str) -> ProviderKind {
        match name.to_ascii_lowercase().as_str() {
            "consul" => ProviderKind::Consul,
            "pollconsul" => ProviderKind::PollConsul,
            "kube" => ProviderKind::Kube,
            "pollkube" => ProviderKind::PollKube,
            "watchkube" => ProviderKind::WatchKube,
            "eureka" => ProviderKind::Eureka,
            "dns" => ProviderKind::Dns,
            _ => ProviderKind::Unsupported,
        }
    }
}

/// The global `ServiceDiscoveryProvider` with Ocelot's defaults applied
/// (`ServiceProviderConfigurationCreator`: scheme `http`, host `localhost`,
/// type `consul`), completed by the `discovery` settings. One per distinct
/// configuration, shared by every source made from it (and so its HTTP
/// client and DNS resolver).
pub(crate) struct Provider {
    pub(crate) kind: ProviderKind,
    /// The type as configured, for messages.
    pub(crate) type_name: String,
    pub(crate) scheme: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) token: Option<String>,
    /// `PollingInterval` (ms), when positive.
    pub(crate) polling_interval: Option<Duration>,
    /// `ServiceDiscoveryProvider.Namespace`, when not empty.
    pub(crate) namespace: Option<String>,
    pub(super) settings: DiscoverySettings,
    pub(super) env: Environment,
    pub(super) fingerprint: String,
    http: Mutex<Option<(u32, reqwest::Client)>>,
    dns: Mutex<Option<(u32, Arc<dns::Resolver>)>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("Provider")
            .field("type", &self.type_name)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish()
    }
}

impl Provider {
    /// The provider for `global` (shared with the previous snapshot when
    /// nothing changed).
    pub(crate) fn for_config(
        global: &FileGlobalConfiguration,
        discovery: &Discovery,
    ) -> Arc<Provider> {
        let provider = Provider::new(
            global.service_discovery_provider.as_ref(),
            &discovery.settings,
            &discovery.environment,
        );
        let Ok(mut last) = discovery.last.lock() else {
            return Arc::new(provider);
        };
        match last.as_ref() {
            Some(p) if p.fingerprint == provider.fingerprint => p.clone(),
            _ => {
                let provider = Arc::new(provider);
                *last = Some(provider.clone());
                provider
            }
        }
    }

    fn new(
        file: Option<&FileServiceDiscoveryProvider>,
        settings: &DiscoverySettings,
        env: &Environment,
    ) -> Provider {
        let text = |v: Option<&Option<String>>| {
            v.and_then(|s| s.as_deref())
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let type_name = settings
            .provider_type
            .clone()
            .filter(|t| !t.trim().is_empty())
            .or_else(|| text(file.map(|f| &f.r#type)))
            .unwrap_or_else(|| "Consul".to_string());
        let kind = ProviderKind::parse(type_name.trim());
        let scheme = text(file.map(|f| &f.scheme))
            .unwrap_or_else(|| "http".into())
            .to_ascii_lowercase();
        let host = file
            .and_then(|f| f.host.clone())
            .unwrap_or_else(|| "localhost".into());
        let port = file
            .and_then(|f| f.port)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0);
        let token = text(file.map(|f| &f.token));
        let polling_interval = file
            .and_then(|f| f.polling_interval)
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms as u64));
        let namespace = text(file.map(|f| &f.namespace));
        let mut hasher = DefaultHasher::new();
        (
            kind,
            &scheme,
            &host,
            port,
            &token,
            polling_interval,
            &namespace,
            env,
        )
            .hash(&mut hasher);
        let fingerprint = format!(
            "{type_name}|{scheme}://{host}:{port}|{:016x}|{settings:?}",
            hasher.finish()
        );
        Provider {
            kind,
            type_name,
            scheme,
            host,
            port,
            token,
            polling_interval,
            namespace,
            settings: settings.clone(),
            env: env.clone(),
            fingerprint,
            http: Mutex::new(None),
            dns: Mutex::new(None),
        }
    }

    /// Whether Ocelot would serve dynamic routes with it
    /// (`DownstreamRouteProviderFactory.IsServiceDiscovery`): a host, a
    /// port above 0 and a type.
    pub(crate) fn enables_dynamic_routing(file: Option<&FileServiceDiscoveryProvider>) -> bool {
        file.is_some_and(|f| f.host.as_deref() != Some("") && f.port.is_some_and(|p| p > 0))
    }

    /// How long a registry answer is used before asking again.
    pub(super) fn interval(&self) -> Duration {
        let configured = match self.kind {
            ProviderKind::PollConsul | ProviderKind::PollKube => self.polling_interval,
            _ => None,
        };
        configured
            .unwrap_or(Duration::from_millis(self.settings.poll_interval_ms))
            .max(MIN_INTERVAL)
    }

    pub(super) fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.request_timeout_ms.max(1))
    }

    /// The Kubernetes namespace of a route's service.
    pub(super) fn kube_namespace(&self, route_namespace: Option<&str>) -> String {
        route_namespace
            .map(str::to_string)
            .or_else(|| self.namespace.clone())
            .or_else(|| self.settings.kubernetes.namespace.clone())
            .or_else(|| self.env.pod_namespace.clone())
            .unwrap_or_else(|| "default".into())
    }

    /// The HTTP client for this provider's registry, made on first use on
    /// the discovery runtime (again after a fork: `-d` daemonizes after the
    /// first refresh, and a client's pooled connections die with the parent).
    pub(super) async fn http(&self) -> Result<reqwest::Client, String> {
        let pid = std::process::id();
        if let Ok(guard) = self.http.lock() {
            if let Some((owner, client)) = guard.as_ref() {
                if *owner == pid {
                    return Ok(client.clone());
                }
            }
        }
        crate::auth::install_crypto_providers();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(self.timeout())
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION")));
        let ca = match self.kind {
            ProviderKind::Kube | ProviderKind::PollKube | ProviderKind::WatchKube => {
                if self.settings.kubernetes.insecure_skip_tls_verify {
                    builder = builder.tls_danger_accept_invalid_certs(true);
                }
                self.settings
                    .kubernetes
                    .ca_file
                    .clone()
                    .or_else(|| self.env.sa_ca.clone())
            }
            ProviderKind::Consul | ProviderKind::PollConsul => self.settings.consul.ca_file.clone(),
            _ => None,
        };
        if let Some(ca) = ca {
            let pem = tokio::fs::read(&ca)
                .await
                .map_err(|e| format!("CA file {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("CA file {}: {e}", ca.display()))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the registry client: {e}"))?;
        if let Ok(mut guard) = self.http.lock() {
            *guard = Some((pid, client.clone()));
        }
        Ok(client)
    }

    pub(super) async fn resolver(&self) -> Result<Arc<dns::Resolver>, String> {
        let pid = std::process::id();
        if let Ok(guard) = self.dns.lock() {
            if let Some((owner, resolver)) = guard.as_ref() {
                if *owner == pid {
                    return Ok(resolver.clone());
                }
            }
        }
        let resolver = Arc::new(dns::Resolver::new(&self.settings.dns)?);
        if let Ok(mut guard) = self.dns.lock() {
            *guard = Some((pid, resolver.clone()));
        }
        Ok(resolver)
    }
}

/// Reads a response body of at most `limit` bytes (registries are trusted,
/// but a broken one must not exhaust memory).
pub(super) async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Largest registry answer read.
pub(super) const MAX_BODY: usize = 16 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use ocelot_compat::model::FileConfiguration;
    use serde_json::json;

    fn global(sd: serde_json::Value) -> FileConfiguration {
        ocelot_compat::model::from_value(
            &json!({"Routes": [], "GlobalConfiguration": {"ServiceDiscoveryProvider": sd}}),
        )
        .0
    }

    #[test]
    fn provider_defaults_follow_ocelot() {
        let c = global(json!({"Port": 8500}));
        let p = Provider::new(
            c.global.service_discovery_provider.as_ref(),
            &DiscoverySettings::default(),
            &Environment::default(),
        );
        assert_eq!(
            (p.kind, p.scheme.as_str(), p.host.as_str(), p.port),
            (ProviderKind::Consul, "http", "localhost", 8500)
        );
        let c = global(json!({"Type": "pollkube", "PollingInterval": 250, "Namespace": "dev"}));
        let p = Provider::new(
            c.global.service_discovery_provider.as_ref(),
            &DiscoverySettings::default(),
            &Environment::default(),
        );
        assert_eq!(p.kind, ProviderKind::PollKube);
        assert_eq!(p.interval(), Duration::from_millis(250));
        assert_eq!(p.kube_namespace(None), "dev");
        assert_eq!(p.kube_namespace(Some("other")), "other");
        let c = global(json!({"Type": "ServiceFabric"}));
        let p = Provider::new(
            c.global.service_discovery_provider.as_ref(),
            &DiscoverySettings::default(),
            &Environment::default(),
        );
        assert_eq!(p.kind, ProviderKind::Unsupported);
    }

    #[test]
    fn settings_type_overrides_the_file() {
        let settings = DiscoverySettings {
            provider_type: Some("Dns".into()),
            ..Default::default()
        };
        let c = global(json!({"Type": "Kube"}));
        let p = Provider::new(
            c.global.service_discovery_provider.as_ref(),
            &settings,
            &Environment::default(),
        );
        assert_eq!(p.kind, ProviderKind::Dns);
    }

    #[test]
    fn polling_interval_applies_to_poll_types_only() {
        let c = global(json!({"Type": "Consul", "PollingInterval": 5}));
        let p = Provider::new(
            c.global.service_discovery_provider.as_ref(),
            &DiscoverySettings::default(),
            &Environment::default(),
        );
        assert_eq!(p.interval(), Duration::from_millis(1000));
        let c = global(json!({"Type": "PollConsul", "PollingInterval": 5}));
        let p = Provider::new(
            c.global.service_discovery_provider.as_ref(),
            &DiscoverySettings::default(),
            &Environment::default(),
        );
        assert_eq!(p.interval(), MIN_INTERVAL);
    }

    #[test]
    fn dynamic_routing_needs_a_host_and_a_port() {
        let sd = |v: serde_json::Value| global(v).global.service_discovery_provider;
        assert!(Provider::enables_dynamic_routing(
            sd(json!({"Port": 8500})).as_ref()
        ));
        assert!(!Provider::enables_dynamic_routing(
            sd(json!({"Type": "Kube"})).as_ref()
        ));
        assert!(!Provider::enables_dynamic_routing(
            sd(json!({"Host": "", "Port": 1})).as_ref()
        ));
        assert!(!Provider::enables_dynamic_routing(None));
    }
}
