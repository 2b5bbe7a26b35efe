//! MMLib.SwaggerForOcelot's transformation of a service's OpenAPI 3 or
//! Swagger 2 document into the gateway's view of it
//! (`Transformation/SwaggerJsonTransformer.cs` and `RouteOptions.cs`): paths
//! rewritten from the service's (downstream) to the gateway's (upstream)
//! templates, operations no route exposes removed, the server pointed at the
//! gateway, unused components pruned. A pure function over JSON values.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// What an empty `UpstreamHttpMethod` stands for in MMLib's `RouteOptions`.
pub(crate) const ALL_METHODS: [&str; 9] = [
    "get", "post", "put", "delete", "options", "patch", "head", "connect", "trace",
];

/// The literal placeholder MMLib treats as a catch-all; any other
/// placeholder name stays in the paths verbatim, as in MMLib.
const EVERYTHING: &str = "{everything}";

/// One documented route, after version expansion and grouping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DocRoute {
    pub(crate) upstream_template: String,
    pub(crate) downstream_template: String,
    pub(crate) virtual_directory: String,
    /// Lower case; every method when the route named none.
    pub(crate) methods: Vec<String>,
    /// Security requirement (scheme, scopes) for the route's operations.
    pub(crate) security: Option<(String, Vec<String>)>,
}

impl DocRoute {
    /// The downstream template without `{everything}`, the virtual directory
    /// and a trailing `/`.
    pub(crate) fn downstream_path(&self) -> String {
        let path = self.downstream_template.replace(EVERYTHING, "");
        let vd = self.virtual_directory.as_str();
        let path = match path.get(..vd.len()) {
            Some(prefix) if !vd.is_empty() && prefix.eq_ignore_ascii_case(vd) => &path[vd.len()..],
            _ => path.as_str(),
        };
        path.trim_end_matches('/').to_string()
    }

    /// The upstream template without `{everything}` and a trailing `/`.
    pub(crate) fn upstream_path(&self) -> String {
        self.upstream_template
            .replace(EVERYTHING, "")
            .trim_end_matches('/')
            .to_string()
    }

    fn can_catch_all(&self) -> bool {
        self.downstream_template.ends_with(EVERYTHING)
    }

    fn allows(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }

    /// Whether the service path `path` (base path included) is this route's.
    fn matches(&self, path: &str) -> bool {
        let path = format!("{path}/").to_ascii_lowercase();
        let downstream = format!("{}/", self.downstream_path()).to_ascii_lowercase();
        if self.can_catch_all() {
            path.starts_with(&downstream)
        } else {
            path == downstream
        }
    }
}

/// The endpoint's options that shape the transformation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options<'a> {
    pub(crate) remove_unused_components: bool,
    pub(crate) take_servers_from_downstream: bool,
    /// `scheme://host[:port]` the document should send requests to.
    pub(crate) server_url: &'a str,
}

/// Rewrites `doc` in place. Fails only on a document that is neither
/// Swagger 2 nor OpenAPI 3, as MMLib does.
pub(crate) fn transform(
    doc: &mut Value,
    routes: &[DocRoute],
    options: Options<'_>,
) -> Result<(), String> {
    let Some(object) = doc.as_object_mut() else {
        return Err("the document is not a JSON object".to_string());
    };
    if object.contains_key("swagger") {
        let base = object
            .get("basePath")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim_end_matches('/')
            .to_string();
        object.remove("host");
        object.remove("schemes");
        rewrite_paths(object, &base, routes);
        object.insert(
            "host".into(),
            Value::String(host_of(options.server_url).to_string()),
        );
        object.insert("basePath".into(), Value::String("/".into()));
        if options.remove_unused_components {
            prune(object, &["definitions"], "#/definitions/");
        }
        Ok(())
    } else if object.contains_key("openapi") {
        let base = if options.take_servers_from_downstream {
            String::new()
        } else {
            object
                .get("servers")
                .and_then(Value::as_array)
                .and_then(|servers| servers.first())
                .and_then(|server| server.get("url"))
                .and_then(Value::as_str)
                .map(path_of)
                .unwrap_or("")
                .trim_end_matches('/')
                .to_string()
        };
        rewrite_paths(object, &base, routes);
        if !options.take_servers_from_downstream {
            set_servers(object, options.server_url);
        }
        if options.remove_unused_components {
            prune(object, &["components", "schemas"], "#/components/schemas/");
        }
        Ok(())
    } else {
        Err("Unknown swagger/openapi version".to_string())
    }
}

