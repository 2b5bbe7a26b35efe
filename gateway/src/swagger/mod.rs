//! API documentation through the gateway, as MMLib.SwaggerForOcelot serves
//! it from the same `ocelot.json`: `GET {docs_path}/{version}/{key}` answers
//! the service's OpenAPI document of `SwaggerEndPoints[key].Config[version]`
//! rewritten to the gateway's upstream paths (`transform.rs`), and
//! `GET {ui_path}` Swagger UI from assets built into the binary (`ui.rs`),
//! listing every `(Key, Config)` as `Name - Version`.
//!
//! The endpoints and their routes are compiled into each snapshot
//! ([`compile`]), so a reload changes the documents like the routes, and the
//! transformed documents are cached per snapshot, keyed by the SHA-256 of the
//! service's document: the service is asked every time (a changed document
//! is seen at once), the transformation is not repeated.

mod aggregates;
mod fetch;
pub(crate) mod transform;
mod ui;

use crate::balancing::{Pool, StickySessions};
use bytes::Bytes;
use ocelot_compat::model::{FileConfiguration, FileSwaggerEndPoint};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use transform::{DocRoute, ALL_METHODS};

/// The `swagger` section of the gateway settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwaggerSettings {
    /// Where Swagger UI is served (MMLib: `/swagger`).
    pub ui_path: String,
    /// Where the documents are served, as `{docs_path}/{version}/{key}`
    /// (MMLib's `PathToSwaggerGenerator`, `/swagger/docs`).
    pub docs_path: String,
    /// Seconds a transformed document is reused while the service's document
    /// hashes the same (MMLib's `DownstreamDocsCacheExpire`; 0: off).
    pub cache_seconds: u64,
    /// Seconds a service may take to answer its document.
    pub timeout_seconds: u64,
    /// The server written into the documents instead of the request's
    /// `scheme://host` (MMLib's `ServerOcelot`).
    pub server_ocelot: Option<String>,
    /// `AuthenticationProviderKey` → the document's security scheme name
    /// (MMLib's `AddAuthenticationProviderKeyMapping`): operations of routes
    /// with a mapped key get `security: [{scheme: AllowedScopes}]`.
    pub authentication_provider_key_mapping: BTreeMap<String, String>,
    /// Serve the `aggregates` document: one GET per `Aggregates[]` entry
    /// (MMLib's `GenerateDocsForAggregates`, off by default there too).
    pub generate_docs_for_aggregates: bool,
}

impl Default for SwaggerSettings {
    fn default() -> Self {
        SwaggerSettings {
            ui_path: "/swagger".into(),
            docs_path: "/swagger/docs".into(),
            cache_seconds: 300,
            timeout_seconds: 10,
            server_ocelot: None,
            authentication_provider_key_mapping: BTreeMap::new(),
            generate_docs_for_aggregates: false,
        }
    }
}

impl SwaggerSettings {
    /// The settings, or why they cannot serve: a path that is not below `/`
    /// would take every request of the proxy.
    pub(crate) fn checked(self) -> Result<SwaggerSettings, String> {
        for (name, path) in [("ui_path", &self.ui_path), ("docs_path", &self.docs_path)] {
            if !path.starts_with('/') || path.trim_end_matches('/').is_empty() {
                return Err(format!(
                    "swagger.{name}: '{path}' must be a path below '/', such as /swagger"
                ));
            }
        }
        Ok(self)
    }
}

/// Where a documented service's document comes from.
#[derive(Clone)]
pub(crate) enum Source {
    /// `verify`: false when a route of the endpoint sets
    /// `DangerousAcceptAnyServerCertificateValidator`, as MMLib calls the
    /// service with that route's handler.
    Url { url: String, verify: bool },
    /// Through service discovery: a backend of the pool of a route naming
    /// the service, with that route's scheme and certificate check.
    Service {
        name: String,
        path: String,
        backend: Option<ServiceBackend>,
    },
}

