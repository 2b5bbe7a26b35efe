//! Service discovery: Ocelot's global `ServiceDiscoveryProvider` and route
//! `ServiceName` (Ocelot's `src/ServiceDiscovery/`, with the Consul,
//! Kubernetes and Eureka providers of its `Ocelot.Provider.*` packages).
//! Dynamic routing, which makes routes from the request path for a
//! discovered service, is in `snapshot/dynamic.rs`.
//!
//! A route with a `ServiceName` gets a [`Pool`](crate::balancing::Pool) whose
//! `pingora-load-balancing` `ServiceDiscovery` is a [`PoolDiscovery`]
//! (`pool.rs`): it reads the instance list of a shared [`Source`]
//! (`source.rs`), one per provider and service, which asks the registry
//! (`consul.rs`, `kube.rs`, `eureka.rs` or `dns.rs`, as the [`Provider`] of
//! `provider.rs` says) on the runtime of `runtime.rs`. Routes naming the same
//! service share one source, so a registry is asked once per interval however
//! many routes use it; the [`DiscoveryRefresher`] (`refresher.rs`) rebuilds
//! the pools whose list changed. The `discovery` gateway settings are in
//! `settings.rs`.
//!
//! Ocelot's `Consul` and `Kube` providers ask the registry on every request;
//! here every provider is asked on a schedule instead (`PollingInterval` for
//! `PollConsul`/`PollKube`, the `discovery.poll_interval_ms` setting
//! otherwise, the record TTL for DNS) and `WatchKube` follows a Kubernetes
//! watch stream, so no request waits for a registry. A failed query keeps the
//! last good list (Pingora's `Backends::update` keeps its set on `Err`), so an
//! unreachable registry never empties a pool that was working; an empty answer
//! does empty it, and the route then answers 404 as Ocelot's `ServicesAreEmpty`.

pub(crate) mod consul;
pub(crate) mod dns;
pub(crate) mod eureka;
pub(crate) mod kube;
mod pool;
mod provider;
mod refresher;
mod runtime;
mod settings;
mod source;

pub(crate) use pool::ServiceRef;
pub(crate) use provider::Provider;
pub use refresher::DiscoveryRefresher;
pub use settings::{
    ConsulSettings, Discovery, DiscoverySettings, DnsRecords, DnsSettings, EurekaSettings,
    KubeSettings,
};
