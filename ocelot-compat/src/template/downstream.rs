//! `DownstreamPathTemplate` rendering: what Ocelot's
//! `DownstreamUrlCreatorMiddleware` (`src/DownstreamUrlCreator/`) sends
//! downstream, down to `System.UriBuilder`'s escaping.
//!
//! Every decision that depends on placeholder values happens at render time,
//! after substitution, because Ocelot makes them on the substituted string
//! (a value containing `?` moves the query split, for instance).

use std::borrow::Cow;

use super::placeholders::placeholder_names;
use super::placeholders::Placeholders;
use super::query::{is_pct_triplet, merge_queries, remove_used_parameters};
use crate::path::{is_segment_char, push_pct, remove_dot_segments};

/// A `DownstreamPathTemplate`, ready to render per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownstreamTemplate {
    template: String,
    names: Vec<String>,
}

/// The downstream path and query Ocelot would send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownstreamTarget {
    /// Escaped path, always starting with `/`.
    pub path: String,
    /// Query without `?`; `None` when there is no (or an empty) query.
    pub query: Option<String>,
}

impl DownstreamTemplate {
    /// Keeps the template; every decision that depends on values happens in
    /// [`render`](Self::render), after substitution, as in Ocelot.
    pub fn parse(downstream_path_template: &str) -> DownstreamTemplate {
        DownstreamTemplate {
            template: downstream_path_template.to_string(),
            names: placeholder_names(downstream_path_template),
        }
    }

    /// The template as configured.
    pub fn as_str(&self) -> &str {
        &self.template
    }

    /// Placeholders of the template, in order, with braces.
    pub fn placeholders(&self) -> &[String] {
        &self.names
    }

    /// Ocelot's `DownstreamPathTemplate.Value.Contains(name)` (a substring test,
    /// used by `ChangeDownstreamPathTemplate`).
    pub fn has_placeholder(&self, name_with_braces: &str) -> bool {
        self.template.contains(name_with_braces)
    }

    /// Builds the downstream path and query by Ocelot's rules.
    ///
    /// 1. Every placeholder, in order, is replaced everywhere in the template
    ///    (unknown ones stay literal; a value is never re-scanned for its own name,
    ///    but a later placeholder's name inside an earlier value is replaced, as
    ///    .NET's sequential `StringBuilder.Replace` does).
    /// 2. A trailing `/` is trimmed when `upstream_path` has none.
    /// 3. With a `?` in the result: the path is what precedes it; without an
    ///    upstream query the template's query is used verbatim, otherwise both are
    ///    merged (`HttpUtility.ParseQueryString`, upstream parameters named like a
    ///    placeholder dropped case-sensitively, template parameters first, then
    ///    the rest, re-encoded).
    /// 4. Without `?`: the upstream query is forwarded raw when there are no
    ///    placeholders, else re-encoded (`QueryHelpers.ParseQuery`) without the
    ///    parameters named like a placeholder (case-insensitively).
    /// 5. As `System.UriBuilder` would: `\` becomes `/`, characters illegal in a
    ///    path or query are escaped, dot segments are removed, an empty path is `/`.
    pub fn render(
        &self,
        placeholders: &Placeholders,
        upstream_path: &str,
        upstream_query: Option<&str>,
    ) -> DownstreamTarget {
        let mut s: Cow<'_, str> = Cow::Borrowed(&self.template);
        for (name, value) in placeholders.iter() {
            if !name.is_empty() && s.contains(name) {
                s = Cow::Owned(s.replace(name, value));
            }
        }
        if s.ends_with('/') && !upstream_path.ends_with('/') {
            s = match s {
                Cow::Borrowed(b) => Cow::Borrowed(b.trim_end_matches('/')),
                Cow::Owned(o) => Cow::Owned(o.trim_end_matches('/').to_string()),
            };
        }
        let upstream_query = upstream_query.filter(|q| !q.is_empty());
        let (path, query): (&str, Cow<'_, str>) = match s.find('?') {
            Some(q) => {
                let template_query = &s[q..];
                let query = match upstream_query {
                    None => Cow::Borrowed(&template_query[1..]),
                    Some(uq) => Cow::Owned(merge_queries(uq, template_query, placeholders)),
                };
                (&s[..q], query)
            }
            None => {
                let query = match upstream_query {
                    None => Cow::Borrowed(""),
                    Some(uq) if placeholders.is_empty() => Cow::Borrowed(uq),
                    Some(uq) => Cow::Owned(remove_used_parameters(uq, placeholders)),
                };
                (&s[..], query)
            }
        };
        let query = escape_query(&query);
        DownstreamTarget {
            path: finish_path(path),
            query: if query.is_empty() {
                None
            } else {
                Some(query.into_owned())
            },
        }
    }
}

