//! Service discovery: Ocelot's global `ServiceDiscoveryProvider` and route
//! `ServiceName` (spec §1.3, §1.5, §7.4), plus dynamic routing (§7.8, in
//! [`dynamic`]).
//!
//! A route with a `ServiceName` gets a [`Pool`](crate::balancing::Pool) whose
//! `pingora-load-balancing` `ServiceDiscovery` is a [`PoolDiscovery`]: it
//! reads the instance list of a shared [`Source`], one per provider and
//! service, which asks the registry (Kubernetes, Consul, Eureka or DNS) in the
//! background. Routes naming the same service share one source, so a registry
//! is asked once per interval however many routes use it.
//!
//! Ocelot's `Consul` and `Kube` providers ask the registry on every request;
//! here every provider is asked on a schedule instead (`PollingInterval` for
//! `PollConsul`/`PollKube`, the `discovery.poll_interval_ms` setting
//! otherwise, the record TTL for DNS) and `WatchKube` follows a Kubernetes
//! watch stream, so no request waits for a registry. A failed query keeps the
//! last good list (Pingora's `Backends::update` keeps its set on `Err`), so an
//! unreachable registry never empties a pool that was working; an empty answer
//! does empty it, and the route then answers 404 as Ocelot's `ServicesAreEmpty`.

pub mod consul;
pub mod dns;
pub mod eureka;
pub mod kube;

use crate::balancing::{BackendMeta, DiscoveredService, Pool};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use ocelot_compat::model::{
    FileConfiguration, FileGlobalConfiguration, FileRoute, FileServiceDiscoveryProvider,
};
use once_cell::sync::Lazy;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::Backend;
use serde::Deserialize;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The `discovery` section of the gateway settings: what `ocelot.json`
/// cannot say about registries (where the Kubernetes API is, DNS servers,
/// token files), and the refresh schedule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverySettings {
    /// Provider used instead of `ServiceDiscoveryProvider.Type` (e.g. `Dns`,
    /// so one `ocelot.json` serves Ocelot with Consul and the gateway with DNS).
    #[serde(rename = "type")]
    pub provider_type: Option<String>,
    /// How often a registry is asked when `ocelot.json` gives no
    /// `PollingInterval` (Ocelot asks `Consul` and `Kube` on every request).
    pub poll_interval_ms: u64,
    /// Longest a registry query may take.
    pub request_timeout_ms: u64,
    /// Services dynamic routing keeps routes for (memory bound).
    pub max_dynamic_services: usize,
    pub kubernetes: KubeSettings,
    pub consul: ConsulSettings,
    pub eureka: EurekaSettings,
    pub dns: DnsSettings,
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
    pub api_server: Option<String>,
    /// Bearer token file, re-read as the kubelet rotates it (default: the
    /// service-account token, else `ServiceDiscoveryProvider.Token`).
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) for the API server (default: the service-account `ca.crt`).
    pub ca_file: Option<PathBuf>,
    /// Namespace when neither the route's `ServiceNamespace` nor
    /// `ServiceDiscoveryProvider.Namespace` names one (default: the pod's, else `default`).
    pub namespace: Option<String>,
    /// Accept any API server certificate (development only).
    pub insecure_skip_tls_verify: bool,
    /// Read `discovery.k8s.io/v1` EndpointSlices instead of v1 Endpoints
    /// (which Kubernetes 1.33 deprecates; Ocelot reads Endpoints).
    pub endpoint_slices: bool,
}

/// `discovery.consul`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ConsulSettings {
    /// Send requests to the service's `Address` rather than its node's name.
    /// Ocelot uses the node name (its `DefaultConsulServiceBuilder`); many
    /// deployments override that to the address, which this does without code.
    pub use_service_address: bool,
    /// ACL token file, read at each query (wins over `ServiceDiscoveryProvider.Token`).
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) for an `https` Consul.
    pub ca_file: Option<PathBuf>,
}

