//! Ocelot's header transforms (`UpstreamHeaderTransform`,
//! `DownstreamHeaderTransform`; `src/Configuration/Creator/HeaderFindAndReplaceCreator.cs`,
//! `src/Headers/*`, `src/Infrastructure/Placeholders.cs`).
//!
//! A value without a comma *adds* a header (its whole value may be a
//! `{Placeholder}`); a value with a comma is *find, replace*: `find` is the text
//! before the first comma, `replace` the text after it (up to a second comma,
//! as Ocelot splits), leading spaces removed. Everything is parsed when the
//! route is compiled; `{BaseUrl}` is resolved then too, the other placeholders
//! per request.

use crate::diagnostics::Warnings;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Ocelot's `{BaseUrl}` when `GlobalConfiguration.BaseUrl` is not set
/// (`BaseUrlFinder`).
pub(crate) const DEFAULT_BASE_URL: &str = "http://localhost:5000";

/// A placeholder whose value is only known per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    RemoteIpAddress,
    TraceId,
    UpstreamHost,
    DownstreamBaseUrl,
}

impl Placeholder {
    fn resolve<'a>(self, values: &'a PlaceholderValues<'_>) -> Option<&'a str> {
        match self {
            Placeholder::RemoteIpAddress => values.remote_ip.as_deref(),
            Placeholder::TraceId => values.trace_id,
            Placeholder::UpstreamHost => values.upstream_host,
            Placeholder::DownstreamBaseUrl => values.downstream_base_url.as_deref(),
        }
    }
}

/// The per-request values of the placeholders; `None` when unknown (the
/// transform using it is then skipped, as Ocelot does).
#[derive(Debug, Clone, Default)]
pub(crate) struct PlaceholderValues<'a> {
    /// `{RemoteIpAddress}`: the client's IP address.
    pub(crate) remote_ip: Option<String>,
    /// `{TraceId}`: the request id (see `request_id`).
    pub(crate) trace_id: Option<&'a str>,
    /// `{UpstreamHost}`: the request's `Host` header as sent.
    pub(crate) upstream_host: Option<&'a str>,
    /// `{DownstreamBaseUrl}`: `scheme://host[:port]/` of the downstream
    /// service called (port left out for 80 and 443). Responses only.
    pub(crate) downstream_base_url: Option<String>,
}

/// `{DownstreamBaseUrl}` as Ocelot renders it.
pub(crate) fn downstream_base_url(tls: bool, host: &str, port: u16) -> String {
    let scheme = if tls { "https" } else { "http" };
    if port == 80 || port == 443 {
        format!("{scheme}://{host}/")
    } else {
        format!("{scheme}://{host}:{port}/")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Placeholder),
}

/// A value made of text and per-request placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Part>);

impl Template {
    fn render(&self, values: &PlaceholderValues<'_>) -> Option<String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Value(p) => out.push_str(p.resolve(values)?),
            }
        }
        Some(out)
    }

    fn needs(&self, p: Placeholder) -> bool {
        self.0.contains(&Part::Value(p))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Find {
    Text(String),
    /// `{DownstreamBaseUrl}` (downstream transforms only): the replacement
    /// then gets a trailing `/`, as Ocelot's `LastCharAsForwardSlash`.
    DownstreamBaseUrl,
}

#[derive(Debug, Clone)]
struct FindReplace {
    name: HeaderName,
    find: Find,
    replace: Template,
}

#[derive(Debug, Clone)]
enum AddValue {
    Fixed(HeaderValue),
    Value(Placeholder),
}

#[derive(Debug, Clone)]
struct AddHeader {
    name: HeaderName,
    value: AddValue,
}

/// Which way a transform dictionary applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// `UpstreamHeaderTransform`: the request sent downstream.
    Upstream,
    /// `DownstreamHeaderTransform`: the response returned to the client.
    Downstream,
}

/// One direction's compiled transforms.
#[derive(Debug, Clone, Default)]
pub(crate) struct Transforms {
    replace: Vec<FindReplace>,
    add: Vec<AddHeader>,
}

/// Header access the transforms need, so they work on `http::HeaderMap` and
/// on Pingora's headers (which keep their own case map) alike.
pub(crate) trait Headers {
    /// The first value of a header.
    fn first(&self, name: &HeaderName) -> Option<&HeaderValue>;
    /// Replaces every value of a header with one value.
    fn set(&mut self, name: &HeaderName, value: HeaderValue);
    /// Removes every value of a header.
    fn remove(&mut self, name: &HeaderName);
    /// Every header.
    fn map(&self) -> &HeaderMap;
}

