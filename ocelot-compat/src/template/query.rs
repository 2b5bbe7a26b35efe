//! The .NET query-string helpers `DownstreamUrlCreatorMiddleware` relies on
//! (`HttpUtility.ParseQueryString`, `QueryHelpers.ParseQuery`,
//! `QueryHelpers.AddQueryString`, `Uri.UnescapeDataString`) and Ocelot's two
//! query merges built on them.
//!
//! Their decoding, grouping and re-encoding rules differ from each other and
//! from any Rust URL crate (`%uXXXX`, `+`, case-insensitive grouping, which
//! characters stay unescaped), and the downstream query is observable, so they
//! are reproduced here rather than delegated.

use super::placeholders::Placeholders;
use crate::path::{hex_val, push_pct};

/// Whether `bytes[i]` opens a `%XX` escape (two hex digits follow).
pub(super) fn is_pct_triplet(bytes: &[u8], i: usize) -> bool {
    bytes.get(i + 1).copied().and_then(hex_val).is_some()
        && bytes.get(i + 2).copied().and_then(hex_val).is_some()
}

/// Ordinal-ignore-case string equality (ASCII fast path).
fn eq_ignore_case(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars()
        .flat_map(char::to_uppercase)
        .eq(b.chars().flat_map(char::to_uppercase))
}

/// `HttpUtility.UrlDecode`: `+` is a space, `%XX` bytes and `%uXXXX` code units
/// are decoded, malformed escapes stay, undecodable bytes become U+FFFD.
fn url_decode_form(s: &str) -> String {
    if !s.contains(['%', '+']) {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut pending: Vec<u8> = Vec::new();
    let flush = |pending: &mut Vec<u8>, out: &mut String| {
        if !pending.is_empty() {
            out.push_str(&String::from_utf8_lossy(pending));
            pending.clear();
        }
    };
    let hex4 = |at: usize| -> Option<u32> {
        let mut v = 0u32;
        for k in 0..4 {
            v = (v << 4) | u32::from(hex_val(*bytes.get(at + k)?)?);
        }
        Some(v)
    };
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            pending.push(b' ');
            i += 1;
            continue;
        }
        if b == b'%' && i + 2 < bytes.len() {
            if bytes[i + 1] == b'u' && i + 5 < bytes.len() {
                if let Some(unit) = hex4(i + 2) {
                    flush(&mut pending, &mut out);
                    let mut consumed = 6;
                    let ch = if (0xD800..0xDC00).contains(&unit) {
                        let low = (bytes.get(i + 6) == Some(&b'%')
                            && bytes.get(i + 7) == Some(&b'u'))
                        .then(|| hex4(i + 8))
                        .flatten()
                        .filter(|l| (0xDC00..0xE000).contains(l));
                        match low {
                            Some(l) => {
                                consumed = 12;
                                char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (l - 0xDC00))
                            }
                            None => None,
                        }
                    } else {
                        char::from_u32(unit)
                    };
                    out.push(ch.unwrap_or('\u{FFFD}'));
                    i += consumed;
                    continue;
                }
            } else if let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                pending.push((h << 4) | l);
                i += 3;
                continue;
            }
        }
        pending.push(b);
        i += 1;
    }
    flush(&mut pending, &mut out);
    out
}

/// `Uri.UnescapeDataString`: `%XX` runs are decoded where they form UTF-8; the
/// escapes of bytes that do not stay as written.
fn unescape_data_string(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && is_pct_triplet(bytes, i) {
            let start = i;
            let mut run = Vec::new();
            while i < bytes.len() && bytes[i] == b'%' && is_pct_triplet(bytes, i) {
                let (h, l) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]));
                run.push((h.unwrap_or(0) << 4) | l.unwrap_or(0));
                i += 3;
            }
            let mut p = 0;
            while p < run.len() {
                match std::str::from_utf8(&run[p..]) {
                    Ok(text) => {
                        out.push_str(text);
                        p = run.len();
                    }
                    Err(err) => {
                        let good = p + err.valid_up_to();
                        out.push_str(std::str::from_utf8(&run[p..good]).unwrap_or(""));
                        let bad = err.error_len().unwrap_or(run.len() - good);
                        out.push_str(&s[start + 3 * good..start + 3 * (good + bad)]);
                        p = good + bad;
                    }
                }
            }
        } else {
            let Some(c) = s[i..].chars().next() else {
                break;
            };
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// `UrlEncoder.Default.Encode`: only `A-Z a-z 0-9 - . _ ~ ! $ ( ) * , ; @` stay.
fn url_encode(s: &str, out: &mut String) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'(' | b')' | b'*' | b',' | b';' | b'@'
            )
        {
            out.push(b as char);
        } else {
            push_pct(out, b);
        }
    }
}

