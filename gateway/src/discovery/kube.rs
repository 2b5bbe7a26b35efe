//! Kubernetes: a Service's endpoints through the API server (Ocelot's
//! `Ocelot.Discovery.KubeClient`: `Kube`, `PollKube`, `WatchKube`).
//!
//! `Kube` and `PollKube` read `GET /api/v1/namespaces/{ns}/endpoints/{name}`
//! as Ocelot does; `WatchKube` lists the object and then follows a watch from
//! that list's `resourceVersion`, listing again when the API server says the
//! version is gone (410). With `discovery.kubernetes.endpoint_slices` the
//! `discovery.k8s.io/v1` EndpointSlices labelled with the service name are
//! read instead. Per address Ocelot takes the port named like the route's
//! `DownstreamScheme`, else the first port, else 80; only ready addresses
//! (`addresses`, not `notReadyAddresses`) are instances.

use super::pool::ServiceRef;
use super::provider::{read_body, Provider, MAX_BODY};
use super::source::{resolve, Endpoint, Fetched, Source};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Seconds the API server keeps one watch open; it then ends it and the watch
/// resumes from the last version seen (below kube-apiserver's own maximum).
const WATCH_SECONDS: u64 = 290;
/// Ocelot's `WatchKube.FailedSubscriptionRetrySeconds`.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Longest watch event line accepted.
const MAX_EVENT: usize = 4 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ObjectMeta {
    name: Option<String>,
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ListMeta {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Port {
    name: Option<String>,
    port: Option<i64>,
}

/// v1 `Endpoints`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Endpoints {
    metadata: ObjectMeta,
    subsets: Option<Vec<Subset>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Subset {
    addresses: Option<Vec<Address>>,
    ports: Option<Vec<Port>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Address {
    ip: String,
}

/// `discovery.k8s.io/v1` `EndpointSlice`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EndpointSlice {
    metadata: ObjectMeta,
    endpoints: Option<Vec<SliceEndpoint>>,
    ports: Option<Vec<Port>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SliceEndpoint {
    addresses: Vec<String>,
    conditions: Conditions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Conditions {
    ready: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct List<T> {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default = "Vec::new")]
    items: Vec<T>,
}

#[derive(Debug, Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: serde_json::Value,
}

/// Ocelot's `KubeServiceCreator.GetServiceHostAndPort`: the port named like
/// the scheme, else the first, else 80.
fn pick_port(ports: &[Port], scheme: &str) -> u16 {
    let named = (!scheme.is_empty())
        .then(|| {
            ports.iter().find(|p| {
                p.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(scheme))
            })
        })
        .flatten();
    named
        .or(ports.first())
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(80)
}

fn endpoints_of(object: &Endpoints, scheme: &str) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for subset in object.subsets.iter().flatten() {
        let port = pick_port(subset.ports.as_deref().unwrap_or_default(), scheme);
        for address in subset
            .addresses
            .iter()
            .flatten()
            .filter(|a| !a.ip.is_empty())
        {
            out.push(Endpoint {
                host: address.ip.clone(),
                port,
                addr: None,
            });
        }
    }
    out
}

fn slice_endpoints(slice: &EndpointSlice, scheme: &str) -> Vec<Endpoint> {
    let port = pick_port(slice.ports.as_deref().unwrap_or_default(), scheme);
    slice
        .endpoints
        .iter()
        .flatten()
        // A missing `ready` means unknown, which consumers take as ready.
        .filter(|e| e.conditions.ready != Some(false))
        .filter_map(|e| e.addresses.first())
        .map(|address| Endpoint {
            host: address.clone(),
            port,
            addr: None,
        })
        .collect()
}

/// Where and as whom to ask.
struct Api {
    base: Url,
    client: reqwest::Client,
    token: Option<String>,
    namespace: String,
    service: String,
    scheme: String,
    slices: bool,
    timeout: Duration,
}