impl Headers for HeaderMap {
    fn first(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.get(name)
    }
    fn set(&mut self, name: &HeaderName, value: HeaderValue) {
        self.insert(name.clone(), value);
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
    fn map(&self) -> &HeaderMap {
        self
    }
}

impl Headers for pingora_http::RequestHeader {
    fn first(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.headers.get(name)
    }
    fn set(&mut self, name: &HeaderName, value: HeaderValue) {
        if let Err(e) = self.insert_header(name.clone(), value) {
            log::debug!("cannot set request header {name}: {e}");
        }
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn map(&self) -> &HeaderMap {
        &self.headers
    }
}

impl Headers for pingora_http::ResponseHeader {
    fn first(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.headers.get(name)
    }
    fn set(&mut self, name: &HeaderName, value: HeaderValue) {
        if let Err(e) = self.insert_header(name.clone(), value) {
            log::debug!("cannot set response header {name}: {e}");
        }
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn map(&self) -> &HeaderMap {
        &self.headers
    }
}

impl Transforms {
    /// Compiles one merged dictionary (route entries plus the global ones the
    /// route does not override). `base_url` is `{BaseUrl}`. Entries Ocelot
    /// would drop are dropped, each with a warning `(key, message)`.
    pub(crate) fn compile(
        direction: Direction,
        dict: &[(String, String)],
        base_url: &str,
    ) -> (Transforms, Vec<(String, String)>) {
        let mut out = Transforms::default();
        let mut warnings = Vec::new();
        for (key, value) in dict {
            let Ok(name) = HeaderName::from_bytes(key.trim().as_bytes()) else {
                warnings.push((
                    key.clone(),
                    "is not a valid header name; ignored".to_string(),
                ));
                continue;
            };
            let compiled = if value.contains(',') {
                compile_find_replace(direction, name, value, base_url)
                    .map(|fr| out.replace.push(fr))
            } else {
                compile_add(direction, name, value, base_url).map(|a| out.add.push(a))
            };
            if let Err(why) = compiled {
                warnings.push((key.clone(), format!("\"{value}\" is ignored: {why}")));
            }
        }
        (out, warnings)
    }

    /// Whether there is nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.replace.is_empty() && self.add.is_empty()
    }

    /// Whether `{TraceId}` is used, so the request id must be known.
    pub(crate) fn needs_trace_id(&self) -> bool {
        self.add
            .iter()
            .any(|a| matches!(a.value, AddValue::Value(Placeholder::TraceId)))
            || self
                .replace
                .iter()
                .any(|r| r.replace.needs(Placeholder::TraceId))
    }