#[derive(Clone)]
pub(crate) struct ServiceBackend {
    pub(crate) pool: Arc<Pool>,
    pub(crate) tls: bool,
    pub(crate) verify: bool,
}

/// One `Config[]` entry.
pub(crate) struct Document {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) source: Source,
}

/// One `SwaggerEndPoints[]` entry with its routes.
pub(crate) struct EndPoint {
    pub(crate) key: String,
    pub(crate) documents: Vec<Document>,
    pub(crate) routes: Vec<DocRoute>,
    pub(crate) transform: bool,
    pub(crate) remove_unused_components: bool,
    pub(crate) take_servers_from_downstream: bool,
    pub(crate) host_override: Option<String>,
}

/// What a request under the documentation paths asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Page {
    /// `{ui_path}` itself: sent on to `{ui_path}/index.html`, so the UI's
    /// relative asset paths resolve.
    UiRoot,
    /// A file of Swagger UI.
    UiFile(String),
    /// `{docs_path}/{version}/{key}`.
    Document { version: String, key: String },
}

/// What the gateway answers for a documentation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Served {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Bytes,
}

/// Why a document cannot be served: `answer.rs` makes a JSON problem of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DocsFailure {
    /// 404 for an unknown key or version, 502 when the service fails.
    pub(crate) status: u16,
    pub(crate) key: String,
    pub(crate) version: String,
    /// The service's document URL (or service name), when known.
    pub(crate) source: Option<String>,
    pub(crate) detail: String,
}

/// A transformed document and the hash of what it was made from.
struct Cached {
    hash: [u8; 32],
    body: Bytes,
    at: Instant,
}

/// Clients write the `Host` the cache is keyed with; this bounds the map.
const MAX_CACHED: usize = 256;

/// The documentation of one snapshot: endpoints compiled, paths, cache.
pub(crate) struct Docs {
    pub(crate) settings: SwaggerSettings,
    pub(crate) endpoints: Vec<EndPoint>,
    /// `Aggregates`, when their document is served.
    aggregates: Vec<aggregates::AggregateDoc>,
    /// `(endpoint, document, server url)` → transformed document.
    cache: Mutex<HashMap<(usize, usize, String), Cached>>,
}

/// A route's pool and how to call it, by `ServiceName`, for `Service`
/// documents.
pub(crate) type ServicePools = HashMap<String, ServiceBackend>;

/// Compiles `SwaggerEndPoints` and the routes they document; `None` (the
/// documentation paths are not served) when the file has none.
pub(crate) fn compile(
    config: &FileConfiguration,
    settings: &SwaggerSettings,
    pools: &ServicePools,
) -> Option<Docs> {
    if config.swagger_end_points.is_empty() {
        return None;
    }
    let endpoints: Vec<EndPoint> = config
        .swagger_end_points
        .iter()
        .filter_map(|e| compile_endpoint(e, config, settings, pools))
        .collect();
    let aggregates = if settings.generate_docs_for_aggregates {
        aggregates::compile(config, |key| {
            endpoints.iter().position(|e| e.key == key.trim())
        })
    } else {
        Vec::new()
    };
    Some(Docs {
        settings: settings.clone(),
        endpoints,
        aggregates,
        cache: Mutex::new(HashMap::new()),
    })
}

