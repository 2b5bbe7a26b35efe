//! Finding `{…}` placeholders in a template, and [`Placeholders`], the values a
//! match collects for them.
//!
//! Every other template module asks the same question ("where are the
//! placeholders?") and must get Ocelot's answer: each `{` up to the next `}`,
//! as `UpstreamTemplatePatternCreator` and `UrlPathPlaceholderNameAndValueFinder`
//! (Ocelot's `src/DownstreamRouteFinder/UrlMatcher/`) both scan it. Keeping the
//! scan in one place keeps the matcher, the extractor, the downstream renderer
//! and validation (`crate::validate`) in agreement. [`Placeholders`] lives here
//! rather than in `table.rs` because every template module fills or reads it,
//! so the table depends on the templates and never the other way round.

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

    /// Sets the value of an entry named `name` at index `from` or later; false if
    /// there is none. Lets extraction keep one entry per regex group name.
    pub(super) fn set_from(&mut self, from: usize, name: &str, value: &str) -> bool {
        match self.0.iter_mut().skip(from).find(|(n, _)| n == name) {
            Some((_, v)) => {
                value.clone_into(v);
                true
            }
            None => false,
        }
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
