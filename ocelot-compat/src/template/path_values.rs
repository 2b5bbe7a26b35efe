//! Placeholder values of a matched path: Ocelot's
//! `UrlPathPlaceholderNameAndValueFinder` (`src/DownstreamRouteFinder/UrlMatcher/`).
//!
//! Ocelot extracts values with a second regex, built differently from the one
//! that matched (escaped template, `[^/|&]*` per placeholder, `[^&]*` for the
//! last), plus two special cases (`/path?{name}` and a retry with a trailing
//! slash). The two can disagree, and users see the difference, so extraction is
//! its own program rather than captures of the matcher.

use super::placeholders::Placeholders;
use super::placeholders::{placeholder_ranges, push_groups};
use super::upstream::with_subject;
use super::vm::{Builder, Class, Program};

#[derive(Clone, Debug)]
pub(super) struct Extractor {
    /// `/path?{name}`: the single placeholder is always given the empty value.
    catch_all_query: Option<String>,
    program: Program,
    names: Vec<String>,
    contains_query: bool,
    catch_all_path: bool,
}

impl Extractor {
    pub(super) fn new(template: &str) -> Extractor {
        let ranges = placeholder_ranges(template);
        let mut b = Builder::new();
        let mut names = Vec::with_capacity(ranges.len());
        let mut pos = 0;
        for (k, &(s, e)) in ranges.iter().enumerate() {
            b.lit(&template.as_bytes()[pos..s]);
            let class = if k + 1 == ranges.len() {
                Class::NotAmp
            } else {
                Class::NotSlashPipeAmp
            };
            b.capture(class, false);
            names.push(template[s..e].to_string());
            pos = e;
        }
        b.lit(&template.as_bytes()[pos..]);
        Extractor {
            catch_all_query: catch_all_query(template),
            program: b.finish(true),
            names,
            contains_query: template.contains('?'),
            catch_all_path: is_catch_all_path(template),
        }
    }

    pub(super) fn extract(&self, path: &str, query: Option<&str>, out: &mut Placeholders) {
        if let Some(name) = &self.catch_all_query {
            out.push(name.clone(), String::new());
            return;
        }
        let query = if self.contains_query { query } else { None };
        let done = with_subject(path, query, |subject| {
            !self.names.is_empty()
                && self
                    .program
                    .with_captures(subject, |caps| push_groups(&self.names, subject, caps, out))
                    .is_some()
        });
        if done || !self.catch_all_path {
            return;
        }
        // Ocelot retries a catch-all path template with a slash appended so that
        // `/api/{x}` yields `{x}` = "" for `/api`.
        let mut retry = String::with_capacity(path.len() + 2 + query.map_or(0, str::len));
        retry.push_str(path);
        if let Some(q) = query {
            retry.push('?');
            retry.push_str(q);
        }
        retry.push('/');
        self.program.with_captures(retry.as_bytes(), |caps| {
            push_groups(&self.names, retry.as_bytes(), caps, out)
        });
    }
}

/// Ocelot's `^[^{}]*\?\{(.*?)\}$`: no brace before a final `?{name}`.
fn catch_all_query(template: &str) -> Option<String> {
    let first = template.find(['{', '}'])?;
    if template.as_bytes()[first] != b'{' || first == 0 || template.as_bytes()[first - 1] != b'?' {
        return None;
    }
    if template.len() < first + 2 || !template.ends_with('}') {
        return None;
    }
    Some(template[first..].to_string())
}

/// Ocelot's `^[^{}]*\{(.*?)\}/?$` (on the escaped template) and no `?`: the first
/// brace opens and the template ends with `}` or `}/` after it.
fn is_catch_all_path(template: &str) -> bool {
    if template.contains('?') {
        return false;
    }
    let Some(first) = template.find(['{', '}']) else {
        return false;
    };
    if template.as_bytes()[first] != b'{' {
        return false;
    }
    let tail = template.strip_suffix('/').unwrap_or(template);
    let ends_brace = |t: &str| t.len() > first + 1 && t.ends_with('}');
    ends_brace(template) || ends_brace(tail)
}