/// Rules 5, 6, 8 of MMLib: every (path, method) goes to each route that
/// exposes it, under the route's upstream path; the rest disappears.
fn rewrite_paths(doc: &mut Map<String, Value>, base: &str, routes: &[DocRoute]) {
    // Taken out and put back in place, so `paths` keeps its position.
    let paths = match doc.get_mut("paths") {
        Some(Value::Object(paths)) => std::mem::take(paths),
        _ => Map::new(),
    };
    let mut rewritten: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (path, item) in &paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        let full = format!("{base}{path}");
        // Path-level fields (`parameters`, `summary`, …) go with every
        // operation kept: they describe the operations' shared parameters.
        let shared: Vec<(&String, &Value)> =
            item.iter().filter(|(name, _)| !is_method(name)).collect();
        for (method, operation) in item.iter().filter(|(name, _)| is_method(name)) {
            let method = method.to_ascii_lowercase();
            let mut matched: Vec<&DocRoute> = Vec::new();
            for route in routes
                .iter()
                .filter(|r| r.allows(&method) && r.matches(&full))
            {
                let upstream = route.upstream_path();
                match matched.iter_mut().find(|m| m.upstream_path() == upstream) {
                    Some(kept) => {
                        if route.downstream_template.len() < kept.downstream_template.len() {
                            *kept = route;
                        }
                    }
                    None => matched.push(route),
                }
            }
            for route in matched {
                let new_path = replace_first_ignoring_case(
                    &full,
                    &route.downstream_path(),
                    &route.upstream_path(),
                );
                let entry = rewritten.entry(new_path).or_insert_with(|| {
                    shared
                        .iter()
                        .map(|(k, v)| ((*k).clone(), (*v).clone()))
                        .collect()
                });
                let mut operation = operation.clone();
                if let (Some((scheme, scopes)), Some(op)) =
                    (&route.security, operation.as_object_mut())
                {
                    let mut requirement = Map::new();
                    requirement.insert(scheme.clone(), Value::from(scopes.clone()));
                    op.insert(
                        "security".into(),
                        Value::Array(vec![Value::Object(requirement)]),
                    );
                }
                entry.insert(method.clone(), operation);
            }
        }
    }
    let paths: Map<String, Value> = rewritten
        .into_iter()
        .map(|(path, item)| (path, Value::Object(item)))
        .collect();
    match doc.get_mut("paths") {
        Some(slot) => *slot = Value::Object(paths),
        None => {
            doc.insert("paths".into(), Value::Object(paths));
        }
    }
}

fn is_method(name: &str) -> bool {
    ALL_METHODS.iter().any(|m| m.eq_ignore_ascii_case(name))
}

/// `text` with the first occurrence of `from` (ignoring ASCII case, as the
/// match did) replaced by `to`; an empty `from` puts `to` in front.
fn replace_first_ignoring_case(text: &str, from: &str, to: &str) -> String {
    let position = text.to_ascii_lowercase().find(&from.to_ascii_lowercase());
    match position {
        Some(at) => format!("{}{to}{}", &text[..at], &text[at + from.len()..]),
        None => text.to_string(),
    }
}

/// `localhost:8080` of `http://localhost:8080/x`.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// `/api` of `http://orders:5200/api` or of `/api`.
fn path_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |at| &rest[at..]),
        None => url,
    }
}

/// Every server URL becomes the gateway's. A document without servers is
/// left so, as MMLib leaves it: Swagger UI then sends "Try it out" to the
/// origin it loaded the document from, which is the gateway.
fn set_servers(doc: &mut Map<String, Value>, server_url: &str) {
    let gateway = Value::String(server_url.trim_end_matches('/').to_string());
    for server in doc
        .get_mut("servers")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(server) = server.as_object_mut() {
            server.insert("url".into(), gateway.clone());
        }
    }
}

