//! The .NET regex strings Ocelot builds, reproduced string operation by string
//! operation, and the template characters .NET would read as regex syntax.
//!
//! Nothing here runs at request time: the matcher is compiled from the same
//! rewriting steps into [`super::vm`] programs. These strings exist so logs and
//! diagnostics can show what Ocelot would have built, and so the tests in
//! `cross_check.rs` can run them through the `regex` crate and compare verdicts
//! with the VM. Ocelot's sources: `src/Configuration/Creator/UpstreamTemplatePatternCreator.cs`
//! and `src/Configuration/Creator/UpstreamHeaderTemplatePatternCreator.cs`.

use super::header::header_placeholders;
use super::placeholders::placeholder_ranges;

const DOTNET_REGEX_SPECIALS: &[char] = &['\\', '*', '+', '|', '[', '(', ')', '^', '$'];

/// Characters outside placeholders of an `UpstreamPathTemplate` that Ocelot's
/// regex would interpret as syntax but that this crate matches literally (`.`, the
/// query `?` and `{…}` are handled exactly and are not reported). A `?` is reported
/// when it is left over after Ocelot's `/?` replacement (templates with both `/?`
/// and another `?`). Empty for every sensible template.
pub fn path_template_literal_metachars(template: &str) -> Vec<char> {
    let mut out = Vec::new();
    let ranges = placeholder_ranges(template);
    let has_slash_q = template.contains("/?");
    let mut prev = None;
    for (i, c) in template.char_indices() {
        let inside = ranges.iter().any(|&(s, e)| i >= s && i < e);
        if !inside {
            let leftover_q = c == '?' && has_slash_q && prev != Some('/');
            if (DOTNET_REGEX_SPECIALS.contains(&c) || leftover_q) && !out.contains(&c) {
                out.push(c);
            }
        }
        prev = Some(c);
    }
    out
}