fn compile_endpoint(
    e: &FileSwaggerEndPoint,
    config: &FileConfiguration,
    settings: &SwaggerSettings,
    pools: &ServicePools,
) -> Option<EndPoint> {
    let key = e.key.as_deref().map(str::trim).filter(|k| !k.is_empty())?;
    let documents = e
        .config
        .iter()
        .map(|c| {
            let version = c.version.clone().unwrap_or_default();
            let url = c.url.as_deref().map(str::trim).unwrap_or("");
            let source = if url.is_empty() {
                let service = c.service.clone().unwrap_or_default();
                let name = service.name.unwrap_or_default();
                let path = service
                    .path
                    .filter(|p| !p.trim().is_empty())
                    .unwrap_or_else(|| {
                        let v = if version.is_empty() { "v1" } else { &version };
                        format!("/swagger/{v}/swagger.json")
                    });
                Source::Service {
                    backend: pools.get(&name.to_ascii_lowercase()).cloned(),
                    name,
                    path,
                }
            } else {
                let dangerous = config.routes.iter().any(|r| {
                    r.swagger_key.as_deref().map(str::trim) == Some(key)
                        && r.dangerous_accept_any_server_certificate_validator
                });
                Source::Url {
                    url: url.to_string(),
                    verify: !dangerous,
                }
            };
            Document {
                name: c.name.clone().unwrap_or_default(),
                version,
                source,
            }
        })
        .collect();
    Some(EndPoint {
        key: key.to_string(),
        documents,
        routes: doc_routes(e, key, config, settings),
        transform: e.transform_by_ocelot_config,
        remove_unused_components: e.remove_unused_components_from_scheme,
        take_servers_from_downstream: e.take_servers_from_downstream_service,
        host_override: e.host_override.clone().filter(|h| !h.trim().is_empty()),
    })
}

/// Rules 1 and 2 of MMLib: the routes with this `SwaggerKey`, one copy per
/// `Config[]` version where a template holds the version placeholder, then
/// merged when they share templates and virtual directory.
fn doc_routes(
    e: &FileSwaggerEndPoint,
    key: &str,
    config: &FileConfiguration,
    settings: &SwaggerSettings,
) -> Vec<DocRoute> {
    let placeholder = e.version_placeholder.as_str();
    let mut routes: Vec<DocRoute> = Vec::new();
    for r in config
        .routes
        .iter()
        .filter(|r| r.swagger_key.as_deref().map(str::trim) == Some(key))
    {
        let methods: Vec<String> = if r.upstream_http_method.is_empty() {
            ALL_METHODS.iter().map(|m| m.to_string()).collect()
        } else {
            r.upstream_http_method
                .iter()
                .map(|m| m.trim().to_ascii_lowercase())
                .collect()
        };
        let auth = r.authentication_options.as_ref();
        let security = auth
            .and_then(|a| a.authentication_provider_key.as_deref())
            .and_then(|k| settings.authentication_provider_key_mapping.get(k))
            .map(|scheme| {
                let scopes = auth.and_then(|a| a.allowed_scopes.clone());
                (scheme.clone(), scopes.unwrap_or_default())
            });
        let base = DocRoute {
            upstream_template: r.upstream_path_template.clone().unwrap_or_default(),
            downstream_template: r.downstream_path_template.clone().unwrap_or_default(),
            virtual_directory: r.virtual_directory.clone().unwrap_or_default(),
            methods,
            security,
        };
        let versioned = base.upstream_template.contains(placeholder)
            || base.downstream_template.contains(placeholder);
        let copies: Vec<DocRoute> = if versioned {
            e.config
                .iter()
                .map(|c| {
                    let v = c.version.as_deref().unwrap_or("");
                    DocRoute {
                        upstream_template: base.upstream_template.replace(placeholder, v),
                        downstream_template: base.downstream_template.replace(placeholder, v),
                        ..base.clone()
                    }
                })
                .collect()
        } else {
            vec![base]
        };
        for copy in copies {
            match routes.iter_mut().find(|g| {
                g.upstream_template == copy.upstream_template
                    && g.downstream_template == copy.downstream_template
                    && g.virtual_directory == copy.virtual_directory
            }) {
                Some(group) => {
                    for m in copy.methods {
                        if !group.methods.contains(&m) {
                            group.methods.push(m);
                        }
                    }
                    if group.security.is_none() {
                        group.security = copy.security;
                    }
                }
                None => routes.push(copy),
            }
        }
    }
    routes
}

