//! The JSONPath of `RouteKeysConfig[].JsonPath`, as Newtonsoft's
//! `JToken.SelectTokens` evaluates it (Ocelot's
//! `src/Multiplexer/MultiplexingMiddleware.cs`), on the RFC 9535 evaluator of
//! `serde_json_path`.
//!
//! RFC 9535 and Newtonsoft agree on what Ocelot configurations use: `$`,
//! `.name`, `['name']`, `['a','b']`, `[0]`, `[0,2]`, `[start:end:step]` and
//! the recursive `..name`, with names compared ordinally. Where Newtonsoft's
//! syntax or meaning differs, a thin adapter here keeps Newtonsoft's:
//! * A path may start with a property name instead of `$` (`user.id`), and
//!   `$` may be left out before `.` or `[`; RFC 9535 requires it.
//! * A dot name is anything up to the next `.`, `[` or space (`$.user-id`,
//!   `$.0`), where RFC 9535 only allows identifier-like names: the adapter
//!   passes every dot name as `['name']`.
//! * `.*` selects an object's property values only and `[*]` an array's
//!   items only (Newtonsoft's `FieldFilter` and `ArrayIndexFilter`); in RFC
//!   9535 both select the children of either. The adapter evaluates these
//!   two steps itself, and hands each run of other steps to `serde_json_path`.
//! * Filter (`[?(...)]`) and script expressions are refused when the
//!   configuration is loaded, as before: Newtonsoft compares with coercions
//!   of its own (`1 == '1'`), so an RFC 9535 filter would silently select
//!   something else.
//!
//! Where RFC 9535 answers and Newtonsoft throws (which Ocelot answers with
//! 500), the RFC's answer stands: a negative index (`[-1]`) selects from the
//! end of the array, a slice step of 0 selects nothing.

use serde_json::Value;

/// One step of a compiled path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// A run of segments RFC 9535 evaluates as Newtonsoft does, as one query
    /// relative to the current token.
    Query(serde_json_path::JsonPath),
    /// `.*`: an object's property values.
    AllProperties,
    /// `[*]`: an array's items.
    AllItems,
}

/// A compiled path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonPath {
    steps: Vec<Step>,
}

impl JsonPath {
    /// Parses a path; `Err` names what is wrong or unsupported.
    pub(crate) fn parse(path: &str) -> Result<JsonPath, String> {
        let mut steps = Vec::new();
        let mut query = String::new();
        let flush = |query: &mut String, steps: &mut Vec<Step>| -> Result<(), String> {
            if !query.is_empty() {
                let text = format!("${query}");
                let parsed = serde_json_path::JsonPath::parse(&text).map_err(|e| e.to_string())?;
                steps.push(Step::Query(parsed));
                query.clear();
            }
            Ok(())
        };
        for segment in segments(path)? {
            match segment {
                Segment::Rfc(text) => query.push_str(&text),
                Segment::AllProperties | Segment::AllItems => {
                    flush(&mut query, &mut steps)?;
                    steps.push(if segment == Segment::AllItems {
                        Step::AllItems
                    } else {
                        Step::AllProperties
                    });
                }
            }
        }
        flush(&mut query, &mut steps)?;
        Ok(JsonPath { steps })
    }

    /// The tokens the path selects, in document order.
    pub(crate) fn select<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut current = vec![root];
        for step in &self.steps {
            let mut next = Vec::new();
            for v in current {
                match (step, v) {
                    (Step::Query(q), v) => next.extend(q.query(v)),
                    (Step::AllProperties, Value::Object(map)) => next.extend(map.values()),
                    (Step::AllItems, Value::Array(items)) => next.extend(items.iter()),
                    _ => {}
                }
            }
            current = next;
        }
        current
    }
}

/// A path segment in Newtonsoft's syntax, rewritten for RFC 9535 where the
/// two agree.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// RFC 9535 text of one segment (`['name']`, `[0,2]`, `..['name']`).
    Rfc(String),
    AllProperties,
    AllItems,
}

/// Splits a Newtonsoft path into segments.
fn segments(path: &str) -> Result<Vec<Segment>, String> {
    let s = path.trim();
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    match b.first() {
        Some(b'$') => i = 1,
        // Newtonsoft accepts a leading property name without `$.`.
        Some(c) if *c != b'.' && *c != b'[' => {
            let (name, next) = name(s, 0)?;
            out.push(Segment::Rfc(quoted(name)));
            i = next;
        }
        _ => {}
    }
    while let Some(&c) = b.get(i) {
        match c {
            b'.' if b.get(i + 1) == Some(&b'.') => {
                i += 2;
                match b.get(i) {
                    Some(b'[') => {
                        let (inner, next) = bracket(s, i)?;
                        out.push(Segment::Rfc(format!("..[{inner}]")));
                        i = next;
                    }
                    Some(b'*') => {
                        out.push(Segment::Rfc("..*".to_string()));
                        i += 1;
                    }
                    _ => {
                        let (name, next) = name(s, i)?;
                        out.push(Segment::Rfc(format!("..{}", quoted(name))));
                        i = next;
                    }
                }
            }
            b'.' if b.get(i + 1) == Some(&b'*') => {
                out.push(Segment::AllProperties);
                i += 2;
            }
            b'.' => {
                let (name, next) = name(s, i + 1)?;
                out.push(Segment::Rfc(quoted(name)));
                i = next;
            }
            b'[' => {
                let (inner, next) = bracket(s, i)?;
                out.push(if inner.trim() == "*" {
                    Segment::AllItems
                } else {
                    Segment::Rfc(format!("[{inner}]"))
                });
                i = next;
            }
            c if c.is_ascii_whitespace() => i += 1,
            other => return Err(format!("unexpected '{}' at {i}", other as char)),
        }
    }
    Ok(out)
}

