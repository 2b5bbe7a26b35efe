//! Finding `{…}` placeholders in a template and collecting their values.
//!
//! Every other template module asks the same question ("where are the
//! placeholders?") and must get Ocelot's answer: each `{` up to the next `}`,
//! as `UpstreamTemplatePatternCreator` and `UrlPathPlaceholderNameAndValueFinder`
//! (Ocelot's `src/DownstreamRouteFinder/UrlMatcher/`) both scan it. Keeping the
//! scan in one place keeps the matcher, the extractor, the downstream renderer
//! and validation (`crate::validate`) in agreement.

use crate::table::Placeholders;

/// Byte ranges (`start..end`, braces included) of the `{…}` placeholders in a
/// template: each `{` up to the next `}`, scanning on after that `}`. An unclosed
/// `{` is plain text.
pub(super) fn placeholder_ranges(template: &str) -> Vec<(usize, usize)> {
    let bytes = template.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' {
            if let Some(rel) = template[i..].find('}') {
                let end = i + rel + 1;
                out.push((i, end));
                i = end;
                continue;
            }
            break;
        }
        i += 1;
    }
    out
}

/// Names of the placeholders in a template, in order, with braces (`"{id}"`).
///
/// Each `{` up to the next `}` is one placeholder, so `{a}{b}` gives two and an
/// unclosed `{` gives none. Duplicates are returned as often as they occur (Ocelot
/// refuses duplicated placeholders, comparing names case-sensitively).
pub fn placeholder_names(template: &str) -> Vec<String> {
    placeholder_ranges(template)
        .into_iter()
        .map(|(s, e)| template[s..e].to_string())
        .collect()
}

/// Turns capture positions into (name, value) pairs the way .NET exposes named
/// groups: ordered by first appearance, one entry per name, last capture wins.
pub(super) fn push_groups(
    names: &[String],
    subject: &[u8],
    caps: &[usize],
    out: &mut Placeholders,
) {
    let base = out.len();
    for (k, name) in names.iter().enumerate() {
        let (s, e) = (caps.get(2 * k).copied(), caps.get(2 * k + 1).copied());
        let value = match (s, e) {
            (Some(s), Some(e)) if s <= e && e <= subject.len() => {
                String::from_utf8_lossy(&subject[s..e]).into_owned()
            }
            _ => String::new(),
        };
        if !out.set_from(base, name, &value) {
            out.push(name.clone(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            placeholder_names("/api/{a}/x{b}-{c}?q={d}"),
            ["{a}", "{b}", "{c}", "{d}"]
        );
        assert_eq!(placeholder_names("/{id}/{Id}"), ["{id}", "{Id}"]);
        assert_eq!(placeholder_names("/{a/{b}"), ["{a/{b}"]);
        assert!(placeholder_names("/{a").is_empty());
        assert!(placeholder_names("/a}").is_empty());
    }
}
