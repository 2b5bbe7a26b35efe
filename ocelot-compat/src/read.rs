//! Lenient JSON reading, as lenient as the readers Ocelot puts in front of
//! `ocelot.json`: ASP.NET's JSON configuration provider (System.Text.Json with
//! comments skipped and trailing commas allowed) and Newtonsoft's `JToken.Parse`
//! used by the `ocelot.*.json` merge.
//!
//! Accepted on top of strict JSON: a byte-order mark (UTF-8, or UTF-16 which
//! .NET's `StreamReader` also detects), `//` and `/* */` comments, trailing
//! commas in objects and arrays, and any bytes inside comments (real configs
//! carry GBK-encoded Chinese comments, which .NET decodes to U+FFFD and then
//! skips). Everything else must be valid UTF-8 JSON.
//!
//! The approach is one pass that overwrites comments and trailing commas with
//! spaces, byte for byte and keeping line breaks, so that the cleaned text has
//! the same offsets as the file and serde_json's error positions stay true.

use std::path::Path;

use serde_json::Value;

use crate::diag::Diagnostic;

const UTF8_BOM: &[u8] = &[0xEF, 0xBB, 0xBF];

/// Parses one configuration file's bytes into a JSON value.
///
/// `file` only labels diagnostics; nothing is read from disk. Object key order
/// is kept; when a key repeats with the same spelling the last value wins (at
/// the first one's position). Any top-level JSON value is returned: callers
/// that need an object check that themselves.
///
/// A syntax error becomes one [`Diagnostic`] (severity error) naming the file
/// and the 1-based line and column, the column counted in characters.
// `Diagnostic` is the crate's shared error type; boxing it here alone would
// make this API differ from its siblings for no measurable gain.
#[allow(clippy::result_large_err)]
pub fn parse(bytes: &[u8], file: &Path) -> Result<Value, Diagnostic> {
    let text = decode(bytes).map_err(|message| Diagnostic::error("", "", message).in_file(file))?;
    let body: &[u8] = &text;
    let cleaned = clean(body);

    let fail = |offset: usize, message: String| {
        let (line, column) = line_col(body, offset);
        Diagnostic::error("", "", message)
            .in_file(file)
            .at(line, column)
    };

    // Problems the cleaning pass found itself (an unterminated block comment,
    // bytes that are not UTF-8). Report the earliest problem in the file, which
    // may be an ordinary syntax error before it: parse the valid prefix to see.
    let utf8_error = std::str::from_utf8(&cleaned.bytes).err().map(|e| {
        (
            e.valid_up_to(),
            "invalid UTF-8 byte sequence: the file must be UTF-8 encoded \
             (only comments may contain other bytes)"
                .to_string(),
        )
    });
    let pre_error = [cleaned.unterminated_comment.clone(), utf8_error]
        .into_iter()
        .flatten()
        .min_by_key(|(offset, _)| *offset);

    if let Some((offset, message)) = pre_error {
        let prefix = cleaned.bytes.get(..offset).unwrap_or(&[]);
        if let Ok(prefix) = std::str::from_utf8(prefix) {
            if let Err(e) = serde_json::from_str::<Value>(prefix) {
                if !e.is_eof() {
                    let (offset, message) = describe(&cleaned.bytes, &e);
                    return Err(fail(offset, message));
                }
            }
        }
        return Err(fail(offset, message));
    }

    // The UTF-8 check above passed, so this cannot fail; stay panic-free anyway.
    let Ok(cleaned_text) = std::str::from_utf8(&cleaned.bytes) else {
        return Err(fail(0, "invalid UTF-8 byte sequence".to_string()));
    };

    if cleaned_text.trim_matches(is_json_whitespace).is_empty() {
        return Err(fail(
            body.len(),
            "no JSON value: the file is empty or holds only comments".to_string(),
        ));
    }

    serde_json::from_str::<Value>(cleaned_text).map_err(|e| {
        // serde_json only notices a missing closing quote at the end of the
        // file; pointing at the quote that opened the string is more useful.
        if e.is_eof() {
            if let Some(start) = cleaned.unterminated_string {
                return fail(start, "unterminated string (no closing `\"`)".to_string());
            }
        }
        let (offset, message) = describe(&cleaned.bytes, &e);
        fail(offset, message)
    })
}