#[cfg(test)]
mod tests {
    use crate::template::Placeholders;
    use crate::template::UpstreamTemplate;

    fn extract(template: &str, path: &str, query: Option<&str>) -> Vec<(String, String)> {
        let mut out = Placeholders::new();
        UpstreamTemplate::new(template, false).extract(path, query, &mut out);
        out.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    // --- UrlPathPlaceholderNameAndValueFinderTests -----------------------------

    #[test]
    fn extraction_basics() {
        assert_eq!(extract("", "", None), pairs(&[]));
        assert_eq!(extract("/{url}", "", None), pairs(&[("{url}", "")]));
        assert_eq!(
            extract("/{url}", "/test", None),
            pairs(&[("{url}", "test")])
        );
        assert_eq!(extract("/{url}", "/", None), pairs(&[("{url}", "")]));
        assert_eq!(
            extract(
                "/{everything}",
                "/test/toot",
                Some("$filter=Name%20eq%20'Sam'")
            ),
            pairs(&[("{everything}", "test/toot")])
        );
        assert_eq!(extract("/", "/", None), pairs(&[]));
        assert_eq!(
            extract("/{url}/products", "/1/products", None),
            pairs(&[("{url}", "1")])
        );
        assert_eq!(extract("/products/", "/products", None), pairs(&[]));
        assert_eq!(extract("api/", "api/", None), pairs(&[]));
    }

    #[test]
    fn extraction_of_query_placeholders() {
        assert_eq!(
            extract(
                "/products?productId={productId}",
                "/products",
                Some("productId=1")
            ),
            pairs(&[("{productId}", "1")])
        );
        assert_eq!(
            extract(
                "/products?productId={productId}",
                "/products",
                Some("productId=1&categoryId=2")
            ),
            pairs(&[("{productId}", "1")])
        );
        assert_eq!(
            extract(
                "/products/{account}?productId={productId}&categoryId={categoryId}",
                "/products/3",
                Some("productId=1&categoryId=2")
            ),
            pairs(&[
                ("{account}", "3"),
                ("{productId}", "1"),
                ("{categoryId}", "2")
            ])
        );
        assert_eq!(
            extract(
                "/products/{account}/?productId={productId}&categoryId={categoryId}",
                "/products/3/",
                Some("productId=1&categoryId=2")
            ),
            pairs(&[
                ("{account}", "3"),
                ("{productId}", "1"),
                ("{categoryId}", "2")
            ])
        );
        assert_eq!(
            extract(
                "/api/invoices/{url}?{query}",
                "/api/invoices/test",
                Some("query=1")
            ),
            pairs(&[("{url}", "test"), ("{query}", "query=1")])
        );
        assert_eq!(
            extract(
                "/api/invoices/{url}?{query}",
                "/api/invoices/",
                Some("query=1")
            ),
            pairs(&[("{url}", ""), ("{query}", "query=1")])
        );
    }

    #[test]
    fn extraction_catch_all_forms() {
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let cases: &[Case<'_>] = &[
            (
                "/api/{finalUrlPath}",
                "/api/product/products/categories/",
                &[("{finalUrlPath}", "product/products/categories/")],
            ),
            (
                "/myApp1Name/api/{urlPath}",
                "/myApp1Name/api/products/1",
                &[("{urlPath}", "products/1")],
            ),
            (
                "/upstream/test/{testId}",
                "/upstream/test/",
                &[("{testId}", "")],
            ),
            (
                "/api/invoices/{url}",
                "/api/invoices/123",
                &[("{url}", "123")],
            ),
            ("/api/invoices/{url}", "/api/invoices/", &[("{url}", "")]),
            ("/api/invoices/{url}", "/api/invoices", &[("{url}", "")]),
            (
                "/api/{version}/invoices/",
                "/api/v1/invoices/",
                &[("{version}", "v1")],
            ),
            (
                "/api/{version}/invoices/{url}",
                "/api/v1/invoices/123",
                &[("{version}", "v1"), ("{url}", "123")],
            ),
            (
                "/api/{version}/invoices/{url}",
                "/api/v1/invoices/",
                &[("{version}", "v1"), ("{url}", "")],
            ),
            (
                "/dati-registri/{version}/{everything}",
                "/dati-registri/v1.0/operatore/R80QQ5J9600/valida",
                &[
                    ("{version}", "v1.0"),
                    ("{everything}", "operatore/R80QQ5J9600/valida"),
                ],
            ),
            (
                "/api/invoices/{invoiceId}/{url}",
                "/api/invoices/1",
                &[("{invoiceId}", "1"), ("{url}", "")],
            ),
            (
                "/data/{version}/{category}/{subcategory}/{rest}",
                "/data/2.1/sales/reports/weekly/summary",
                &[
                    ("{version}", "2.1"),
                    ("{category}", "sales"),
                    ("{subcategory}", "reports"),
                    ("{rest}", "weekly/summary"),
                ],
            ),
            (
                "/api/product/products/{productId}/categories/{categoryId}/variant/",
                "/api/product/products/1/categories/2/variant/",
                &[("{productId}", "1"), ("{categoryId}", "2")],
            ),
        ];
        for (t, p, want) in cases {
            assert_eq!(extract(t, p, None), pairs(want), "{t} {p}");
        }
    }

    #[test]
    fn extraction_of_embedded_placeholders() {
        assert_eq!(
            extract("/api/invoices/{url}-abcd", "/api/invoices/123-abcd", None),
            pairs(&[("{url}", "123")])
        );
        assert_eq!(
            extract(
                "/api/invoices_{url0}/{url1}-{url2}_abcd/{url3}?urlId={url4}",
                "/api/invoices_super/123-456_abcd/789",
                Some("urlId=987")
            ),
            pairs(&[
                ("{url0}", "super"),
                ("{url1}", "123"),
                ("{url2}", "456"),
                ("{url3}", "789"),
                ("{url4}", "987")
            ])
        );
        assert_eq!(
            extract(
                "/api/products/{productId}/{category}_{itemId}_details/{status}",
                "/api/products/789/electronics_123_details/available",
                None
            ),
            pairs(&[
                ("{productId}", "789"),
                ("{category}", "electronics"),
                ("{itemId}", "123"),
                ("{status}", "available")
            ])
        );
        // Bug 2209: literals compare case-insensitively, names stay as written.
        assert_eq!(
            extract(
                "/entities/{id}/events/recordsdata/{subCategoryId}_abcd/{itemId}?sort={sortBy}",
                "/Entities/43/Events/RecordsData/2_abcd/5",
                Some("sort=desc")
            ),
            pairs(&[
                ("{id}", "43"),
                ("{subCategoryId}", "2"),
                ("{itemId}", "5"),
                ("{sortBy}", "desc")
            ])
        );
        // Greedy first placeholder, as .NET backtracking gives it.
        assert_eq!(
            extract("/a/{x}-{y}/z", "/a/1-2-3/z", None),
            pairs(&[("{x}", "1-2"), ("{y}", "3")])
        );
    }

    #[test]
    fn extraction_catch_all_query() {
        for q in [Some("filter=active"), None, Some(""), Some("other=1")] {
            assert_eq!(
                extract("/api/test?{everything}", "/api/test", q),
                pairs(&[("{everything}", "")])
            );
        }
    }

    #[test]
    fn extraction_quirks_are_kept() {
        // The last placeholder stops at '&' even in the path.
        assert_eq!(
            extract("/{everything}", "/a&b", None),
            pairs(&[("{everything}", "a")])
        );
        // Extraction escapes '.', so a wildcard match yields no values.
        assert_eq!(extract("/v1.0/{x}", "/v1X0/5", None), pairs(&[]));
        // Duplicated names: one entry, last capture wins.
        assert_eq!(
            extract("/{a}/{a}/x", "/1/2/x", None),
            pairs(&[("{a}", "2")])
        );
    }
}
