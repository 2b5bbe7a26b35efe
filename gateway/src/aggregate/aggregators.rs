//! The aggregators: Ocelot's built-in `SimpleJsonResponseAggregator` and the
//! gateway's built-in kinds that replace .NET `IDefinedAggregator` classes
//! (`abp_merge`: what abp-next-admin's `AbpResponseMergeAggregator` does).

use crate::answer::{Answer, Refusal};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// What one sub-request produced.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// The service's response (or the QoS middleware's synthetic 503): not an
    /// error for Ocelot, whatever its status.
    Response { body: Bytes },
    /// An error of the gateway's own pipeline (Ocelot's `Errors`).
    Error(SubError),
}

/// An Ocelot pipeline error: the status it maps to and, when the pipeline
/// refused the sub-request, the refusal (whose answer the aggregate gives).
#[derive(Debug, Clone)]
pub(crate) struct SubError {
    pub(crate) status: u16,
    /// What went wrong, for logs and the `abp_merge` error body.
    pub(crate) message: String,
    pub(crate) refusal: Option<Refusal>,
}

impl SubError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> SubError {
        SubError {
            status,
            message: message.into(),
            refusal: None,
        }
    }

    /// How Ocelot's responder answers a pipeline error: the status, an
    /// empty body, except where the refusal has an answer of its own (the
    /// rate limiter's).
    pub(crate) fn answer(&self) -> Answer {
        match &self.refusal {
            Some(refusal) => refusal.answer(),
            None => Answer::empty(self.status),
        }
    }
}

/// One sub-request's result under its route key.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) key: String,
    pub(crate) outcome: Outcome,
}

fn json(status: u16, body: impl Into<Bytes>) -> Answer {
    Answer {
        content_type: Some("application/json"),
        body: body.into(),
        ..Answer::empty(status)
    }
}

/// Ocelot's `SimpleJsonResponseAggregator`: `{"Key":<body>,...}` byte for
/// byte, keys in order of first appearance, bodies inserted verbatim (even
/// when empty or not JSON), status codes ignored; a key with several
/// responses (a `RouteKeysConfig` fan-out) becomes `[b1,b2]` with empty
/// bodies skipped (Ocelot's separator logic, trailing comma included). The
/// first error met in that order is the whole answer.
pub(crate) fn simple(parts: &[Part]) -> Answer {
    let mut keys: Vec<&str> = Vec::new();
    for p in parts {
        if !keys.contains(&p.key.as_str()) {
            keys.push(&p.key);
        }
    }
    let mut out = Vec::with_capacity(
        parts
            .iter()
            .map(|p| body_len(&p.outcome) + p.key.len() + 4)
            .sum::<usize>()
            + 2,
    );
    out.push(b'{');
    for (k, key) in keys.iter().enumerate() {
        let group: Vec<&Outcome> = parts
            .iter()
            .filter(|p| p.key == *key)
            .map(|p| &p.outcome)
            .collect();
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        if let [single] = group.as_slice() {
            match single {
                Outcome::Error(e) => return e.answer(),
                Outcome::Response { body, .. } => out.extend_from_slice(body),
            }
        } else {
            out.push(b'[');
            for (i, outcome) in group.iter().enumerate() {
                let body = match outcome {
                    Outcome::Error(e) => return e.answer(),
                    Outcome::Response { body, .. } => body,
                };
                if String::from_utf8_lossy(body).trim().is_empty() {
                    continue;
                }
                out.extend_from_slice(body);
                if i + 1 < group.len() {
                    out.push(b',');
                }
            }
            out.push(b']');
        }
        if k + 1 < keys.len() {
            out.push(b',');
        }
    }
    out.push(b'}');
    json(200, out)
}

fn body_len(o: &Outcome) -> usize {
    match o {
        Outcome::Response { body, .. } => body.len(),
        Outcome::Error(_) => 0,
    }
}