/// `QueryHelpers.AddQueryString("", pairs)` without the leading `?`.
fn add_query_string<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        url_encode(k, &mut out);
        out.push('=');
        url_encode(v, &mut out);
    }
    out
}

/// `HttpUtility.ParseQueryString` (input without the leading `?`): a
/// case-insensitive multimap; a piece without `=` has a null name.
fn parse_query_string_nvc(q: &str) -> Vec<(Option<String>, Vec<String>)> {
    let mut out: Vec<(Option<String>, Vec<String>)> = Vec::new();
    if q.is_empty() {
        return out;
    }
    let bytes = q.as_bytes();
    let mut name_pos = 0;
    while name_pos <= bytes.len() {
        let mut value_pos = None;
        let mut value_end = bytes.len();
        for (k, &b) in bytes.iter().enumerate().skip(name_pos) {
            if value_pos.is_none() && b == b'=' {
                value_pos = Some(k + 1);
            } else if b == b'&' {
                value_end = k;
                break;
            }
        }
        let (name, value_start) = match value_pos {
            Some(vp) => (Some(url_decode_form(&q[name_pos..vp - 1])), vp),
            None => (None, name_pos),
        };
        let value = url_decode_form(q.get(value_start..value_end).unwrap_or(""));
        let existing = out.iter_mut().find(|(k, _)| match (k, &name) {
            (Some(a), Some(b)) => eq_ignore_case(a, b),
            (None, None) => true,
            _ => false,
        });
        match existing {
            Some((_, values)) => values.push(value),
            None => out.push((name, vec![value])),
        }
        name_pos = value_end + 1;
    }
    out
}

/// `QueryHelpers.ParseQuery` (input without the leading `?`): names grouped
/// ordinal-ignore-case in first-seen order, `+` as space, `Uri.UnescapeDataString`.
fn parse_query_helpers(q: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for segment in q.split('&') {
        if segment.is_empty() {
            continue;
        }
        let (name, value) = segment.split_once('=').unwrap_or((segment, ""));
        let name = unescape_data_string(&name.replace('+', " "));
        let value = unescape_data_string(&value.replace('+', " "));
        match out.iter_mut().find(|(k, _)| eq_ignore_case(k, &name)) {
            Some((_, values)) => values.push(value),
            None => out.push((name, vec![value])),
        }
    }
    out
}

/// Ocelot's placeholder key: the name with every leading/trailing brace trimmed.
fn placeholder_key(name: &str) -> &str {
    name.trim_matches(['{', '}'])
}

/// `MergeQueryStringsWithoutDuplicateValues`.
pub(super) fn merge_queries(
    upstream: &str,
    template_query: &str,
    placeholders: &Placeholders,
) -> String {
    let template_query = template_query.replace('?', "&");
    let mut queries = parse_query_string_nvc(upstream);
    let new_queries = parse_query_string_nvc(&template_query);
    queries.retain(|(k, _)| {
        !k.as_deref()
            .is_some_and(|k| placeholders.iter().any(|(n, _)| placeholder_key(n) == k))
    });
    let mut params: Vec<(String, String)> = Vec::new();
    for (k, values) in new_queries {
        if let Some(k) = k.filter(|k| !k.is_empty()) {
            params.push((k, values.join(",")));
        }
    }
    for (k, values) in queries {
        if let Some(k) = k.filter(|k| !k.is_empty()) {
            if !params.iter().any(|(p, _)| *p == k) {
                params.push((k, values.join(",")));
            }
        }
    }
    add_query_string(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// `RemoveQueryStringParametersThatHaveBeenUsedInTemplate`.
pub(super) fn remove_used_parameters(upstream: &str, placeholders: &Placeholders) -> String {
    let mut query = parse_query_helpers(upstream);
    for (name, _) in placeholders.iter() {
        let key = placeholder_key(name);
        query.retain(|(k, _)| !eq_ignore_case(k, key));
    }
    add_query_string(
        query
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_str(), v.as_str()))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotnet_decoders() {
        assert_eq!(url_decode_form("a+b%20c%u00e9%zz%"), "a b c\u{e9}%zz%");
        assert_eq!(url_decode_form("%C3"), "\u{FFFD}");
        assert_eq!(url_decode_form("%uD83D%uDE00"), "\u{1F600}");
        assert_eq!(unescape_data_string("a%20b%C3%A9%FF%zz"), "a b\u{e9}%FF%zz");
        let mut s = String::new();
        url_encode("a b'&=+/:?~!$()*,;@\u{e9}", &mut s);
        assert_eq!(s, "a%20b%27%26%3D%2B%2F%3A%3F~!$()*,;@%C3%A9");
    }
}
