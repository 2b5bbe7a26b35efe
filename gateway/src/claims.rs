//! The claims of an authenticated request and Ocelot's "claims to things"
//! transforms: `AddClaimsToRequest`, `AddHeadersToRequest`,
//! `AddQueriesToRequest` and `ChangeDownstreamPathTemplate`
//! (`src/Configuration/Parser/ClaimToThingConfigurationParser.cs`,
//! `src/Infrastructure/Claims/ClaimsParser.cs`).
//!
//! Each dictionary is parsed once when the route is compiled; a request only
//! looks claims up and copies strings.

use crate::diagnostics::Warnings;
use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// The claims of a request as (type, value) pairs in token order: the shape of
/// a .NET `ClaimsPrincipal`, which is what Ocelot's features read. A JSON array
/// claim becomes one pair per element, as ASP.NET's JWT handler does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Claims(Vec<(String, String)>);

impl Claims {
    #[cfg(test)]
    /// Claims from (type, value) pairs.
    pub(crate) fn new(pairs: Vec<(String, String)>) -> Claims {
        Claims(pairs)
    }

    /// The claims of a JWT payload. Strings are taken as they are, numbers and
    /// booleans as their JSON text, objects as compact JSON; arrays give one
    /// claim per element; `null` gives none.
    pub(crate) fn from_json(payload: &Map<String, Value>) -> Claims {
        let mut pairs = Vec::with_capacity(payload.len());
        for (name, value) in payload {
            match value {
                Value::Array(items) => {
                    for item in items {
                        if let Some(text) = claim_text(item) {
                            pairs.push((name.clone(), text));
                        }
                    }
                }
                other => {
                    if let Some(text) = claim_text(other) {
                        pairs.push((name.clone(), text));
                    }
                }
            }
        }
        Claims(pairs)
    }

    #[cfg(test)]
    /// Every (type, value) pair.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(t, v)| (t.as_str(), v.as_str()))
    }

    /// The values of every claim of `claim_type` (exact, case-sensitive, as
    /// Ocelot compares claim types).
    pub(crate) fn values<'a>(&'a self, claim_type: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(t, _)| t == claim_type)
            .map(|(_, v)| v.as_str())
    }

    /// All values of `claim_type` joined with `,` (`StringValues.ToString()`),
    /// or `None` when the user has no such claim.
    fn joined(&self, claim_type: &str) -> Option<String> {
        let mut values = self.values(claim_type);
        let mut out = values.next()?.to_string();
        for v in values {
            out.push(',');
            out.push_str(v);
        }
        Some(out)
    }

    /// `AddClaimsToRequest`: the first claim of the type is replaced, and the
    /// new value is added last (Ocelot removes one existing claim, then adds).
    fn set(&mut self, claim_type: &str, value: String) {
        if let Some(i) = self.0.iter().position(|(t, _)| t == claim_type) {
            self.0.remove(i);
        }
        self.0.push((claim_type.to_string(), value));
    }
}

fn claim_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

/// Why a claims transform refused the request. Each maps to Ocelot's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimsError {
    /// `CannotFindClaimError`: the claim, or the indexed part of it, is
    /// missing → 403.
    MissingClaim(String),
    /// A claim value that cannot be sent in a header (CR, LF, other control
    /// bytes, non-ASCII) → 400, the status Ocelot 25 gives header values
    /// .NET refuses to send.
    InvalidHeaderValue(String),
    /// `CouldNotFindPlaceholderError`: a `ChangeDownstreamPathTemplate` key
    /// that is not a `{placeholder}` of the downstream template → 404.
    UnknownPlaceholder(String),
}

impl ClaimsError {
    /// The status Ocelot answers with.
    pub(crate) fn status(&self) -> u16 {
        match self {
            ClaimsError::MissingClaim(_) => 403,
            ClaimsError::InvalidHeaderValue(_) => 400,
            ClaimsError::UnknownPlaceholder(_) => 404,
        }
    }
}

impl std::fmt::Display for ClaimsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimsError::MissingClaim(what) => write!(f, "cannot find claim {what}"),
            ClaimsError::InvalidHeaderValue(name) => write!(
                f,
                "claim value for header {name} is not a valid header value"
            ),
            ClaimsError::UnknownPlaceholder(name) => {
                write!(f, "downstream path template has no placeholder {{{name}}}")
            }
        }
    }
}