/// abp-next-admin's `AbpResponseMergeAggregator`: the responses' JSON
/// objects deep-merged in order (Newtonsoft `JObject.Merge` with
/// `MergeArrayHandling.Union` and case-insensitive property names), 200 with
/// the indented result.
///
/// A sub-request error answers its status with the error message as the
/// body (`application/json`, as abp does), unless `ignore_errors`, which
/// skips it. A body that is not JSON, or a first one that is not an object,
/// answers 500; nothing to merge (every part ignored) answers 404. The
/// services' status codes are not looked at: an error body from a service is
/// merged like any other object.
pub(crate) fn abp_merge(parts: &[Part], ignore_errors: bool) -> Answer {
    let mut merged: Option<Map<String, Value>> = None;
    for part in parts {
        let body = match &part.outcome {
            Outcome::Error(e) if ignore_errors => {
                log::warn!(
                    "aggregate: route {} failed ({} {}); ignored as configured",
                    part.key,
                    e.status,
                    e.message
                );
                continue;
            }
            Outcome::Error(e) => {
                let body = match &e.refusal {
                    // The rate limiter's refusals keep the limiter's own body.
                    Some(
                        refusal @ (Refusal::QuotaExceeded(_)
                        | Refusal::UnidentifiedClient(_)
                        | Refusal::RateLimitUnavailable),
                    ) => refusal.answer().body,
                    _ => Bytes::from(e.message.clone()),
                };
                return json(e.status, body);
            }
            Outcome::Response { body, .. } => body,
        };
        // Newtonsoft reads an empty body as null.
        let value = if String::from_utf8_lossy(body).trim().is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(v) => v,
                Err(e) => {
                    log::warn!(
                        "aggregate: route {} answered a body that is not JSON: {e}",
                        part.key
                    );
                    return Answer::empty(500);
                }
            }
        };
        match (&mut merged, value) {
            (Some(target), Value::Object(source)) => merge_object(target, source),
            // JObject.Merge ignores anything but an object.
            (Some(_), _) => {}
            (None, Value::Object(first)) => merged = Some(first),
            (None, _) => {
                log::warn!(
                    "aggregate: route {} answered JSON that is not an object; cannot merge",
                    part.key
                );
                return Answer::empty(500);
            }
        }
    }
    match merged {
        Some(object) => match serde_json::to_vec_pretty(&Value::Object(object)) {
            Ok(body) => json(200, body),
            Err(_) => Answer::empty(500),
        },
        None => Answer::empty(404),
    }
}

/// `JObject.MergeItem`: new properties are added; objects merge into
/// objects, arrays into arrays (union); a null never replaces a value; any
/// other value replaces the old one. The first spelling of a name is kept.
fn merge_object(target: &mut Map<String, Value>, source: Map<String, Value>) {
    // Lower-cased name → the spelling in `target` (the first one wins), so a
    // merge costs one pass over each side, not a scan per property.
    let mut spelled: HashMap<String, String> = HashMap::with_capacity(target.len());
    for name in target.keys() {
        spelled
            .entry(name.to_lowercase())
            .or_insert_with(|| name.clone());
    }
    for (name, value) in source {
        let existing = if target.contains_key(&name) {
            Some(name.clone())
        } else {
            spelled.get(&name.to_lowercase()).cloned()
        };
        let Some(existing) = existing else {
            spelled
                .entry(name.to_lowercase())
                .or_insert_with(|| name.clone());
            target.insert(name, value);
            continue;
        };
        let Some(slot) = target.get_mut(&existing) else {
            continue;
        };
        match (slot, value) {
            (Value::Object(a), Value::Object(b)) => merge_object(a, b),
            (Value::Array(a), Value::Array(b)) => union(a, b),
            (_, Value::Null) => {}
            (slot, value) => *slot = value,
        }
    }
}

/// `MergeArrayHandling.Union`: items not already present (deep equality,
/// property order ignored) are appended.
fn union(target: &mut Vec<Value>, source: Vec<Value>) {
    let mut seen: HashSet<String> = target.iter().map(canonical).collect();
    for item in source {
        if seen.insert(canonical(&item)) {
            target.push(item);
        }
    }
}