impl Api {
    async fn new(provider: &Provider, service: &ServiceRef) -> Result<Api, String> {
        let k = &provider.settings.kubernetes;
        let base = match (&k.api_server, &provider.env.in_cluster_api) {
            (Some(url), _) | (None, Some(url)) => url.clone(),
            (None, None) if provider.port > 0 && !provider.host.is_empty() => format!("{}://{}:{}", provider.scheme, provider.host, provider.port),
            (None, None) => {
                return Err("no Kubernetes API server: not in a pod, no discovery.kubernetes.api_server, and no ServiceDiscoveryProvider Host and Port".into())
            }
        };
        let base = Url::parse(&base).map_err(|e| format!("Kubernetes API server {base:?}: {e}"))?;
        // The token file is read each time: the kubelet rotates bound tokens.
        let token = match k.token_file.as_ref().or(provider.env.sa_token.as_ref()) {
            Some(file) => Some(
                tokio::fs::read_to_string(file)
                    .await
                    .map_err(|e| format!("token file {}: {e}", file.display()))?
                    .trim()
                    .to_string(),
            ),
            None => provider.token.clone(),
        };
        Ok(Api {
            base,
            client: provider.http().await?,
            token: token.filter(|t| !t.is_empty()),
            namespace: provider.kube_namespace(service.namespace.as_deref()),
            service: service.service.clone(),
            scheme: service.scheme.clone(),
            slices: k.endpoint_slices,
            timeout: provider.timeout(),
        })
    }

    fn url(&self, segments: &[&str]) -> Result<Url, String> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| format!("{} cannot be a base URL", self.base))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// The collection URL, narrowed to the service's objects.
    fn collection(&self) -> Result<Url, String> {
        let mut url = if self.slices {
            let mut url = self.url(&[
                "apis",
                "discovery.k8s.io",
                "v1",
                "namespaces",
                &self.namespace,
                "endpointslices",
            ])?;
            url.query_pairs_mut().append_pair(
                "labelSelector",
                &format!("kubernetes.io/service-name={}", self.service),
            );
            url
        } else {
            let mut url = self.url(&["api", "v1", "namespaces", &self.namespace, "endpoints"])?;
            url.query_pairs_mut()
                .append_pair("fieldSelector", &format!("metadata.name={}", self.service));
            url
        };
        url.set_fragment(None);
        Ok(url)
    }

    fn request(&self, url: Url) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    async fn get(&self, url: Url) -> Result<Option<Vec<u8>>, String> {
        let response = self
            .request(url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| format!("Kubernetes API: {e}"))?;
        let status = response.status();
        // No Endpoints object: the Service does not exist (or has no selector).
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = read_body(response, MAX_BODY).await?;
        if !status.is_success() {
            return Err(format!(
                "Kubernetes API answered {status}: {}",
                status_message(&body)
            ));
        }
        Ok(Some(body))
    }

    /// Ocelot's single read (`Kube`, `PollKube`).
    async fn read(&self) -> Result<Vec<Endpoint>, String> {
        if self.slices {
            let (objects, _) = self.list().await?;
            return Ok(objects.into_values().flatten().collect());
        }
        let url = self.url(&[
            "api",
            "v1",
            "namespaces",
            &self.namespace,
            "endpoints",
            &self.service,
        ])?;
        match self.get(url).await? {
            None => Ok(Vec::new()),
            Some(body) => {
                let object: Endpoints = serde_json::from_slice(&body)
                    .map_err(|e| format!("Kubernetes API: not Endpoints: {e}"))?;
                Ok(endpoints_of(&object, &self.scheme))
            }
        }
    }

    /// The service's objects by name, and the version to watch from.
    async fn list(&self) -> Result<(BTreeMap<String, Vec<Endpoint>>, Option<String>), String> {
        let Some(body) = self.get(self.collection()?).await? else {
            return Ok((BTreeMap::new(), None));
        };
        let mut objects = BTreeMap::new();
        let version = if self.slices {
            let list: List<EndpointSlice> = serde_json::from_slice(&body)
                .map_err(|e| format!("Kubernetes API: not an EndpointSliceList: {e}"))?;
            for slice in &list.items {
                objects.insert(
                    slice.metadata.name.clone().unwrap_or_default(),
                    slice_endpoints(slice, &self.scheme),
                );
            }
            list.metadata.resource_version
        } else {
            let list: List<Endpoints> = serde_json::from_slice(&body)
                .map_err(|e| format!("Kubernetes API: not an EndpointsList: {e}"))?;
            for object in &list.items {
                objects.insert(
                    object.metadata.name.clone().unwrap_or_default(),
                    endpoints_of(object, &self.scheme),
                );
            }
            list.metadata.resource_version
        };
        Ok((objects, version))
    }

    /// Applies one watch event; `Err` ends the watch (`Ok(false)`: list again).
    fn apply(
        &self,
        event: WatchEvent,
        objects: &mut BTreeMap<String, Vec<Endpoint>>,
        version: &mut Option<String>,
    ) -> Result<bool, String> {
        if event.kind == "ERROR" {
            let code = event.object.get("code").and_then(serde_json::Value::as_i64);
            let message = event
                .object
                .get("message")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            if code == Some(410) {
                // Too old a version: start again from a fresh list.
                *version = None;
                return Ok(false);
            }
            return Err(format!("watch error {code:?}: {message}"));
        }
        let meta: ObjectMeta = event
            .object
            .get("metadata")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_default();
        if meta.resource_version.is_some() {
            version.clone_from(&meta.resource_version);
        }
        let name = meta.name.unwrap_or_default();
        match event.kind.as_str() {
            "ADDED" | "MODIFIED" => {
                let endpoints = if self.slices {
                    let slice: EndpointSlice = serde_json::from_value(event.object)
                        .map_err(|e| format!("watch: not an EndpointSlice: {e}"))?;
                    slice_endpoints(&slice, &self.scheme)
                } else {
                    let object: Endpoints = serde_json::from_value(event.object)
                        .map_err(|e| format!("watch: not Endpoints: {e}"))?;
                    endpoints_of(&object, &self.scheme)
                };
                objects.insert(name, endpoints);
            }
            // Ocelot empties the list when the Endpoints object goes.
            "DELETED" => {
                objects.remove(&name);
            }
            // BOOKMARK only moves the version on.
            _ => {}
        }
        Ok(true)
    }
}