/// Strips a UTF-8 BOM, or transcodes a UTF-16 file (detected by its BOM, as
/// .NET's `StreamReader` does) to UTF-8. UTF-32 is refused with a clear message
/// rather than misread as UTF-16.
fn decode(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    use std::borrow::Cow;
    if let Some(rest) = bytes.strip_prefix(UTF8_BOM) {
        return Ok(Cow::Borrowed(rest));
    }
    if bytes.starts_with(&[0xFF, 0xFE, 0, 0]) || bytes.starts_with(&[0, 0, 0xFE, 0xFF]) {
        return Err("the file is UTF-32 encoded; save it as UTF-8".to_string());
    }
    let little_endian = match bytes {
        [0xFF, 0xFE, ..] => true,
        [0xFE, 0xFF, ..] => false,
        _ => return Ok(Cow::Borrowed(bytes)),
    };
    if !bytes.len().is_multiple_of(2) {
        return Err("the file has a UTF-16 byte-order mark but an odd number of bytes".to_string());
    }
    let units = bytes[2..].chunks_exact(2).map(|pair| {
        let pair = [pair[0], pair[1]];
        if little_endian {
            u16::from_le_bytes(pair)
        } else {
            u16::from_be_bytes(pair)
        }
    });
    // Unpaired surrogates become U+FFFD, as .NET's decoder does.
    let text: String = char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    Ok(Cow::Owned(text.into_bytes()))
}

/// The cleaned bytes plus what the cleaning pass found wrong.
struct Cleaned {
    /// Same length as the input; comments and trailing commas are spaces.
    bytes: Vec<u8>,
    /// Offset of a `/*` that is never closed, with the message to report.
    unterminated_comment: Option<(usize, String)>,
    /// Offset of the `"` opening a string still open at the end of the input.
    unterminated_string: Option<usize>,
}

#[derive(Clone, Copy)]
enum State {
    Normal,
    /// Inside a string that opened at this offset.
    Str(usize),
    /// Just after a backslash inside a string that opened at this offset.
    Escape(usize),
    LineComment,
    /// Inside a block comment that opened at this offset.
    BlockComment(usize),
}

fn is_json_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Blanks comments and trailing commas. Line breaks inside comments are kept
/// so serde_json's line numbers match the file's.
fn clean(input: &[u8]) -> Cleaned {
    let mut out = input.to_vec();
    let mut state = State::Normal;
    // The last two significant bytes outside strings and comments (offset and
    // byte of the last; byte of the one before), to recognise a comma directly
    // followed by `}` or `]` whatever whitespace and comments lie between.
    let mut last: Option<(usize, u8)> = None;
    let mut before_last: Option<u8> = None;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        let next = input.get(i + 1).copied();
        match state {
            State::Normal => match b {
                b'/' if next == Some(b'/') => {
                    out[i] = b' ';
                    out[i + 1] = b' ';
                    state = State::LineComment;
                    i += 2;
                    continue;
                }
                b'/' if next == Some(b'*') => {
                    out[i] = b' ';
                    out[i + 1] = b' ';
                    state = State::BlockComment(i);
                    i += 2;
                    continue;
                }
                b' ' | b'\t' | b'\n' | b'\r' => {}
                _ => {
                    if b == b'"' {
                        state = State::Str(i);
                    }
                    if matches!(b, b'}' | b']') {
                        // Only a comma that follows a value is a trailing comma;
                        // `[,]` stays an error as it is for System.Text.Json.
                        if let Some((comma, b',')) = last {
                            if !matches!(before_last, None | Some(b'[' | b'{' | b',' | b':')) {
                                out[comma] = b' ';
                            }
                        }
                    }
                    before_last = last.map(|(_, byte)| byte);
                    last = Some((i, b));
                }
            },
            State::Str(start) => match b {
                b'\\' => state = State::Escape(start),
                b'"' => {
                    state = State::Normal;
                    before_last = last.map(|(_, byte)| byte);
                    last = Some((i, b));
                }
                // JSON strings cannot span lines; serde_json reports the raw
                // line break, and leaving the string here keeps the comment
                // detection of later lines in step with the file.
                b'\n' => state = State::Normal,
                _ => {}
            },
            State::Escape(start) => {
                state = if b == b'\n' {
                    State::Normal
                } else {
                    State::Str(start)
                };
            }
            State::LineComment => {
                if b == b'\n' || b == b'\r' {
                    state = State::Normal;
                } else {
                    out[i] = b' ';
                }
            }
            State::BlockComment(_) => {
                if b == b'*' && next == Some(b'/') {
                    out[i] = b' ';
                    out[i + 1] = b' ';
                    state = State::Normal;
                    i += 2;
                    continue;
                }
                if b != b'\n' && b != b'\r' {
                    out[i] = b' ';
                }
            }
        }
        i += 1;
    }
    let (unterminated_comment, unterminated_string) = match state {
        State::BlockComment(start) => (
            Some((
                start,
                "unterminated block comment: `/*` is never closed by `*/`".to_string(),
            )),
            None,
        ),
        State::Str(start) | State::Escape(start) => (None, Some(start)),
        State::Normal | State::LineComment => (None, None),
    };
    Cleaned {
        bytes: out,
        unterminated_comment,
        unterminated_string,
    }
}

