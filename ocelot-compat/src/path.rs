//! Request-path canonicalisation done before route matching.
//!
//! Ocelot runs behind Kestrel, which percent-decodes the request path (leaving
//! `%2F` alone so that an encoded slash never becomes a segment separator),
//! removes `.`/`..` segments, and then hands Ocelot `Request.Path.ToString()`,
//! which re-escapes whatever is not a legal path character. Templates are
//! matched against that re-escaped form, so the gateway must build exactly the
//! same string before it consults the route table.

use std::borrow::Cow;
use std::fmt;

/// Why a raw request path was refused; the gateway answers these with 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hexadecimal digits (`%zz`, `%4`, a trailing `%`).
    InvalidPercentEncoding,
    /// The path does not start with `/` (absolute-form, authority-form, `*` or empty).
    NotOriginForm,
    /// The percent-decoded bytes of a segment are not valid UTF-8.
    InvalidUtf8,
    /// A C0 control character or DEL, raw or percent-encoded (NUL, CR, LF, ...).
    ControlCharacter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::InvalidPercentEncoding => "invalid percent-encoding in request path",
            PathError::NotOriginForm => "request path does not start with '/'",
            PathError::InvalidUtf8 => "percent-decoded request path is not valid UTF-8",
            PathError::ControlCharacter => "request path contains a control character",
        })
    }
}

impl std::error::Error for PathError {}

/// Bytes that may appear unescaped in a path segment: RFC 3986 `pchar` minus
/// `pct-encoded`, i.e. unreserved, sub-delims, `:` and `@`. This is also the set
/// ASP.NET's `PathString.ToUriComponent` leaves alone (plus `/`).
const SEGMENT_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        b += 1;
    }
    t
};

/// Whether `b` may stay unescaped in a path segment.
#[inline]
pub(crate) fn is_segment_char(b: u8) -> bool {
    SEGMENT_CHARS[b as usize]
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `%XX` (upper-case hex) for one byte.
#[inline]
pub(crate) fn push_pct(out: &mut String, b: u8) {
    out.push('%');
    out.push(HEX_UPPER[(b >> 4) as usize] as char);
    out.push(HEX_UPPER[(b & 0x0f) as usize] as char);
}

/// Value of one ASCII hex digit.
#[inline]
pub(crate) fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[inline]
fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

// A retained `%2F` must survive decoding without turning into a separator and
// must come back out with its original spelling. Control bytes are refused as
// decoded data, so two of them are free to act as markers inside a segment.
const KEEP_2F_UPPER: u8 = 0x01;
const KEEP_2F_LOWER: u8 = 0x02;

/// Canonicalises a raw request-target path (no query) the way Kestrel +
/// `PathString.ToString()` present it to Ocelot.
///
/// Every `%XX` is decoded except `%2F` (kept verbatim, so an encoded slash stays
/// inside its segment); invalid escapes, undecodable UTF-8 and control characters
/// are refused; `.` and `..` segments (also when spelled `%2e`) are removed per
/// RFC 3986 §5.2.4 (`..` above the root stays at the root); finally everything that
/// is not legal in a path is re-escaped as upper-case UTF-8 `%XX` (space → `%20`,
/// `{` → `%7B`, `%` → `%25`, non-ASCII → its UTF-8 bytes). Returns the input
/// unchanged (borrowed) when nothing needs to change, which is the common case.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let mut clean = true;
    for &b in bytes {
        if is_control(b) {
            return Err(PathError::ControlCharacter);
        }
        if b != b'/' && !is_segment_char(b) {
            clean = false;
            break;
        }
    }
    if clean && !has_dot_segment(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    normalize_slow(raw).map(Cow::Owned)
}

fn normalize_slow(raw: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(raw.len() + 8);
    // Start offsets (in `out`) of the kept segments, so `..` can drop the last one.
    let mut starts: Vec<usize> = Vec::new();
    let mut decoded: Vec<u8> = Vec::new();
    let body = raw.get(1..).unwrap_or("");
    let mut segments = body.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        decode_segment(seg.as_bytes(), &mut decoded)?;
        match decoded.as_slice() {
            b"." => {
                if last {
                    starts.push(out.len());
                    out.push('/');
                }
            }
            b".." => {
                if let Some(start) = starts.pop() {
                    out.truncate(start);
                }
                if last {
                    starts.push(out.len());
                    out.push('/');
                }
            }
            _ => {
                starts.push(out.len());
                out.push('/');
                encode_segment(&decoded, &mut out);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

fn decode_segment(seg: &[u8], decoded: &mut Vec<u8>) -> Result<(), PathError> {
    decoded.clear();
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        if b == b'%' {
            let hi = seg.get(i + 1).copied().and_then(hex_val);
            let lo = seg.get(i + 2).copied().and_then(hex_val);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::InvalidPercentEncoding);
            };
            let v = (hi << 4) | lo;
            if v == b'/' {
                decoded.push(if seg[i + 2] == b'f' {
                    KEEP_2F_LOWER
                } else {
                    KEEP_2F_UPPER
                });
            } else if is_control(v) {
                return Err(PathError::ControlCharacter);
            } else {
                decoded.push(v);
            }
            i += 3;
        } else {
            if is_control(b) {
                return Err(PathError::ControlCharacter);
            }
            decoded.push(b);
            i += 1;
        }
    }
    if std::str::from_utf8(decoded).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    Ok(())
}

fn encode_segment(decoded: &[u8], out: &mut String) {
    for &b in decoded {
        match b {
            KEEP_2F_UPPER => out.push_str("%2F"),
            KEEP_2F_LOWER => out.push_str("%2f"),
            _ if is_segment_char(b) => out.push(b as char),
            _ => push_pct(out, b),
        }
    }
}

/// Whether a `/`-separated path has a literal `.` or `..` segment.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').skip(1).any(|s| s == "." || s == "..")
}