/// `discovery.eureka`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EurekaSettings {
    /// The Eureka server's base URL (Steeltoe's `eureka:client:serviceUrl`).
    pub service_url: String,
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
    pub records: DnsRecords,
    /// The name asked for: `{service}`, `{namespace}` and `{scheme}` (the
    /// route's `DownstreamScheme`, a Kubernetes port name) are replaced.
    /// Default: `{service}.{namespace}.svc.cluster.local` for A records,
    /// `_{scheme}._tcp.{service}.{namespace}.svc.cluster.local` for SRV.
    pub name: Option<String>,
    /// Port for A/AAAA instances when the route's `DownstreamHostAndPorts`
    /// gives none (default: 80, or 443 for `https`).
    pub port: Option<u16>,
    /// Name servers (`ip` or `ip:port`); default: `/etc/resolv.conf`.
    pub nameservers: Vec<String>,
    /// Bounds on how soon records are asked again, whatever their TTL says.
    pub min_ttl_seconds: u64,
    pub max_ttl_seconds: u64,
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
    pub fn resolve_paths(&mut self, dir: &Path) {
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
    pub fn validate(&self) -> Result<(), String> {
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
struct Environment {
    /// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    in_cluster_api: Option<String>,
    sa_token: Option<PathBuf>,
    sa_ca: Option<PathBuf>,
    pod_namespace: Option<String>,
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

static SETTINGS: Lazy<ArcSwap<(DiscoverySettings, Environment)>> =
    Lazy::new(|| ArcSwap::from_pointee((DiscoverySettings::default(), Environment::default())));

/// Installs the settings for the process (before the first snapshot is
/// built), with the in-cluster defaults found now.
pub fn install(settings: &DiscoverySettings) -> Result<(), String> {
    settings.validate()?;
    SETTINGS.store(Arc::new((settings.clone(), Environment::detect())));
    Ok(())
}

/// What dynamic routing may keep: at most this many services, and how long
/// a service without instances is remembered as such (one polling interval).
pub fn dynamic_route_limits() -> (usize, Duration) {
    let settings = SETTINGS.load();
    (
        settings.0.max_dynamic_services.max(1),
        Duration::from_millis(settings.0.poll_interval_ms).max(MIN_INTERVAL),
    )
}

/// Which registry, as Ocelot names its provider types (matched ignoring case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
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
pub struct Provider {
    pub kind: ProviderKind,
    /// The type as configured, for messages.
    pub type_name: String,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub token: Option<String>,
    /// `PollingInterval` (ms), when positive.
    pub polling_interval: Option<Duration>,
    /// `ServiceDiscoveryProvider.Namespace`, when not empty.
    pub namespace: Option<String>,
    settings: DiscoverySettings,
    env: Environment,
    fingerprint: String,
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

/// Seconds no registry interval goes below: a `PollingInterval` of 1 ms
/// would otherwise ask the registry a thousand times a second.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

impl Provider {
    /// The provider for `global` (shared with the previous snapshot when
    /// nothing changed).
    pub fn for_config(global: &FileGlobalConfiguration) -> Arc<Provider> {
        static LAST: Mutex<Option<Arc<Provider>>> = Mutex::new(None);
        let current = SETTINGS.load_full();
        let (settings, env) = (&current.0, &current.1);
        let provider = Provider::new(global.service_discovery_provider.as_ref(), settings, env);
        let Ok(mut last) = LAST.lock() else {
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
    pub fn enables_dynamic_routing(file: Option<&FileServiceDiscoveryProvider>) -> bool {
        file.is_some_and(|f| f.host.as_deref() != Some("") && f.port.is_some_and(|p| p > 0))
    }

    /// How long a registry answer is used before asking again.
    fn interval(&self) -> Duration {
        let configured = match self.kind {
            ProviderKind::PollConsul | ProviderKind::PollKube => self.polling_interval,
            _ => None,
        };
        configured
            .unwrap_or(Duration::from_millis(self.settings.poll_interval_ms))
            .max(MIN_INTERVAL)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.request_timeout_ms.max(1))
    }

    /// The Kubernetes namespace of a route's service.
    fn kube_namespace(&self, route_namespace: Option<&str>) -> String {
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
    async fn http(&self) -> Result<reqwest::Client, String> {
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

    async fn resolver(&self) -> Result<Arc<dns::Resolver>, String> {
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

/// One service of one provider: what a route's pool is fed from.
#[derive(Debug, Clone)]
pub struct ServiceRef {
    provider: Arc<Provider>,
    pub service: String,
    /// The route's `ServiceNamespace`, when not empty.
    pub namespace: Option<String>,
    /// The route's `DownstreamScheme`: Ocelot's Kubernetes provider picks the
    /// port named so, and DNS SRV names use it.
    scheme: String,
    /// A port from the route's `DownstreamHostAndPorts`, for DNS A records.
    port: Option<u16>,
}

impl ServiceRef {
    /// The service a route asks for, or `None` when it has no `ServiceName`.
    pub fn for_route(route: &FileRoute, config: &FileConfiguration) -> Option<ServiceRef> {
        let service = route
            .service_name
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())?;
        Some(ServiceRef {
            provider: Provider::for_config(&config.global),
            service: service.to_string(),
            namespace: route
                .service_namespace
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            scheme: route
                .downstream_scheme
                .as_deref()
                .map(str::trim)
                .unwrap_or("")
                .to_ascii_lowercase(),
            port: route
                .downstream_host_and_ports
                .iter()
                .find_map(|hp| u16::try_from(hp.port).ok().filter(|p| *p > 0)),
        })
    }

    /// Identifies the provider and service, for the pool key (an unchanged key
    /// keeps the pool across reloads) and for sharing sources.
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{:?}",
            self.provider.fingerprint,
            self.namespace.as_deref().unwrap_or(""),
            self.service,
            self.scheme,
            self.port
        )
    }

    /// Why routes of this service will find nothing, if they will not.
    pub fn warning(&self) -> Option<String> {
        (self.provider.kind == ProviderKind::Unsupported).then(|| {
            format!(
                "no service discovery provider of type '{}' (supported: Consul, PollConsul, Kube, PollKube, WatchKube, Eureka, Dns); requests get 404",
                self.provider.type_name
            )
        })
    }

    /// The discovery for a new pool of this service, sharing the service's
    /// source with every other pool of it.
    pub fn discovery(&self) -> Arc<PoolDiscovery> {
        Arc::new(PoolDiscovery {
            source: Source::shared(self),
            seen: AtomicU64::new(0),
        })
    }

    fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} service {ns}.{}", self.provider.type_name, self.service),
            None => format!("{} service {}", self.provider.type_name, self.service),
        }
    }
}

/// One instance as a registry lists it: a host (name or address) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// The address, when the registry gave one besides a name (DNS).
    pub addr: Option<IpAddr>,
}

/// A registry's answer.
#[derive(Debug, Default)]
pub struct Fetched {
    pub endpoints: Vec<Endpoint>,
    /// How long the answer holds (DNS TTL); `None`: the provider's interval.
    pub valid_for: Option<Duration>,
}

/// An instance ready for the balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub addr: SocketAddr,
    pub host: String,
    pub port: u16,
}

#[derive(Default)]
struct SourceState {
    /// The last good list; `None` until a query succeeded once.
    instances: Option<Arc<[Instance]>>,
    /// Bumped whenever `instances` changes, so pools know to rebuild.
    generation: u64,
    next_fetch: Option<Instant>,
    /// The last query failed (logged once per outage).
    failing: bool,
}

/// The instance list of one service, shared by the pools of every route that
/// names it, and refreshed by whichever of them finds it due.
pub struct Source {
    service: ServiceRef,
    name: String,
    state: Mutex<SourceState>,
    /// Serialises queries: pools due at once ask the registry once.
    fetching: tokio::sync::Mutex<()>,
    /// The `WatchKube` stream, while it runs.
    watch: Mutex<Option<WatchHandle>>,
}

struct WatchHandle {
    abort: tokio::task::AbortHandle,
    alive: Arc<AtomicBool>,
    pid: u32,
}

impl WatchHandle {
    fn running(&self) -> bool {
        self.alive.load(Ordering::Acquire) && self.pid == std::process::id()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Ok(mut watch) = self.watch.lock() {
            if let Some(handle) = watch.take() {
                handle.abort.abort();
            }
        }
    }
}

/// Sources by [`ServiceRef::key`], weakly: a source lives as long as a pool uses it.
static SOURCES: Lazy<Mutex<HashMap<String, Weak<Source>>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));