/// Rule 9: drops the schemas nothing kept refers to, and the top-level tags
/// no operation uses. Everything outside the schemas section counts as a
/// referrer (paths and the other components), and kept schemas keep what
/// they refer to, so pruning never leaves a dangling `$ref`.
fn prune(doc: &mut Map<String, Value>, section: &[&str], prefix: &str) {
    let used_tags: BTreeSet<String> = doc
        .get("paths")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|paths| paths.values())
        .filter_map(Value::as_object)
        .flat_map(|item| item.iter())
        .filter(|(name, _)| is_method(name))
        .filter_map(|(_, op)| op.get("tags").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    if let Some(tags) = doc.get_mut("tags").and_then(Value::as_array_mut) {
        tags.retain(|tag| {
            tag.get("name")
                .and_then(Value::as_str)
                .is_some_and(|name| used_tags.contains(name))
        });
    }

    let Some(schemas) = take_section(doc, section) else {
        return;
    };
    let mut referenced = BTreeSet::new();
    collect_refs(&Value::Object(doc.clone()), prefix, &mut referenced);
    let mut pending: Vec<String> = referenced.iter().cloned().collect();
    while let Some(name) = pending.pop() {
        if let Some(schema) = schemas.get(&name) {
            let mut inner = BTreeSet::new();
            collect_refs(schema, prefix, &mut inner);
            for name in inner {
                if referenced.insert(name.clone()) {
                    pending.push(name);
                }
            }
        }
    }
    let kept: Map<String, Value> = schemas
        .into_iter()
        .filter(|(name, _)| referenced.contains(name))
        .collect();
    put_section(doc, section, kept);
}

fn take_section(doc: &mut Map<String, Value>, section: &[&str]) -> Option<Map<String, Value>> {
    match section {
        [name] => match doc.remove(*name) {
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                doc.insert((*name).to_string(), other);
                None
            }
            None => None,
        },
        [outer, inner] => {
            let outer = doc.get_mut(*outer)?.as_object_mut()?;
            take_section(outer, &[inner])
        }
        _ => None,
    }
}

fn put_section(doc: &mut Map<String, Value>, section: &[&str], kept: Map<String, Value>) {
    match section {
        [name] => {
            doc.insert((*name).to_string(), Value::Object(kept));
        }
        [outer, inner] => {
            if let Some(outer) = doc.get_mut(*outer).and_then(Value::as_object_mut) {
                put_section(outer, &[inner], kept);
            }
        }
        _ => {}
    }
}

/// Names of the schemas `value` refers to with `$ref: "{prefix}Name"`.
fn collect_refs(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "$ref" {
                    if let Some(name) = inner.as_str().and_then(|r| r.strip_prefix(prefix)) {
                        out.insert(unescape_pointer(name));
                    }
                } else {
                    collect_refs(inner, prefix, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_refs(i, prefix, out)),
        _ => {}
    }
}