impl Docs {
    /// The documentation page `path` asks for, or `None` when the path is
    /// not under the documentation paths.
    pub(crate) fn page(&self, path: &str) -> Option<Page> {
        let docs = self.settings.docs_path.trim_end_matches('/');
        if let Some(rest) = strip_prefix_ignoring_case(path, docs).and_then(|r| r.strip_prefix('/'))
        {
            let (version, key) = rest.split_once('/')?;
            return Some(Page::Document {
                version: percent_decode(version),
                key: percent_decode(key),
            });
        }
        let ui = self.settings.ui_path.trim_end_matches('/');
        let rest = strip_prefix_ignoring_case(path, ui)?;
        match rest {
            "" => Some(Page::UiRoot),
            "/" => Some(Page::UiFile("index.html".into())),
            _ => rest.strip_prefix('/').map(|f| Page::UiFile(f.to_string())),
        }
    }

    /// The drop-down of Swagger UI: `Name - Version` → document URL.
    pub(crate) fn ui_urls(&self) -> Vec<(String, String)> {
        let docs = self.settings.docs_path.trim_end_matches('/');
        let aggregates = (!self.aggregates.is_empty()).then(|| {
            (
                aggregates::NAME.to_string(),
                format!("{docs}/{}/{}", aggregates::VERSION, aggregates::KEY),
            )
        });
        self.endpoints
            .iter()
            .flat_map(|e| {
                e.documents.iter().map(move |d| {
                    (
                        format!("{} - {}", d.name, d.version),
                        format!(
                            "{docs}/{}/{}",
                            percent_encode(&d.version),
                            percent_encode(&e.key)
                        ),
                    )
                })
            })
            .chain(aggregates)
            .collect()
    }

    /// Answers a documentation page. `request_server` is the request's own
    /// `scheme://host`, written into documents unless the settings or the
    /// endpoint name another server.
    pub(crate) async fn serve(
        &self,
        page: &Page,
        request_server: &str,
        http: &fetch::Clients<'_>,
        sticky: &StickySessions,
    ) -> Result<Served, DocsFailure> {
        match page {
            Page::UiRoot => Ok(Served {
                status: 301,
                headers: vec![(
                    "Location",
                    format!("{}/index.html", self.settings.ui_path.trim_end_matches('/')),
                )],
                body: Bytes::new(),
            }),
            Page::UiFile(file) => ui::file(file, &self.ui_urls()).ok_or_else(|| DocsFailure {
                status: 404,
                key: String::new(),
                version: String::new(),
                source: None,
                detail: format!("Swagger UI has no file '{file}'"),
            }),
            Page::Document { version, key } => {
                self.document(version, key, request_server, http, sticky)
                    .await
            }
        }
    }

    async fn document(
        &self,
        version: &str,
        key: &str,
        request_server: &str,
        http: &fetch::Clients<'_>,
        sticky: &StickySessions,
    ) -> Result<Served, DocsFailure> {
        let failure = |status: u16, source: Option<String>, detail: String| DocsFailure {
            status,
            key: key.to_string(),
            version: version.to_string(),
            source,
            detail,
        };
        let Some((e_index, endpoint)) = self
            .endpoints
            .iter()
            .enumerate()
            .find(|(_, e)| e.key == key)
        else {
            if key == aggregates::KEY
                && version == aggregates::VERSION
                && !self.aggregates.is_empty()
            {
                return Ok(self.aggregates_document(request_server, http, sticky).await);
            }
            return Err(failure(
                404,
                None,
                format!("no SwaggerEndPoints entry has Key '{key}'"),
            ));
        };
        let Some((d_index, _)) = endpoint
            .documents
            .iter()
            .enumerate()
            .find(|(_, d)| d.version == version)
        else {
            return Err(failure(
                404,
                None,
                format!("SwaggerEndPoints '{key}' has no Config with Version '{version}'"),
            ));
        };
        let json = |body: Bytes| Served {
            status: 200,
            headers: vec![(
                "Content-Type",
                "application/json; charset=utf-8".to_string(),
            )],
            body,
        };
        let body = self
            .body(e_index, d_index, request_server, http, sticky)
            .await
            .map_err(|(source, detail)| failure(502, source, detail))?;
        Ok(json(body))
    }