/// Wakes the [`DiscoveryRefresher`] when a watch brought news.
static CHANGED: Notify = Notify::const_new();

impl Source {
    fn shared(service: &ServiceRef) -> Arc<Source> {
        let key = service.key();
        let make = || {
            Arc::new(Source {
                service: service.clone(),
                name: service.describe(),
                state: Mutex::new(SourceState::default()),
                fetching: tokio::sync::Mutex::new(()),
                watch: Mutex::new(None),
            })
        };
        let Ok(mut sources) = SOURCES.lock() else {
            return make();
        };
        if let Some(existing) = sources.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        sources.retain(|_, weak| weak.strong_count() > 0);
        let source = make();
        sources.insert(key, Arc::downgrade(&source));
        source
    }

    fn generation(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.generation)
    }

    fn watching(&self) -> bool {
        self.watch
            .lock()
            .is_ok_and(|w| w.as_ref().is_some_and(WatchHandle::running))
    }

    /// Whether the registry should be asked now.
    fn due(&self, now: Instant) -> bool {
        if self.service.provider.kind == ProviderKind::WatchKube {
            return !self.watching();
        }
        self.state
            .lock()
            .map_or(true, |s| s.next_fetch.is_none_or(|t| now >= t))
    }

    fn next_due(&self) -> Option<Instant> {
        if self.service.provider.kind == ProviderKind::WatchKube && self.watching() {
            return None;
        }
        self.state.lock().ok().and_then(|s| s.next_fetch)
    }

    /// The current list and its generation, asking the registry first when
    /// that is due (or starting the watch). `None`: never got a good answer.
    async fn instances(self: &Arc<Self>) -> (Option<Arc<[Instance]>>, u64) {
        if self.due(Instant::now()) {
            let _serial = self.fetching.lock().await;
            // Another pool may have asked while this one waited.
            if self.due(Instant::now()) {
                if self.service.provider.kind == ProviderKind::WatchKube {
                    self.start_watch().await;
                } else {
                    let result = Source::fetch(self.service.clone()).await;
                    self.apply(result, Instant::now()).await;
                }
            }
        }
        match self.state.lock() {
            Ok(s) => (s.instances.clone(), s.generation),
            Err(_) => (None, 0),
        }
    }

    /// One query, run on the discovery runtime.
    async fn fetch(service: ServiceRef) -> Result<Fetched, String> {
        on_discovery_runtime(async move {
            let provider = service.provider.clone();
            let query = async {
                match provider.kind {
                    ProviderKind::Consul | ProviderKind::PollConsul => {
                        consul::fetch(&provider, &service).await
                    }
                    ProviderKind::Kube | ProviderKind::PollKube | ProviderKind::WatchKube => {
                        kube::fetch(&provider, &service).await
                    }
                    ProviderKind::Eureka => eureka::fetch(&provider, &service).await,
                    ProviderKind::Dns => dns::fetch(&provider, &service).await,
                    ProviderKind::Unsupported => Ok(Fetched::default()),
                }
            };
            // DNS has its own timeouts; the HTTP registries get one overall bound.
            match tokio::time::timeout(provider.timeout() + Duration::from_secs(1), query).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {:?}", provider.timeout())),
            }
        })
        .await
    }

    /// Records a query's outcome: a new list on success (its names resolved),
    /// the last good list kept on failure.
    async fn apply(&self, result: Result<Fetched, String>, now: Instant) {
        let interval = self.service.provider.interval();
        match result {
            Ok(fetched) => {
                let instances = resolve(fetched.endpoints).await;
                let settings = &self.service.provider.settings.dns;
                let valid_for = fetched.valid_for.map(|ttl| {
                    ttl.clamp(
                        Duration::from_secs(settings.min_ttl_seconds),
                        Duration::from_secs(settings.max_ttl_seconds.max(1)),
                    )
                });
                self.store(
                    instances,
                    Some(now + valid_for.unwrap_or(interval).max(MIN_INTERVAL)),
                );
            }
            Err(e) => {
                let Ok(mut state) = self.state.lock() else {
                    return;
                };
                if !state.failing {
                    match &state.instances {
                        Some(last) => log::warn!(
                            "{}: {e}; keeping its last {} instance(s)",
                            self.name,
                            last.len()
                        ),
                        None => log::warn!("{}: {e}; no instances known yet", self.name),
                    }
                } else {
                    log::debug!("{}: {e}", self.name);
                }
                state.failing = true;
                state.next_fetch = Some(now + interval);
            }
        }
    }

    /// A new good list (and when to ask again; `None` for a watch).
    fn store(&self, instances: Vec<Instance>, next_fetch: Option<Instant>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.failing {
            log::info!(
                "{}: registry answers again ({} instance(s))",
                self.name,
                instances.len()
            );
        }
        state.failing = false;
        state.next_fetch = next_fetch;
        if state.instances.as_deref() != Some(instances.as_slice()) {
            log::info!(
                "{}: {} instance(s){}",
                self.name,
                instances.len(),
                if instances.is_empty() {
                    String::new()
                } else {
                    format!(": {}", summary(&instances))
                }
            );
            state.instances = Some(instances.into());
            state.generation += 1;
            drop(state);
            CHANGED.notify_one();
        }
    }

    /// Starts the `WatchKube` stream (after the first list, so a pool is
    /// filled before the stream runs), unless one runs.
    async fn start_watch(self: &Arc<Self>) {
        let alive = Arc::new(AtomicBool::new(true));
        let weak = Arc::downgrade(self);
        let service = self.service.clone();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let task = kube::watch(service, weak, alive.clone(), first_tx);
        let Some(abort) = spawn_on_discovery_runtime(task) else {
            return;
        };
        if let Ok(mut watch) = self.watch.lock() {
            if let Some(old) = watch.take() {
                old.abort.abort();
            }
            *watch = Some(WatchHandle {
                abort,
                alive,
                pid: std::process::id(),
            });
        }
        // Ocelot's WatchKube waits up to a second for its first results.
        let _ = tokio::time::timeout(
            Duration::from_secs(1).max(self.service.provider.timeout()),
            first_rx,
        )
        .await;
    }
}

