//! Service registries for the service discovery tests: none of Kubernetes,
//! Consul or Eureka can run here, so [`TestServer`]s speak the parts of their
//! real APIs the gateway uses, as documented by each project, with instances
//! the test makes appear, change and disappear. (DNS is a real `dnsmasq`:
//! [`crate::dns`].)
//!
//! * [`FakeKube`]: the Kubernetes API over HTTPS with a bearer token:
//!   `GET /api/v1/namespaces/{ns}/endpoints/{name}`, the `endpoints` and
//!   `discovery.k8s.io/v1` `endpointslices` collections with field/label
//!   selectors, and their `?watch=true` streams resumable by `resourceVersion`.
//! * [`FakeConsul`]: `GET /v1/health/service/{name}?passing` with
//!   `X-Consul-Token`.
//! * [`FakeEureka`]: `GET /eureka/apps/{APP}` as JSON.
//!
//! Every registry can be stopped (its port refuses connections, open streams
//! break) and started again on the same port, to play an unreachable registry.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::pki::TestPki;
use crate::server::{json_response, response, Body, TestServer};

/// A body fed line by line from a channel (a watch stream).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// A registry's [`TestServer`]: each request's head goes to `handle`.
fn start_server<F, Fut>(name: &str, tls: Option<&TestPki>, handle: F) -> TestServer
where
    F: Fn(Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = TestServer::builder(name);
    if let Some(pki) = tls {
        builder = builder.tls(pki.server_config());
    }
    builder
        .serve(move |req, _conn| handle(req.into_parts().0))
        .expect("start fake registry")
}

