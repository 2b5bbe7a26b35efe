//! DNS (beyond Ocelot, `Type: Dns` or `discovery.type: Dns`): the A/AAAA or
//! SRV records of a name, typically a headless Kubernetes Service, one record
//! per ready pod. Lookups are asynchronous (hickory); the answer is used until
//! its TTL ends (bounded by `min_ttl_seconds`/`max_ttl_seconds`), then asked
//! again. A name with no records (NXDOMAIN, no data) is a service with no
//! instances; a server that does not answer keeps the last list.

use super::pool::ServiceRef;
use super::provider::Provider;
use super::settings::{DnsRecords, DnsSettings};
use super::source::{Endpoint, Fetched};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// `ip` or `ip:port` (`[v6]:port`), port 53 by default.
pub(crate) fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{text:?} is not an address or address:port"))
}

/// A resolver for the provider's name servers.
pub(crate) struct Resolver(TokioResolver);

impl Resolver {
    pub(crate) fn new(settings: &DnsSettings) -> Result<Resolver, String> {
        let builder = if settings.nameservers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?
        } else {
            let mut servers = Vec::new();
            for text in &settings.nameservers {
                let addr = parse_nameserver(text)?;
                let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
                udp.port = addr.port();
                tcp.port = addr.port();
                servers.push(NameServerConfig::new(addr.ip(), true, vec![udp, tcp]));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                TokioRuntimeProvider::default(),
            )
        };
        builder
            .build()
            .map(Resolver)
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))
    }
}

/// The name to ask for a service.
fn query_name(settings: &DnsSettings, service: &str, namespace: &str, scheme: &str) -> String {
    let template = settings.name.as_deref().unwrap_or(match settings.records {
        DnsRecords::A => "{service}.{namespace}.svc.cluster.local",
        DnsRecords::Srv => "_{scheme}._tcp.{service}.{namespace}.svc.cluster.local",
    });
    let name = template
        .replace("{service}", service)
        .replace("{namespace}", namespace)
        .replace("{scheme}", scheme);
    // Absolute, so resolv.conf search domains (ndots:5 in a pod) add no queries.
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

fn remaining(valid_until: Instant) -> Duration {
    valid_until.saturating_duration_since(Instant::now())
}

pub(crate) async fn fetch(provider: &Provider, service: &ServiceRef) -> Result<Fetched, String> {
    let settings = &provider.settings.dns;
    let scheme = if service.scheme.is_empty() {
        "http"
    } else {
        service.scheme.as_str()
    };
    let namespace = provider.kube_namespace(service.namespace.as_deref());
    let name = query_name(settings, &service.service, &namespace, scheme);
    let host = name.trim_end_matches('.').to_string();
    let resolver = provider.resolver().await?;
    let no_records = Fetched {
        endpoints: Vec::new(),
        valid_for: Some(Duration::from_secs(settings.min_ttl_seconds)),
    };
    match settings.records {
        DnsRecords::A => {
            let port = service
                .port
                .or(settings.port)
                .unwrap_or(if scheme == "https" { 443 } else { 80 });
            match resolver.0.lookup_ip(name.as_str()).await {
                Ok(lookup) => {
                    // Servers rotate the records; the order means nothing.
                    let mut ips: Vec<IpAddr> = lookup.iter().collect();
                    ips.sort();
                    ips.dedup();
                    Ok(Fetched {
                        endpoints: ips
                            .into_iter()
                            .map(|ip| Endpoint {
                                host: host.clone(),
                                port,
                                addr: Some(ip),
                            })
                            .collect(),
                        valid_for: Some(remaining(lookup.valid_until())),
                    })
                }
                Err(e) if e.is_no_records_found() => Ok(no_records),
                Err(e) => Err(format!("DNS {host}: {e}")),
            }
        }
        DnsRecords::Srv => {
            let lookup = match resolver.0.lookup(name.as_str(), RecordType::SRV).await {
                Ok(lookup) => lookup,
                Err(e) if e.is_no_records_found() => return Ok(no_records),
                Err(e) => return Err(format!("DNS {host} SRV: {e}")),
            };
            let mut valid_until = lookup.valid_until();
            let mut records: Vec<_> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(srv.clone()),
                    _ => None,
                })
                .collect();
            // RFC 2782: only the lowest priority is used while it has targets.
            let best = records.iter().map(|s| s.priority).min();
            records.retain(|s| Some(s.priority) == best);
            let mut endpoints = Vec::new();
            for srv in records {
                let target = srv.target.to_ascii();
                let target_host = target.trim_end_matches('.').to_string();
                if target_host.is_empty() {
                    // "." means the service is decidedly not available here.
                    continue;
                }
                // Servers usually send the targets' addresses along.
                let mut addrs: Vec<IpAddr> = lookup
                    .additionals()
                    .iter()
                    .filter(|r| r.name == srv.target)
                    .filter_map(|r| r.data.ip_addr())
                    .collect();
                if addrs.is_empty() {
                    match resolver.0.lookup_ip(target.as_str()).await {
                        Ok(found) => {
                            valid_until = valid_until.min(found.valid_until());
                            addrs = found.iter().collect();
                        }
                        Err(e) => {
                            log::warn!("DNS {host}: SRV target {target_host}: {e}; leaving it out")
                        }
                    }
                }
                for ip in addrs {
                    endpoints.push(Endpoint {
                        host: target_host.clone(),
                        port: srv.port,
                        addr: Some(ip),
                    });
                }
            }
            endpoints.sort_by(|a, b| (&a.host, a.port, a.addr).cmp(&(&b.host, b.port, b.addr)));
            Ok(Fetched {
                endpoints,
                valid_for: Some(remaining(valid_until)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_template() {
        let a = DnsSettings::default();
        assert_eq!(
            query_name(&a, "orders", "shop", "http"),
            "orders.shop.svc.cluster.local."
        );
        let srv = DnsSettings {
            records: DnsRecords::Srv,
            ..Default::default()
        };
        assert_eq!(
            query_name(&srv, "orders", "shop", "grpc"),
            "_grpc._tcp.orders.shop.svc.cluster.local."
        );
        let custom = DnsSettings {
            name: Some("{service}.test.".into()),
            ..Default::default()
        };
        assert_eq!(
            query_name(&custom, "orders", "shop", "http"),
            "orders.test."
        );
    }

    #[test]
    fn nameserver_addresses() {
        assert_eq!(parse_nameserver("127.0.0.1:5353").unwrap().port(), 5353);
        assert_eq!(parse_nameserver("10.96.0.10").unwrap().port(), 53);
        assert_eq!(
            parse_nameserver("[::1]:53").unwrap().ip(),
            "::1".parse::<IpAddr>().unwrap()
        );
        assert!(parse_nameserver("dns.local").is_err());
    }
}