/// Instances from endpoints, host names resolved (Consul node names, Eureka
/// host names); an instance whose name does not resolve is left out.
async fn resolve(endpoints: Vec<Endpoint>) -> Vec<Instance> {
    let mut instances = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let ip = endpoint.addr.or_else(|| {
            endpoint
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        });
        let addr = match ip {
            Some(ip) => SocketAddr::new(ip, endpoint.port),
            None => match tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await {
                // Prefer IPv4, as HostDiscovery does for DownstreamHostAndPorts.
                Ok(addrs) => {
                    let addrs: Vec<SocketAddr> = addrs.collect();
                    match addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first()) {
                        Some(addr) => *addr,
                        None => continue,
                    }
                }
                Err(e) => {
                    log::warn!(
                        "cannot resolve discovered host {}: {e}; leaving it out",
                        endpoint.host
                    );
                    continue;
                }
            },
        };
        let instance = Instance {
            addr,
            host: endpoint.host,
            port: endpoint.port,
        };
        if !instances.contains(&instance) {
            instances.push(instance);
        }
    }
    instances
}

fn summary(instances: &[Instance]) -> String {
    let mut text: Vec<String> = instances
        .iter()
        .take(8)
        .map(|i| i.addr.to_string())
        .collect();
    if instances.len() > 8 {
        text.push("…".into());
    }
    text.join(", ")
}