fn query_pairs(parts: &Parts) -> BTreeMap<String, String> {
    let url = reqwest::Url::parse(&format!("http://fake{}", parts.uri)).unwrap();
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn path_segments(parts: &Parts) -> Vec<String> {
    parts
        .uri
        .path()
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------- Kubernetes

/// One instance of a Kubernetes service: a pod address and its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub ip: String,
    pub port: u16,
    pub ready: bool,
}

impl Pod {
    /// A ready pod at `addr` (an echo server's address).
    pub fn at(addr: SocketAddr) -> Pod {
        Pod {
            ip: addr.ip().to_string(),
            port: addr.port(),
            ready: true,
        }
    }

    pub fn not_ready(mut self) -> Pod {
        self.ready = false;
        self
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Endpoints,
    Slices,
}

#[derive(Clone, Debug)]
struct Event {
    version: u64,
    kind: Kind,
    namespace: String,
    service: String,
    line: String,
}

#[derive(Default)]
struct KubeObjects {
    version: u64,
    /// Endpoints objects by (namespace, name).
    endpoints: BTreeMap<(String, String), Value>,
    /// EndpointSlices by (namespace, service) then slice name.
    slices: BTreeMap<(String, String), BTreeMap<String, Value>>,
    history: VecDeque<Event>,
}

struct KubeState {
    token: String,
    port_name: String,
    objects: Mutex<KubeObjects>,
    events: broadcast::Sender<Event>,
    requests: Mutex<Vec<String>>,
    unauthorized: AtomicUsize,
}

/// Events kept for watches that resume from an older version; older ones
/// get `410 Gone`, as the API server answers.
const HISTORY: usize = 1000;

/// The Kubernetes API server, for Endpoints and EndpointSlices, over HTTPS
/// with a bearer token.
pub struct FakeKube {
    server: TestServer,
    state: Arc<KubeState>,
    pki: TestPki,
}

impl FakeKube {
    /// Ports are named `http`, as a Service's usually are.
    pub fn start() -> FakeKube {
        let pki = TestPki::generate(&["127.0.0.1", "localhost"]);
        let (events, _) = broadcast::channel(1024);
        let state = Arc::new(KubeState {
            token: "kube-test-token".to_string(),
            port_name: "http".to_string(),
            objects: Mutex::new(KubeObjects::default()),
            events,
            requests: Mutex::new(Vec::new()),
            unauthorized: AtomicUsize::new(0),
        });
        let handler_state = state.clone();
        let server = start_server("fake-kube", Some(&pki), move |parts| {
            kube_handle(handler_state.clone(), parts)
        });
        FakeKube { server, state, pki }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.server.addr())
    }

    pub fn token(&self) -> &str {
        &self.state.token
    }

    /// The CA the API server's certificate chains to, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// Settings YAML for the gateway (`token_file`/`ca_file` written next to
    /// the settings by [`GatewayBuilder::file`](crate::gateway::GatewayBuilder::file)
    /// under the names `kube-token` and `kube-ca.pem`).
    pub fn settings(&self, extra_kubernetes: &str, poll_interval_ms: u64) -> String {
        format!(
            "discovery:\n  poll_interval_ms: {poll_interval_ms}\n  kubernetes:\n    api_server: \"{}\"\n    token_file: kube-token\n    ca_file: kube-ca.pem\n{extra_kubernetes}",
            self.url()
        )
    }

    /// Every request line seen (`GET /path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Requests refused for a missing or wrong token.
    pub fn unauthorized(&self) -> usize {
        self.state.unauthorized.load(Ordering::SeqCst)
    }

    /// Makes the service's endpoints `pods` (an empty list: no ready pod), as
    /// the endpoints controller does when pods come and go.
    pub fn set_pods(&self, namespace: &str, service: &str, pods: &[Pod]) {
        let mut objects = self.state.objects.lock().unwrap();
        // Endpoints: one subset per port, ready and not-ready addresses apart.
        let mut by_port: BTreeMap<u16, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
        for pod in pods {
            let entry = by_port.entry(pod.port).or_default();
            let address = json!({"ip": pod.ip, "targetRef": {"kind": "Pod", "name": format!("{service}-{}", pod.port)}});
            if pod.ready {
                entry.0.push(address);
            } else {
                entry.1.push(address);
            }
        }
        let subsets: Vec<Value> = by_port
            .iter()
            .map(|(port, (ready, not_ready))| {
                let mut subset = json!({"ports": [{"name": self.state.port_name, "port": port, "protocol": "TCP"}]});
                if !ready.is_empty() {
                    subset["addresses"] = json!(ready);
                }
                if !not_ready.is_empty() {
                    subset["notReadyAddresses"] = json!(not_ready);
                }
                subset
            })
            .collect();
        let mut object = json!({
            "kind": "Endpoints",
            "apiVersion": "v1",
            "metadata": {"name": service, "namespace": namespace},
        });
        if !subsets.is_empty() {
            object["subsets"] = json!(subsets);
        }
        let key = (namespace.to_string(), service.to_string());
        let kind = if objects.endpoints.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let object = Self::publish(
            &self.state,
            &mut objects,
            Kind::Endpoints,
            &key,
            kind,
            object,
        );
        objects.endpoints.insert(key.clone(), object);

        // EndpointSlices: one per port.
        let mut new_slices: BTreeMap<String, Value> = BTreeMap::new();
        for port in by_port.keys() {
            let endpoints: Vec<Value> = pods
                .iter()
                .filter(|p| p.port == *port)
                .map(|p| json!({"addresses": [p.ip], "conditions": {"ready": p.ready}}))
                .collect();
            let name = format!("{service}-{port}");
            new_slices.insert(
                name.clone(),
                json!({
                    "kind": "EndpointSlice",
                    "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": [{"name": self.state.port_name, "port": port, "protocol": "TCP"}],
                }),
            );
        }
        let old_slices = objects.slices.remove(&key).unwrap_or_default();
        for (name, slice) in &old_slices {
            if !new_slices.contains_key(name) {
                Self::publish(
                    &self.state,
                    &mut objects,
                    Kind::Slices,
                    &key,
                    "DELETED",
                    slice.clone(),
                );
            }
        }
        let mut stored = BTreeMap::new();
        for (name, slice) in new_slices {
            let kind = match old_slices.get(&name) {
                None => "ADDED",
                Some(old) if old["endpoints"] == slice["endpoints"] => {
                    stored.insert(name, old.clone());
                    continue;
                }
                Some(_) => "MODIFIED",
            };
            let slice = Self::publish(&self.state, &mut objects, Kind::Slices, &key, kind, slice);
            stored.insert(name, slice);
        }
        objects.slices.insert(key, stored);
    }

    /// Deletes the service (its Endpoints object and slices).
    pub fn delete(&self, namespace: &str, service: &str) {
        let mut objects = self.state.objects.lock().unwrap();
        let key = (namespace.to_string(), service.to_string());
        if let Some(object) = objects.endpoints.remove(&key) {
            Self::publish(
                &self.state,
                &mut objects,
                Kind::Endpoints,
                &key,
                "DELETED",
                object,
            );
        }
        for (_, slice) in objects.slices.remove(&key).unwrap_or_default() {
            Self::publish(
                &self.state,
                &mut objects,
                Kind::Slices,
                &key,
                "DELETED",
                slice,
            );
        }
    }

    /// A change: the next resource version, stamped on the object (which is
    /// returned), recorded and sent to the watches.
    fn publish(
        state: &KubeState,
        objects: &mut KubeObjects,
        kind: Kind,
        key: &(String, String),
        event: &str,
        mut object: Value,
    ) -> Value {
        objects.version += 1;
        object["metadata"]["resourceVersion"] = json!(objects.version.to_string());
        let event = Event {
            version: objects.version,
            kind,
            namespace: key.0.clone(),
            service: key.1.clone(),
            line: format!("{}\n", json!({"type": event, "object": object})),
        };
        objects.history.push_back(event.clone());
        while objects.history.len() > HISTORY {
            objects.history.pop_front();
        }
        let _ = state.events.send(event);
        object
    }

    /// The API server goes away (connections refused, watches cut).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    pub fn restart(&mut self) {
        self.server.restart();
    }
}