/// RFC 3986 `remove_dot_segments` for an already-escaped path that starts with
/// `/`; only literal `.`/`..` segments count. Used on rendered downstream paths,
/// where .NET's `System.Uri` would do the same before the request leaves Ocelot.
pub(crate) fn remove_dot_segments(path: &str) -> Cow<'_, str> {
    if !path.starts_with('/') || !has_dot_segment(path) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut starts: Vec<usize> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." | ".." => {
                if seg == ".." {
                    if let Some(start) = starts.pop() {
                        out.truncate(start);
                    }
                }
                if last {
                    starts.push(out.len());
                    out.push('/');
                }
            }
            _ => {
                starts.push(out.len());
                out.push('/');
                out.push_str(seg);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        normalize_path(p).unwrap().into_owned()
    }

    #[test]
    fn clean_paths_are_borrowed() {
        for p in [
            "/",
            "/api/users/42",
            "/a/b/",
            "//x",
            "/a:b@c/!$&'()*+,;=",
            "/~_-.",
        ] {
            assert!(matches!(normalize_path(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn must_be_origin_form() {
        for p in ["", "api/x", "*", "http://h/x", "?a=1"] {
            assert_eq!(normalize_path(p), Err(PathError::NotOriginForm), "{p}");
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        let cases = [
            ("/a/b/../c", "/a/c"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/a/../", "/"),
            ("/a/.../b", "/a/.../b"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/.b", "/a/.b"),
            ("/a//../b", "/a/b"),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw), want, "{raw}");
        }
    }

    #[test]
    fn encoded_dots_count_as_dot_segments() {
        assert_eq!(norm("/a/%2e%2E/b"), "/b");
        assert_eq!(norm("/a/%2E/b"), "/a/b");
        assert_eq!(norm("/a/.%2e"), "/");
        assert_eq!(norm("/a/%2e%2e%2f/b"), "/a/..%2f/b");
    }

    #[test]
    fn encoded_slash_is_retained_verbatim() {
        assert_eq!(norm("/a%2Fb/c"), "/a%2Fb/c");
        assert_eq!(norm("/a%2fb/c"), "/a%2fb/c");
        assert_eq!(norm("/a%2F..%2Fb"), "/a%2F..%2Fb");
        assert_eq!(norm("/x/%2F/../y"), "/x/y");
        // A decoded '%' is escaped again so it can never pose as a kept %2F.
        assert_eq!(norm("/a%252Fb"), "/a%252Fb");
    }

    #[test]
    fn decodes_and_reencodes() {
        assert_eq!(norm("/debug%28%29"), "/debug()");
        assert_eq!(norm("/a%41b"), "/aAb");
        assert_eq!(norm("/a b"), "/a%20b");
        assert_eq!(norm("/a%20b"), "/a%20b");
        assert_eq!(norm("/{id}"), "/%7Bid%7D");
        assert_eq!(norm("/%7bx%7d"), "/%7Bx%7D");
        assert_eq!(norm("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(norm("/café"), "/caf%C3%A9");
        assert_eq!(norm("/a%3Fb%23c"), "/a%3Fb%23c");
        assert_eq!(norm("/100%25"), "/100%25");
        assert_eq!(norm("/a|b\"c<d>^`"), "/a%7Cb%22c%3Cd%3E%5E%60");
        assert_eq!(norm("/a%5Cb"), "/a%5Cb");
    }

    #[test]
    fn invalid_encodings_are_refused() {
        for p in ["/%zz", "/%4", "/a%", "/a%g0", "/%%41"] {
            assert_eq!(
                normalize_path(p),
                Err(PathError::InvalidPercentEncoding),
                "{p}"
            );
        }
        for p in ["/%C3", "/%C3%28", "/%FF", "/%ED%A0%80"] {
            assert_eq!(normalize_path(p), Err(PathError::InvalidUtf8), "{p}");
        }
        for p in ["/a%00b", "/a%0D%0A", "/a%7F", "/a\nb", "/a\tb", "/%1b"] {
            assert_eq!(normalize_path(p), Err(PathError::ControlCharacter), "{p}");
        }
    }

    #[test]
    fn result_is_stable() {
        for p in ["/a%20b/../c", "/x/%2e/y%2F", "/caf%C3%A9/./", "/a/b/.."] {
            let once = norm(p);
            assert_eq!(norm(&once), once, "{p}");
        }
    }

    #[test]
    fn remove_dot_segments_on_rendered_paths() {
        assert_eq!(remove_dot_segments("/a/../b"), "/b");
        assert_eq!(remove_dot_segments("/a/b/"), "/a/b/");
        assert_eq!(remove_dot_segments("/a/."), "/a/");
        assert!(matches!(remove_dot_segments("/a/b"), Cow::Borrowed(_)));
    }

    #[test]
    fn never_panics_on_random_input() {
        let alphabet: Vec<char> = "/%.2fFeE0aZ~ {}?#\u{e9}\u{1F600}\0\r\n%41%2F%2e.."
            .chars()
            .collect();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let mut s = String::from("/");
            let mut x = seed;
            for _ in 0..len {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push(alphabet[(x >> 33) as usize % alphabet.len()]);
            }
            if let Ok(p) = normalize_path(&s) {
                assert!(p.starts_with('/'));
                assert!(p
                    .bytes()
                    .all(|b| b == b'/' || b == b'%' || is_segment_char(b)));
                let again = normalize_path(&p).unwrap();
                assert_eq!(again, p);
            }
            let _ = remove_dot_segments(&s);
        }
    }
}
