//! The JSONPath of `RouteKeysConfig[].JsonPath`, as Newtonsoft's
//! `JToken.SelectTokens` evaluates it (Ocelot's `MultiplexingMiddleware`):
//! `$`, `.name`, `['name']`, `['a','b']`, `.*`, `[*]`, `[0]`, `[0,2]`,
//! `[start:end:step]` and the recursive `..name` / `..*`. Names compare
//! ordinally; `.*` selects an object's values and `[*]` an array's items, as
//! in Newtonsoft. Filter expressions (`[?(...)]`) are not supported: such a
//! path is refused when the configuration is loaded.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// `.name`, `['name']`, `['a','b']`.
    Names(Vec<String>),
    /// `.*`: an object's property values.
    AllProperties,
    /// `[*]`: an array's items.
    AllItems,
    /// `[0]`, `[0,2]`.
    Indexes(Vec<i64>),
    /// `[start:end:step]`.
    Slice(Option<i64>, Option<i64>, Option<i64>),
    /// `..` before the next step: apply it to every descendant too.
    Recursive(Box<Step>),
}

/// A compiled path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonPath {
    steps: Vec<Step>,
}

impl JsonPath {
    /// Parses a path; `Err` names what is wrong or unsupported.
    pub(crate) fn parse(path: &str) -> Result<JsonPath, String> {
        let mut p = Parser {
            s: path.trim().as_bytes(),
            i: 0,
        };
        let mut steps = Vec::new();
        if p.peek() == Some(b'$') {
            p.i += 1;
        } else if p.peek().is_some_and(|c| c != b'.' && c != b'[') {
            // Newtonsoft accepts a leading property name without `$.`.
            steps.push(Step::Names(vec![p.name()?]));
        }
        while let Some(c) = p.peek() {
            match c {
                b'.' if p.s.get(p.i + 1) == Some(&b'.') => {
                    p.i += 2;
                    let step = match p.peek() {
                        Some(b'[') => p.bracket()?,
                        Some(b'*') => {
                            p.i += 1;
                            Step::AllProperties
                        }
                        _ => Step::Names(vec![p.name()?]),
                    };
                    steps.push(Step::Recursive(Box::new(step)));
                }
                b'.' => {
                    p.i += 1;
                    if p.peek() == Some(b'*') {
                        p.i += 1;
                        steps.push(Step::AllProperties);
                    } else {
                        steps.push(Step::Names(vec![p.name()?]));
                    }
                }
                b'[' => steps.push(p.bracket()?),
                c if c.is_ascii_whitespace() => p.i += 1,
                other => return Err(format!("unexpected '{}' at {}", other as char, p.i)),
            }
        }
        Ok(JsonPath { steps })
    }

    /// The tokens the path selects, in document order.
    pub(crate) fn select<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut current = vec![root];
        for step in &self.steps {
            let mut next = Vec::new();
            for v in current {
                apply(step, v, &mut next);
            }
            current = next;
        }
        current
    }
}

fn apply<'a>(step: &Step, v: &'a Value, out: &mut Vec<&'a Value>) {
    match step {
        Step::Names(names) => {
            if let Value::Object(map) = v {
                out.extend(names.iter().filter_map(|n| map.get(n)));
            }
        }
        Step::AllProperties => {
            if let Value::Object(map) = v {
                out.extend(map.values());
            }
        }
        Step::AllItems => {
            if let Value::Array(items) = v {
                out.extend(items.iter());
            }
        }
        Step::Indexes(indexes) => {
            if let Value::Array(items) = v {
                out.extend(
                    indexes
                        .iter()
                        .filter_map(|i| usize::try_from(*i).ok().and_then(|i| items.get(i))),
                );
            }
        }
        Step::Slice(start, end, step) => {
            if let Value::Array(items) = v {
                slice(items, *start, *end, step.unwrap_or(1), out);
            }
        }
        Step::Recursive(inner) => {
            // Every descendant, in document order, gets the inner step.
            let mut stack = vec![v];
            while let Some(node) = stack.pop() {
                apply(inner, node, out);
                match node {
                    Value::Object(map) => stack.extend(map.values().rev()),
                    Value::Array(items) => stack.extend(items.iter().rev()),
                    _ => {}
                }
            }
        }
    }
}

fn slice<'a>(
    items: &'a [Value],
    start: Option<i64>,
    end: Option<i64>,
    step: i64,
    out: &mut Vec<&'a Value>,
) {
    let len = items.len() as i64;
    let clamp = |i: i64| if i < 0 { (len + i).max(0) } else { i.min(len) };
    if step > 0 {
        let (mut i, end) = (clamp(start.unwrap_or(0)), clamp(end.unwrap_or(len)));
        while i < end {
            out.push(&items[i as usize]);
            i += step;
        }
    } else if step < 0 {
        let mut i = start.map_or(len - 1, |s| clamp(s).min(len - 1));
        let end = end.map_or(-1, clamp);
        while i > end && i >= 0 {
            out.push(&items[i as usize]);
            i += step;
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn name(&mut self) -> Result<String, String> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == b'.' || c == b'[' || c.is_ascii_whitespace() {
                break;
            }
            self.i += 1;
        }
        if start == self.i {
            return Err(format!("a property name is missing at {start}"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn bracket(&mut self) -> Result<Step, String> {
        let open = self.i;
        self.i += 1;
        let Some(close) = self.s[self.i..]
            .iter()
            .position(|c| *c == b']')
            .map(|p| p + self.i)
        else {
            return Err(format!("'[' at {open} is not closed"));
        };
        let inner = String::from_utf8_lossy(&self.s[self.i..close])
            .trim()
            .to_string();
        self.i = close + 1;
        if inner.starts_with('?') || inner.starts_with('(') {
            return Err("filter and script expressions are not supported".to_string());
        }
        if inner == "*" {
            return Ok(Step::AllItems);
        }
        if inner.starts_with('\'') || inner.starts_with('"') {
            let names = inner
                .split(',')
                .map(|n| {
                    let n = n.trim();
                    let q = n.chars().next().unwrap_or('\'');
                    n.strip_prefix(q)
                        .and_then(|n| n.strip_suffix(q))
                        .map(str::to_string)
                        .ok_or_else(|| format!("bad quoted name {n}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Step::Names(names));
        }
        let number = |s: &str| -> Result<Option<i64>, String> {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            s.parse::<i64>()
                .map(Some)
                .map_err(|_| format!("'{s}' is not an index"))
        };
        if inner.contains(':') {
            let parts: Vec<&str> = inner.split(':').collect();
            if parts.len() > 3 {
                return Err(format!("bad slice [{inner}]"));
            }
            let step = match parts.get(2) {
                Some(s) => number(s)?,
                None => None,
            };
            if step == Some(0) {
                return Err("a slice step cannot be 0".to_string());
            }
            return Ok(Step::Slice(number(parts[0])?, number(parts[1])?, step));
        }
        let indexes = inner
            .split(',')
            .map(|s| number(s).and_then(|n| n.ok_or_else(|| format!("bad index list [{inner}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Step::Indexes(indexes))
    }
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
}