    /// The `aggregates` document, from the transformed documents of the
    /// aggregates' routes (the first `Config` of the endpoint each route's
    /// `SwaggerKey` names); a route whose document cannot be had gets an
    /// empty schema rather than failing the whole page.
    async fn aggregates_document(
        &self,
        request_server: &str,
        http: &fetch::Clients<'_>,
        sticky: &StickySessions,
    ) -> Served {
        let mut member_docs = Vec::with_capacity(self.aggregates.len());
        for aggregate in &self.aggregates {
            let mut docs = Vec::with_capacity(aggregate.members.len());
            for member in &aggregate.members {
                let doc = match member.endpoint {
                    Some(e) => self
                        .body(e, 0, request_server, http, sticky)
                        .await
                        .ok()
                        .and_then(|body| serde_json::from_slice(&body).ok()),
                    None => None,
                };
                docs.push(doc);
            }
            member_docs.push(docs);
        }
        let doc = aggregates::document(&self.aggregates, &member_docs);
        Served {
            status: 200,
            headers: vec![(
                "Content-Type",
                "application/json; charset=utf-8".to_string(),
            )],
            body: Bytes::from(doc.to_string()),
        }
    }

    /// The document `d_index` of endpoint `e_index` as the gateway serves
    /// it, or (where it came from, why it cannot be served).
    async fn body(
        &self,
        e_index: usize,
        d_index: usize,
        request_server: &str,
        http: &fetch::Clients<'_>,
        sticky: &StickySessions,
    ) -> Result<Bytes, (Option<String>, String)> {
        let (Some(endpoint), Some(document)) = (
            self.endpoints.get(e_index),
            self.endpoints
                .get(e_index)
                .and_then(|e| e.documents.get(d_index)),
        ) else {
            return Err((None, "no such document".to_string()));
        };
        let timeout = Duration::from_secs(self.settings.timeout_seconds.max(1));
        let (source, bytes) = fetch::document(&document.source, http, sticky, timeout).await?;
        if !endpoint.transform {
            return Ok(bytes);
        }
        let server = self
            .settings
            .server_ocelot
            .clone()
            .or_else(|| endpoint.host_override.clone())
            .unwrap_or_else(|| request_server.to_string());
        let hash = fetch::sha256(&bytes);
        let ttl = Duration::from_secs(self.settings.cache_seconds);
        let cache_key = (e_index, d_index, server.clone());
        if !ttl.is_zero() {
            if let Ok(cache) = self.cache.lock() {
                if let Some(hit) = cache.get(&cache_key) {
                    if hit.hash == hash && hit.at.elapsed() < ttl {
                        return Ok(hit.body.clone());
                    }
                }
            }
        }
        let mut doc: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            (
                Some(source.clone()),
                format!("the document is not JSON: {e}"),
            )
        })?;
        let options = transform::Options {
            remove_unused_components: endpoint.remove_unused_components,
            take_servers_from_downstream: endpoint.take_servers_from_downstream,
            server_url: &server,
        };
        transform::transform(&mut doc, &endpoint.routes, options)
            .map_err(|e| (Some(source.clone()), e))?;
        let body = Bytes::from(doc.to_string());
        if !ttl.is_zero() {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() >= MAX_CACHED && !cache.contains_key(&cache_key) {
                    cache.clear();
                }
                cache.insert(
                    cache_key,
                    Cached {
                        hash,
                        body: body.clone(),
                        at: Instant::now(),
                    },
                );
            }
        }
        Ok(body)
    }
}

pub(crate) use fetch::Clients;

fn strip_prefix_ignoring_case<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let head = path.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &path[prefix.len()..])
}

