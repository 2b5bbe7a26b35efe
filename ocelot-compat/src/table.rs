//! The compiled route table: Ocelot's `DownstreamRouteFinder` without walking a
//! list of regexes per request.
//!
//! Every route and aggregate is compiled once ([`UpstreamTemplate`],
//! [`HeaderTemplate`]) and ranked the way Ocelot orders its candidates (priority
//! descending, routes before aggregates, configuration order for ties). A trie
//! keyed by each template's leading literal path segments (ASCII-lowercased)
//! narrows a request to the routes whose literal prefix fits; templates that start
//! with a placeholder, a `.` or the catch-all live at the root and are always
//! tried. Because ranks are global, scanning each visited trie node in rank order
//! and keeping the best-ranked hit gives exactly Ocelot's answer, including its
//! rule that the first match with an `UpstreamHost` beats any host-less match.

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::template::{HeaderTemplate, UpstreamTemplate};

/// Kept at this path for callers that name it with the rest of a match
/// ([`RouteMatch`]); it lives in `template/placeholders.rs` because the
/// templates fill and read it and the table only hands it on.
pub use crate::template::Placeholders;

/// The upstream side of one route or aggregate, as configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// `UpstreamPathTemplate`, e.g. `/api/users/{id}?x={y}`.
    pub template: String,
    /// `UpstreamHttpMethod`; empty means every method; compared case-insensitively.
    pub methods: Vec<String>,
    /// `UpstreamHost`; `None` or empty means any host.
    pub host: Option<String>,
    /// `UpstreamHeaderTemplates`: (header name, template with `{header:name}` placeholders).
    pub header_templates: Vec<(String, String)>,
    /// `RouteIsCaseSensitive`.
    pub case_sensitive: bool,
    /// `Priority` as the caller resolved it (Ocelot's default is 1). The
    /// `/{everything}` catch-all is forced to 0 here, as Ocelot does.
    pub priority: i32,
}

/// What a request resolved to: an index into the vectors given to [`RouteTable::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Index into `routes`.
    Route(usize),
    /// Index into `aggregates`.
    Aggregate(usize),
}

/// Access to the request headers for `UpstreamHeaderTemplates`.
pub trait HeaderSource {
    /// All values of the request headers with this name (case-insensitive), joined
    /// with `,` — `None` if absent.
    fn joined(&self, name: &str) -> Option<String>;
}

/// A request without headers.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHeaders;

impl HeaderSource for NoHeaders {
    fn joined(&self, _name: &str) -> Option<String> {
        None
    }
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderSource for [(K, V)] {
    fn joined(&self, name: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for (k, v) in self {
            if k.as_ref().eq_ignore_ascii_case(name) {
                match out.as_mut() {
                    Some(s) => {
                        s.push(',');
                        s.push_str(v.as_ref());
                    }
                    None => out = Some(v.as_ref().to_string()),
                }
            }
        }
        out
    }
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderSource for Vec<(K, V)> {
    fn joined(&self, name: &str) -> Option<String> {
        self.as_slice().joined(name)
    }
}

/// The parts of a request that routing looks at.
#[derive(Clone, Copy)]
pub struct RequestInfo<'a> {
    /// HTTP method, e.g. `GET`.
    pub method: &'a str,
    /// Raw `Host` header (may include `:port`).
    pub host: Option<&'a str>,
    /// Path already normalised by [`crate::path::normalize_path`].
    pub path: &'a str,
    /// Raw query without the leading `?`; `None` if the request had no `?`.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a dyn HeaderSource,
}

/// The winning route or aggregate and its placeholder values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    /// What matched.
    pub target: Target,
    /// Path, query and header placeholder values.
    pub placeholders: Placeholders,
}

/// Literal prefixes deeper than this share the deepest node; the exact matcher
/// still checks the rest, so this only bounds the per-request stack array.
const MAX_DEPTH: usize = 15;

#[derive(Debug)]
struct Entry {
    target: Target,
    methods: Vec<String>,
    host: Option<String>,
    upstream: UpstreamTemplate,
    headers: Vec<HeaderTemplate>,
    priority: i32,
}