    /// Applies the transforms to the request headers (upstream): find/replace
    /// on the first value of each named header (the result replaces all its
    /// values), then the added headers replace any the client sent.
    pub(crate) fn apply_to_request(
        &self,
        headers: &mut impl Headers,
        values: &PlaceholderValues<'_>,
    ) {
        for fr in &self.replace {
            let Some(current) = headers.first(&fr.name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Find::Text(find) = &fr.find else { continue };
            let Some(replace) = fr.replace.render(values) else {
                log::warn!(
                    "header transform {}: placeholder has no value for this request",
                    fr.name
                );
                continue;
            };
            set_valid(headers, &fr.name, &current.replace(find.as_str(), &replace));
        }
        for add in &self.add {
            headers.remove(&add.name);
            if let Some(value) = add_value(add, values) {
                headers.set(&add.name, value);
            }
        }
    }

    /// Applies the transforms to a downstream response: find/replace on the
    /// first value of each named header, then the added headers, each only
    /// if the downstream service did not send it (its value wins, as in
    /// Ocelot's responder).
    pub(crate) fn apply_to_response(
        &self,
        headers: &mut impl Headers,
        values: &PlaceholderValues<'_>,
    ) {
        for fr in &self.replace {
            let Some(current) = headers.first(&fr.name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Some(mut replace) = fr.replace.render(values) else {
                log::warn!(
                    "header transform {}: placeholder has no value for this request",
                    fr.name
                );
                continue;
            };
            let replaced = match &fr.find {
                Find::Text(find) => current.replace(find.as_str(), &replace),
                Find::DownstreamBaseUrl => {
                    let Some(base) = values.downstream_base_url.as_deref() else {
                        continue;
                    };
                    if !replace.ends_with('/') {
                        replace.push('/');
                    }
                    current.replace(base, &replace)
                }
            };
            set_valid(headers, &fr.name, &replaced);
        }
        for add in &self.add {
            if headers.first(&add.name).is_some() {
                continue;
            }
            if let Some(value) = add_value(add, values) {
                headers.set(&add.name, value);
            }
        }
    }
}

fn set_valid(headers: &mut impl Headers, name: &HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => headers.set(name, v),
        Err(_) => log::warn!(
            "header transform {name}: result is not a valid header value; header left unchanged"
        ),
    }
}

fn add_value(add: &AddHeader, values: &PlaceholderValues<'_>) -> Option<HeaderValue> {
    match &add.value {
        AddValue::Fixed(v) => Some(v.clone()),
        AddValue::Value(p) => match p.resolve(values).map(HeaderValue::from_str) {
            Some(Ok(v)) => Some(v),
            _ => {
                log::warn!(
                    "unable to add header {}: its placeholder has no value for this request",
                    add.name
                );
                None
            }
        },
    }
}

/// Which placeholder a `{Name}` is, for this direction; `Ok(None)` for
/// `{BaseUrl}` (resolved at load).
fn placeholder(direction: Direction, name: &str) -> Result<Option<Placeholder>, String> {
    match name {
        "{BaseUrl}" => Ok(None),
        "{RemoteIpAddress}" => Ok(Some(Placeholder::RemoteIpAddress)),
        "{TraceId}" => Ok(Some(Placeholder::TraceId)),
        "{UpstreamHost}" => Ok(Some(Placeholder::UpstreamHost)),
        "{DownstreamBaseUrl}" if direction == Direction::Downstream => {
            Ok(Some(Placeholder::DownstreamBaseUrl))
        }
        "{DownstreamBaseUrl}" => Err("{DownstreamBaseUrl} is only known for responses".to_string()),
        other => Err(format!("unknown placeholder {other}")),
    }
}

fn compile_add(
    direction: Direction,
    name: HeaderName,
    value: &str,
    base_url: &str,
) -> Result<AddHeader, String> {
    // Ocelot takes the whole value as a placeholder when it starts with '{'
    // and ends with '}'; anything else is literal text.
    let value = if value.starts_with('{') && value.ends_with('}') {
        match placeholder(direction, value)? {
            None => AddValue::Fixed(
                HeaderValue::from_str(base_url)
                    .map_err(|_| "BaseUrl is not a valid header value")?,
            ),
            Some(p) => AddValue::Value(p),
        }
    } else {
        AddValue::Fixed(HeaderValue::from_str(value).map_err(|_| "not a valid header value")?)
    };
    Ok(AddHeader { name, value })
}

fn compile_find_replace(
    direction: Direction,
    name: HeaderName,
    value: &str,
    base_url: &str,
) -> Result<FindReplace, String> {
    let mut parts = value.split(',');
    let find = parts.next().unwrap_or_default();
    let replace = parts.next().unwrap_or_default().trim_start();
    if find.is_empty() {
        return Err("nothing to find before the comma".to_string());
    }
    let find = if direction == Direction::Downstream && find == "{DownstreamBaseUrl}" {
        Find::DownstreamBaseUrl
    } else {
        Find::Text(find.to_string())
    };
    // Ocelot resolves the first `{...}` of the replacement (every occurrence of it).
    let mut template = Vec::new();
    match replace.find('{') {
        None => template.push(Part::Text(replace.to_string())),
        Some(open) => {
            let close = replace[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or("unclosed '{' in the replacement")?;
            let token = &replace[open..=close];
            let value = match placeholder(direction, token)? {
                None => Part::Text(base_url.to_string()),
                Some(p) => Part::Value(p),
            };
            for (i, text) in replace.split(token).enumerate() {
                if i > 0 {
                    template.push(value.clone());
                }
                if !text.is_empty() {
                    template.push(Part::Text(text.to_string()));
                }
            }
        }
    }
    Ok(FindReplace {
        name,
        find,
        replace: Template(template),
    })
}

/// A route's header transforms in both directions.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderTransforms {
    /// Applied to the request before it is sent downstream.
    pub(crate) upstream: Transforms,
    /// Applied to the downstream response.
    pub(crate) downstream: Transforms,
}

impl HeaderTransforms {
    /// Compiles both merged dictionaries; entries Ocelot would skip are
    /// reported under their field.
    pub(crate) fn compile(
        upstream: &[(String, String)],
        downstream: &[(String, String)],
        base_url: &str,
        warnings: &mut Warnings<'_>,
    ) -> HeaderTransforms {
        let (up, w1) = Transforms::compile(Direction::Upstream, upstream, base_url);
        let (down, w2) = Transforms::compile(Direction::Downstream, downstream, base_url);
        for (key, message) in w1 {
            warnings.warn(format!("UpstreamHeaderTransform.{key}"), message);
        }
        for (key, message) in w2 {
            warnings.warn(format!("DownstreamHeaderTransform.{key}"), message);
        }
        HeaderTransforms {
            upstream: up,
            downstream: down,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn values() -> PlaceholderValues<'static> {
        PlaceholderValues {
            remote_ip: Some("10.1.2.3".to_string()),
            trace_id: Some("trace-1"),
            upstream_host: Some("gw.example.com:8080"),
            downstream_base_url: Some("http://localhost:5001/".to_string()),
        }
    }

    #[test]
    fn upstream_find_replace_and_add() {
        let (t, w) = Transforms::compile(
            Direction::Upstream,
            &dict(&[
                ("Laz", "D, GP"),
                ("X-Forwarded-For", "{RemoteIpAddress}"),
                ("X-Route", "Raman"),
                ("X-Trace", "{TraceId}"),
            ]),
            DEFAULT_BASE_URL,
        );
        assert!(w.is_empty(), "{w:?}");
        assert!(t.needs_trace_id());
        let mut h = map(&[("laz", "D and D"), ("laz", "second"), ("x-route", "client")]);
        t.apply_to_request(&mut h, &values());
        assert_eq!(
            h.get_all("laz").iter().collect::<Vec<_>>(),
            vec!["GP and GP"]
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.1.2.3");
        assert_eq!(
            h.get_all("x-route").iter().collect::<Vec<_>>(),
            vec!["Raman"]
        );
        assert_eq!(h.get("x-trace").unwrap(), "trace-1");
        // An unresolvable placeholder leaves the header out.
        let mut h = HeaderMap::new();
        t.apply_to_request(&mut h, &PlaceholderValues::default());
        assert!(h.get("x-forwarded-for").is_none());
        assert!(h.get("laz").is_none());
    }

    #[test]
    fn downstream_location_rewrite_with_base_urls() {
        let (t, w) = Transforms::compile(
            Direction::Downstream,
            &dict(&[
                ("Location", "{DownstreamBaseUrl}, {BaseUrl}"),
                ("X-By", "{BaseUrl}"),
                ("Who", "Raman, Mark"),
            ]),
            "http://gw.example.com",
        );
        assert!(w.is_empty(), "{w:?}");
        let mut h = map(&[
            ("location", "http://localhost:5001/pay/Receive"),
            ("who", "Raman Mark Raman"),
        ]);
        t.apply_to_response(&mut h, &values());
        assert_eq!(
            h.get("location").unwrap(),
            "http://gw.example.com/pay/Receive"
        );
        assert_eq!(h.get("who").unwrap(), "Mark Mark Mark");
        assert_eq!(h.get("x-by").unwrap(), "http://gw.example.com");
        // A header the service sent wins over an added one.
        let mut h = map(&[("x-by", "service")]);
        t.apply_to_response(&mut h, &values());
        assert_eq!(h.get("x-by").unwrap(), "service");
    }

    #[test]
    fn literal_downstream_find_and_placeholder_inside_replace() {
        let (t, _) = Transforms::compile(
            Direction::Downstream,
            &dict(&[(
                "Location",
                "http://www.bbc.co.uk/, http://{UpstreamHost}/x/, ignored",
            )]),
            DEFAULT_BASE_URL,
        );
        let mut h = map(&[("location", "http://www.bbc.co.uk/a")]);
        t.apply_to_response(&mut h, &values());
        assert_eq!(h.get("location").unwrap(), "http://gw.example.com:8080/x/a");
    }

    #[test]
    fn bad_entries_are_reported_and_skipped() {
        let (t, w) = Transforms::compile(
            Direction::Upstream,
            &dict(&[
                ("X-A", "{Nope}"),
                ("X-B", "{DownstreamBaseUrl}"),
                ("X-C", ", x"),
                ("bad name", "v"),
                ("X-D", "a, {unclosed"),
            ]),
            DEFAULT_BASE_URL,
        );
        assert!(t.is_empty());
        assert_eq!(w.len(), 5, "{w:?}");
    }

    #[test]
    fn downstream_base_url_rendering() {
        assert_eq!(downstream_base_url(false, "svc", 80), "http://svc/");
        assert_eq!(downstream_base_url(true, "svc", 443), "https://svc/");
        assert_eq!(downstream_base_url(false, "svc", 5001), "http://svc:5001/");
    }

    #[test]
    fn merged_compile_names_fields() {
        let (t, w) = crate::diagnostics::collecting(|w| {
            HeaderTransforms::compile(
                &dict(&[("X", "{Nope}")]),
                &dict(&[("Y", "1")]),
                DEFAULT_BASE_URL,
                w,
            )
        });
        assert_eq!(w[0].field, "UpstreamHeaderTransform.X");
        assert!(t.upstream.is_empty() && !t.downstream.is_empty());
    }
}