/// Keys are URL-encoded into the document path, as MMLib does.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(value: serde_json::Value) -> FileConfiguration {
        let (config, diags) = ocelot_compat::model::from_value(&value);
        assert!(diags.is_empty(), "{diags:?}");
        config
    }

    #[test]
    fn compiles_versions_groups_and_security() {
        let file = config(json!({
            "Routes": [
                {"UpstreamPathTemplate": "/api/{version}/orders", "DownstreamPathTemplate": "/{version}/orders",
                 "UpstreamHttpMethod": ["Get"], "SwaggerKey": "orders",
                 "AuthenticationOptions": {"AuthenticationProviderKey": "Jwt", "AllowedScopes": ["orders"]}},
                {"UpstreamPathTemplate": "/api/{version}/orders", "DownstreamPathTemplate": "/{version}/orders",
                 "UpstreamHttpMethod": ["Post"], "SwaggerKey": "orders"},
                {"UpstreamPathTemplate": "/other", "DownstreamPathTemplate": "/other", "SwaggerKey": "else"}
            ],
            "SwaggerEndPoints": [{"Key": "orders", "Config": [
                {"Name": "Orders", "Version": "v1", "Url": "http://o/v1.json"},
                {"Name": "Orders", "Version": "v2", "Service": {"Name": "Orders"}}
            ]}]
        }));
        let mut settings = SwaggerSettings::default();
        settings
            .authentication_provider_key_mapping
            .insert("Jwt".into(), "Bearer".into());
        let docs = compile(&file, &settings, &ServicePools::new()).expect("docs");
        let e = &docs.endpoints[0];
        let templates: Vec<(&str, &Vec<String>)> = e
            .routes
            .iter()
            .map(|r| (r.upstream_template.as_str(), &r.methods))
            .collect();
        assert_eq!(
            templates,
            [
                (
                    "/api/v1/orders",
                    &vec!["get".to_string(), "post".to_string()]
                ),
                (
                    "/api/v2/orders",
                    &vec!["get".to_string(), "post".to_string()]
                )
            ]
        );
        assert_eq!(
            e.routes[0].security,
            Some(("Bearer".into(), vec!["orders".into()]))
        );
        assert!(
            matches!(&e.documents[1].source, Source::Service { path, backend: None, .. } if path == "/swagger/v2/swagger.json")
        );
        assert_eq!(
            docs.ui_urls(),
            [
                (
                    "Orders - v1".to_string(),
                    "/swagger/docs/v1/orders".to_string()
                ),
                (
                    "Orders - v2".to_string(),
                    "/swagger/docs/v2/orders".to_string()
                )
            ]
        );
        assert!(compile(
            &config(json!({"Routes": []})),
            &settings,
            &ServicePools::new()
        )
        .is_none());
    }

    #[test]
    fn pages_under_the_documentation_paths() {
        let file = config(
            json!({"SwaggerEndPoints": [{"Key": "k", "Config": [{"Name": "K", "Version": "v1", "Url": "http://k/"}]}]}),
        );
        let docs = compile(&file, &SwaggerSettings::default(), &ServicePools::new()).expect("docs");
        assert_eq!(docs.page("/swagger"), Some(Page::UiRoot));
        assert_eq!(
            docs.page("/swagger/"),
            Some(Page::UiFile("index.html".into()))
        );
        assert_eq!(
            docs.page("/swagger/swagger-ui.css"),
            Some(Page::UiFile("swagger-ui.css".into()))
        );
        assert_eq!(
            docs.page("/swagger/docs/v1/my%20key"),
            Some(Page::Document {
                version: "v1".into(),
                key: "my key".into()
            })
        );
        assert_eq!(docs.page("/swaggerish"), None);
        assert_eq!(docs.page("/api/orders"), None);
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
        let root = SwaggerSettings {
            ui_path: "/".into(),
            ..SwaggerSettings::default()
        };
        assert!(root.checked().unwrap_err().contains("swagger.ui_path"));
    }
}