/// One parsed `Claims[type] > value[index] > delimiter` instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimToThing {
    /// The dictionary key: header name, query name, claim type or placeholder.
    pub(crate) key: String,
    /// The claim type inside `Claims[...]`.
    pub(crate) claim_type: String,
    /// `value[index]`; Ocelot parses it as a signed int and refuses negative
    /// indexes only when a request arrives.
    pub(crate) index: i64,
    /// Every character is a split character; empty means "the whole value".
    pub(crate) delimiters: Vec<char>,
}

impl ClaimToThing {
    /// Parses one dictionary entry the way Ocelot does; `Err` says why it is
    /// skipped (Ocelot skips such entries silently, at load).
    pub(crate) fn parse(key: &str, instruction: &str) -> Result<ClaimToThing, String> {
        let parts: Vec<&str> = instruction.split('>').collect();
        if parts.len() <= 1 {
            return Err("no '>' instructions".to_string());
        }
        // Ocelot's regexes are unanchored: `Claims\[.*\]` anywhere in the segment.
        if !contains_bracketed(parts[0], "Claims") {
            return Err("the first instruction is not Claims[...]".to_string());
        }
        let claim_type = bracketed(parts[0]).ok_or("malformed Claims[...]")?;
        let mut index = 0;
        let mut delimiters = Vec::new();
        if parts.len() > 2 && contains_bracketed(parts[1], "value") {
            let raw = bracketed(parts[1]).ok_or("malformed value[...]")?;
            index = raw
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("value[{raw}] is not an integer index"))?;
            delimiters = parts[2].trim().chars().collect();
        }
        Ok(ClaimToThing {
            key: key.to_string(),
            claim_type: claim_type.to_string(),
            index,
            delimiters,
        })
    }

    /// The value this instruction takes from `claims` (`ClaimsParser.GetValue`).
    pub(crate) fn value(&self, claims: &Claims) -> Result<String, ClaimsError> {
        let joined = claims
            .joined(&self.claim_type)
            .ok_or_else(|| ClaimsError::MissingClaim(self.claim_type.clone()))?;
        if self.delimiters.is_empty() {
            return Ok(joined);
        }
        usize::try_from(self.index)
            .ok()
            .and_then(|i| joined.split(&self.delimiters[..]).nth(i))
            .map(str::to_string)
            .ok_or_else(|| {
                ClaimsError::MissingClaim(format!("{} (index {})", self.claim_type, self.index))
            })
    }
}

/// Whether `segment` contains `word[` followed later by `]` (Ocelot's
/// unanchored `word\[.*\]`).
fn contains_bracketed(segment: &str, word: &str) -> bool {
    let pattern = format!("{word}[");
    segment
        .find(&pattern)
        .is_some_and(|start| segment[start + pattern.len()..].contains(']'))
}

/// The text between the first `[` and the first `]` (Ocelot's
/// `GetIndexValue`, which fails when `]` comes first).
fn bracketed(segment: &str) -> Option<&str> {
    let open = segment.find('[')?;
    let close = segment.find(']')?;
    segment.get(open + 1..close)
}

/// A route's claims transforms, compiled from its four dictionaries.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClaimsTransforms {
    to_claims: Vec<ClaimToThing>,
    to_headers: Vec<(HeaderName, ClaimToThing)>,
    to_queries: Vec<ClaimToThing>,
    /// With whether the downstream template has the `{key}` placeholder.
    to_path: Vec<(ClaimToThing, bool)>,
}

/// A route's claims dictionaries as read from `ocelot.json`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClaimsConfig<'a> {
    /// `AddClaimsToRequest`.
    pub(crate) add_claims: &'a [(String, String)],
    /// `AddHeadersToRequest`.
    pub(crate) add_headers: &'a [(String, String)],
    /// `AddQueriesToRequest`.
    pub(crate) add_queries: &'a [(String, String)],
    /// `ChangeDownstreamPathTemplate`.
    pub(crate) change_path: &'a [(String, String)],
    /// The route's `DownstreamPathTemplate`.
    pub(crate) downstream_template: &'a str,
}