#[derive(Debug, Default)]
struct Node {
    /// Sorted by (lowercased) key for binary search.
    children: Vec<(Box<[u8]>, u32)>,
    /// Open-addressing index into `children` for wide nodes (thousands of services
    /// under one prefix), so a lookup costs one hash instead of a dozen compares.
    buckets: Vec<u32>,
    /// Ranks of the entries whose literal prefix ends here, ascending.
    all: Vec<u32>,
    /// The subset of `all` that has an `UpstreamHost`.
    hosted: Vec<u32>,
}

/// An immutable, `Send + Sync` route table.
#[derive(Debug)]
pub struct RouteTable {
    /// In rank order.
    entries: Vec<Entry>,
    nodes: Vec<Node>,
}

impl RouteTable {
    /// Compiles routes and aggregates. Never fails: templates Ocelot would reject
    /// at startup still compile (validation reports them elsewhere).
    pub fn new(routes: Vec<UpstreamSpec>, aggregates: Vec<UpstreamSpec>) -> RouteTable {
        let mut entries: Vec<Entry> = routes
            .into_iter()
            .enumerate()
            .map(|(i, s)| Entry::new(Target::Route(i), s))
            .chain(
                aggregates
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| Entry::new(Target::Aggregate(i), s)),
            )
            .collect();
        // Stable: equal priorities keep configuration order, routes first.
        entries.sort_by_key(|e| std::cmp::Reverse(e.priority));

        let mut nodes = vec![Node::default()];
        let mut edges: HashMap<(u32, Box<[u8]>), u32> = HashMap::new();
        for (rank, e) in entries.iter().enumerate() {
            let mut node = 0u32;
            for seg in e.upstream.literal_prefix().iter().take(MAX_DEPTH) {
                let key: Box<[u8]> = seg.as_bytes().into();
                node = *edges.entry((node, key)).or_insert_with(|| {
                    nodes.push(Node::default());
                    (nodes.len() - 1) as u32
                });
            }
            let n = &mut nodes[node as usize];
            n.all.push(rank as u32);
            if e.host.is_some() {
                n.hosted.push(rank as u32);
            }
        }
        for ((parent, key), child) in edges {
            nodes[parent as usize].children.push((key, child));
        }
        for n in &mut nodes {
            n.children.sort_by(|a, b| a.0.cmp(&b.0));
            if n.children.len() > HASHED_FANOUT {
                let size = (n.children.len() * 2).next_power_of_two();
                n.buckets = vec![u32::MAX; size];
                for (i, (key, _)) in n.children.iter().enumerate() {
                    let mut slot = fnv_lower(key) as usize & (size - 1);
                    while n.buckets[slot] != u32::MAX {
                        slot = (slot + 1) & (size - 1);
                    }
                    n.buckets[slot] = i as u32;
                }
            }
        }
        RouteTable { entries, nodes }
    }

    /// Ocelot's route selection for one request: candidates filtered by method and
    /// `UpstreamHost`, ordered by priority, kept if the path template and every
    /// header template match; the first with an `UpstreamHost` wins, else the first.
    pub fn find(&self, req: &RequestInfo<'_>) -> Option<RouteMatch> {
        let method = req.method.trim();
        let host = req
            .host
            .map_or("", |h| h.split_once(':').map_or(h, |(name, _)| name));

        let mut visited = [0u32; MAX_DEPTH + 1];
        let mut depth = 1;
        if let Some(rest) = req.path.strip_prefix('/') {
            let mut node = 0u32;
            for seg in rest.split('/') {
                if depth > MAX_DEPTH {
                    break;
                }
                let Some(child) = self.child(node, seg.as_bytes()) else {
                    break;
                };
                node = child;
                visited[depth] = child;
                depth += 1;
            }
        }

        let mut best_any: Option<u32> = None;
        let mut best_host: Option<u32> = None;
        for &node_id in &visited[..depth] {
            let node = &self.nodes[node_id as usize];
            let host_bound = best_host.unwrap_or(u32::MAX);
            let any_bound = best_any.unwrap_or(u32::MAX).min(host_bound);
            // First hit in rank order; below `any_bound` only.
            let mut host_scan_from = None;
            for &rank in &node.all {
                if rank >= any_bound {
                    host_scan_from = Some(rank);
                    break;
                }
                let e = &self.entries[rank as usize];
                if e.accepts(method, host, req) {
                    if e.host.is_some() {
                        best_host = Some(rank);
                    } else {
                        best_any = Some(rank);
                        host_scan_from = Some(rank + 1);
                    }
                    break;
                }
            }
            // Past a host-less hit only host-specific entries can still win.
            let Some(from) = host_scan_from else {
                continue;
            };
            let host_bound = best_host.unwrap_or(u32::MAX);
            let start = node.hosted.partition_point(|&r| r < from);
            for &rank in &node.hosted[start..] {
                if rank >= host_bound {
                    break;
                }
                if self.entries[rank as usize].accepts(method, host, req) {
                    best_host = Some(rank);
                    break;
                }
            }
        }

        let winner = &self.entries[best_host.or(best_any)? as usize];
        let mut placeholders = Placeholders::new();
        winner
            .upstream
            .extract(req.path, req.query, &mut placeholders);
        for h in &winner.headers {
            if let Some(value) = req.headers.joined(h.header_name()) {
                h.extract(&value, &mut placeholders);
            }
        }
        Some(RouteMatch {
            target: winner.target,
            placeholders,
        })
    }

    /// Number of routes plus aggregates.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no routes and no aggregates.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn child(&self, node: u32, seg: &[u8]) -> Option<u32> {
        let node = self.nodes.get(node as usize)?;
        let children = &node.children;
        if node.buckets.is_empty() {
            return children
                .binary_search_by(|(key, _)| cmp_key_to_segment(key, seg))
                .ok()
                .map(|i| children[i].1);
        }
        let mask = node.buckets.len() - 1;
        let mut slot = fnv_lower(seg) as usize & mask;
        loop {
            let i = *node.buckets.get(slot)?;
            let (key, child) = children.get(i as usize)?;
            if cmp_key_to_segment(key, seg) == Ordering::Equal {
                return Some(*child);
            }
            slot = (slot + 1) & mask;
        }
    }
}