/// A pool's view of its service's [`Source`]: what the pool last took from
/// it, so the refresher rebuilds only pools whose list changed.
pub struct PoolDiscovery {
    source: Arc<Source>,
    seen: AtomicU64,
}

impl DiscoveredService for PoolDiscovery {
    fn boxed(self: Arc<Self>) -> Box<dyn ServiceDiscovery + Send + Sync> {
        Box::new(SharedDiscovery(self))
    }

    fn needs_refresh(&self, now: Instant) -> bool {
        self.source.due(now) || self.seen.load(Ordering::Acquire) != self.source.generation()
    }

    fn next_due(&self) -> Option<Instant> {
        self.source.next_due()
    }
}

struct SharedDiscovery(Arc<PoolDiscovery>);

#[async_trait]
impl ServiceDiscovery for SharedDiscovery {
    async fn discover(&self) -> pingora_error::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let (instances, generation) = self.0.source.instances().await;
        self.0.seen.store(generation, Ordering::Release);
        // Err keeps the pool's current backends (Backends::update).
        let instances = instances.ok_or_else(|| {
            pingora_error::Error::explain(
                pingora_error::ErrorType::ConnectError,
                "registry not answering yet",
            )
        })?;
        let mut backends = BTreeSet::new();
        for (index, instance) in instances.iter().enumerate() {
            let mut backend = Backend {
                addr: PingoraAddr::Inet(instance.addr),
                weight: 1,
                ext: Default::default(),
            };
            let host = if instance.host.contains(':') && !instance.host.starts_with('[') {
                format!("[{}]", instance.host)
            } else {
                instance.host.clone()
            };
            backend.ext.insert(BackendMeta {
                index,
                authority: format!("{host}:{}", instance.port).into(),
                host: host.into(),
            });
            backends.insert(backend);
        }
        Ok((backends, HashMap::new()))
    }
}