/// Like [`path_template_literal_metachars`] for an `UpstreamHeaderTemplates` value
/// (there `?` is always regex syntax, `.` is handled exactly).
pub fn header_template_literal_metachars(template: &str) -> Vec<char> {
    let ranges: Vec<(usize, usize)> = header_placeholders(template)
        .into_iter()
        .map(|(s, e, _)| (s, e))
        .collect();
    let mut out = Vec::new();
    for (i, c) in template.char_indices() {
        let inside = ranges.iter().any(|&(s, e)| i >= s && i < e);
        if !inside && (DOTNET_REGEX_SPECIALS.contains(&c) || c == '?') && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

// Ocelot's regex strings (diagnostics and cross-checking only)

/// The .NET regex Ocelot builds for an `UpstreamPathTemplate`, reproduced string
/// operation by string operation (it is never executed here; it is for logs,
/// diagnostics and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcelotRegex {
    /// The pattern, e.g. `^(?i)/api/v[^/]+/cards$`.
    pub pattern: String,
    /// Matched against `path + "?" + query` instead of the path alone.
    pub contains_query: bool,
    /// The `/{everything}` special case: `^/.*`, priority forced to 0.
    pub catch_all: bool,
}

/// Builds the regex Ocelot's `UpstreamTemplatePatternCreator` would build.
///
/// Where Ocelot throws at startup (an unclosed `{`, a `?` inside a placeholder
/// name) the offending placeholder is skipped instead.
pub fn ocelot_upstream_regex(template: &str, case_sensitive: bool) -> OcelotRegex {
    let mut names: Vec<&str> = Vec::new();
    for (i, c) in template.char_indices() {
        if c != '{' {
            continue;
        }
        let Some(rel) = template[i..].find('}') else {
            continue;
        };
        let close = i + rel;
        names.push(&template[i..=close]);
        if template.starts_with("/{") && names.len() == 1 && template.len() == close + 1 {
            return OcelotRegex {
                pattern: "^/.*".to_string(),
                contains_query: false,
                catch_all: true,
            };
        }
    }
    let mut t = template.to_string();
    let contains_query = t.contains('?');
    if contains_query {
        let from = if t.contains("/?") { "/?" } else { "?" };
        t = t.replace(from, r"(/$|/\?|\?|$)");
    }
    for name in names {
        let Some(at) = t.find(name) else { continue };
        let slash_after = t[at..].find('/').is_some();
        let query_before = contains_query && t.find('?').is_none_or(|q| q < at);
        let repl = if !slash_after || query_before {
            ".*"
        } else {
            "[^/]+"
        };
        t = t.replace(name, repl);
    }
    if t == "/" {
        return OcelotRegex {
            pattern: "^/$".to_string(),
            contains_query,
            catch_all: false,
        };
    }
    if let Some(idx) = t.rfind('/') {
        if t.as_bytes().get(idx + 1) == Some(&b'.') {
            t = format!("{}(?:|/{})", &t[..idx], &t[idx + 1..]);
        }
    }
    if t.ends_with('/') {
        t.pop();
        t.push_str("(/|)");
    }
    let pattern = if case_sensitive {
        format!("^{t}$")
    } else {
        format!("^(?i){t}$")
    };
    OcelotRegex {
        pattern,
        contains_query,
        catch_all: false,
    }
}

/// The .NET regex Ocelot's `UpstreamHeaderTemplatePatternCreator` builds for one
/// header template value (diagnostics and tests only).
pub fn ocelot_header_regex(template: &str, case_sensitive: bool) -> String {
    let mut t = template.to_string();
    for (s, e, name) in header_placeholders(template) {
        t = t.replace(&template[s..e], &format!("(?<{name}>.+)"));
    }
    if case_sensitive {
        format!("^{t}$")
    } else {
        format!("^(?i){t}$")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::UpstreamTemplate;

    // --- UpstreamTemplatePatternCreatorTests -----------------------------------

    #[test]
    fn ocelot_regex_strings() {
        let cases = [
            ("/api/v{apiVersion}/cards", false, "^(?i)/api/v[^/]+/cards$"),
            ("/orders/{catchAll}", false, "^(?i)/orders(?:|/.*)$"),
            ("/PRODUCTS/{productId}", false, "^(?i)/PRODUCTS(?:|/.*)$"),
            ("/PRODUCTS/", false, "^(?i)/PRODUCTS(/|)$"),
            ("/PRODUCTS/{productId}", true, "^/PRODUCTS(?:|/.*)$"),
            ("/api/products/{productId}", true, "^/api/products(?:|/.*)$"),
            (
                "/api/products/{productId}/variants/{variantId}",
                true,
                "^/api/products/[^/]+/variants(?:|/.*)$",
            ),
            (
                "/api/products/{productId}/variants/{variantId}/",
                true,
                "^/api/products/[^/]+/variants/[^/]+(/|)$",
            ),
            ("/", false, "^/$"),
            (
                "/{productId}/products/variants/{variantId}/",
                true,
                "^/[^/]+/products/variants/[^/]+(/|)$",
            ),
            (
                "/api/subscriptions/{subscriptionId}/updates?unitId={unitId}",
                false,
                r"^(?i)/api/subscriptions/[^/]+/updates(/$|/\?|\?|$)unitId=.*$",
            ),
            (
                "/api/subscriptions/{subscriptionId}/updates?unitId={unitId}&productId={productId}",
                false,
                r"^(?i)/api/subscriptions/[^/]+/updates(/$|/\?|\?|$)unitId=.*&productId=.*$",
            ),
        ];
        for (t, cs, want) in cases {
            assert_eq!(ocelot_upstream_regex(t, cs).pattern, want, "{t}");
        }
        for t in ["/{catchAll}", "/{url}"] {
            let r = ocelot_upstream_regex(t, false);
            assert_eq!(r.pattern, "^/.*");
            assert!(r.catch_all);
            assert!(UpstreamTemplate::new(t, false).is_catch_all());
        }
    }

    #[test]
    fn literal_metachar_reports() {
        assert!(path_template_literal_metachars("/api/{id}/x.json?q={q}").is_empty());
        assert_eq!(path_template_literal_metachars("/odata?$filter={f}"), ['$']);
        assert_eq!(
            path_template_literal_metachars("/a+(b)/{x}"),
            ['+', '(', ')']
        );
        assert_eq!(path_template_literal_metachars("/a/?b={b}?c"), ['?']);
        assert!(header_template_literal_metachars("{header:x}.y").is_empty());
        assert_eq!(header_template_literal_metachars("a?b"), ['?']);
    }
}
