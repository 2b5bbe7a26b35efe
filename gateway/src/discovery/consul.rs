//! Consul (`Ocelot.Discovery.Consul`: `Consul`, `PollConsul`): the healthy
//! instances of a service from `GET /v1/health/service/{name}?passing`, with
//! the ACL token in `X-Consul-Token`.
//!
//! As Ocelot's `DefaultConsulServiceBuilder`: an entry needs an `Address`
//! without a scheme and a port above 0, and the host is the entry's node
//! name when it has a node, else the service address
//! (`discovery.consul.use_service_address` always takes the address).

use super::pool::ServiceRef;
use super::provider::{read_body, Provider, MAX_BODY};
use super::source::{Endpoint, Fetched};
use reqwest::Url;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct ServiceEntry {
    #[serde(rename = "Node")]
    node: Option<Node>,
    #[serde(rename = "Service")]
    service: AgentService,
}

#[derive(Debug, Deserialize)]
struct Node {
    #[serde(rename = "Node", default)]
    name: String,
}

#[derive(Debug, Deserialize)]
struct AgentService {
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port", default)]
    port: i64,
}

/// Ocelot's `IsValid`: a host without a scheme and a usable port.
fn valid(service: &AgentService) -> Option<u16> {
    let address = service.address.to_ascii_lowercase();
    let ok =
        !address.is_empty() && !address.starts_with("http://") && !address.starts_with("https://");
    let port = u16::try_from(service.port).ok().filter(|p| *p > 0);
    if !ok || port.is_none() {
        log::warn!(
            "Consul: unable to use service address '{}' and port {}: the address must be a host only (e.g. 'localhost') and the port above 0",
            service.address,
            service.port
        );
        return None;
    }
    port
}

fn endpoints(entries: Vec<ServiceEntry>, use_service_address: bool) -> Vec<Endpoint> {
    entries
        .into_iter()
        .filter_map(|entry| {
            let port = valid(&entry.service)?;
            let host = match entry.node {
                Some(node) if !use_service_address && !node.name.is_empty() => node.name,
                _ => entry.service.address,
            };
            Some(Endpoint {
                host,
                port,
                addr: None,
            })
        })
        .collect()
}

pub(crate) async fn fetch(provider: &Provider, service: &ServiceRef) -> Result<Fetched, String> {
    // Consul's own default address when ocelot.json names no port.
    let port = if provider.port > 0 {
        provider.port
    } else {
        8500
    };
    let base = format!("{}://{}:{port}", provider.scheme, provider.host);
    let mut url = Url::parse(&base).map_err(|e| format!("Consul address {base:?}: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| format!("{base} cannot be a base URL"))?
        .extend(["v1", "health", "service", service.service.as_str()]);
    url.set_query(Some("passing=true"));
    let token = match &provider.settings.consul.token_file {
        Some(file) => Some(
            tokio::fs::read_to_string(file)
                .await
                .map_err(|e| format!("token file {}: {e}", file.display()))?
                .trim()
                .to_string(),
        ),
        None => provider.token.clone(),
    };
    let mut request = provider.http().await?.get(url).timeout(provider.timeout());
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        request = request.header("X-Consul-Token", token);
    }
    let response = request.send().await.map_err(|e| format!("Consul: {e}"))?;
    let status = response.status();
    let body = read_body(response, MAX_BODY).await?;
    if !status.is_success() {
        return Err(format!(
            "Consul answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
        ));
    }
    let entries: Vec<ServiceEntry> = serde_json::from_slice(&body)
        .map_err(|e| format!("Consul: not a list of service entries: {e}"))?;
    if entries.is_empty() {
        log::debug!(
            "Consul: no healthy entries for service '{}'",
            service.service
        );
    }
    Ok(Fetched {
        endpoints: endpoints(entries, provider.settings.consul.use_service_address),
        valid_for: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entries() -> Vec<ServiceEntry> {
        serde_json::from_value(json!([
            {"Node": {"Node": "node-a", "Address": "10.0.0.1"}, "Service": {"ID": "a", "Service": "orders", "Address": "10.0.0.1", "Port": 8080}, "Checks": []},
            {"Node": {"Node": "node-b", "Address": "10.0.0.2"}, "Service": {"ID": "b", "Service": "orders", "Address": "http://10.0.0.2", "Port": 8080}},
            {"Node": {"Node": "node-c", "Address": "10.0.0.3"}, "Service": {"ID": "c", "Service": "orders", "Address": "10.0.0.3", "Port": 0}},
            {"Service": {"ID": "d", "Service": "orders", "Address": "10.0.0.4", "Port": 9090}}
        ]))
        .unwrap()
    }

    #[test]
    fn node_name_first_as_ocelot_does() {
        let got: Vec<(String, u16)> = endpoints(entries(), false)
            .into_iter()
            .map(|e| (e.host, e.port))
            .collect();
        assert_eq!(
            got,
            vec![("node-a".into(), 8080), ("10.0.0.4".into(), 9090)]
        );
    }

    #[test]
    fn service_address_on_request() {
        let got: Vec<String> = endpoints(entries(), true)
            .into_iter()
            .map(|e| e.host)
            .collect();
        assert_eq!(got, vec!["10.0.0.1", "10.0.0.4"]);
    }
}