/// Turns a serde_json error into (byte offset, message). serde_json counts
/// lines by `\n` and columns in bytes, the column being the 1-based column of
/// the byte it stopped at; column 0 means that byte was the `\n` ending the
/// previous line.
fn describe(cleaned: &[u8], e: &serde_json::Error) -> (usize, String) {
    let line_start = nth_line_start(cleaned, e.line());
    let offset = match e.column() {
        0 => line_start.saturating_sub(1),
        column => line_start + column - 1,
    }
    .min(cleaned.len());

    // At the end of the input, point just after the last token rather than at
    // the whitespace or blanked comment that follows it.
    let offset = if e.is_eof() {
        cleaned
            .iter()
            .rposition(|b| !b" \t\r\n".contains(b))
            .map_or(0, |i| i + 1)
    } else {
        offset
    };

    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let base = full.strip_suffix(&suffix).unwrap_or(&full);
    // A few serde_json phrasings are terse for people editing a config file.
    let base = if let Some(rest) = base.strip_prefix("EOF while") {
        format!("unexpected end of file while{rest}")
    } else {
        match base {
            "expected ident" => "invalid literal (expected `true`, `false` or `null`)".to_string(),
            "key must be a string" => "object key must be a double-quoted string".to_string(),
            other => other.to_string(),
        }
    };
    let mut message = format!("invalid JSON: {base}");
    if e.classify() == serde_json::error::Category::Syntax {
        if let Some(found) = char_at(cleaned, offset) {
            if !found.is_whitespace() {
                message.push_str(&format!(" (found {found:?})"));
            }
        }
    }
    (offset, message)
}

/// Offset of the first byte of 1-based line `line` (end of input if short).
fn nth_line_start(bytes: &[u8], line: usize) -> usize {
    if line <= 1 {
        return 0;
    }
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(line - 2)
        .map_or(bytes.len(), |(i, _)| i + 1)
}

/// The character starting at `offset`, when it is valid UTF-8.
fn char_at(bytes: &[u8], offset: usize) -> Option<char> {
    let rest = bytes.get(offset..)?;
    let len = rest.len().min(4);
    (1..=len).find_map(|n| {
        std::str::from_utf8(&rest[..n])
            .ok()
            .and_then(|s| s.chars().next())
    })
}