impl ClaimsTransforms {
    /// Compiles the dictionaries. Entries Ocelot would skip are skipped too,
    /// each with a warning for the load report.
    pub(crate) fn compile(
        config: ClaimsConfig<'_>,
        warnings: &mut Warnings<'_>,
    ) -> ClaimsTransforms {
        let mut parse_all = |field: &str, dict: &[(String, String)]| -> Vec<ClaimToThing> {
            dict.iter()
                .filter_map(|(k, v)| match ClaimToThing::parse(k, v) {
                    Ok(c) => Some(c),
                    Err(why) => {
                        warnings.warn(format!("{field}.{k}"), format!("\"{v}\" is ignored: {why}"));
                        None
                    }
                })
                .collect()
        };
        let to_claims = parse_all("AddClaimsToRequest", config.add_claims);
        let headers = parse_all("AddHeadersToRequest", config.add_headers);
        let to_queries = parse_all("AddQueriesToRequest", config.add_queries);
        let path = parse_all("ChangeDownstreamPathTemplate", config.change_path);
        let mut to_headers = Vec::with_capacity(headers.len());
        for c in headers {
            match HeaderName::from_bytes(c.key.as_bytes()) {
                Ok(name) => to_headers.push((name, c)),
                Err(_) => warnings.warn(
                    format!("AddHeadersToRequest.{}", c.key),
                    "is not a valid header name; ignored",
                ),
            }
        }
        let to_path = path
            .into_iter()
            .map(|c| {
                let present = config.downstream_template.contains(&format!("{{{}}}", c.key));
                if !present {
                    warnings.warn(
                        format!("ChangeDownstreamPathTemplate.{}", c.key),
                        format!(
                            "the DownstreamPathTemplate has no {{{}}} placeholder: requests are answered 404, as Ocelot does",
                            c.key
                        ),
                    );
                }
                (c, present)
            })
            .collect();
        ClaimsTransforms {
            to_claims,
            to_headers,
            to_queries,
            to_path,
        }
    }

    /// Whether the route has no claims transform at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.to_claims.is_empty()
            && self.to_headers.is_empty()
            && self.to_queries.is_empty()
            && self.to_path.is_empty()
    }

    /// Whether the route adds or replaces claims.
    pub(crate) fn adds_claims(&self) -> bool {
        !self.to_claims.is_empty()
    }

    /// Whether the route changes downstream path placeholders.
    pub(crate) fn changes_path(&self) -> bool {
        !self.to_path.is_empty()
    }

    /// Whether the route adds query parameters.
    pub(crate) fn adds_queries(&self) -> bool {
        !self.to_queries.is_empty()
    }

    /// `AddClaimsToRequest` (ClaimsToClaims, before authorization).
    pub(crate) fn apply_to_claims(&self, claims: &mut Claims) -> Result<(), ClaimsError> {
        for c in &self.to_claims {
            let value = c.value(claims)?;
            claims.set(&c.key, value);
        }
        Ok(())
    }

    /// `AddHeadersToRequest`: the headers to set (replacing any the client
    /// sent). A value that is not a clean header value is refused rather
    /// than forwarded, so a claim can never smuggle a header line.
    pub(crate) fn headers(
        &self,
        claims: &Claims,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, ClaimsError> {
        let mut out = Vec::with_capacity(self.to_headers.len());
        for (name, c) in &self.to_headers {
            let value = c.value(claims)?;
            out.push((
                name.clone(),
                safe_header_value(&value)
                    .ok_or_else(|| ClaimsError::InvalidHeaderValue(name.to_string()))?,
            ));
        }
        Ok(out)
    }

    /// `AddQueriesToRequest` applied to the downstream query (without `?`):
    /// an existing parameter of that name gets the claim value, otherwise it
    /// is appended. Unlike Ocelot the value is percent-encoded, so a claim
    /// containing `&` or `#` cannot add parameters of its own.
    pub(crate) fn apply_to_query(
        &self,
        claims: &Claims,
        query: Option<&str>,
    ) -> Result<Option<String>, ClaimsError> {
        if self.to_queries.is_empty() {
            return Ok(query.map(str::to_string));
        }
        // (raw name, raw value) pairs of the existing query, order kept.
        let mut pairs: Vec<(String, Option<String>)> = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (p.to_string(), None),
            })
            .collect();
        for c in &self.to_queries {
            let value = encode_query_component(&c.value(claims)?);
            let mut found = false;
            pairs.retain_mut(|(k, v)| {
                if decode_query_component(k) != c.key {
                    return true;
                }
                if found {
                    // Ocelot keeps one value per name: later duplicates go.
                    return false;
                }
                found = true;
                *v = Some(value.clone());
                true
            });
            if !found {
                pairs.push((encode_query_component(&c.key), Some(value)));
            }
        }
        let mut out = String::new();
        for (k, v) in &pairs {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(k);
            if let Some(v) = v {
                out.push('=');
                out.push_str(v);
            }
        }
        Ok(Some(out))
    }

    /// `ChangeDownstreamPathTemplate`: the placeholder values (names with
    /// braces, `{userId}`) that replace the matched ones when the downstream
    /// path is rendered.
    pub(crate) fn path_placeholders(
        &self,
        claims: &Claims,
    ) -> Result<Vec<(String, String)>, ClaimsError> {
        let mut out = Vec::with_capacity(self.to_path.len());
        for (c, present) in &self.to_path {
            let value = c.value(claims)?;
            if !present {
                return Err(ClaimsError::UnknownPlaceholder(c.key.clone()));
            }
            out.push((format!("{{{}}}", c.key), value));
        }
        Ok(out)
    }
}