fn kube_status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}),
    )
}

async fn kube_handle(state: Arc<KubeState>, parts: Parts) -> Response<Body> {
    state
        .requests
        .lock()
        .unwrap()
        .push(format!("{} {}", parts.method, parts.uri));
    let authorized = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", state.token));
    if !authorized {
        state.unauthorized.fetch_add(1, Ordering::SeqCst);
        return kube_status(401, "Unauthorized", "Unauthorized");
    }
    let segments = path_segments(&parts);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let query = query_pairs(&parts);
    let (kind, namespace, name) = match segments.as_slice() {
        ["api", "v1", "namespaces", ns, "endpoints", name] => (Kind::Endpoints, *ns, Some(*name)),
        ["api", "v1", "namespaces", ns, "endpoints"] => (Kind::Endpoints, *ns, None),
        ["apis", "discovery.k8s.io", "v1", "namespaces", ns, "endpointslices"] => {
            (Kind::Slices, *ns, None)
        }
        _ => {
            return kube_status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    };
    // A collection is narrowed to one service by field or label selector.
    let service = match (name, kind) {
        (Some(name), _) => name.to_string(),
        (None, Kind::Endpoints) => match query
            .get("fieldSelector")
            .and_then(|s| s.strip_prefix("metadata.name="))
        {
            Some(name) => name.to_string(),
            None => {
                return kube_status(
                    400,
                    "BadRequest",
                    "this fake needs fieldSelector=metadata.name=NAME",
                )
            }
        },
        (None, Kind::Slices) => match query
            .get("labelSelector")
            .and_then(|s| s.strip_prefix("kubernetes.io/service-name="))
        {
            Some(name) => name.to_string(),
            None => {
                return kube_status(
                    400,
                    "BadRequest",
                    "this fake needs labelSelector=kubernetes.io/service-name=NAME",
                )
            }
        },
    };
    let key = (namespace.to_string(), service.clone());
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watch {
        let objects = state.objects.lock().unwrap();
        let version = objects.version.to_string();
        return match (kind, name) {
            (Kind::Endpoints, Some(_)) => match objects.endpoints.get(&key) {
                Some(object) => json_response(200, object),
                None => kube_status(
                    404,
                    "NotFound",
                    &format!("endpoints \"{service}\" not found"),
                ),
            },
            (Kind::Endpoints, None) => json_response(
                200,
                &json!({"kind": "EndpointsList", "apiVersion": "v1", "metadata": {"resourceVersion": version},
                        "items": objects.endpoints.get(&key).into_iter().collect::<Vec<_>>()}),
            ),
            (Kind::Slices, _) => json_response(
                200,
                &json!({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1", "metadata": {"resourceVersion": version},
                        "items": objects.slices.get(&key).map(|s| s.values().cloned().collect::<Vec<_>>()).unwrap_or_default()}),
            ),
        };
    }

    // A watch: events after `resourceVersion` (or the current objects as
    // ADDED), then live ones, until `timeoutSeconds`.
    let timeout = Duration::from_secs(
        query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1800),
    );
    let from: Option<u64> = query.get("resourceVersion").and_then(|v| v.parse().ok());
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let (backlog, mut live) = {
        let objects = state.objects.lock().unwrap();
        let live = state.events.subscribe();
        let matches = |e: &Event| e.kind == kind && e.namespace == key.0 && e.service == key.1;
        let backlog: Result<Vec<String>, ()> = match from {
            Some(from) => {
                // Events after `from` were dropped from the history: 410 Gone.
                let oldest = objects.history.front().map_or(0, |e| e.version);
                if from + 1 < oldest {
                    Err(())
                } else {
                    Ok(objects
                        .history
                        .iter()
                        .filter(|e| e.version > from && matches(e))
                        .map(|e| e.line.clone())
                        .collect())
                }
            }
            None => {
                let current: Vec<Value> = match kind {
                    Kind::Endpoints => objects.endpoints.get(&key).cloned().into_iter().collect(),
                    Kind::Slices => objects
                        .slices
                        .get(&key)
                        .map(|s| s.values().cloned().collect())
                        .unwrap_or_default(),
                };
                Ok(current
                    .into_iter()
                    .map(|o| format!("{}\n", json!({"type": "ADDED", "object": o})))
                    .collect())
            }
        };
        let floor = objects.version;
        (backlog.map(|b| (b, floor)), live)
    };
    match backlog {
        Err(()) => {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410}});
            let _ = tx.try_send(Bytes::from(format!("{gone}\n")));
            drop(tx);
        }
        Ok((lines, floor)) => {
            tokio::spawn(async move {
                for line in lines {
                    if tx.send(Bytes::from(line)).await.is_err() {
                        return;
                    }
                }
                let forward = async {
                    loop {
                        match live.recv().await {
                            Ok(e)
                                if e.version > floor
                                    && e.kind == kind
                                    && e.namespace == key.0
                                    && e.service == key.1 =>
                            {
                                if tx.send(Bytes::from(e.line)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(broadcast::error::RecvError::Lagged(_)) => return,
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                    }
                };
                let _ = tokio::time::timeout(timeout, forward).await;
            });
        }
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(ChannelBody(rx).boxed())
        .unwrap()
}

// -------------------------------------------------------------------- Consul

/// One registration of a service with a Consul agent.
#[derive(Debug, Clone)]
pub struct ConsulInstance {
    pub id: String,
    /// The node (agent) name; Ocelot sends requests to it.
    pub node: String,
    pub address: String,
    pub port: u16,
    /// Whether its health checks pass.
    pub passing: bool,
}

impl ConsulInstance {
    /// A passing instance on node `node`, registered with `addr`.
    pub fn new(id: &str, node: &str, addr: SocketAddr) -> ConsulInstance {
        ConsulInstance {
            id: id.to_string(),
            node: node.to_string(),
            address: addr.ip().to_string(),
            port: addr.port(),
            passing: true,
        }
    }
}

struct ConsulState {
    token: Option<String>,
    services: Mutex<BTreeMap<String, Vec<ConsulInstance>>>,
    requests: Mutex<Vec<(String, Option<String>)>>,
    index: AtomicUsize,
}

/// A Consul agent's health API, with an ACL token when given.
pub struct FakeConsul {
    server: TestServer,
    state: Arc<ConsulState>,
}

impl FakeConsul {
    pub fn start(token: Option<&str>) -> FakeConsul {
        let state = Arc::new(ConsulState {
            token: token.map(str::to_string),
            services: Mutex::new(BTreeMap::new()),
            requests: Mutex::new(Vec::new()),
            index: AtomicUsize::new(1),
        });
        let handler_state = state.clone();
        FakeConsul {
            server: start_server("fake-consul", None, move |parts| {
                std::future::ready(consul_handle(handler_state.clone(), parts))
            }),
            state,
        }
    }

    pub fn port(&self) -> u16 {
        self.server.addr().port()
    }

    /// The service's registrations, replaced.
    pub fn set(&self, service: &str, instances: Vec<ConsulInstance>) {
        self.state
            .services
            .lock()
            .unwrap()
            .insert(service.to_string(), instances);
        self.state.index.fetch_add(1, Ordering::SeqCst);
    }

    /// `(path?query, X-Consul-Token)` of every request.
    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }

    pub fn restart(&mut self) {
        self.server.restart();
    }
}

fn consul_handle(state: Arc<ConsulState>, parts: Parts) -> Response<Body> {
    let token = parts
        .headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state
        .requests
        .lock()
        .unwrap()
        .push((parts.uri.to_string(), token.clone()));
    if state.token.is_some() && token != state.token {
        return response(403, "ACL not found");
    }
    let segments = path_segments(&parts);
    let ["v1", "health", "service", name] =
        segments.iter().map(String::as_str).collect::<Vec<_>>()[..]
    else {
        return response(404, Bytes::new());
    };
    let passing_only = query_pairs(&parts).contains_key("passing");
    let services = state.services.lock().unwrap();
    let entries: Vec<Value> = services
        .get(name)
        .into_iter()
        .flatten()
        .filter(|i| !passing_only || i.passing)
        .map(|i| {
            let status = if i.passing { "passing" } else { "critical" };
            json!({
                "Node": {"ID": format!("{}-id", i.node), "Node": i.node, "Address": i.address, "Datacenter": "dc1",
                         "TaggedAddresses": {"lan": i.address, "wan": i.address}, "Meta": {}},
                "Service": {"ID": i.id, "Service": name, "Tags": ["version-v1"], "Address": i.address, "Meta": {},
                            "Port": i.port, "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false},
                "Checks": [
                    {"Node": i.node, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing", "ServiceID": "", "ServiceName": ""},
                    {"Node": i.node, "CheckID": format!("service:{}", i.id), "Name": "Service check", "Status": status, "ServiceID": i.id, "ServiceName": name}
                ]
            })
        })
        .collect();
    let mut response = json_response(200, &json!(entries));
    let index = state.index.load(Ordering::SeqCst).to_string();
    response
        .headers_mut()
        .insert("x-consul-index", index.parse().unwrap());
    response
        .headers_mut()
        .insert("x-consul-knownleader", "true".parse().unwrap());
    response
}

// -------------------------------------------------------------------- Eureka

/// One instance registered with Eureka.
#[derive(Debug, Clone)]
pub struct EurekaInstance {
    pub host_name: String,
    pub ip: String,
    pub port: u16,
    pub secure_port: Option<u16>,
    /// `UP`, `DOWN`, `STARTING`, `OUT_OF_SERVICE`, `UNKNOWN`.
    pub status: String,
}

impl EurekaInstance {
    /// An `UP` instance reachable at `addr`, registered under `host_name`.
    pub fn up(host_name: &str, addr: SocketAddr) -> EurekaInstance {
        EurekaInstance {
            host_name: host_name.to_string(),
            ip: addr.ip().to_string(),
            port: addr.port(),
            secure_port: None,
            status: "UP".to_string(),
        }
    }
}

struct EurekaState {
    apps: Mutex<BTreeMap<String, Vec<EurekaInstance>>>,
    accepts: Mutex<Vec<String>>,
}

/// A Eureka server's REST API (`/eureka/apps/{APP}`).
pub struct FakeEureka {
    server: TestServer,
    state: Arc<EurekaState>,
}

impl FakeEureka {
    pub fn start() -> FakeEureka {
        let state = Arc::new(EurekaState {
            apps: Mutex::new(BTreeMap::new()),
            accepts: Mutex::new(Vec::new()),
        });
        let handler_state = state.clone();
        FakeEureka {
            server: start_server("fake-eureka", None, move |parts| {
                std::future::ready(eureka_handle(handler_state.clone(), parts))
            }),
            state,
        }
    }

    /// `http://127.0.0.1:PORT/eureka/`.
    pub fn service_url(&self) -> String {
        format!("http://{}/eureka/", self.server.addr())
    }

    /// The application's instances, replaced (none: deregistered).
    pub fn set(&self, app: &str, instances: Vec<EurekaInstance>) {
        let mut apps = self.state.apps.lock().unwrap();
        if instances.is_empty() {
            apps.remove(&app.to_ascii_uppercase());
        } else {
            apps.insert(app.to_ascii_uppercase(), instances);
        }
    }

    /// The `Accept` header of every request.
    pub fn accepts(&self) -> Vec<String> {
        self.state.accepts.lock().unwrap().clone()
    }
}

fn eureka_handle(state: Arc<EurekaState>, parts: Parts) -> Response<Body> {
    let accept = parts
        .headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    state.accepts.lock().unwrap().push(accept);
    let segments = path_segments(&parts);
    let ["eureka", "apps", app] = segments.iter().map(String::as_str).collect::<Vec<_>>()[..]
    else {
        return response(404, Bytes::new());
    };
    let apps = state.apps.lock().unwrap();
    let Some(instances) = apps.get(&app.to_ascii_uppercase()) else {
        return response(404, Bytes::new());
    };
    let list: Vec<Value> = instances
        .iter()
        .map(|i| {
            json!({
                "instanceId": format!("{}:{}:{}", i.host_name, app.to_ascii_lowercase(), i.port),
                "hostName": i.host_name,
                "app": app.to_ascii_uppercase(),
                "ipAddr": i.ip,
                "status": i.status,
                "overriddenStatus": "UNKNOWN",
                "port": {"$": i.port, "@enabled": "true"},
                "securePort": {"$": i.secure_port.unwrap_or(443), "@enabled": if i.secure_port.is_some() { "true" } else { "false" }},
                "countryId": 1,
                "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
                "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
                "metadata": {"@class": "java.util.Collections$EmptyMap"},
                "vipAddress": app.to_ascii_lowercase(),
                "isCoordinatingDiscoveryServer": "false",
                "lastUpdatedTimestamp": "1457714988223",
                "actionType": "ADDED"
            })
        })
        .collect();
    // Eureka's JSON codec writes a lone instance as an object.
    let instance = if list.len() == 1 {
        list[0].clone()
    } else {
        json!(list)
    };
    json_response(
        200,
        &json!({"application": {"name": app.to_ascii_uppercase(), "instance": instance}}),
    )
}