/// 1-based line and column of a byte offset; the column counts characters
/// (UTF-8 continuation bytes are not counted), which is what editors show.
fn line_col(bytes: &[u8], offset: usize) -> (usize, usize) {
    let offset = offset.min(bytes.len());
    let before = &bytes[..offset];
    let line = 1 + before.iter().filter(|b| **b == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let column = 1 + before[line_start..]
        .iter()
        .filter(|b| (**b & 0xC0) != 0x80)
        .count();
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn ok(text: &str) -> Value {
        parse(text.as_bytes(), Path::new("t.json")).unwrap()
    }

    fn err(bytes: &[u8]) -> Diagnostic {
        parse(bytes, Path::new("t.json")).unwrap_err()
    }

    fn corpus() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ocelot-corpus")
    }

    #[test]
    fn strict_json_and_key_order() {
        let v = ok(r#"{"b": 1, "a": [true, null, "x"], "c": {"z": 1, "y": 2}}"#);
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["b", "a", "c"]);
        let inner: Vec<_> = v["c"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(inner, ["z", "y"]);
    }

    #[test]
    fn line_comment_markers_inside_strings_survive() {
        let v = ok("{\n  // a comment\n  \"Url\": \"http://x//y\", // trailing\n  \"B\": \"/* not a comment */\"\n}");
        assert_eq!(v["Url"], "http://x//y");
        assert_eq!(v["B"], "/* not a comment */");
    }

    #[test]
    fn escaped_quote_does_not_end_string() {
        let v = ok(r#"{"a": "say \"//hi\" \\", "b": "c:\\// \\"}"#);
        assert_eq!(v["a"], "say \"//hi\" \\");
        assert_eq!(v["b"], "c:\\// \\");
    }

    #[test]
    fn block_comment_spanning_lines() {
        let v =
            ok("{\n/* one\n two \"quoted\" // nested-looking\n three */ \"a\": /* inline */ 1\n}");
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn block_comment_with_stars() {
        assert_eq!(ok("{/***/\"a\":/** x **/1}")["a"], 1);
    }

    #[test]
    fn trailing_commas_in_objects_and_arrays() {
        let v = ok("{\"a\": [1, 2, ], \"b\": {\"c\": 1,},\n}");
        assert_eq!(v["a"], serde_json::json!([1, 2]));
        assert_eq!(v["b"], serde_json::json!({"c": 1}));
    }

    #[test]
    fn trailing_comma_followed_by_comments() {
        let v = ok("{\"a\": 1,\n // \"b\": 2\n /* c */\n}");
        assert_eq!(v, serde_json::json!({"a": 1}));
    }

    #[test]
    fn comma_without_preceding_value_is_an_error() {
        for bad in ["[,]", "{,}", "[1,,]", "{\"a\":,}"] {
            let d = err(bad.as_bytes());
            assert!(d.is_error(), "{bad}");
        }
    }

    #[test]
    fn bom_and_crlf() {
        let mut bytes = UTF8_BOM.to_vec();
        bytes.extend_from_slice(b"{\r\n  \"a\": 1, // c\r\n  \"b\": [ 2, ]\r\n}\r\n");
        let v = parse(&bytes, Path::new("t.json")).unwrap();
        assert_eq!(v, serde_json::json!({"a": 1, "b": [2]}));
    }

    #[test]
    fn error_column_ignores_bom() {
        let mut bytes = UTF8_BOM.to_vec();
        bytes.extend_from_slice(b"{ x }");
        assert_eq!(err(&bytes).line_col, Some((1, 3)));
    }

    #[test]
    fn utf16_with_bom_is_transcoded() {
        let text = "{ \"a\": \"é\" // c\n }";
        let mut le = vec![0xFF, 0xFE];
        let mut be = vec![0xFE, 0xFF];
        for u in text.encode_utf16() {
            le.extend_from_slice(&u.to_le_bytes());
            be.extend_from_slice(&u.to_be_bytes());
        }
        assert_eq!(parse(&le, Path::new("t.json")).unwrap()["a"], "é");
        assert_eq!(parse(&be, Path::new("t.json")).unwrap()["a"], "é");
    }

    #[test]
    fn gbk_bytes_in_comments_are_tolerated() {
        // "负载均衡" in GBK, in a line comment and in a block comment.
        let gbk = [0xB8, 0xBA, 0xD4, 0xD8, 0xBE, 0xF9, 0xBA, 0xE2];
        let mut bytes = b"{\r\n  // ".to_vec();
        bytes.extend_from_slice(&gbk);
        bytes.extend_from_slice(b"\r\n  \"a\": 1, /* ");
        bytes.extend_from_slice(&gbk);
        bytes.extend_from_slice(b" */ \"b\": 2\r\n}");
        let v = parse(&bytes, Path::new("t.json")).unwrap();
        assert_eq!(v, serde_json::json!({"a": 1, "b": 2}));
    }

    #[test]
    fn invalid_utf8_outside_comments_is_an_error() {
        let d = err(b"{\n  \"a\": \"\xB8\xBA\"\n}");
        assert!(d.message.contains("UTF-8"), "{d}");
        assert_eq!(d.line_col, Some((2, 9)));
        assert_eq!(d.file.as_deref(), Some(Path::new("t.json")));

        let d = err(b"{\n  \xFF: 1 }");
        assert!(d.message.contains("UTF-8"), "{d}");
        assert_eq!(d.line_col, Some((2, 3)));
    }

    #[test]
    fn earlier_syntax_error_wins_over_later_utf8_error() {
        let d = err(b"{\n \"a\" 1,\n \"b\": \"\xFF\" }");
        assert_eq!(d.line_col, Some((2, 6)), "{d}");
        assert!(!d.message.contains("UTF-8"), "{d}");
    }

    #[test]
    fn syntax_error_position_after_blanked_comments() {
        let text = "{\n  /* a\n     b */ \"a\": 1, // x\n  // \"b\": 2,\n  \"c\": 3 \"d\": 4\n}";
        let d = err(text.as_bytes());
        assert!(d.is_error());
        assert_eq!(d.line_col, Some((5, 10)), "{d}");
        assert!(d.message.contains("expected `,` or `}`"), "{d}");
        assert!(d.message.contains("found '\"'"), "{d}");
        let shown = d.to_string();
        assert!(shown.starts_with("error: t.json:5:10: "), "{shown}");
    }

    #[test]
    fn error_column_counts_characters() {
        // Three 3-byte characters before the error: the column is in chars.
        let d = err("{\"负载均\": x}".as_bytes());
        assert_eq!(d.line_col, Some((1, 9)), "{d}");
    }

    #[test]
    fn unterminated_block_comment() {
        let d = err(b"{\n  \"a\": 1,\n  /* never closed\n}");
        assert!(d.message.contains("unterminated block comment"), "{d}");
        assert_eq!(d.line_col, Some((3, 3)));
    }

    #[test]
    fn unterminated_string() {
        let d = err(b"{\n  \"a\": \"abc");
        assert!(d.message.contains("unterminated string"), "{d}");
        assert_eq!(d.line_col, Some((2, 8)));
    }

    #[test]
    fn raw_line_break_in_string_is_an_error_on_its_line() {
        let d = err(b"{\n  \"a\": \"ab\n  cd\", \"http://x\": 1 }");
        assert_eq!(d.line_col, Some((2, 11)), "{d}");
    }

    #[test]
    fn empty_and_comment_only_files() {
        for bad in ["", "   \r\n", "// nothing\n/* here */"] {
            let d = err(bad.as_bytes());
            assert!(d.message.contains("no JSON value"), "{d}");
        }
    }

    #[test]
    fn unexpected_character_and_trailing_text() {
        let d = err(b"{\"a\": 1} x");
        assert!(d.message.contains("trailing characters"), "{d}");
        assert_eq!(d.line_col, Some((1, 10)));
        let d = err(b"{\"a\": / 1}");
        assert_eq!(d.line_col, Some((1, 7)), "{d}");
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let v = ok(r#"{"a": 1, "b": 2, "a": 3}"#);
        assert_eq!(v["a"], 3);
        assert_eq!(v.as_object().unwrap().len(), 2);
    }

    #[test]
    fn utf32_is_refused_clearly() {
        let d = err(&[0xFF, 0xFE, 0, 0, b'{', 0, 0, 0]);
        assert!(d.message.contains("UTF-32"), "{d}");
    }

    #[test]
    fn every_corpus_file_parses() {
        fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, found);
                } else if path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("json"))
                {
                    found.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(&corpus(), &mut files);
        assert!(files.len() >= 40, "corpus has {} files", files.len());
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            let v = parse(&bytes, &file).unwrap_or_else(|d| panic!("{d}"));
            assert!(v.is_object(), "{}", file.display());
        }
    }

    #[test]
    fn corpus_gbk_file_keeps_its_routes() {
        let file = corpus().join("abp-next-admin/split-legacy-root/ocelot.idsadmin.json");
        let bytes = std::fs::read(&file).unwrap();
        assert!(std::str::from_utf8(&bytes).is_err(), "expected GBK bytes");
        let v = parse(&bytes, &file).unwrap();
        assert_eq!(v["Routes"].as_array().unwrap().len(), 6);
    }

    /// xorshift64*: deterministic pseudo-random bytes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Bytes biased towards the ones the reader treats specially.
        let alphabet = b"{}[],:\"\\/*\n\r \t0123456789.-eEtruefalsnl\xEF\xBB\xBF\xFF\xFE\x00\xB8";
        for _ in 0..20_000 {
            let len = rng.below(64);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(4) == 0 {
                        rng.next() as u8
                    } else {
                        alphabet[rng.below(alphabet.len())]
                    }
                })
                .collect();
            let _ = parse(&bytes, Path::new("fuzz.json"));
        }
    }

    #[test]
    fn mutated_corpus_never_panics() {
        let file = corpus()
            .join("other/Kros-sk__Kros.AspNetCore.BestPractices__src__ApiGateway__ocelot.json");
        let original = std::fs::read(file).unwrap();
        let specials = b"{}[],:\"\\/*\n";
        let mut rng = Rng(42);
        for _ in 0..3_000 {
            let mut bytes = original.clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len());
                match rng.below(3) {
                    0 => bytes[at] = specials[rng.below(specials.len())],
                    1 => bytes[at] = rng.next() as u8,
                    _ => bytes.truncate(at),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            if let Err(d) = parse(&bytes, Path::new("m.json")) {
                assert!(d.line_col.is_some() || d.message.contains("UTF"), "{d}");
            }
        }
    }
}