/// Registry queries and watches run on a runtime of their own: a query
/// started while the gateway boots (on a throw-away runtime) or from a reload
/// must not die with the runtime that asked, and a watch must outlive it.
fn discovery_runtime() -> Option<tokio::runtime::Handle> {
    static RUNTIME: Mutex<Option<(u32, tokio::runtime::Handle)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().ok()?;
    if let Some((owner, handle)) = slot.as_ref() {
        // After a fork (`-d`) the runtime's thread stayed behind in the parent.
        if *owner == pid {
            return Some(handle.clone());
        }
    }
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("discovery")
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            let handle = runtime.handle().clone();
            // Lives as long as the process.
            std::mem::forget(runtime);
            *slot = Some((pid, handle.clone()));
            Some(handle)
        }
        Err(e) => {
            log::error!("cannot start the service discovery runtime: {e}");
            None
        }
    }
}

async fn on_discovery_runtime<T: Send + 'static>(
    f: impl Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    match discovery_runtime() {
        Some(rt) => rt
            .spawn(f)
            .await
            .unwrap_or_else(|e| Err(format!("query task failed: {e}"))),
        None => f.await,
    }
}

fn spawn_on_discovery_runtime(
    f: impl Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::AbortHandle> {
    discovery_runtime().map(|rt| rt.spawn(f).abort_handle())
}

/// Keeps the pools of discovered services current: wakes when a registry is
/// due (or a watch brought news) and rebuilds the pools concerned, so a
/// route's balancer sees instances come and go without a restart.
pub struct DiscoveryRefresher {
    /// The pools fed by discovery in the snapshot being served.
    pub pools: Box<dyn Fn() -> Vec<Arc<Pool>> + Send + Sync>,
}

/// At most this many pools refresh at once.
const PARALLEL_REFRESHES: usize = 16;

#[async_trait]
impl BackgroundService for DiscoveryRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL_REFRESHES));
        loop {
            let pools = (self.pools)();
            let now = Instant::now();
            // Also the longest sleep, so a reload's new pools are picked up.
            let mut wake = now + Duration::from_secs(1);
            let mut refreshes = tokio::task::JoinSet::new();
            for pool in pools {
                let Some(discovery) = pool.discovery().cloned() else {
                    continue;
                };
                if discovery.needs_refresh(now) {
                    let permits = permits.clone();
                    refreshes.spawn(async move {
                        let _permit = permits.acquire_owned().await;
                        pool.refresh().await;
                    });
                }
                if let Some(due) = discovery.next_due() {
                    wake = wake.min(due);
                }
            }
            while refreshes.join_next().await.is_some() {}
            let wake = wake.max(Instant::now() + Duration::from_millis(20));
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = CHANGED.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Reads a response body of at most `limit` bytes (registries are trusted,
/// but a broken one must not exhaust memory).
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
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
const MAX_BODY: usize = 16 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
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

    #[tokio::test]
    async fn a_failed_query_keeps_the_last_good_list() {
        let c = global(json!({"Type": "Eureka"}));
        let route = FileRoute {
            service_name: Some("keep-last-good".into()),
            ..Default::default()
        };
        let service = ServiceRef::for_route(&route, &c).expect("a service");
        let source = Source::shared(&service);
        let now = Instant::now();
        let endpoint = |port| Endpoint {
            host: "127.0.0.1".into(),
            port,
            addr: None,
        };
        source
            .apply(
                Ok(Fetched {
                    endpoints: vec![endpoint(1), endpoint(2)],
                    valid_for: None,
                }),
                now,
            )
            .await;
        assert_eq!(source.generation(), 1);
        source.apply(Err("connection refused".into()), now).await;
        let state = source.state.lock().expect("lock");
        assert_eq!(state.instances.as_ref().map(|i| i.len()), Some(2));
        assert_eq!(state.generation, 1);
        assert!(state.failing);
    }
}
