//! `UpstreamPathTemplate` matching: the verdict Ocelot's
//! `UpstreamTemplatePatternCreator` regex gives, without a regex engine.
//!
//! The template goes through the same rewriting steps as Ocelot's string
//! replacements (query joint, `[^/]+` versus `.*` per placeholder, optional last
//! segment, optional trailing slash) as tokens, then lowers to a [`super::vm`]
//! program. Template characters .NET would read as regex syntax other than `.`
//! are matched literally; [`super::dotnet_regex`] names them so validation can
//! warn.

use super::path_values::Extractor;
use super::placeholders::placeholder_ranges;
use super::placeholders::Placeholders;
use super::vm::{Builder, Class, Inst, Program};

/// Builds `path` or `path + "?" + query` without allocating when it fits on the
/// stack, then hands it to `f`.
pub(super) fn with_subject<R>(path: &str, query: Option<&str>, f: impl FnOnce(&[u8]) -> R) -> R {
    let Some(q) = query else {
        return f(path.as_bytes());
    };
    let total = path.len() + 1 + q.len();
    let mut inline = [0u8; 512];
    if total <= inline.len() {
        inline[..path.len()].copy_from_slice(path.as_bytes());
        inline[path.len()] = b'?';
        inline[path.len() + 1..total].copy_from_slice(q.as_bytes());
        f(&inline[..total])
    } else {
        let mut v = Vec::with_capacity(total);
        v.extend_from_slice(path.as_bytes());
        v.push(b'?');
        v.extend_from_slice(q.as_bytes());
        f(&v)
    }
}

/// Turns capture positions into (name, value) pairs the way .NET exposes named

#[derive(Clone, Debug, PartialEq)]
enum UTok {
    Ch(char),
    Ph(String),
    /// `[^/]+`
    Seg,
    /// `.*`
    Rest,
    /// `(/$|/\?|\?|$)`
    Qs,
    /// `(/|)`
    OptSlash,
    /// `(?:|…)`
    Opt(Vec<UTok>),
}

/// A compiled `UpstreamPathTemplate`: Ocelot's match regex and its placeholder
/// extraction, both as VM programs.
#[derive(Clone, Debug)]
pub struct UpstreamTemplate {
    catch_all: bool,
    contains_query: bool,
    matcher: Program,
    extractor: Extractor,
    literal_prefix: Vec<String>,
}

impl UpstreamTemplate {
    /// Compiles a template (`RouteIsCaseSensitive` = `case_sensitive`). Never fails:
    /// inputs Ocelot would refuse or crash on still compile to something total.
    pub fn new(template: &str, case_sensitive: bool) -> UpstreamTemplate {
        let (tokens, contains_query, catch_all) = upstream_tokens(template);
        let mut b = Builder::new();
        if catch_all {
            // `^/.*`: anything that starts with a slash.
            b.lit(b"/");
        } else {
            lower_upstream(&mut b, &tokens, true);
            b.push(Inst::AssertEnd);
        }
        let matcher = b.finish(!case_sensitive);
        UpstreamTemplate {
            catch_all,
            contains_query,
            matcher,
            extractor: Extractor::new(template),
            literal_prefix: if catch_all {
                Vec::new()
            } else {
                literal_prefix(template)
            },
        }
    }

    /// The `/{everything}` special case: matches every path, priority forced to 0.
    pub fn is_catch_all(&self) -> bool {
        self.catch_all
    }

    /// Whether the template has a query part (it is then matched against
    /// `path + "?" + query`). Only the cross-checks ask; matching reads the field.
    #[cfg(test)]
    pub fn contains_query(&self) -> bool {
        self.contains_query
    }

    /// Leading path segments that are plain literals (ASCII-lowercased): every path
    /// this template matches starts with exactly these segments, which lets a
    /// route table index templates by prefix.
    pub fn literal_prefix(&self) -> &[String] {
        &self.literal_prefix
    }

    /// Ocelot's verdict for a request. `path` is the normalised path
    /// ([`crate::path::normalize_path`]); `query` is the raw query without `?`,
    /// `None` when the request had no `?`.
    pub fn is_match(&self, path: &str, query: Option<&str>) -> bool {
        if self.contains_query {
            with_subject(path, query, |s| self.matcher.is_match(s))
        } else {
            self.matcher.is_match(path.as_bytes())
        }
    }

    /// Appends the placeholder values Ocelot extracts for this request (names with
    /// braces). Meant for a request that [`is_match`](Self::is_match) accepted;
    /// on others it appends what Ocelot would (possibly nothing).
    pub fn extract(&self, path: &str, query: Option<&str>, out: &mut Placeholders) {
        self.extractor.extract(path, query, out);
    }
}