/// A dot name starting at `start`: up to the next `.`, `[` or white space.
fn name(s: &str, start: usize) -> Result<(&str, usize), String> {
    let end = s[start..]
        .find(|c: char| c == '.' || c == '[' || c.is_ascii_whitespace())
        .map_or(s.len(), |n| start + n);
    if end == start {
        return Err(format!("a property name is missing at {start}"));
    }
    Ok((&s[start..end], end))
}

/// The inside of the `[...]` opening at `open`, and where it ends; a `]`
/// inside quotes does not close it. Filters and scripts are refused.
fn bracket(s: &str, open: usize) -> Result<(&str, usize), String> {
    let b = s.as_bytes();
    let mut quote = None;
    let mut i = open + 1;
    while let Some(&c) = b.get(i) {
        match quote {
            Some(_) if c == b'\\' => i += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if c == b']' => {
                let inner = &s[open + 1..i];
                if inner.trim_start().starts_with(['?', '(']) {
                    return Err("filter and script expressions are not supported".to_string());
                }
                return Ok((inner, i + 1));
            }
            None => {}
        }
        i += 1;
    }
    Err(format!("'[' at {open} is not closed"))
}

/// `name` as an RFC 9535 name selector, `['name']`.
fn quoted(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    out.push_str("['");
    for c in name.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push_str("']");
    out
}

/// `JToken.ToString()` of a selected token, which Ocelot uses as the
/// placeholder value: strings raw, `True`/`False`, `null` empty, numbers as
/// written, objects and arrays indented.
pub(crate) fn token_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".to_string(),
        Value::Bool(false) => "False".to_string(),
        Value::Null => String::new(),
        Value::Number(n) => n.to_string(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(path: &str, v: &Value) -> Vec<String> {
        JsonPath::parse(path)
            .expect(path)
            .select(v)
            .into_iter()
            .map(token_string)
            .collect()
    }

    #[test]
    fn newtonsoft_paths() {
        let comments =
            json!([{"id": 1, "writerId": 1, "postId": 2}, {"id": 2, "writerId": 3, "postId": 2}]);
        assert_eq!(strings("$[*].writerId", &comments), ["1", "3"]);
        assert_eq!(strings("$[1].id", &comments), ["2"]);
        assert_eq!(strings("$[0,1].postId", &comments), ["2", "2"]);
        assert_eq!(strings("$[-1:].id", &comments), ["2"]);
        assert_eq!(strings("$..writerId", &comments), ["1", "3"]);
        assert!(
            strings("$.*", &comments).is_empty(),
            ".* selects object values only"
        );
        let doc = json!({"user": {"id": "u-1", "ok": true, "Tags": ["a", "b"]}, "n": null});
        assert_eq!(strings("$.user.id", &doc), ["u-1"]);
        assert_eq!(strings("user['ok']", &doc), ["True"]);
        assert_eq!(strings("$.user.Tags[*]", &doc), ["a", "b"]);
        assert!(
            strings("$.user.tags[*]", &doc).is_empty(),
            "names are case-sensitive"
        );
        assert_eq!(strings("$.n", &doc), [""]);
        assert_eq!(
            strings("$[*]", &doc).len(),
            0,
            "[*] selects array items only"
        );
        assert!(JsonPath::parse("$[?(@.id == 1)]").is_err());
        assert!(JsonPath::parse("$[0").is_err());
    }

    #[test]
    fn newtonsoft_syntax_beyond_rfc_9535() {
        let doc = json!({"user-id": 7, "0": "zero", "it's": 1, "a": {"b": [10, 20, 30]}});
        assert_eq!(strings("$.user-id", &doc), ["7"], "any dot name");
        assert_eq!(strings("$.0", &doc), ["zero"]);
        assert_eq!(strings("it's", &doc), ["1"], "a leading name, quoted");
        assert_eq!(strings(".a.b[1]", &doc), ["20"], "no $");
        assert_eq!(strings("$ .a .b [2]", &doc), ["30"], "spaces between steps");
        assert_eq!(strings("$..b[*]", &doc), ["10", "20", "30"]);
        assert_eq!(strings("$['a'][\"b\"][0:3:2]", &doc), ["10", "30"]);
        assert_eq!(strings("$.a.*[1]", &doc), ["20"], ".* then more steps");
        assert_eq!(strings("$", &doc).len(), 1);
        assert_eq!(
            strings("$['a.b', 'a']", &doc).len(),
            1,
            "a quoted '.' is a name"
        );
        assert!(JsonPath::parse("$['a'").is_err());
        assert!(JsonPath::parse("$.a[(@.length-1)]").is_err(), "script");
        assert!(JsonPath::parse("$.").is_err());
    }
}