/// Nodes with more children than this get a hash index.
const HASHED_FANOUT: usize = 16;

/// FNV-1a over ASCII-lowercased bytes: equal for a key and any casing of it.
fn fnv_lower(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Orders a lowercased trie key against a request segment, lowercasing the segment
/// on the fly so lookups never allocate.
fn cmp_key_to_segment(key: &[u8], seg: &[u8]) -> Ordering {
    for (&k, &s) in key.iter().zip(seg) {
        let s = s.to_ascii_lowercase();
        if k != s {
            return k.cmp(&s);
        }
    }
    key.len().cmp(&seg.len())
}

impl Entry {
    fn new(target: Target, spec: UpstreamSpec) -> Entry {
        let upstream = UpstreamTemplate::new(&spec.template, spec.case_sensitive);
        let headers = spec
            .header_templates
            .iter()
            .map(|(name, t)| HeaderTemplate::new(name, t, spec.case_sensitive))
            .collect();
        let priority = if upstream.is_catch_all() {
            0
        } else {
            spec.priority
        };
        Entry {
            target,
            methods: spec.methods.iter().map(|m| m.trim().to_string()).collect(),
            host: spec.host.filter(|h| !h.is_empty()),
            upstream,
            headers,
            priority,
        }
    }

    fn accepts(&self, method: &str, host: &str, req: &RequestInfo<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        if self.host.as_deref().is_some_and(|h| h != host) {
            return false;
        }
        if !self.upstream.is_match(req.path, req.query) {
            return false;
        }
        self.headers.iter().all(|h| {
            req.headers
                .joined(h.header_name())
                .is_some_and(|v| h.is_match(&v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(template: &str) -> UpstreamSpec {
        UpstreamSpec {
            template: template.to_string(),
            priority: 1,
            ..UpstreamSpec::default()
        }
    }

    fn with_methods(mut s: UpstreamSpec, methods: &[&str]) -> UpstreamSpec {
        s.methods = methods.iter().map(|m| m.to_string()).collect();
        s
    }

    fn with_host(mut s: UpstreamSpec, host: &str) -> UpstreamSpec {
        s.host = Some(host.to_string());
        s
    }

    fn with_priority(mut s: UpstreamSpec, p: i32) -> UpstreamSpec {
        s.priority = p;
        s
    }

    fn with_headers(mut s: UpstreamSpec, h: &[(&str, &str)]) -> UpstreamSpec {
        s.header_templates = h
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        s
    }

    fn table(routes: Vec<UpstreamSpec>) -> RouteTable {
        RouteTable::new(routes, Vec::new())
    }

    struct Req<'a> {
        method: &'a str,
        host: Option<&'a str>,
        path: &'a str,
        query: Option<&'a str>,
        headers: Vec<(&'a str, &'a str)>,
    }

    fn get(path: &str) -> Req<'_> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        Req {
            method: "GET",
            host: Some("localhost:5000"),
            path,
            query,
            headers: Vec::new(),
        }
    }

    impl<'a> Req<'a> {
        fn method(mut self, m: &'a str) -> Self {
            self.method = m;
            self
        }
        fn host(mut self, h: Option<&'a str>) -> Self {
            self.host = h;
            self
        }
        fn header(mut self, n: &'a str, v: &'a str) -> Self {
            self.headers.push((n, v));
            self
        }
        fn find(&self, t: &RouteTable) -> Option<RouteMatch> {
            t.find(&RequestInfo {
                method: self.method,
                host: self.host,
                path: self.path,
                query: self.query,
                headers: &self.headers,
            })
        }
        fn target(&self, t: &RouteTable) -> Option<Target> {
            self.find(t).map(|m| m.target)
        }
    }

    fn placeholders(m: &RouteMatch) -> Vec<(&str, &str)> {
        m.placeholders.iter().collect()
    }

    const R0: Option<Target> = Some(Target::Route(0));
    const R1: Option<Target> = Some(Target::Route(1));
    const R2: Option<Target> = Some(Target::Route(2));

    #[test]
    fn empty_table() {
        let t = table(vec![]);
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        assert_eq!(get("/").target(&t), None);
    }

    #[test]
    fn priority_and_config_order() {
        // Should_use_priority
        let t = table(vec![
            with_priority(spec("/goods/{url}"), 0),
            spec("/goods/delete"),
        ]);
        assert_eq!(get("/goods/delete").target(&t), R1);
        assert_eq!(get("/goods/other").target(&t), R0);
        // Equal priority: configuration order.
        let t = table(vec![spec("/goods/{url}"), spec("/goods/delete")]);
        assert_eq!(get("/goods/delete").target(&t), R0);
        // Higher priority later in the file still wins.
        let t = table(vec![spec("/a/{x}"), with_priority(spec("/a/b"), 99)]);
        assert_eq!(get("/a/b").target(&t), R1);
        let t = table(vec![spec("/a/{x}"), with_priority(spec("/a/b"), -5)]);
        assert_eq!(get("/a/b").target(&t), R0);
    }

    #[test]
    fn catch_all_is_forced_to_priority_zero() {
        let t = table(vec![spec("/{everything}"), spec("/")]);
        assert_eq!(get("/").target(&t), R1);
        assert_eq!(get("/test").target(&t), R0);
        let t = table(vec![spec("/"), spec("/{everything}")]);
        assert_eq!(get("/").target(&t), R0);
        // Even a negative-priority route beats nothing but is beaten... by rank only.
        let t = table(vec![spec("/{everything}"), with_priority(spec("/x"), 0)]);
        assert_eq!(get("/x").target(&t), R0);
        let m = get("/test/toot").find(&t).unwrap();
        assert_eq!(placeholders(&m), [("{everything}", "test/toot")]);
    }

    #[test]
    fn trailing_slash_routes() {
        // Should_fix_issue_134
        let t = table(vec![spec("/vacancy/"), spec("/vacancy/{vacancyId}")]);
        assert_eq!(get("/vacancy/1").target(&t), R1);
        assert_eq!(get("/vacancy/").target(&t), R0);
        assert_eq!(get("/vacancy").target(&t), R0);
        assert_eq!(get("/api/vacancy/1").target(&t), None);
        let t = table(vec![spec("/products")]);
        assert_eq!(get("/products/").target(&t), None);
    }

    #[test]
    fn methods() {
        let t = table(vec![
            with_methods(spec("/"), &["Get"]),
            with_methods(spec("/"), &["Post", " put "]),
        ]);
        assert_eq!(get("/").target(&t), R0);
        assert_eq!(get("/").method("post").target(&t), R1);
        assert_eq!(get("/").method("PUT").target(&t), R1);
        // Method mismatch is a 404, never a 405.
        assert_eq!(get("/").method("DELETE").target(&t), None);
        let t = table(vec![
            with_methods(spec("/"), &[]),
            with_methods(spec("/"), &["GET"]),
        ]);
        assert_eq!(get("/").method("PATCH").target(&t), R0);
    }

    #[test]
    fn upstream_host() {
        let t = table(vec![with_host(spec("/"), "localhost")]);
        assert_eq!(get("/").target(&t), R0);
        assert_eq!(get("/").host(Some("localhost")).target(&t), R0);
        assert_eq!(get("/").host(Some("LOCALHOST")).target(&t), None);
        assert_eq!(get("/").host(None).target(&t), None);
        let t = table(vec![
            with_host(spec("/"), "localhost"),
            with_host(spec("/"), "DONTMATCH"),
        ]);
        assert_eq!(get("/").target(&t), R0);
        let t = table(vec![
            with_host(spec("/"), "DONTMATCH"),
            with_host(spec("/"), "localhost"),
        ]);
        assert_eq!(get("/").target(&t), R1);
        // A host-specific match beats an earlier host-less one.
        let t = table(vec![spec("/"), with_host(spec("/"), "localhost")]);
        assert_eq!(get("/").target(&t), R1);
        assert_eq!(get("/").host(Some("other")).target(&t), R0);
        // ... even one of lower priority.
        let t = table(vec![
            with_priority(spec("/a"), 50),
            with_priority(with_host(spec("/{x}"), "localhost"), 0),
        ]);
        assert_eq!(get("/a").target(&t), R1);
        // UpstreamHost with a port never matches: the request host loses its port.
        let t = table(vec![with_host(spec("/"), "127.0.0.20:5000")]);
        assert_eq!(get("/").host(Some("127.0.0.20:5000")).target(&t), None);
        // Empty UpstreamHost means any host.
        let t = table(vec![with_host(spec("/"), "")]);
        assert_eq!(get("/").host(None).target(&t), R0);
        // Host-specific routes in different trie nodes.
        let t = table(vec![
            spec("/api/{x}"),
            with_host(spec("/{everything}"), "localhost"),
            with_host(spec("/api/users"), "localhost"),
        ]);
        assert_eq!(get("/api/users").target(&t), R2);
        assert_eq!(get("/api/other").target(&t), R1);
        assert_eq!(get("/api/other").host(Some("x")).target(&t), R0);
    }

    #[test]
    fn aggregates_rank_after_routes() {
        let routes = vec![spec("/a"), spec("/b")];
        let aggs = vec![spec("/"), with_priority(spec("/b"), 2)];
        let t = RouteTable::new(routes, aggs);
        assert_eq!(t.len(), 4);
        assert_eq!(get("/").target(&t), Some(Target::Aggregate(0)));
        assert_eq!(get("/b").target(&t), Some(Target::Aggregate(1)));
        let t = RouteTable::new(vec![spec("/x")], vec![spec("/x")]);
        assert_eq!(get("/x").target(&t), R0);
        // Aggregates honour header templates too.
        let agg = with_host(
            with_headers(spec("/"), &[("country_code", "PL")]),
            "localhost",
        );
        let t = RouteTable::new(vec![spec("/a"), spec("/b")], vec![agg]);
        assert_eq!(
            get("/").header("country_code", "PL").target(&t),
            Some(Target::Aggregate(0))
        );
        assert_eq!(get("/").target(&t), None);
    }

    #[test]
    fn header_routing() {
        let t = table(vec![with_headers(spec("/"), &[("country_code", "PL")])]);
        assert_eq!(get("/").header("country_code", "PL").target(&t), R0);
        assert_eq!(
            get("/")
                .header("other", "x")
                .header("Country_Code", "pl")
                .target(&t),
            R0
        );
        assert_eq!(get("/").header("country_code", "UK").target(&t), None);
        assert_eq!(get("/").target(&t), None);
        // Two values arrive as "PL,othervalue".
        assert_eq!(
            get("/")
                .header("country_code", "PL")
                .header("country_code", "othervalue")
                .target(&t),
            None
        );
        let t = table(vec![with_headers(
            spec("/"),
            &[("country_code", "PL"), ("region", "MAZ")],
        )]);
        assert_eq!(
            get("/")
                .header("country_code", "PL")
                .header("other", "o")
                .header("region", "MAZ")
                .target(&t),
            R0
        );
        assert_eq!(
            get("/")
                .header("country_code", "PL")
                .header("region", "anothervalue")
                .target(&t),
            None
        );
        assert_eq!(get("/").header("country_code", "PL").target(&t), None);
        let t = table(vec![with_headers(
            spec("/"),
            &[("country_code", "PL,{header:whatever}")],
        )]);
        let m = get("/")
            .header("country_code", "PL")
            .header("country_code", "UK")
            .find(&t)
            .unwrap();
        assert_eq!(placeholders(&m), [("{whatever}", "UK")]);
        // Should_distinguish_route_for_different_roles
        let t = table(vec![
            with_headers(spec("/products"), &[("Origin", "admin.xxx.com")]),
            spec("/products"),
        ]);
        assert_eq!(
            get("/products")
                .header("Origin", "admin.xxx.com")
                .target(&t),
            R0
        );
        assert_eq!(
            get("/products").header("Origin", "user.xxx.com").target(&t),
            R1
        );
        // Header and URL placeholders together, header ones last.
        let t = table(vec![with_headers(
            spec("/{aa}"),
            &[(
                "country_code",
                "start_{header:country_code}_version_{header:version}_end",
            )],
        )]);
        let m = get("/bb")
            .header("country_code", "start_pl_version_v1_end")
            .find(&t)
            .unwrap();
        assert_eq!(
            placeholders(&m),
            [
                ("{aa}", "bb"),
                ("{country_code}", "pl"),
                ("{version}", "v1")
            ]
        );
        // Case sensitivity follows RouteIsCaseSensitive.
        let mut s = with_headers(spec("/"), &[("h", "Value")]);
        s.case_sensitive = true;
        let t = table(vec![s]);
        assert_eq!(get("/").header("h", "value").target(&t), None);
        assert_eq!(get("/").header("h", "Value").target(&t), R0);
    }

    #[test]
    fn query_routes() {
        // PR 2351: a catch-all query route and a plain one both match; first wins.
        let t = table(vec![
            spec("/finance/v1/payment-methods?{id}"),
            spec("/finance/v1/payment-methods"),
        ]);
        let m = get("/finance/v1/payment-methods?customer_id=12345")
            .find(&t)
            .unwrap();
        assert_eq!(m.target, Target::Route(0));
        assert_eq!(placeholders(&m), [("{id}", "")]);
        assert_eq!(get("/finance/v1/payment-methods").target(&t), R0);
        let t = table(vec![spec(
            "/api/subscriptions/{subscriptionId}/updates?unitId={unitId}",
        )]);
        let m = get("/api/subscriptions/s1/updates?unitId=u1&productId=1")
            .find(&t)
            .unwrap();
        assert_eq!(
            placeholders(&m),
            [("{subscriptionId}", "s1"), ("{unitId}", "u1")]
        );
        assert_eq!(get("/api/subscriptions/s1/updates").target(&t), None);
        assert_eq!(get("/api/subscriptions/s1/updates?test=1").target(&t), None);
        let t = table(vec![
            spec("/{tenantId}/products?{everything}"),
            spec("/{tenantId}/products/{everything}"),
        ]);
        assert_eq!(get("/1/products/1").target(&t), R1);
        let t = table(vec![
            spec("/api/v1/abc?{everything}"),
            spec("/api/v1/abc2/{everything}"),
        ]);
        let m = get("/api/v1/abc2/apple?isRequired=1").find(&t).unwrap();
        assert_eq!(m.target, Target::Route(1));
        assert_eq!(placeholders(&m), [("{everything}", "apple")]);
    }

    #[test]
    fn routing_examples() {
        // Should_fix_issue_271
        let t = table(vec![spec("/api/v1/{everything}"), spec("/connect/token")]);
        assert_eq!(get("/api/v1/modules/Test").target(&t), R0);
        assert_eq!(get("/connect/token").target(&t), R1);
        let t = table(vec![spec("/api/v{apiVersion}/cards")]);
        assert_eq!(get("/api/v1/aaaaaaaaa/cards").target(&t), None);
        let t = table(vec![spec("/{variantId}/products/{productId}")]);
        let m = get("/23/products/1").find(&t).unwrap();
        assert_eq!(
            placeholders(&m),
            [("{variantId}", "23"), ("{productId}", "1")]
        );
        let t = table(vec![spec(
            "/api/invoices_{url0}/{url1}-{url2}_abcd/{url3}?urlId={url4}",
        )]);
        let m = get("/api/InvoIces_abc/def-ghi_abcd/xyz?urlId=bla")
            .find(&t)
            .unwrap();
        assert_eq!(
            placeholders(&m),
            [
                ("{url0}", "abc"),
                ("{url1}", "def"),
                ("{url2}", "ghi"),
                ("{url3}", "xyz"),
                ("{url4}", "bla")
            ]
        );
        // A case-sensitive route is found through the lowercased index, then checked.
        let mut s = spec("/API/Items/{id}");
        s.case_sensitive = true;
        let t = table(vec![s, spec("/api/items/{id}")]);
        assert_eq!(get("/API/Items/1").target(&t), R0);
        assert_eq!(get("/api/items/1").target(&t), R1);
        assert_eq!(get("/Api/ITEMS/1").target(&t), R1);
    }

    /// Ocelot's `DownstreamRouteFinder`, literally: filter, stable sort, scan all.
    fn reference(specs: &[UpstreamSpec], aggs: usize, req: &Req<'_>) -> Option<Target> {
        let host = req.host.map_or("", |h| h.split(':').next().unwrap_or(""));
        let mut candidates: Vec<(usize, i32, &UpstreamSpec)> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let up = UpstreamTemplate::new(&s.template, s.case_sensitive);
                (i, if up.is_catch_all() { 0 } else { s.priority }, s)
            })
            .collect();
        candidates.sort_by_key(|c| std::cmp::Reverse(c.1));
        let mut matches = Vec::new();
        for (i, _, s) in candidates {
            let method_ok = s.methods.is_empty()
                || s.methods
                    .iter()
                    .any(|m| m.trim().eq_ignore_ascii_case(req.method.trim()));
            let host_ok = s.host.as_deref().is_none_or(|h| h.is_empty() || h == host);
            if !method_ok || !host_ok {
                continue;
            }
            if !UpstreamTemplate::new(&s.template, s.case_sensitive).is_match(req.path, req.query) {
                continue;
            }
            let headers_ok = s.header_templates.iter().all(|(n, v)| {
                req.headers
                    .as_slice()
                    .joined(n)
                    .is_some_and(|x| HeaderTemplate::new(n, v, s.case_sensitive).is_match(&x))
            });
            if headers_ok {
                matches.push((i, s.host.as_deref().is_some_and(|h| !h.is_empty())));
            }
        }
        let pick = matches.iter().find(|m| m.1).or(matches.first())?.0;
        let routes = specs.len() - aggs;
        Some(if pick < routes {
            Target::Route(pick)
        } else {
            Target::Aggregate(pick - routes)
        })
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    #[test]
    fn index_agrees_with_linear_reference() {
        const TEMPLATES: &[&str] = &[
            "/",
            "/{everything}",
            "/api/{x}",
            "/api/users",
            "/api/users/{id}",
            "/API/Users/",
            "/api/v{v}/users",
            "/api/users/{id}/posts/{pid}",
            "/{t}/users",
            "/api/users?q={q}",
            "/api?{all}",
            "/api/users.json",
            "/.well-known/{x}",
            "/a/b/c/d",
            "/a/b/{c}/d",
            "/api/users/{id}-{slug}",
            "/Api/{x}/",
        ];
        const PATHS: &[&str] = &[
            "/",
            "/api",
            "/api/",
            "/api/users",
            "/API/USERS/",
            "/api/users/7",
            "/api/v2/users",
            "/x/users",
            "/api/users/7/posts/9",
            "/api/usersXjson",
            "/.well-known/a",
            "/a/b/c/d",
            "/a/b/q/d",
            "/api/users/1-two",
            "/other",
        ];
        const QUERIES: &[Option<&str>] = &[None, Some(""), Some("q=1"), Some("z=2")];
        let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
        for _ in 0..300 {
            let n = 1 + rng.next() % 12;
            let aggs = (rng.next() % 3) as usize;
            let mut specs = Vec::new();
            for _ in 0..n as usize + aggs {
                let mut s = spec(rng.pick(TEMPLATES));
                s.priority = (rng.next() % 3) as i32;
                s.case_sensitive = rng.next().is_multiple_of(4);
                if rng.next().is_multiple_of(4) {
                    s.host = Some(rng.pick(&["localhost", "other", ""]).to_string());
                }
                if rng.next().is_multiple_of(4) {
                    s.methods = vec![rng.pick(&["GET", "post"]).to_string()];
                }
                if rng.next().is_multiple_of(6) {
                    s.header_templates =
                        vec![("h".into(), rng.pick(&["a", "{header:v}"]).to_string())];
                }
                specs.push(s);
            }
            let routes = specs[..specs.len() - aggs].to_vec();
            let t = RouteTable::new(routes, specs[specs.len() - aggs..].to_vec());
            for _ in 0..40 {
                let mut req = get(rng.pick(PATHS));
                req.query = QUERIES[(rng.next() % QUERIES.len() as u64) as usize];
                req.method = rng.pick(&["GET", "POST", "get"]);
                req.host = [Some("localhost:80"), Some("other"), None][(rng.next() % 3) as usize];
                if rng.next().is_multiple_of(2) {
                    req.headers.push(("H", rng.pick(&["a", "b"])));
                }
                assert_eq!(
                    req.target(&t),
                    reference(&specs, aggs, &req),
                    "{specs:?} {}",
                    req.path
                );
            }
        }
    }

    #[test]
    fn ten_thousand_routes() {
        let mut specs = Vec::new();
        for i in 0..5000 {
            specs.push(spec(&format!("/api/svc{i}/{{resource}}/{{id}}")));
            specs.push(spec(&format!("/api/v1/items{i}/{{id}}")));
        }
        let t = table(specs);
        assert_eq!(t.len(), 10_000);
        let m = get("/api/svc4321/users/9").find(&t).unwrap();
        assert_eq!(m.target, Target::Route(8642));
        assert_eq!(placeholders(&m), [("{resource}", "users"), ("{id}", "9")]);
        assert_eq!(get("/api/v1/items17/3").target(&t), Some(Target::Route(35)));
        assert_eq!(get("/api/svc5000/users/9").target(&t), None);
        assert_eq!(get("/api/SVC12").target(&t), None);
        assert_eq!(get("/api/SVC12/x").target(&t), Some(Target::Route(24)));
    }

    #[test]
    fn placeholders_api() {
        let mut p = Placeholders::new();
        p.push("{a}".into(), "1".into());
        p.push("{a}".into(), "2".into());
        assert_eq!(p.get("{a}"), Some("1"));
        assert_eq!(p.len(), 2);
        p.insert("{a}".into(), "3".into());
        assert_eq!(p.len(), 1);
        assert_eq!(p.get("{a}"), Some("3"));
        p.insert("{b}".into(), "4".into());
        assert_eq!(p.iter().collect::<Vec<_>>(), [("{a}", "3"), ("{b}", "4")]);
        assert_eq!(p.get("{c}"), None);
        assert!(!p.is_empty());
    }

    #[test]
    fn table_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RouteTable>();
        assert_send_sync::<RouteMatch>();
    }

    #[test]
    fn never_panics_on_random_requests() {
        let t = table(vec![
            spec("/"),
            spec("/{everything}"),
            spec("/a/{b}?c={d}"),
            with_headers(spec("/h/{x}"), &[("x", "{header:y}.z")]),
            spec("{x}"),
            spec(""),
            spec("/{a"),
        ]);
        let mut rng = Rng(42);
        const CHARS: &[&str] = &["/", "a", "?", "&", "=", "{", "%", "é", ".", "h", ":", " "];
        for _ in 0..5000 {
            let s: String = (0..rng.next() % 12).map(|_| rng.pick(CHARS)).collect();
            let q: String = (0..rng.next() % 6).map(|_| rng.pick(CHARS)).collect();
            let headers = vec![("x", s.as_str())];
            let req = RequestInfo {
                method: rng.pick(&["GET", "", " "]),
                host: Some(s.as_str()),
                path: &s,
                query: Some(&q),
                headers: &headers,
            };
            let _ = t.find(&req);
        }
    }
}