/// A text equal for deep-equal values: objects with sorted property names,
/// numbers compared by value (`1` and `1.0` are equal, as in JToken.DeepEquals).
fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (name, value) in entries {
                out.push_str(&Value::String(name.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for item in items {
                write_canonical(item, out);
                out.push(',');
            }
            out.push(']');
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                out.push_str(&(f as i64).to_string())
            }
            _ => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(key: &str, body: &str) -> Part {
        Part {
            key: key.to_string(),
            outcome: Outcome::Response {
                body: Bytes::copy_from_slice(body.as_bytes()),
            },
        }
    }

    fn err(key: &str, status: u16) -> Part {
        Part {
            key: key.to_string(),
            outcome: Outcome::Error(SubError::new(
                status,
                "Error connecting to downstream service",
            )),
        }
    }

    #[test]
    fn simple_is_byte_exact() {
        let a = simple(&[ok("Tom", r#"{"Age": 19}"#), ok("Laura", r#"{"Age": 25}"#)]);
        assert_eq!((a.status, a.content_type), (200, Some("application/json")));
        assert_eq!(&a.body[..], br#"{"Tom":{"Age": 19},"Laura":{"Age": 25}}"#);
        // Empty 404 bodies are inserted as they are: not JSON, as in Ocelot.
        assert_eq!(
            &simple(&[ok("Laura", ""), ok("Tom", "x")]).body[..],
            br#"{"Laura":,"Tom":x}"#
        );
        // Fan-out: several responses for one key.
        let a = simple(&[ok("c", "[1]"), ok("u", "{\"id\":1}"), ok("u", "{\"id\":2}")]);
        assert_eq!(&a.body[..], br#"{"c":[1],"u":[{"id":1},{"id":2}]}"#);
        assert_eq!(
            &simple(&[ok("u", "1"), ok("u", "")]).body[..],
            br#"{"u":[1,]}"#
        );
        // The first error wins.
        let a = simple(&[ok("a", "1"), err("b", 502), err("c", 503)]);
        assert_eq!((a.status, a.body.len()), (502, 0));
    }

    #[test]
    fn abp_merge_deep_merges_case_insensitively() {
        let parts = [
            ok(
                "platform",
                r#"{"localization":{"values":{"Platform":{"Hello":"Hi"}}},"auth":{"grantedPolicies":{"A":true}},"features":{"values":{}},"list":[1,{"x":1}]}"#,
            ),
            ok(
                "admin",
                r#"{"Localization":{"values":{"Admin":{"Save":"Save"}}},"auth":{"grantedPolicies":{"B":true}},"currentUser":null,"list":[{"x":1.0},2]}"#,
            ),
            ok(
                "messages",
                r#"{"auth":{"grantedPolicies":{"A":false}},"currentUser":{"id":"u1"}}"#,
            ),
        ];
        let a = abp_merge(&parts, false);
        assert_eq!((a.status, a.content_type), (200, Some("application/json")));
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(
            v,
            json!({
                "localization": {"values": {"Platform": {"Hello": "Hi"}, "Admin": {"Save": "Save"}}},
                "auth": {"grantedPolicies": {"A": false, "B": true}},
                "features": {"values": {}},
                "list": [1, {"x": 1}, 2],
                "currentUser": {"id": "u1"}
            })
        );
        assert!(
            a.body.starts_with(b"{\n  \""),
            "indented like JToken.ToString()"
        );
    }

    #[test]
    fn abp_merge_errors() {
        let parts = [ok("a", r#"{"x":1}"#), err("b", 502)];
        let a = abp_merge(&parts, false);
        assert_eq!(a.status, 502);
        let a = abp_merge(&parts, true);
        assert_eq!(a.status, 200);
        assert_eq!(abp_merge(&[err("b", 503)], true).status, 404);
        assert_eq!(abp_merge(&[ok("a", "not json")], false).status, 500);
        assert_eq!(abp_merge(&[ok("a", "[1]")], false).status, 500);
        assert_eq!(
            abp_merge(&[ok("a", "{}"), ok("b", "[1]"), ok("c", "")], false).status,
            200
        );
    }
}