/// Tokenises a template and applies Ocelot's rewriting steps; returns the tokens,
/// whether the template has a query part and whether it is the `/{x}` special case.
fn upstream_tokens(template: &str) -> (Vec<UTok>, bool, bool) {
    let ranges = placeholder_ranges(template);
    let mut tokens = Vec::with_capacity(template.len());
    let mut ri = 0;
    let mut i = 0;
    while i < template.len() {
        if let Some(&(s, e)) = ranges.get(ri) {
            if s == i {
                tokens.push(UTok::Ph(template[s..e].to_string()));
                ri += 1;
                i = e;
                continue;
            }
        }
        let Some(c) = template[i..].chars().next() else {
            break;
        };
        tokens.push(UTok::Ch(c));
        i += c.len_utf8();
    }

    if tokens.len() == 2 && tokens[0] == UTok::Ch('/') && matches!(tokens[1], UTok::Ph(_)) {
        return (tokens, false, true);
    }

    let contains_query = tokens.contains(&UTok::Ch('?'));
    if contains_query {
        let slash_q = tokens
            .windows(2)
            .any(|w| w[0] == UTok::Ch('/') && w[1] == UTok::Ch('?'));
        let mut out = Vec::with_capacity(tokens.len());
        let mut i = 0;
        while i < tokens.len() {
            if slash_q {
                if tokens[i] == UTok::Ch('/') && tokens.get(i + 1) == Some(&UTok::Ch('?')) {
                    out.push(UTok::Qs);
                    i += 2;
                    continue;
                }
            } else if tokens[i] == UTok::Ch('?') {
                out.push(UTok::Qs);
                i += 1;
                continue;
            }
            out.push(tokens[i].clone());
            i += 1;
        }
        tokens = out;
    }

    // Each placeholder (first appearance order) becomes `.*` when no '/' follows it
    // in the rewritten template or when it sits after the query joint, else
    // `[^/]+`. Ocelot searches the rewritten *string*, so slashes inside the
    // joint, inside already-emitted `[^/]+` and inside placeholder names count.
    while let Some(at) = tokens.iter().position(|t| matches!(t, UTok::Ph(_))) {
        let UTok::Ph(name) = tokens[at].clone() else {
            break;
        };
        let slash_after = name.contains('/')
            || tokens[at + 1..].iter().any(|t| match t {
                UTok::Ch('/') | UTok::Qs | UTok::Seg => true,
                UTok::Ph(n) => n.contains('/'),
                _ => false,
            });
        let query_before = contains_query
            && tokens[..at]
                .iter()
                .any(|t| matches!(t, UTok::Qs | UTok::Ch('?')));
        let repl = if !slash_after || query_before {
            UTok::Rest
        } else {
            UTok::Seg
        };
        for t in tokens.iter_mut() {
            if *t == UTok::Ph(name.clone()) {
                *t = repl.clone();
            }
        }
    }

    if tokens == [UTok::Ch('/')] {
        return (tokens, contains_query, false);
    }

    // The last '/' of the rewritten string followed by '.' (a `.*` or a literal
    // dot) makes the final segment optional: `/a/{x}` -> `/a(?:|/.*)`.
    let last_slash = tokens
        .iter()
        .rposition(|t| matches!(t, UTok::Ch('/') | UTok::Seg | UTok::Qs));
    if let Some(k) = last_slash {
        if tokens[k] == UTok::Ch('/')
            && matches!(tokens.get(k + 1), Some(UTok::Rest) | Some(UTok::Ch('.')))
        {
            let tail = tokens.split_off(k);
            tokens.push(UTok::Opt(tail));
        }
    }
    if tokens.last() == Some(&UTok::Ch('/')) {
        tokens.pop();
        tokens.push(UTok::OptSlash);
    }
    (tokens, contains_query, false)
}