/// The error message of a Kubernetes `Status` body, or the body itself.
fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

/// One read of the service's endpoints (`Kube`, `PollKube`).
pub(crate) async fn fetch(provider: &Provider, service: &ServiceRef) -> Result<Fetched, String> {
    let api = Api::new(provider, service).await?;
    Ok(Fetched {
        endpoints: api.read().await?,
        valid_for: None,
    })
}

/// Marks the watch as stopped however its task ends (finished, aborted, or
/// dropped with its runtime).
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// `WatchKube`: list, then follow the watch stream, forever; every change
/// goes to `source`. Ends when the source is gone. Failures keep the last
/// list and retry after a second, as Ocelot's `RetryAfter` does.
pub(crate) async fn watch(
    service: ServiceRef,
    source: Weak<Source>,
    alive: Arc<AtomicBool>,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let _alive = Alive(alive);
    let mut first = Some(first);
    let mut version: Option<String> = None;
    let mut objects: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    let name = service.describe();
    // Logged once per outage, not once per retry.
    let mut failing = false;
    loop {
        let outcome = watch_once(
            &service,
            &source,
            &mut objects,
            &mut version,
            &mut first,
            &mut failing,
        )
        .await;
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
        match outcome {
            Ok(()) => {}
            Err(None) => return,
            Err(Some(e)) => {
                if failing {
                    log::debug!("{name}: {e}");
                } else {
                    log::warn!(
                        "{name}: {e}; keeping the last list, watching again every {RETRY_AFTER:?}"
                    );
                }
                failing = true;
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// Publishes the watched objects' endpoints; `false` when the source is gone.
async fn publish(source: &Weak<Source>, objects: &BTreeMap<String, Vec<Endpoint>>) -> bool {
    let instances = resolve(objects.values().flatten().cloned().collect()).await;
    match source.upgrade() {
        Some(source) => {
            source.store(instances, None);
            true
        }
        None => false,
    }
}

/// One list-and-watch round. `Ok`: the stream ended normally (watch again
/// from the last version); `Err(None)`: the source is gone; `Err(Some)`: failed.
async fn watch_once(
    service: &ServiceRef,
    source: &Weak<Source>,
    objects: &mut BTreeMap<String, Vec<Endpoint>>,
    version: &mut Option<String>,
    first: &mut Option<tokio::sync::oneshot::Sender<()>>,
    failing: &mut bool,
) -> Result<(), Option<String>> {
    let api = Api::new(&service.provider, service).await.map_err(Some)?;
    if version.is_none() {
        let (listed, listed_version) = api.list().await.map_err(Some)?;
        *objects = listed;
        *version = listed_version;
        if !publish(source, objects).await {
            return Err(None);
        }
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
    }
    let mut url = api.collection().map_err(Some)?;
    url.query_pairs_mut()
        .append_pair("watch", "true")
        .append_pair("allowWatchBookmarks", "true")
        .append_pair("timeoutSeconds", &WATCH_SECONDS.to_string());
    if let Some(v) = version.as_deref() {
        url.query_pairs_mut().append_pair("resourceVersion", v);
    }
    let mut response = api
        .request(url)
        .send()
        .await
        .map_err(|e| Some(format!("Kubernetes API watch: {e}")))?;
    let status = response.status();
    if status == StatusCode::GONE {
        *version = None;
        return Ok(());
    }
    if !status.is_success() {
        let body = read_body(response, 64 * 1024).await.unwrap_or_default();
        return Err(Some(format!(
            "Kubernetes API watch answered {status}: {}",
            status_message(&body)
        )));
    }
    if std::mem::take(failing) {
        log::info!("{}: watching again", service.describe());
    }
    let mut buffer: Vec<u8> = Vec::new();
    // A silent stream past the server's own timeout is a dead connection.
    let idle = Duration::from_secs(WATCH_SECONDS + 30);
    loop {
        let chunk = match tokio::time::timeout(idle, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(Some(format!("Kubernetes API watch: {e}"))),
            Err(_) => return Err(Some("Kubernetes API watch went silent".into())),
        };
        buffer.extend_from_slice(&chunk);
        let mut changed = false;
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: WatchEvent = serde_json::from_slice(&line)
                .map_err(|e| Some(format!("watch: not an event: {e}")))?;
            let before = objects.clone();
            match api.apply(event, objects, version) {
                Ok(true) => changed |= *objects != before,
                Ok(false) => return Ok(()),
                Err(e) => return Err(Some(e)),
            }
        }
        if buffer.len() > MAX_EVENT {
            return Err(Some(format!("watch event larger than {MAX_EVENT} bytes")));
        }
        if changed && !publish(source, objects).await {
            return Err(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ports_follow_ocelot() {
        let ports: Vec<Port> = serde_json::from_value(
            json!([{"name": "https", "port": 443}, {"name": "http", "port": 80}]),
        )
        .unwrap();
        assert_eq!(pick_port(&ports, "http"), 80);
        assert_eq!(pick_port(&ports, "HTTPS"), 443);
        assert_eq!(pick_port(&ports, "grpc"), 443);
        assert_eq!(pick_port(&ports, ""), 443);
        assert_eq!(pick_port(&[], "http"), 80);
    }

    #[test]
    fn endpoints_use_ready_addresses_only() {
        let object: Endpoints = serde_json::from_value(json!({
            "kind": "Endpoints",
            "metadata": {"name": "orders", "resourceVersion": "7"},
            "subsets": [
                {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "notReadyAddresses": [{"ip": "10.0.0.9"}], "ports": [{"name": "http", "port": 8080}]},
                {"addresses": [{"ip": "10.0.1.1"}], "ports": [{"port": 9090}]}
            ]
        }))
        .unwrap();
        let hosts: Vec<(String, u16)> = endpoints_of(&object, "http")
            .into_iter()
            .map(|e| (e.host, e.port))
            .collect();
        assert_eq!(
            hosts,
            vec![
                ("10.0.0.1".into(), 8080),
                ("10.0.0.2".into(), 8080),
                ("10.0.1.1".into(), 9090)
            ]
        );
        let empty: Endpoints = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert!(endpoints_of(&empty, "http").is_empty());
    }

    #[test]
    fn slices_skip_endpoints_not_ready() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "orders-abc"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"]}
            ],
            "ports": [{"name": "http", "port": 8080}]
        }))
        .unwrap();
        let hosts: Vec<String> = slice_endpoints(&slice, "http")
            .into_iter()
            .map(|e| e.host)
            .collect();
        assert_eq!(hosts, vec!["10.0.0.1", "10.0.0.3"]);
    }
}
