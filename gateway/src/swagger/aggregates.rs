//! The `aggregates` pseudo-endpoint of MMLib.SwaggerForOcelot
//! (`GenerateDocsForAggregates`, its
//! `Aggregates/AggregateRouteDocumentationGenerator.cs`): one GET operation
//! per `Aggregates[]` entry, its parameters the union of its routes'
//! (renamed through each route's `ParametersMap`), its 200 response a JSON
//! object with one property per route key holding that route's 200 schema,
//! which is what Ocelot's default aggregator answers.

use ocelot_compat::model::{Dict, FileConfiguration};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// The key and version under which the document is served and listed.
pub(crate) const KEY: &str = "aggregates";
pub(crate) const VERSION: &str = "v1";
pub(crate) const NAME: &str = "Aggregates";

/// One aggregate, compiled.
pub(crate) struct AggregateDoc {
    pub(crate) upstream_template: String,
    pub(crate) description: Option<String>,
    pub(crate) members: Vec<Member>,
}

/// One route of an aggregate and where its operation is documented.
pub(crate) struct Member {
    pub(crate) route_key: String,
    /// The endpoint documenting the route (its `SwaggerKey`), if any.
    pub(crate) endpoint: Option<usize>,
    /// The route's path in that endpoint's transformed document.
    pub(crate) path: String,
    pub(crate) parameters_map: Dict,
}

/// The aggregates of `config`, their routes found by `Key` and documented
/// by the endpoint their `SwaggerKey` names (`endpoint_index`).
pub(crate) fn compile(
    config: &FileConfiguration,
    endpoint_index: impl Fn(&str) -> Option<usize>,
) -> Vec<AggregateDoc> {
    config
        .aggregates
        .iter()
        .map(|a| AggregateDoc {
            upstream_template: a.upstream_path_template.clone().unwrap_or_default(),
            description: a.description.clone().filter(|d| !d.trim().is_empty()),
            members: a
                .route_keys
                .iter()
                .map(|key| {
                    let route = config
                        .routes
                        .iter()
                        .find(|r| r.key.as_deref() == Some(key.as_str()));
                    Member {
                        route_key: key.clone(),
                        endpoint: route
                            .and_then(|r| r.swagger_key.as_deref())
                            .and_then(&endpoint_index),
                        path: route
                            .and_then(|r| r.upstream_path_template.as_deref())
                            .unwrap_or("")
                            .replace("{everything}", "")
                            .trim_end_matches('/')
                            .to_string(),
                        parameters_map: route.map(|r| r.parameters_map.clone()).unwrap_or_default(),
                    }
                })
                .collect(),
        })
        .collect()
}

/// The aggregates document; `member_docs[i][j]` is the transformed
/// document of aggregate `i`'s route `j`, when it could be had.
pub(crate) fn document(aggregates: &[AggregateDoc], member_docs: &[Vec<Option<Value>>]) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for (aggregate, docs) in aggregates.iter().zip(member_docs) {
        let mut parameters: Vec<Value> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut properties = Map::new();
        let mut summaries = Vec::new();
        for (member, doc) in aggregate.members.iter().zip(docs) {
            let operation = doc
                .as_ref()
                .and_then(|d| d.get("paths")?.get(&member.path))
                .map(|item| (item, item.get("get")));
            let Some((item, Some(operation))) = operation else {
                properties.insert(member.route_key.clone(), json!({}));
                continue;
            };
            let Some(doc) = doc.as_ref() else {
                continue;
            };
            if let Some(summary) = operation.get("summary").and_then(Value::as_str) {
                summaries.push(format!("{}: {summary}", member.route_key));
            }
            let shared = item.get("parameters").and_then(Value::as_array);
            let own = operation.get("parameters").and_then(Value::as_array);
            for parameter in shared.into_iter().chain(own).flatten() {
                let mut parameter = as_openapi3_parameter(parameter);
                if let Some(name) = parameter.get("name").and_then(Value::as_str) {
                    let renamed = member
                        .parameters_map
                        .iter()
                        .find(|(_, downstream)| downstream == name)
                        .map(|(placeholder, _)| placeholder.clone());
                    if let Some(renamed) = renamed {
                        parameter["name"] = Value::String(renamed);
                    }
                }
                let id = (
                    parameter
                        .get("name")
                        .cloned()
                        .unwrap_or(Value::Null)
                        .to_string(),
                    parameter
                        .get("in")
                        .cloned()
                        .unwrap_or(Value::Null)
                        .to_string(),
                );
                if seen.insert(id) {
                    parameters.push(parameter);
                }
            }
            let schema = ok_schema(operation).unwrap_or_else(|| json!({}));
            copy_referenced(doc, &schema, &mut schemas);
            properties.insert(member.route_key.clone(), rewrite_refs(schema));
        }
        let keys: Vec<&str> = aggregate
            .members
            .iter()
            .map(|m| m.route_key.as_str())
            .collect();
        let description = aggregate.description.clone().unwrap_or_else(|| {
            let mut text = format!("Aggregation of routes: {}.", keys.join(", "));
            if !summaries.is_empty() {
                text.push(' ');
                text.push_str(&summaries.join("; "));
            }
            text
        });
        let operation = json!({
            "tags": [NAME],
            "description": description,
            "parameters": parameters,
            "responses": {"200": {"description": "Success", "content": {"application/json": {
                "schema": {"type": "object", "properties": properties}
            }}}}
        });
        paths.insert(
            aggregate.upstream_template.clone(),
            json!({ "get": operation }),
        );
    }
    let mut sorted: Vec<(String, Value)> = paths.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    json!({
        "openapi": "3.0.1",
        "info": {"title": NAME, "version": VERSION},
        "paths": Map::from_iter(sorted),
        "components": {"schemas": schemas}
    })
}

