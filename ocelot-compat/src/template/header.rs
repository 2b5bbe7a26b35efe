//! `UpstreamHeaderTemplates`: Ocelot's `UpstreamHeaderTemplatePatternCreator`
//! regex (`^(?i)…$`, `.` as a wildcard, each `{header:name}` as `(?<name>.+)`)
//! and the `{name}` placeholders it yields, as one [`super::vm`] program.

use super::placeholders::push_groups;
use super::placeholders::Placeholders;
use super::vm::{Builder, Class, Inst, Program};

/// `{header:name}` occurrences: (start, end, name), Ocelot's `(\{header:.*?\})`
/// with IgnoreCase.
pub(super) fn header_placeholders(template: &str) -> Vec<(usize, usize, &str)> {
    const OPEN: &[u8] = b"{header:";
    let bytes = template.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + OPEN.len() <= bytes.len() {
        if bytes[i..i + OPEN.len()].eq_ignore_ascii_case(OPEN) {
            let from = i + OPEN.len();
            let Some(rel) = template[from..].find('}') else {
                break;
            };
            let end = from + rel + 1;
            out.push((i, end, &template[from..end - 1]));
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// A compiled `UpstreamHeaderTemplates` entry: `^(?i)…$` with `.` as a wildcard
/// and every `{header:name}` as `(?<name>.+)`.
#[derive(Clone, Debug)]
pub struct HeaderTemplate {
    header: String,
    program: Program,
    names: Vec<String>,
}

impl HeaderTemplate {
    /// Compiles the template for request header `header`.
    pub fn new(header: &str, template: &str, case_sensitive: bool) -> HeaderTemplate {
        let mut b = Builder::new();
        let mut names = Vec::new();
        let mut pos = 0;
        // Header templates are not escaped either: '.' is a wildcard there too.
        fn lit(b: &mut Builder, text: &str) {
            for (k, part) in text.split('.').enumerate() {
                if k > 0 {
                    b.push(Inst::Any);
                }
                b.lit(part.as_bytes());
            }
        }
        for (s, e, name) in header_placeholders(template) {
            lit(&mut b, &template[pos..s]);
            b.capture(Class::Any, true);
            names.push(format!("{{{name}}}"));
            pos = e;
        }
        lit(&mut b, &template[pos..]);
        b.push(Inst::AssertEnd);
        HeaderTemplate {
            header: header.to_string(),
            program: b.finish(!case_sensitive),
            names,
        }
    }

    /// The request header this template applies to.
    pub fn header_name(&self) -> &str {
        &self.header
    }

    /// Whether the (comma-joined) header value matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.program.is_match(value.as_bytes())
    }

    /// Appends the `{header:…}` placeholder values (as `{name}`) for a matching value.
    pub fn extract(&self, value: &str, out: &mut Placeholders) {
        if self.names.is_empty() {
            return;
        }
        self.program.with_captures(value.as_bytes(), |caps| {
            push_groups(&self.names, value.as_bytes(), caps, out)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::ocelot_header_regex;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    // --- Header templates ------------------------------------------------------

    fn header(template: &str, value: &str) -> Option<Vec<(String, String)>> {
        let h = HeaderTemplate::new("x", template, false);
        if !h.is_match(value) {
            return None;
        }
        let mut out = Placeholders::new();
        h.extract(value, &mut out);
        Some(
            out.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn header_templates() {
        assert_eq!(header("PL", "PL"), Some(vec![]));
        assert_eq!(header("PL", "pl"), Some(vec![]));
        assert_eq!(header("PL", "UK"), None);
        assert_eq!(header("PL", "PL,othervalue"), None);
        assert!(!HeaderTemplate::new("x", "anyHeaderValue", true).is_match("ANYHEADERVALUE"));
        assert_eq!(
            header("{header:countrycode}", "PL"),
            Some(pairs(&[("{countrycode}", "PL")]))
        );
        assert_eq!(header("{header:countrycode}", ""), None);
        assert_eq!(
            header("{header:countrycode}-V1", "PL-V1"),
            Some(pairs(&[("{countrycode}", "PL")]))
        );
        assert_eq!(
            header("V1-{header:countrycode}", "V1-PL"),
            Some(pairs(&[("{countrycode}", "PL")]))
        );
        assert_eq!(
            header("cc:{header:countrycode}-V1", "cc:PL-V1"),
            Some(pairs(&[("{countrycode}", "PL")]))
        );
        assert_eq!(
            header("{header:countrycode}-{header:version}", "PL-v1"),
            Some(pairs(&[("{countrycode}", "PL"), ("{version}", "v1")]))
        );
        assert_eq!(header("{header:countrycode}-{header:version}", "PL"), None);
        assert_eq!(
            header(
                "start_{header:country_code}_version_{header:version}_end",
                "start_pl_version_v1_end"
            ),
            Some(pairs(&[("{country_code}", "pl"), ("{version}", "v1")]))
        );
        assert_eq!(
            header("product-{header:everything}", "product-Camera"),
            Some(pairs(&[("{everything}", "Camera")]))
        );
        // Braces that are not {header:…} are literal; '.' is a wildcard.
        assert_eq!(header("my_{header}", "my_{header}"), Some(vec![]));
        assert_eq!(header("admin.xxx.com", "admin.xxx.com"), Some(vec![]));
        assert_eq!(header("admin.xxx.com", "adminXxxxYcom"), Some(vec![]));
        // Multiple header values arrive joined with ','.
        assert_eq!(
            header("PL,{header:whatever}", "PL,UK"),
            Some(pairs(&[("{whatever}", "UK")]))
        );
        assert_eq!(
            header("{HEADER:Code}", "x"),
            Some(pairs(&[("{Code}", "x")]))
        );
        assert_eq!(
            ocelot_header_regex("cc:{header:code}-V1", false),
            "^(?i)cc:(?<code>.+)-V1$"
        );
    }
}
