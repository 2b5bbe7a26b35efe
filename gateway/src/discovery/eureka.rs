//! Eureka (`Ocelot.Discovery.Eureka`, through Steeltoe): the `UP` instances
//! of an application from `GET {serviceUrl}/apps/{APP}` as JSON.
//!
//! Steeltoe gives Ocelot an instance's `hostName` and its secure port when
//! that is enabled, else its port. Here the route's `DownstreamScheme`
//! decides: `https` takes the enabled secure port, anything else the plain
//! port, so a route never sends plain HTTP to a TLS port.

use super::pool::ServiceRef;
use super::provider::{read_body, Provider, MAX_BODY};
use super::source::{Endpoint, Fetched};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct ApplicationDoc {
    application: Application,
}

#[derive(Debug, Deserialize)]
struct Application {
    /// Eureka's JSON codec writes a single instance as an object, not a list.
    #[serde(default)]
    instance: OneOrMany,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(Box<Instance>),
    Many(Vec<Instance>),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Instance {
    #[serde(default)]
    host_name: String,
    #[serde(default)]
    ip_addr: String,
    #[serde(default)]
    status: String,
    port: Option<PortInfo>,
    secure_port: Option<PortInfo>,
}

/// `{"$": 8080, "@enabled": "true"}`; both values may come as strings.
#[derive(Debug, Deserialize)]
struct PortInfo {
    #[serde(rename = "$")]
    value: serde_json::Value,
    #[serde(rename = "@enabled", default)]
    enabled: serde_json::Value,
}

impl PortInfo {
    fn port(&self) -> Option<u16> {
        match &self.value {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
    }

    fn enabled(&self) -> bool {
        match &self.enabled {
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::String(s) => s.eq_ignore_ascii_case("true"),
            // Eureka omits it for the plain port when enabled.
            serde_json::Value::Null => true,
            _ => false,
        }
    }
}

fn endpoints(instances: Vec<Instance>, https: bool) -> Vec<Endpoint> {
    instances
        .into_iter()
        // Steeltoe's default ShouldFilterOnlyUpInstances.
        .filter(|i| i.status.eq_ignore_ascii_case("UP"))
        .filter_map(|i| {
            let port = if https {
                i.secure_port
                    .as_ref()
                    .filter(|p| p.enabled())
                    .and_then(PortInfo::port)
            } else {
                i.port
                    .as_ref()
                    .filter(|p| p.enabled())
                    .and_then(PortInfo::port)
            }?;
            let host = if i.host_name.is_empty() {
                i.ip_addr
            } else {
                i.host_name
            };
            (!host.is_empty()).then_some(Endpoint {
                host,
                port,
                addr: None,
            })
        })
        .collect()
}

pub(crate) async fn fetch(provider: &Provider, service: &ServiceRef) -> Result<Fetched, String> {
    let base = &provider.settings.eureka.service_url;
    let mut url = Url::parse(base).map_err(|e| format!("Eureka service URL {base:?}: {e}"))?;
    // Eureka keeps application names upper-case.
    url.path_segments_mut()
        .map_err(|()| format!("{base} cannot be a base URL"))?
        .pop_if_empty()
        .extend(["apps", &service.service.to_ascii_uppercase()]);
    let response = provider
        .http()
        .await?
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(provider.timeout())
        .send()
        .await
        .map_err(|e| format!("Eureka: {e}"))?;
    let status = response.status();
    // Not registered (any more): no instances.
    if status == StatusCode::NOT_FOUND {
        return Ok(Fetched::default());
    }
    let body = read_body(response, MAX_BODY).await?;
    if !status.is_success() {
        return Err(format!("Eureka answered {status}"));
    }
    let doc: ApplicationDoc =
        serde_json::from_slice(&body).map_err(|e| format!("Eureka: not an application: {e}"))?;
    let instances = match doc.application.instance {
        OneOrMany::None => Vec::new(),
        OneOrMany::One(i) => vec![*i],
        OneOrMany::Many(list) => list,
    };
    Ok(Fetched {
        endpoints: endpoints(instances, service.scheme == "https"),
        valid_for: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn up_instances_with_the_port_for_the_scheme() {
        let doc: ApplicationDoc = serde_json::from_value(json!({"application": {"name": "ORDERS", "instance": [
            {"hostName": "a.local", "ipAddr": "10.0.0.1", "status": "UP", "port": {"$": 8080, "@enabled": "true"}, "securePort": {"$": 8443, "@enabled": "true"}},
            {"hostName": "b.local", "ipAddr": "10.0.0.2", "status": "DOWN", "port": {"$": 8080, "@enabled": "true"}},
            {"hostName": "", "ipAddr": "10.0.0.3", "status": "UP", "port": {"$": "9090", "@enabled": "true"}, "securePort": {"$": 443, "@enabled": "false"}}
        ]}}))
        .unwrap();
        let OneOrMany::Many(list) = doc.application.instance else {
            panic!("a list")
        };
        let plain: Vec<(String, u16)> = endpoints(list, false)
            .into_iter()
            .map(|e| (e.host, e.port))
            .collect();
        assert_eq!(
            plain,
            vec![("a.local".into(), 8080), ("10.0.0.3".into(), 9090)]
        );
    }

    #[test]
    fn a_single_instance_may_be_an_object() {
        let doc: ApplicationDoc = serde_json::from_value(json!({"application": {"name": "ORDERS", "instance":
            {"hostName": "a.local", "status": "UP", "port": {"$": 8080, "@enabled": "true"}, "securePort": {"$": 8443, "@enabled": "true"}}
        }}))
        .unwrap();
        let OneOrMany::One(one) = doc.application.instance else {
            panic!("one")
        };
        assert_eq!(endpoints(vec![*one], true)[0].port, 8443);
    }
}