/// Emits the program for rewritten tokens. `at_end`: the end anchor follows.
fn lower_upstream(b: &mut Builder, toks: &[UTok], at_end: bool) {
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            UTok::Ch('.') => {
                b.push(Inst::Any);
                i += 1;
            }
            UTok::Ch(_) => {
                let mut run = String::new();
                while let Some(UTok::Ch(c)) = toks.get(i) {
                    if *c == '.' {
                        break;
                    }
                    run.push(*c);
                    i += 1;
                }
                b.lit(run.as_bytes());
            }
            // Unreachable after rewriting; kept literal so lowering is total.
            UTok::Ph(name) => {
                b.lit(name.as_bytes());
                i += 1;
            }
            UTok::Seg => {
                b.push(Inst::Span {
                    class: Class::NotSlash,
                    min1: true,
                });
                i += 1;
            }
            UTok::Rest => {
                if at_end && i + 1 == toks.len() {
                    b.push(Inst::SkipAll);
                } else {
                    b.push(Inst::Span {
                        class: Class::Any,
                        min1: false,
                    });
                }
                i += 1;
            }
            UTok::Qs => {
                // (/$|/\?|\?|$)
                let s1 = b.push(Inst::Match);
                let a1 = b.pc();
                b.lit(b"/");
                b.push(Inst::AssertEnd);
                let j1 = b.push(Inst::Match);
                let s2 = b.push(Inst::Match);
                let a2 = b.pc();
                b.lit(b"/?");
                let j2 = b.push(Inst::Match);
                let s3 = b.push(Inst::Match);
                let a3 = b.pc();
                b.lit(b"?");
                let j3 = b.push(Inst::Match);
                let a4 = b.push(Inst::AssertEnd);
                let next = b.pc();
                b.patch(
                    s1,
                    Inst::Split {
                        first: a1,
                        second: s2,
                    },
                );
                b.patch(
                    s2,
                    Inst::Split {
                        first: a2,
                        second: s3,
                    },
                );
                b.patch(
                    s3,
                    Inst::Split {
                        first: a3,
                        second: a4,
                    },
                );
                for j in [j1, j2, j3] {
                    b.patch(j, Inst::Jmp(next));
                }
                i += 1;
            }
            UTok::OptSlash => {
                // (/|)
                let s = b.push(Inst::Match);
                let a = b.pc();
                b.lit(b"/");
                let next = b.pc();
                b.patch(
                    s,
                    Inst::Split {
                        first: a,
                        second: next,
                    },
                );
                i += 1;
            }
            UTok::Opt(inner) => {
                // (?:|inner)
                let s = b.push(Inst::Match);
                let j = b.push(Inst::Match);
                let start = b.pc();
                lower_upstream(b, inner, at_end && i + 1 == toks.len());
                let next = b.pc();
                b.patch(
                    s,
                    Inst::Split {
                        first: j,
                        second: start,
                    },
                );
                b.patch(j, Inst::Jmp(next));
                i += 1;
            }
        }
    }
}

