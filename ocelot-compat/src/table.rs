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

/// Placeholder values of a match: names with braces (`"{id}"`) in Ocelot's order
/// (path placeholders, then header placeholders). Several entries may share a name;
/// lookups and downstream rendering use the first, as Ocelot's replacer does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placeholders(Vec<(String, String)>);

impl Placeholders {
    /// No placeholders.
    pub fn new() -> Placeholders {
        Placeholders(Vec::new())
    }

    /// Value of the first placeholder with this name (braces included).
    pub fn get(&self, name_with_braces: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name_with_braces)
            .map(|(_, v)| v.as_str())
    }

    /// All (name, value) pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Replace-or-add, as `ChangeDownstreamPathTemplate` does it: every entry with
    /// this name is removed and the new one goes last.
    pub fn insert(&mut self, name: String, value: String) {
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, value));
    }

    /// Appends an entry even if the name is already present (Ocelot appends header
    /// placeholders after the path ones without de-duplicating).
    pub fn push(&mut self, name: String, value: String) {
        self.0.push((name, value));
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
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
        entries.sort_by(|a, b| b.priority.cmp(&a.priority));

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
        let children = &self.nodes.get(node as usize)?.children;
        children
            .binary_search_by(|(key, _)| cmp_key_to_segment(key, seg))
            .ok()
            .map(|i| children[i].1)
    }
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
            methods: spec
                .methods
                .iter()
                .map(|m| m.trim().to_string())
                .collect(),
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