/// `UriBuilder.Path` + `System.Uri`: backslashes become slashes, illegal
/// characters are escaped (existing `%XX` kept), dot segments removed.
fn finish_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') && !path.starts_with('\\') {
        out.push('/');
    }
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => out.push('/'),
            b'/' | b'[' | b']' => out.push(b as char),
            b'%' if is_pct_triplet(bytes, i) => out.push('%'),
            _ if is_segment_char(b) => out.push(b as char),
            _ => push_pct(&mut out, b),
        }
    }
    if let Cow::Owned(removed) = remove_dot_segments(&out) {
        return removed;
    }
    out
}

/// Escapes what `System.Uri` would escape in a query; valid queries pass unchanged.
fn escape_query(q: &str) -> Cow<'_, str> {
    let bytes = q.as_bytes();
    let ok = |i: usize, b: u8| {
        is_segment_char(b)
            || matches!(b, b'/' | b'?' | b'[' | b']')
            || (b == b'%' && is_pct_triplet(bytes, i))
    };
    if bytes.iter().enumerate().all(|(i, &b)| ok(i, b)) {
        return Cow::Borrowed(q);
    }
    let mut out = String::with_capacity(q.len() + 8);
    for (i, &b) in bytes.iter().enumerate() {
        if ok(i, b) {
            out.push(b as char);
        } else {
            push_pct(&mut out, b);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- Downstream rendering (DownstreamUrlCreatorMiddlewareTests, acceptance) --

    fn ph(list: &[(&str, &str)]) -> Placeholders {
        let mut p = Placeholders::new();
        for (n, v) in list {
            p.push(n.to_string(), v.to_string());
        }
        p
    }

    fn render(t: &str, p: &Placeholders, up: &str, q: Option<&str>) -> (String, Option<String>) {
        let r = DownstreamTemplate::parse(t).render(p, up, q);
        (r.path, r.query)
    }

    fn want(path: &str, q: Option<&str>) -> (String, Option<String>) {
        (path.to_string(), q.map(str::to_string))
    }

    #[test]
    fn substitution_and_trailing_slash() {
        let p = ph(&[("{productId}", "1")]);
        assert_eq!(
            render("/api/products/{productId}", &p, "/products/1", None),
            want("/api/products/1", None)
        );
        assert_eq!(
            render("/api/{unknown}/{productId}", &p, "/x", None),
            want("/api/%7Bunknown%7D/1", None)
        );
        let p = ph(&[("{url}", "abcd"), ("{version}", "v1")]);
        assert_eq!(
            render("/api/{version}/test/{url}/", &p, "/test/v1/abcd", None),
            want("/api/v1/test/abcd", None)
        );
        assert_eq!(
            render("/api/{version}/test/{url}/", &p, "/test/v1/abcd/", None),
            want("/api/v1/test/abcd/", None)
        );
        let p = ph(&[("{everything}", "")]);
        assert_eq!(
            render("/downstream/test/{everything}", &p, "/upstream/test", None),
            want("/downstream/test", None)
        );
        assert_eq!(
            render("/downstream/test/{everything}", &p, "/upstream/test/", None),
            want("/downstream/test/", None)
        );
        assert_eq!(render("/", &ph(&[]), "/x", None), want("/", None));
        assert_eq!(
            render("/api/invoices", &ph(&[]), "/invoices/", None),
            want("/api/invoices", None)
        );
        // Claims can change a value; ChangeDownstreamPathTemplate semantics.
        let mut p = ph(&[("{a}", "1"), ("{b}", "2")]);
        p.insert("{a}".into(), "9".into());
        assert_eq!(render("/{a}/{b}", &p, "/x", None), want("/9/2", None));
        // Two placeholders differing only by case are distinct (PR 2351).
        let p = ph(&[("{id}", "1"), ("{Id}", "2")]);
        assert_eq!(
            render("/v1/items/{Id}/{id}", &p, "/finance/v1/items/1/2", None),
            want("/v1/items/2/1", None)
        );
    }

    #[test]
    fn query_forwarding_without_template_query() {
        // No placeholders: the raw query passes untouched.
        assert_eq!(
            render("/newThing", &ph(&[]), "/newThing", Some("a=1&b=%20c+d&e")),
            want("/newThing", Some("a=1&b=%20c+d&e"))
        );
        // With placeholders: re-encoded, placeholder-named parameters dropped.
        let p = ph(&[("{everything}", "odata/customers")]);
        assert_eq!(
            render(
                "/{everything}",
                &p,
                "/odata/customers",
                Some("$filter=Name%20eq%20'Sam'")
            ),
            want("/odata/customers", Some("$filter=Name%20eq%20%27Sam%27"))
        );
        let p = ph(&[("{subscriptionId}", "1"), ("{unitId}", "2")]);
        assert_eq!(
            render(
                "/api/units/{subscriptionId}/{unitId}/updates",
                &p,
                "/x",
                Some("unitId=2")
            ),
            want("/api/units/1/2/updates", None)
        );
        assert_eq!(
            render(
                "/api/units/{subscriptionId}/{unitId}/updates",
                &p,
                "/x",
                Some("unitId=2&productId=2")
            )
            .1,
            Some("productId=2".into())
        );
        assert_eq!(
            render(
                "/api/units/{subscriptionId}/{unitId}/updates",
                &p,
                "/x",
                Some("productId=2&unitId=2")
            )
            .1,
            Some("productId=2".into())
        );
        let p = ph(&[
            ("{subscriptionId}", "1"),
            ("{unitId}", "2"),
            ("{unitIdIty}", "3"),
        ]);
        assert_eq!(
            render(
                "/api/units/{subscriptionId}/{unitId}/updates/{unitIdIty}",
                &p,
                "/x",
                Some("unitId=2?unitIdIty=3")
            )
            .1,
            None
        );
        // Bug 1288 / PR 2351: only exact (case-insensitive) names are removed.
        let p = ph(&[("{id}", "3")]);
        assert_eq!(
            render("/cpx/t1/{id}", &p, "/safe/3", Some("id1=2312")).1,
            Some("id1=2312".into())
        );
        let p = ph(&[("{id}", "123")]);
        assert_eq!(
            render("/v1/data/{id}", &p, "/x/", Some("xid=1&idx=2&id=3&extra=x")).1,
            Some("xid=1&idx=2&extra=x".into())
        );
        let p = ph(&[("{id}", "1"), ("{oid}", "2")]);
        assert_eq!(
            render(
                "/v1/orders/{id}/{oid}",
                &p,
                "/x",
                Some("id=1&oid=2&orderid=3&customer_id=4")
            )
            .1,
            Some("orderid=3&customer_id=4".into())
        );
        let p = ph(&[("{id}", "1"), ("{Id}", "2")]);
        assert_eq!(
            render(
                "/v1/items/{Id}/{id}",
                &p,
                "/x",
                Some("id=3&Id=4&ID=5&extra=x")
            )
            .1,
            Some("extra=x".into())
        );
        let p = ph(&[("{everything}", "")]);
        assert_eq!(
            render(
                "/downstream/test/{everything}",
                &p,
                "/upstream/test",
                Some("p1=v1&p2=v2&something-else=")
            ),
            want("/downstream/test", Some("p1=v1&p2=v2&something-else="))
        );
        // Re-encoding groups repeated names and gives valueless parameters a '='.
        let p = ph(&[("{x}", "1")]);
        assert_eq!(
            render("/a/{x}", &p, "/a/1", Some("b=1&c&b=2&=z")).1,
            Some("b=1&b=2&c=&=z".into())
        );
        assert_eq!(render("/a/{x}", &p, "/a/1", Some("x=1")).1, None);
    }

    #[test]
    fn query_merging_with_template_query() {
        let p = ph(&[("{userId}", "webley")]);
        assert_eq!(
            render(
                "/persons?personId={userId}",
                &p,
                "/users",
                Some("userId=webley")
            ),
            want("/persons", Some("personId=webley"))
        );
        let p = ph(&[("{uid}", "webley")]);
        assert_eq!(
            render(
                "/persons?personId={uid}",
                &p,
                "/users",
                Some("userId=webley")
            ),
            want("/persons", Some("personId=webley&userId=webley"))
        );
        let p = ph(&[("{userid}", "webley")]);
        assert_eq!(
            render(
                "/persons?personId={userid}",
                &p,
                "/users",
                Some("userId=webley")
            )
            .1,
            Some("personId=webley&userId=webley".into())
        );
        // Without an upstream query the template's query is used verbatim.
        let p = ph(&[("{subscriptionId}", "s"), ("{unitId}", "u")]);
        assert_eq!(
            render(
                "/api/subscriptions/{subscriptionId}/updates?unitId={unitId}",
                &p,
                "/api/units/s/u/updates",
                None
            ),
            want("/api/subscriptions/s/updates", Some("unitId=u"))
        );
        // Bug 952.
        let p = ph(&[("{subscriptionId}", "s"), ("{unit}", "U")]);
        assert_eq!(
            render(
                "/api/subscriptions/{subscriptionId}/updates?unitId={unit}",
                &p,
                "/x",
                Some("unit=U&x=xxx")
            )
            .1,
            Some("unitId=U&x=xxx".into())
        );
        // Bug 473.
        let p = ph(&[("{action}", "1"), ("{servak}", "2")]);
        assert_eq!(
            render(
                "/Authorized/{action}?server={servak}",
                &p,
                "/uc/Authorized/2/1/refresh",
                Some("refreshToken=123456789")
            ),
            want("/Authorized/1", Some("server=2&refreshToken=123456789"))
        );
        // Bug 2002.
        let p = ph(&[
            ("{roleid}", "123456"),
            ("{username}", "bbenameur"),
            ("{groupName}", "Paris"),
            ("{everything}", "something=9874565"),
        ]);
        assert_eq!(
            render(
                "/account/{username}/groups/{groupName}/roles?roleId={roleid}&{everything}",
                &p,
                "/WeatherForecast/123456/groups",
                Some("username=bbenameur&groupName=Paris&something=9874565")
            ),
            want(
                "/account/bbenameur/groups/Paris/roles",
                Some("roleId=123456&something=9874565")
            )
        );
    }

    #[test]
    fn catch_all_query_rendering() {
        let p = ph(&[("{everything}", "")]);
        let t = "/apipath/contracts?{everything}";
        assert_eq!(
            render(t, &p, "/contracts", None),
            want("/apipath/contracts", None)
        );
        assert_eq!(
            render(t, &p, "/contracts", Some("")),
            want("/apipath/contracts", None)
        );
        assert_eq!(
            render(t, &p, "/contracts", Some("p1=v1&p2=v2")),
            want("/apipath/contracts", Some("p1=v1&p2=v2"))
        );
        assert_eq!(
            render(t, &p, "/contracts", Some("filter=(-something+123+else)")).1,
            Some("filter=(-something%20123%20else)".into())
        );
        assert_eq!(
            render(t, &p, "/contracts", Some("$filter=ProjectNumber%20eq%2045%20and%20DateOfSale%20ge%202020-03-01T00:00:00z")).1,
            Some("$filter=ProjectNumber%20eq%2045%20and%20DateOfSale%20ge%202020-03-01T00%3A00%3A00z".into())
        );
        let t = "/apipath/contracts/?{everything}";
        assert_eq!(
            render(t, &p, "/contracts/", Some("")),
            want("/apipath/contracts/", None)
        );
        assert_eq!(
            render(t, &p, "/contracts/", Some("p3=v3&p4=v4")),
            want("/apipath/contracts/", Some("p3=v3&p4=v4"))
        );
        // PR 2351: a catch-all query placeholder named {id} keeps customer_id.
        let p = ph(&[("{id}", "")]);
        assert_eq!(
            render(
                "/v1/payment-methods?{id}",
                &p,
                "/finance/v1/payment-methods",
                Some("customer_id=12345")
            )
            .1,
            Some("customer_id=12345".into())
        );
    }

    #[test]
    fn rendered_paths_are_wire_safe() {
        let p = ph(&[("{path}", "debug()")]);
        assert_eq!(
            render("/routed/api/{path}", &p, "/api/debug()", None).0,
            "/routed/api/debug()"
        );
        let p = ph(&[("{h}", "a b\\c")]);
        assert_eq!(render("/x/{h}", &p, "/y", None).0, "/x/a%20b/c");
        let p = ph(&[("{q}", "../admin")]);
        assert_eq!(render("/files/{q}", &p, "/y", None).0, "/admin");
        let p = ph(&[("{q}", "a b#c")]);
        assert_eq!(
            render("/x?v={q}", &p, "/y", None).1,
            Some("v=a%20b%23c".into())
        );
        assert!(DownstreamTemplate::parse("/a/{b}").has_placeholder("{b}"));
        assert!(!DownstreamTemplate::parse("/a/{b}").has_placeholder("{c}"));
    }
}