/// Leading complete path segments made only of literal characters (no
/// placeholder, no `.` wildcard, not in the query), ASCII-lowercased.
fn literal_prefix(template: &str) -> Vec<String> {
    let Some(body) = template.strip_prefix('/') else {
        return Vec::new();
    };
    let path_part = body.split('?').next().unwrap_or("");
    let mut out = Vec::new();
    for seg in path_part.split('/') {
        if seg.is_empty() || seg.contains(['{', '}', '.']) {
            break;
        }
        out.push(seg.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(template: &str, path: &str) -> bool {
        UpstreamTemplate::new(template, false).is_match(path, None)
    }

    fn mq(template: &str, path: &str, query: Option<&str>) -> bool {
        UpstreamTemplate::new(template, false).is_match(path, query)
    }

    // --- RoutingTests, RegExUrlMatcherTests -----------------------------------

    #[test]
    fn placeholder_inside_segment_stops_at_slash() {
        assert!(!m("/api/v{apiVersion}/cards", "/api/v1/aaaaaaaaa/cards"));
        assert!(m("/api/v{apiVersion}/cards", "/api/v1/cards"));
        assert!(!m("/api/v{apiVersion}/cards", "/api/v/cards"));
    }

    #[test]
    fn trailing_placeholder_is_a_multi_segment_catch_all() {
        for p in ["/api", "/api/", "/api/1", "/api/1/2", "/API/x"] {
            assert!(m("/api/{id}", p), "{p}");
        }
        assert!(!m("/api/{id}", "/apix"));
        assert!(!m("/upstream/test/{everything}", "/upstream/test123"));
        assert!(m("/upstream/test/{everything}", "/upstream/test"));
        assert!(!m("/upstream/{version}/test", "/upstream/test"));
        assert!(m("/upstream/{version}/test", "/upstream/v1/test"));
    }

    #[test]
    fn trailing_slash_rules() {
        assert!(m("/products", "/products"));
        assert!(!m("/products", "/products/"));
        assert!(m("/products/", "/products"));
        assert!(m("/products/", "/products/"));
        assert!(m("/account/authenticate/", "/account/authenticate"));
        assert!(!m("/vacancy/", "/vacancy/1"));
        assert!(m("/vacancy/{vacancyId}", "/vacancy/1"));
        assert!(!m("/vacancy/{vacancyId}", "/api/vacancy/1"));
    }

    #[test]
    fn root_and_catch_all() {
        assert!(m("/", "/"));
        assert!(!m("/", "/working/"));
        assert!(!m("/", "/api/values"));
        for p in ["/", "/a", "/a/b/c", "/%20"] {
            assert!(m("/{everything}", p));
        }
        assert!(!m("/{everything}", ""));
    }

    #[test]
    fn case_sensitivity() {
        let ci = UpstreamTemplate::new("/api/product/{id}/variant/", false);
        let cs = UpstreamTemplate::new("/api/product/{id}/variant/", true);
        assert!(ci.is_match("/API/product/1/variant/", None));
        assert!(!cs.is_match("/API/product/1/variant/", None));
        assert!(cs.is_match("/api/product/1/variant", None));
    }

    #[test]
    fn unescaped_dot_is_a_wildcard() {
        assert!(m("/admin/v1/swagger.json", "/admin/v1/swagger.json"));
        assert!(m("/admin/v1/swagger.json", "/admin/v1/swaggerXjson"));
        assert!(!m("/api.{x}/y", "/api//z/y"));
        assert!(m("/a.b", "/a/b"));
        // The last segment starting with '.' becomes optional, as in Ocelot.
        assert!(m("/files/.hidden", "/files"));
        assert!(m("/files/.hidden", "/files/xhidden"));
        assert!(m(
            "/.well-known/openid-configuration",
            "/.well-known/openid-configuration"
        ));
    }

    #[test]
    fn embedded_placeholders() {
        let t = "/api/invoices_{url0}/{url1}-{url2}_abcd/{url3}?urlId={url4}";
        assert!(mq(
            t,
            "/api/invoices_abc/def-ghi_abcd/xyz",
            Some("urlId=bla")
        ));
        assert!(mq(
            t,
            "/api/InvoIces_abc/def-ghi_abcd/xyz",
            Some("urlId=bla")
        ));
        assert!(!UpstreamTemplate::new(t, true)
            .is_match("/api/InvoIces_abc/def-ghi_abcd/xyz", Some("urlId=bla")));
        assert!(!mq(
            t,
            "/api/invoices_abc/defghi_abcd/xyz",
            Some("urlId=bla")
        ));
    }

    #[test]
    fn query_templates() {
        let t = "/api/subscriptions/{subscriptionId}/updates?unitId={unitId}";
        assert!(mq(t, "/api/subscriptions/1/updates", Some("unitId=2")));
        assert!(mq(
            t,
            "/api/subscriptions/1/updates",
            Some("unitId=2&productId=1")
        ));
        assert!(mq(t, "/api/subscriptions/1/updates/", Some("unitId=2")));
        assert!(!mq(t, "/api/subscriptions/1/updates", None));
        assert!(!mq(t, "/api/subscriptions/1/updates", Some("test=1")));
        assert!(!mq(t, "/api/subscriptions/1/updates", Some("x=1&unitId=2")));

        let c = "/contracts?{everything}";
        for (p, q) in [
            ("/contracts", None),
            ("/contracts", Some("")),
            ("/contracts", Some("p1=v1&p2=v2")),
            ("/contracts/", None),
            ("/Contracts/", Some("p=1")),
        ] {
            assert!(mq(c, p, q), "{p} {q:?}");
        }
        assert!(!mq(c, "/contracts/x", None));
        // Bugs 2064 / 2132: a query placeholder never swallows path segments.
        assert!(!mq(
            "/{tenantId}/products?{everything}",
            "/1/products/1",
            None
        ));
        assert!(mq(
            "/{tenantId}/products/{everything}",
            "/1/products/1",
            None
        ));
        assert!(!mq(
            "/api/v1/abc?{everything}",
            "/api/v1/abc2/apple",
            Some("isRequired=1")
        ));
        assert!(mq(
            "/api/v1/abc2/{everything}",
            "/api/v1/abc2/apple",
            Some("isRequired=1")
        ));
        // A path placeholder before the query part is single-segment.
        assert!(!mq("/a/{b}?x={x}", "/a/1/2", Some("x=1")));
        assert!(mq("/a/{b}?x={x}", "/a/1", Some("x=1")));
        // Query templates see the raw query: a value may contain anything.
        assert!(mq("/q?a={a}&b={b}", "/q", Some("a=1&2&b=")));
    }

    #[test]
    fn literal_prefixes() {
        let p = |t: &str| UpstreamTemplate::new(t, false).literal_prefix().to_vec();
        assert_eq!(p("/api/Users/{id}"), ["api", "users"]);
        assert_eq!(
            p("/api/abp/api-definition"),
            ["api", "abp", "api-definition"]
        );
        assert_eq!(p("/products/"), ["products"]);
        assert_eq!(p("/api/v1?x={y}"), ["api", "v1"]);
        assert_eq!(p("/admin/v1/swagger.json"), ["admin", "v1"]);
        assert!(p("/.well-known/openid-configuration").is_empty());
        assert!(p("/{everything}").is_empty());
        assert!(p("/{a}/b").is_empty());
        assert!(p("/").is_empty());
        assert_eq!(p("/a/v{x}/c"), ["a"]);
    }
}