/// A header value only if every byte is visible ASCII, space or tab: what
/// .NET's HttpClient would send. CR, LF, NUL and non-ASCII never pass.
pub(crate) fn safe_header_value(value: &str) -> Option<HeaderValue> {
    if value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        HeaderValue::from_str(value).ok()
    } else {
        None
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode_query_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` and `+` (as a space), as ASP.NET's query parser does;
/// malformed escapes are kept literally.
fn decode_query_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(pairs: &[(&str, &str)]) -> Claims {
        Claims::new(
            pairs
                .iter()
                .map(|(t, v)| (t.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn dict(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_ocelot_instructions() {
        let c = ClaimToThing::parse("CustomerId", "Claims[CustomerId] > value").unwrap();
        assert_eq!(
            (c.claim_type.as_str(), c.index, c.delimiters.len()),
            ("CustomerId", 0, 0)
        );
        let c = ClaimToThing::parse("UserType", "Claims[sub] > value[0] > |").unwrap();
        assert_eq!(
            (c.claim_type.as_str(), c.index, c.delimiters.clone()),
            ("sub", 0, vec!['|'])
        );
        let c = ClaimToThing::parse("x", "Claims[sub] > value[ 2 ] > |,").unwrap();
        assert_eq!((c.index, c.delimiters.clone()), (2, vec!['|', ',']));
        // A second segment that is not value[...] means "whole value".
        let c = ClaimToThing::parse("x", "Claims[sub] > whatever > |").unwrap();
        assert!(c.delimiters.is_empty());
        assert!(ClaimToThing::parse("x", "Claims[sub]").is_err());
        assert!(ClaimToThing::parse("x", "Claim[sub] > value").is_err());
        assert!(ClaimToThing::parse("x", "Claims]sub[ > value").is_err());
        assert!(ClaimToThing::parse("x", "Claims[sub] > value[a] > |").is_err());
    }

    #[test]
    fn values_join_split_and_index() {
        let cl = claims(&[("sub", "usertype|1234"), ("role", "a"), ("role", "b")]);
        let c = ClaimToThing::parse("k", "Claims[sub] > value[1] > |").unwrap();
        assert_eq!(c.value(&cl).unwrap(), "1234");
        let c = ClaimToThing::parse("k", "Claims[role] > value").unwrap();
        assert_eq!(c.value(&cl).unwrap(), "a,b");
        let c = ClaimToThing::parse("k", "Claims[role] > value[1] > ,").unwrap();
        assert_eq!(c.value(&cl).unwrap(), "b");
        let c = ClaimToThing::parse("k", "Claims[sub] > value[2] > |").unwrap();
        assert_eq!(c.value(&cl).unwrap_err().status(), 403);
        let c = ClaimToThing::parse("k", "Claims[sub] > value[-1] > |").unwrap();
        assert_eq!(c.value(&cl).unwrap_err().status(), 403);
        let c = ClaimToThing::parse("k", "Claims[nope] > value").unwrap();
        assert_eq!(c.value(&cl).unwrap_err().status(), 403);
        // Claim types are case-sensitive.
        let c = ClaimToThing::parse("k", "Claims[SUB] > value").unwrap();
        assert!(c.value(&cl).is_err());
    }

    #[test]
    fn json_payload_becomes_claims() {
        let payload =
            json!({"sub": "u1", "scope": ["a", "b"], "n": 5, "b": true, "o": {"x": 1}, "z": null});
        let cl = Claims::from_json(payload.as_object().unwrap());
        let all: Vec<(&str, &str)> = cl.iter().collect();
        assert_eq!(
            all,
            vec![
                ("sub", "u1"),
                ("scope", "a"),
                ("scope", "b"),
                ("n", "5"),
                ("b", "true"),
                ("o", "{\"x\":1}")
            ]
        );
    }

    fn compile(
        add_claims: &[(&str, &str)],
        headers: &[(&str, &str)],
        queries: &[(&str, &str)],
        path: &[(&str, &str)],
        template: &str,
    ) -> ClaimsTransforms {
        let (a, b, c, d) = (dict(add_claims), dict(headers), dict(queries), dict(path));
        crate::diagnostics::collecting(|w| {
            ClaimsTransforms::compile(
                ClaimsConfig {
                    add_claims: &a,
                    add_headers: &b,
                    add_queries: &c,
                    change_path: &d,
                    downstream_template: template,
                },
                w,
            )
        })
        .0
    }

    #[test]
    fn claims_to_claims_replaces_first() {
        let t = compile(
            &[("role", "Claims[sub] > value[0] > |")],
            &[],
            &[],
            &[],
            "/",
        );
        let mut cl = claims(&[("role", "old"), ("sub", "admin|7")]);
        t.apply_to_claims(&mut cl).unwrap();
        assert_eq!(cl.values("role").collect::<Vec<_>>(), vec!["admin"]);
    }

    #[test]
    fn claims_to_headers_refuses_unsafe_values() {
        let t = compile(
            &[],
            &[
                ("X-User", "Claims[sub] > value"),
                ("bad name", "Claims[sub] > value"),
            ],
            &[],
            &[],
            "/",
        );
        let h = t.headers(&claims(&[("sub", "u1")])).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(
            (h[0].0.as_str(), h[0].1.to_str().unwrap()),
            ("x-user", "u1")
        );
        for evil in ["a\r\nX-Admin: 1", "a\nb", "nul\0", "名字"] {
            let e = t.headers(&claims(&[("sub", evil)])).unwrap_err();
            assert_eq!(e.status(), 400, "{evil:?}");
        }
        assert_eq!(t.headers(&Claims::default()).unwrap_err().status(), 403);
    }

    #[test]
    fn claims_to_query_replaces_and_appends_encoded() {
        let t = compile(
            &[],
            &[],
            &[
                ("CustomerId", "Claims[CustomerId] > value"),
                ("LocationId", "Claims[LocationId] > value"),
            ],
            &[],
            "/",
        );
        let cl = claims(&[("CustomerId", "123"), ("LocationId", "a&b=c")]);
        assert_eq!(
            t.apply_to_query(&cl, None).unwrap().as_deref(),
            Some("CustomerId=123&LocationId=a%26b%3Dc")
        );
        assert_eq!(
            t.apply_to_query(&cl, Some("x=1&CustomerId=9&y&CustomerId=8"))
                .unwrap()
                .as_deref(),
            Some("x=1&CustomerId=123&y&LocationId=a%26b%3Dc")
        );
        assert_eq!(
            t.apply_to_query(&claims(&[("CustomerId", "1")]), Some("x=1"))
                .unwrap_err()
                .status(),
            403
        );
    }

    #[test]
    fn claims_to_path() {
        let t = compile(
            &[],
            &[],
            &[],
            &[("userId", "Claims[sub] > value[1] > |")],
            "/users/{userId}",
        );
        assert_eq!(
            t.path_placeholders(&claims(&[("sub", "registered|1234")]))
                .unwrap(),
            vec![("{userId}".to_string(), "1234".to_string())]
        );
        let t = compile(
            &[],
            &[],
            &[],
            &[("nope", "Claims[sub] > value")],
            "/users/{userId}",
        );
        assert_eq!(
            t.path_placeholders(&claims(&[("sub", "x")]))
                .unwrap_err()
                .status(),
            404
        );
        // The claim is looked up first: a missing claim is 403 even then.
        assert_eq!(
            t.path_placeholders(&Claims::default())
                .unwrap_err()
                .status(),
            403
        );
    }

    #[test]
    fn query_component_codec() {
        assert_eq!(encode_query_component("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(decode_query_component("a+b%2Fc%zz%4"), "a b/c%zz%4");
    }
}