/// Swagger 2 puts `type` on the parameter, OpenAPI 3 in its `schema`.
fn as_openapi3_parameter(parameter: &Value) -> Value {
    let mut parameter = parameter.clone();
    if let Some(p) = parameter.as_object_mut() {
        if !p.contains_key("schema") {
            let mut schema = Map::new();
            for key in ["type", "format", "items", "enum", "default"] {
                if let Some(v) = p.remove(key) {
                    schema.insert(key.to_string(), v);
                }
            }
            if !schema.is_empty() {
                p.insert("schema".into(), Value::Object(schema));
            }
        }
    }
    parameter
}

/// The JSON schema of an operation's 200 response (OpenAPI 3 or Swagger 2).
fn ok_schema(operation: &Value) -> Option<Value> {
    let ok = operation.get("responses")?.get("200")?;
    if let Some(schema) = ok.get("schema") {
        return Some(schema.clone());
    }
    let content = ok.get("content")?.as_object()?;
    let media = content
        .get("application/json")
        .or_else(|| content.values().next())?;
    media.get("schema").cloned()
}

/// Swagger 2's `#/definitions/X` as OpenAPI 3's `#/components/schemas/X`.
fn rewrite_refs(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => {
                            Value::String(r.replacen("#/definitions/", "#/components/schemas/", 1))
                        }
                        (_, v) => rewrite_refs(v),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(rewrite_refs).collect()),
        other => other,
    }
}

/// Copies the schemas `schema` refers to (and theirs) from `doc` into `out`.
fn copy_referenced(doc: &Value, schema: &Value, out: &mut Map<String, Value>) {
    let section = doc
        .get("definitions")
        .or_else(|| doc.get("components").and_then(|c| c.get("schemas")));
    let Some(section) = section.and_then(Value::as_object) else {
        return;
    };
    let mut pending = vec![schema.clone()];
    while let Some(value) = pending.pop() {
        let mut names = BTreeSet::new();
        refs(&value, &mut names);
        for name in names {
            if out.contains_key(&name) {
                continue;
            }
            if let Some(found) = section.get(&name) {
                out.insert(name, rewrite_refs(found.clone()));
                pending.push(found.clone());
            }
        }
    }
}

fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner.as_str()) {
                    ("$ref", Some(r)) => {
                        let name = r
                            .strip_prefix("#/definitions/")
                            .or_else(|| r.strip_prefix("#/components/schemas/"));
                        if let Some(name) = name {
                            out.insert(name.to_string());
                        }
                    }
                    _ => refs(inner, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| refs(i, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_get_per_aggregate_with_its_routes_schemas_and_parameters() {
        let aggregates = vec![AggregateDoc {
            upstream_template: "/basket-with-user/{id}".into(),
            description: None,
            members: vec![
                Member {
                    route_key: "user".into(),
                    endpoint: Some(0),
                    path: "/users/{id}".into(),
                    parameters_map: Vec::new(),
                },
                Member {
                    route_key: "basket".into(),
                    endpoint: Some(1),
                    path: "/baskets/{buyerId}".into(),
                    parameters_map: vec![("id".into(), "buyerId".into())],
                },
            ],
        }];
        let users = json!({"openapi": "3.0.1", "paths": {"/users/{id}": {"get": {"summary": "A user",
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/User"}}}}}}}},
            "components": {"schemas": {"User": {"properties": {"address": {"$ref": "#/components/schemas/Address"}}}, "Address": {}, "Other": {}}}});
        let baskets = json!({"swagger": "2.0", "paths": {"/baskets/{buyerId}": {"get": {
            "parameters": [{"name": "buyerId", "in": "path", "required": true, "type": "string"}],
            "responses": {"200": {"schema": {"$ref": "#/definitions/Basket"}}}}}},
            "definitions": {"Basket": {"type": "object"}}});
        let doc = document(&aggregates, &[vec![Some(users), Some(baskets)]]);
        let op = &doc["paths"]["/basket-with-user/{id}"]["get"];
        assert_eq!(
            op["parameters"],
            json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}])
        );
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"],
            json!({"type": "object", "properties": {
                "user": {"$ref": "#/components/schemas/User"},
                "basket": {"$ref": "#/components/schemas/Basket"}
            }})
        );
        let schemas: BTreeSet<&String> = doc["components"]["schemas"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(
            schemas,
            BTreeSet::from([
                &"Address".to_string(),
                &"Basket".to_string(),
                &"User".to_string()
            ])
        );
        assert_eq!(
            op["description"],
            "Aggregation of routes: user, basket. user: A user"
        );
    }
}