/// JSON Pointer escapes (`~1` is `/`, `~0` is `~`) in a schema name.
fn unescape_pointer(name: &str) -> String {
    name.replace("~1", "/").replace("~0", "~")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(up: &str, down: &str, methods: &[&str]) -> DocRoute {
        DocRoute {
            upstream_template: up.into(),
            downstream_template: down.into(),
            virtual_directory: String::new(),
            methods: if methods.is_empty() {
                ALL_METHODS.iter().map(|m| m.to_string()).collect()
            } else {
                methods.iter().map(|m| m.to_string()).collect()
            },
            security: None,
        }
    }

    const OPTIONS: Options<'static> = Options {
        remove_unused_components: true,
        take_servers_from_downstream: false,
        server_url: "http://gw:8080",
    };

    fn openapi() -> Value {
        json!({
            "openapi": "3.0.1",
            "info": {"title": "Orders", "version": "v1"},
            "servers": [{"url": "http://orders:5200/api"}],
            "tags": [{"name": "Orders"}, {"name": "Admin"}],
            "paths": {
                "/orders": {
                    "get": {"tags": ["Orders"], "responses": {"200": {"content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Order"}}}}}}},
                    "post": {"tags": ["Orders"], "responses": {"201": {"description": "created"}}}
                },
                "/orders/{id}": {
                    "parameters": [{"name": "id", "in": "path", "required": true}],
                    "get": {"tags": ["Orders"], "responses": {"200": {"$ref": "#/components/responses/One"}}},
                    "delete": {"tags": ["Orders"], "responses": {"204": {"description": "gone"}}}
                },
                "/admin/purge": {"post": {"tags": ["Admin"], "responses": {"200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Purge"}}}}}}}
            },
            "components": {
                "responses": {"One": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Detail"}}}}},
                "schemas": {
                    "Order": {"allOf": [{"$ref": "#/components/schemas/Base"}]},
                    "Base": {"type": "object"},
                    "Detail": {"properties": {"lines": {"items": {"$ref": "#/components/schemas/Line"}}}},
                    "Line": {"type": "object"},
                    "Purge": {"type": "object"}
                }
            }
        })
    }

    #[test]
    fn openapi3_catch_all_rewrites_paths_drops_what_no_route_exposes_and_prunes() {
        let mut doc = openapi();
        let routes = [route(
            "/gw/orders/{everything}",
            "/api/orders/{everything}",
            &["get", "post"],
        )];
        transform(&mut doc, &routes, OPTIONS).unwrap();
        let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        assert_eq!(paths, ["/gw/orders", "/gw/orders/{id}"]);
        // DELETE is not allowed by the route; path-level parameters stay.
        assert!(doc["paths"]["/gw/orders/{id}"].get("delete").is_none());
        assert_eq!(
            doc["paths"]["/gw/orders/{id}"]["parameters"][0]["name"],
            "id"
        );
        assert_eq!(doc["servers"], json!([{"url": "http://gw:8080"}]));
        let schemas: Vec<&String> = doc["components"]["schemas"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(schemas, ["Order", "Base", "Detail", "Line"]);
        assert_eq!(doc["tags"], json!([{"name": "Orders"}]));
    }

    #[test]
    fn exact_routes_match_whole_paths_and_the_shortest_downstream_wins() {
        let mut doc = openapi();
        let routes = [
            route("/o", "/api/orders", &["get"]),
            route("/o/{everything}", "/api/orders/{everything}", &["get"]),
            route("/one/{id}", "/api/orders/{id}", &[]),
        ];
        transform(&mut doc, &routes, OPTIONS).unwrap();
        let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        assert_eq!(paths, ["/o", "/o/{id}", "/one/{id}"]);
        assert!(doc["paths"]["/one/{id}"].get("delete").is_some());
        assert!(doc["paths"]["/o"].get("post").is_none());
    }

    #[test]
    fn virtual_directory_and_security() {
        let mut doc = openapi();
        let mut r = route("/shop/{everything}", "/vd/api/{everything}", &["post"]);
        r.virtual_directory = "/VD".into();
        r.security = Some(("Bearer".into(), vec!["orders.write".into()]));
        transform(&mut doc, &[r], OPTIONS).unwrap();
        let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        assert_eq!(paths, ["/shop/admin/purge", "/shop/orders"]);
        assert_eq!(
            doc["paths"]["/shop/orders"]["post"]["security"],
            json!([{"Bearer": ["orders.write"]}])
        );
    }

    #[test]
    fn swagger2_base_path_host_and_definitions() {
        let mut doc = json!({
            "swagger": "2.0", "host": "pets:80", "schemes": ["http"], "basePath": "/v2/",
            "paths": {
                "/pets/{id}": {"get": {"responses": {"200": {"schema": {"$ref": "#/definitions/Pet"}}}}, "put": {}},
                "/store": {"get": {"responses": {"200": {"schema": {"$ref": "#/definitions/Store"}}}}}
            },
            "definitions": {"Pet": {"properties": {"tag": {"$ref": "#/definitions/Tag"}}}, "Tag": {}, "Store": {}}
        });
        let routes = [route(
            "/api/pets/{everything}",
            "/v2/pets/{everything}",
            &["get"],
        )];
        transform(&mut doc, &routes, OPTIONS).unwrap();
        assert_eq!(doc["host"], "gw:8080");
        assert_eq!(doc["basePath"], "/");
        assert!(doc.get("schemes").is_none());
        let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        assert_eq!(paths, ["/api/pets/{id}"]);
        let definitions: Vec<&String> = doc["definitions"].as_object().unwrap().keys().collect();
        assert_eq!(definitions, ["Pet", "Tag"]);
    }

    #[test]
    fn root_catch_all_prefixes_every_path_and_servers_can_be_kept() {
        let mut doc = json!({"openapi": "3.0.0", "servers": [{"url": "/base"}], "paths": {"/x": {"get": {}}}});
        let routes = [route("/svc/{everything}", "/{everything}", &[])];
        let keep = Options {
            take_servers_from_downstream: true,
            ..OPTIONS
        };
        transform(&mut doc, &routes, keep).unwrap();
        assert_eq!(doc["servers"], json!([{"url": "/base"}]));
        assert!(doc["paths"].get("/svc/x").is_some());
        // Without servers, none is added (the UI calls the document's origin).
        let mut doc = json!({"openapi": "3.0.0", "paths": {"/x": {"get": {}}}});
        transform(&mut doc, &routes, OPTIONS).unwrap();
        assert!(doc.get("servers").is_none());
    }

    #[test]
    fn unknown_documents_fail() {
        let e = transform(&mut json!({"info": {}}), &[], OPTIONS).unwrap_err();
        assert_eq!(e, "Unknown swagger/openapi version");
    }
}
