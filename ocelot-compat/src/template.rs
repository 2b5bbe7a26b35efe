//! Upstream/downstream path templates with Ocelot's exact semantics, without a
//! regex engine at run time.
//!
//! Ocelot turns every `UpstreamPathTemplate` into a .NET regex
//! (`UpstreamTemplatePatternCreator`), extracts placeholder values with a second,
//! differently built regex (`UrlPathPlaceholderNameAndValueFinder`), matches
//! `UpstreamHeaderTemplates` with a third kind (`UpstreamHeaderTemplatePatternCreator`)
//! and renders the downstream URL with plain string replacement and .NET's query
//! helpers (`DownstreamUrlCreatorMiddleware`). This module reproduces each of those
//! on top of a tiny backtracking VM whose instruction set is exactly what those
//! regexes need: literals, `.`, `[^/]+`, `.*`, `[^/|&]*`, `[^&]*`, `.+`, the
//! `(/$|/\?|\?|$)` query joint, `(?:|…)`, `(/|)` and `$`. Failed `(instruction,
//! position)` states are memoised, so matching stays polynomial on hostile input.
//!
//! Template characters that .NET would read as regex syntax other than `.`
//! (`+ * ( ) [ | ^ $ \`) are matched literally here; [`path_template_literal_metachars`]
//! and [`header_template_literal_metachars`] name them so validation can warn.

use std::borrow::Cow;

use crate::path::{hex_val, is_segment_char, push_pct, remove_dot_segments};
use crate::table::Placeholders;

// ---------------------------------------------------------------------------
// Placeholder scanning
// ---------------------------------------------------------------------------

/// Byte ranges (`start..end`, braces included) of the `{…}` placeholders in a
/// template: each `{` up to the next `}`, scanning on after that `}`. An unclosed
/// `{` is plain text.
fn placeholder_ranges(template: &str) -> Vec<(usize, usize)> {
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

// ---------------------------------------------------------------------------
// Ocelot's regex strings (diagnostics and cross-checking only)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// The VM
// ---------------------------------------------------------------------------

mod vm {
    /// Character classes used by Ocelot's generated regexes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Class {
        /// `.` with `RegexOptions.Singleline`: anything.
        Any,
        /// `[^/]`
        NotSlash,
        /// `[^/|&]`
        NotSlashPipeAmp,
        /// `[^&]`
        NotAmp,
    }

    impl Class {
        #[inline]
        fn excludes(self, b: u8) -> bool {
            match self {
                Class::Any => false,
                Class::NotSlash => b == b'/',
                Class::NotSlashPipeAmp => matches!(b, b'/' | b'|' | b'&'),
                Class::NotAmp => b == b'&',
            }
        }
    }

    #[derive(Clone, Copy, Debug)]
    pub(super) enum Inst {
        /// Literal bytes from the pool (ASCII case folded when the program is `ci`).
        Lit {
            off: u32,
            len: u32,
        },
        /// One character of any kind.
        Any,
        /// Greedy run of `class` characters, at least one if `min1`.
        Span {
            class: Class,
            min1: bool,
        },
        /// `.*` right before the end anchor: greedy to the end always succeeds.
        SkipAll,
        /// Try `first`, on failure `second`.
        Split {
            first: u32,
            second: u32,
        },
        Jmp(u32),
        AssertEnd,
        Save(u32),
        Match,
    }

    const NO_MEMO: u32 = u32::MAX;

    pub(super) struct Builder {
        insts: Vec<Inst>,
        pool: Vec<u8>,
        slots: u32,
    }

    impl Builder {
        pub(super) fn new() -> Self {
            Builder {
                insts: Vec::new(),
                pool: Vec::new(),
                slots: 0,
            }
        }

        pub(super) fn pc(&self) -> u32 {
            self.insts.len() as u32
        }

        pub(super) fn push(&mut self, inst: Inst) -> u32 {
            self.insts.push(inst);
            self.pc() - 1
        }

        pub(super) fn patch(&mut self, at: u32, inst: Inst) {
            if let Some(slot) = self.insts.get_mut(at as usize) {
                *slot = inst;
            }
        }

        pub(super) fn lit(&mut self, bytes: &[u8]) {
            if bytes.is_empty() {
                return;
            }
            let off = self.pool.len() as u32;
            self.pool.extend_from_slice(bytes);
            self.push(Inst::Lit {
                off,
                len: bytes.len() as u32,
            });
        }

        /// Emits `Save(open) Span Save(close)` and returns the capture index.
        pub(super) fn capture(&mut self, class: Class, min1: bool) -> usize {
            let k = self.slots;
            self.slots += 2;
            self.push(Inst::Save(k));
            self.push(Inst::Span { class, min1 });
            self.push(Inst::Save(k + 1));
            (k / 2) as usize
        }

        pub(super) fn finish(mut self, ci: bool) -> Program {
            self.push(Inst::Match);
            // Only states where two paths can meet need memoising: jump and split
            // targets and the resumption point after a span.
            let mut memo = vec![NO_MEMO; self.insts.len()];
            let mut mark = |pc: u32| {
                if let Some(m) = memo.get_mut(pc as usize) {
                    *m = 0;
                }
            };
            for (pc, inst) in self.insts.iter().enumerate() {
                match *inst {
                    Inst::Split { first, second } => {
                        mark(first);
                        mark(second);
                    }
                    Inst::Jmp(t) => mark(t),
                    Inst::Span { .. } => mark(pc as u32 + 1),
                    _ => {}
                }
            }
            let mut memo_count = 0;
            for m in memo.iter_mut() {
                if *m != NO_MEMO {
                    *m = memo_count;
                    memo_count += 1;
                }
            }
            let exact = match self.insts.as_slice() {
                [Inst::Lit { off, len }, Inst::AssertEnd, Inst::Match] => Some((*off, *len)),
                [Inst::AssertEnd, Inst::Match] => Some((0, 0)),
                _ => None,
            };
            Program {
                insts: self.insts,
                pool: self.pool,
                ci,
                slots: self.slots as usize,
                memo,
                memo_count: memo_count as usize,
                exact,
            }
        }
    }

    #[derive(Clone, Debug)]
    pub(super) struct Program {
        insts: Vec<Inst>,
        pool: Vec<u8>,
        ci: bool,
        slots: usize,
        memo: Vec<u32>,
        memo_count: usize,
        exact: Option<(u32, u32)>,
    }

    #[derive(Clone, Copy)]
    enum Frame {
        Resume {
            pc: u32,
            pos: usize,
        },
        /// The span at `pc` last ended at `cur`; try the previous character boundary.
        Retry {
            pc: u32,
            min: usize,
            cur: usize,
        },
        Restore {
            slot: u32,
            old: usize,
        },
    }

    /// A stack that lives on the machine stack until it outgrows `N` frames.
    struct SmallStack<const N: usize> {
        buf: [Frame; N],
        len: usize,
        spill: Vec<Frame>,
    }

    impl<const N: usize> SmallStack<N> {
        fn new() -> Self {
            SmallStack {
                buf: [Frame::Resume { pc: 0, pos: 0 }; N],
                len: 0,
                spill: Vec::new(),
            }
        }

        #[inline]
        fn push(&mut self, f: Frame) {
            if self.len < N {
                self.buf[self.len] = f;
                self.len += 1;
            } else {
                self.spill.push(f);
            }
        }

        #[inline]
        fn pop(&mut self) -> Option<Frame> {
            if let Some(f) = self.spill.pop() {
                return Some(f);
            }
            if self.len == 0 {
                return None;
            }
            self.len -= 1;
            Some(self.buf[self.len])
        }
    }

    #[inline]
    fn char_len(lead: u8) -> usize {
        match lead {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xff => 4,
            // A continuation byte never starts a char in valid UTF-8; step one byte.
            _ => 1,
        }
    }

    #[inline]
    fn prev_boundary(s: &[u8], cur: usize) -> usize {
        let mut p = cur.saturating_sub(1);
        while p > 0 && (s[p] & 0xc0) == 0x80 {
            p -= 1;
        }
        p
    }

    const INLINE_WORDS: usize = 32;

    impl Program {
        #[inline]
        fn lit_eq(&self, subject: &[u8], pos: usize, off: u32, len: u32) -> bool {
            let (off, len) = (off as usize, len as usize);
            let Some(have) = subject.get(pos..pos + len) else {
                return false;
            };
            let want = &self.pool[off..off + len];
            if self.ci {
                have.eq_ignore_ascii_case(want)
            } else {
                have == want
            }
        }

        /// Whether the program matches `subject` (anchored at the start; the end
        /// anchor is an instruction).
        pub(super) fn is_match(&self, subject: &[u8]) -> bool {
            if let Some((off, len)) = self.exact {
                return subject.len() == len as usize && self.lit_eq(subject, 0, off, len);
            }
            self.run(subject, &mut [])
        }

        /// Runs with capture slots and hands the positions (one per slot,
        /// `usize::MAX` when unset) of the first match in .NET's backtracking
        /// priority order to `f`; `None` when there is no match.
        pub(super) fn with_captures<R>(
            &self,
            subject: &[u8],
            f: impl FnOnce(&[usize]) -> R,
        ) -> Option<R> {
            let mut inline = [usize::MAX; 32];
            let mut heap = Vec::new();
            let caps: &mut [usize] = if self.slots <= inline.len() {
                &mut inline[..self.slots]
            } else {
                heap.resize(self.slots, usize::MAX);
                &mut heap
            };
            if self.run(subject, caps) {
                Some(f(caps))
            } else {
                None
            }
        }

        fn run(&self, subject: &[u8], caps: &mut [usize]) -> bool {
            if let Some(Inst::Lit { off, len }) = self.insts.first() {
                if !self.lit_eq(subject, 0, *off, *len) {
                    return false;
                }
            }
            let n = subject.len();
            let bits_needed = self.memo_count.saturating_mul(n + 1);
            let words = bits_needed.div_ceil(64);
            let mut inline = [0u64; INLINE_WORDS];
            let mut heap = Vec::new();
            let visited: &mut [u64] = if words <= INLINE_WORDS {
                &mut inline[..words]
            } else {
                heap.resize(words, 0u64);
                &mut heap
            };
            let mut stack = SmallStack::<32>::new();
            stack.push(Frame::Resume { pc: 0, pos: 0 });
            while let Some(frame) = stack.pop() {
                let (mut pc, mut pos) = match frame {
                    Frame::Restore { slot, old } => {
                        if let Some(c) = caps.get_mut(slot as usize) {
                            *c = old;
                        }
                        continue;
                    }
                    Frame::Retry { pc, min, cur } => {
                        let p = prev_boundary(subject, cur);
                        if p > min {
                            stack.push(Frame::Retry { pc, min, cur: p });
                        }
                        (pc + 1, p.max(min))
                    }
                    Frame::Resume { pc, pos } => (pc, pos),
                };
                while let Some(&inst) = self.insts.get(pc as usize) {
                    let m = self.memo[pc as usize];
                    if m != NO_MEMO {
                        let bit = m as usize * (n + 1) + pos;
                        let (w, b) = (bit / 64, 1u64 << (bit % 64));
                        if visited[w] & b != 0 {
                            break;
                        }
                        visited[w] |= b;
                    }
                    match inst {
                        Inst::Lit { off, len } => {
                            if !self.lit_eq(subject, pos, off, len) {
                                break;
                            }
                            pos += len as usize;
                            pc += 1;
                        }
                        Inst::Any => {
                            if pos >= n {
                                break;
                            }
                            pos = (pos + char_len(subject[pos])).min(n);
                            pc += 1;
                        }
                        Inst::Span { class, min1 } => {
                            let start = pos;
                            let mut end = pos;
                            while end < n && !class.excludes(subject[end]) {
                                end += 1;
                            }
                            let min = if min1 {
                                if end == start {
                                    break;
                                }
                                (start + char_len(subject[start])).min(end)
                            } else {
                                start
                            };
                            if end > min {
                                stack.push(Frame::Retry { pc, min, cur: end });
                            }
                            pos = end;
                            pc += 1;
                        }
                        Inst::SkipAll => {
                            pos = n;
                            pc += 1;
                        }
                        Inst::Split { first, second } => {
                            stack.push(Frame::Resume { pc: second, pos });
                            pc = first;
                        }
                        Inst::Jmp(t) => pc = t,
                        Inst::AssertEnd => {
                            if pos != n {
                                break;
                            }
                            pc += 1;
                        }
                        Inst::Save(slot) => {
                            if let Some(c) = caps.get_mut(slot as usize) {
                                stack.push(Frame::Restore { slot, old: *c });
                                *c = pos;
                            }
                            pc += 1;
                        }
                        Inst::Match => return true,
                    }
                }
            }
            false
        }
    }
}

use vm::{Builder, Class, Inst, Program};

/// Builds `path` or `path + "?" + query` without allocating when it fits on the
/// stack, then hands it to `f`.
fn with_subject<R>(path: &str, query: Option<&str>, f: impl FnOnce(&[u8]) -> R) -> R {
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
/// groups: ordered by first appearance, one entry per name, last capture wins.
fn push_groups(names: &[String], subject: &[u8], caps: &[usize], out: &mut Placeholders) {
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

// ---------------------------------------------------------------------------
// Upstream path templates
// ---------------------------------------------------------------------------

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
    original: String,
    catch_all: bool,
    contains_query: bool,
    matcher: Program,
    extractor: Extractor,
    literal_prefix: Vec<String>,
}

#[derive(Clone, Debug)]
struct Extractor {
    /// `/path?{name}`: the single placeholder is always given the empty value.
    catch_all_query: Option<String>,
    program: Program,
    names: Vec<String>,
    contains_query: bool,
    catch_all_path: bool,
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
            original: template.to_string(),
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

    /// The template as configured.
    pub fn template(&self) -> &str {
        &self.original
    }

    /// The `/{everything}` special case: matches every path, priority forced to 0.
    pub fn is_catch_all(&self) -> bool {
        self.catch_all
    }

    /// Whether the template has a query part (it is then matched against
    /// `path + "?" + query`).
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

impl Extractor {
    fn new(template: &str) -> Extractor {
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

    fn extract(&self, path: &str, query: Option<&str>, out: &mut Placeholders) {
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

// ---------------------------------------------------------------------------
// Upstream header templates
// ---------------------------------------------------------------------------

/// `{header:name}` occurrences: (start, end, name), Ocelot's `(\{header:.*?\})`
/// with IgnoreCase.
fn header_placeholders(template: &str) -> Vec<(usize, usize, &str)> {
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

// ---------------------------------------------------------------------------
// Downstream templates
// ---------------------------------------------------------------------------

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
    remove_dot_segments(&out).into_owned()
}

fn is_pct_triplet(bytes: &[u8], i: usize) -> bool {
    bytes.get(i + 1).copied().and_then(hex_val).is_some()
        && bytes.get(i + 2).copied().and_then(hex_val).is_some()
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

// --- .NET query helpers -----------------------------------------------------

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
fn merge_queries(upstream: &str, template_query: &str, placeholders: &Placeholders) -> String {
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
fn remove_used_parameters(upstream: &str, placeholders: &Placeholders) -> String {
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

    fn m(template: &str, path: &str) -> bool {
        UpstreamTemplate::new(template, false).is_match(path, None)
    }

    fn mq(template: &str, path: &str, query: Option<&str>) -> bool {
        UpstreamTemplate::new(template, false).is_match(path, query)
    }

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

    // --- §2.1 consequences, RoutingTests, RegExUrlMatcherTests ---------------

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

    // --- Cross-check against the regex crate running Ocelot's own patterns -----

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[(self.next() % items.len() as u64) as usize]
        }
    }

    fn random_template(rng: &mut Rng) -> String {
        const SEGMENTS: &[&str] = &[
            "api",
            "API",
            "v1",
            "users",
            "{P}",
            "{P}",
            "{P}",
            "x{P}",
            "{P}-{P}",
            "{P}_abcd",
            ".",
            "a.b",
            "",
            ".well-known",
            "v{P}",
            "files",
        ];
        const QUERIES: &[&str] = &[
            "",
            "",
            "",
            "?q={P}",
            "?{P}",
            "?a={P}&b={P}",
            "?a=1",
            "?{P}&{P}",
        ];
        let mut t = String::new();
        let n = rng.next() % 4;
        for _ in 0..=n {
            t.push('/');
            t.push_str(rng.pick::<&str>(SEGMENTS));
        }
        if rng.next().is_multiple_of(4) {
            t.push('/');
        }
        t.push_str(rng.pick::<&str>(QUERIES));
        let mut k = 0;
        while let Some(i) = t.find("{P}") {
            t.replace_range(i..i + 3, &format!("{{p{k}}}"));
            k += 1;
        }
        t
    }

    fn random_request(rng: &mut Rng) -> (String, Option<String>) {
        const SEGMENTS: &[&str] = &[
            "api",
            "Api",
            "v1",
            "V1",
            "users",
            "1",
            "1-2",
            "7_abcd",
            "x9",
            "",
            "a.b",
            "aXb",
            "a",
            "b",
            ".well-known",
            "files",
            "-",
            "a&b",
            "é",
        ];
        const QUERIES: &[Option<&str>] = &[
            None,
            None,
            Some(""),
            Some("q=1"),
            Some("a=1&b=2"),
            Some("b=2&a=1"),
            Some("q="),
            Some("x&y"),
        ];
        let mut p = String::new();
        let n = rng.next() % 5;
        for _ in 0..=n {
            p.push('/');
            p.push_str(rng.pick::<&str>(SEGMENTS));
        }
        (p, rng.pick(QUERIES).map(str::to_string))
    }

    /// A request made from the template itself (placeholders filled in, sometimes
    /// mangled), so that a good share of the cross-checks are near-hits.
    fn derived_request(rng: &mut Rng, template: &str) -> (String, Option<String>) {
        const VALUES: &[&str] = &["1", "", "a/b", "x-y", "7_abcd", "Q", "a&b", "v.1", "é"];
        let mut s = template.to_string();
        while let Some((a, b)) = s.find('{').zip(s.find('}')) {
            if b < a {
                break;
            }
            s.replace_range(a..=b, rng.pick::<&str>(VALUES));
        }
        match rng.next() % 6 {
            0 => s = s.to_uppercase(),
            1 => {
                if s.ends_with('/') {
                    s.pop();
                } else {
                    s.push('/');
                }
            }
            2 => s = s.replacen('/', "//", 1),
            _ => {}
        }
        let (p, q) = match s.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (s, None),
        };
        let p = if p.starts_with('/') {
            p
        } else {
            format!("/{p}")
        };
        (p, q)
    }

    fn request(rng: &mut Rng, template: &str) -> (String, Option<String>) {
        if rng.next().is_multiple_of(2) {
            derived_request(rng, template)
        } else {
            random_request(rng)
        }
    }

    fn dotnet_to_rust(pattern: &str) -> regex::Regex {
        regex::Regex::new(&format!("(?s){pattern}")).unwrap()
    }

    #[test]
    fn matcher_agrees_with_ocelot_regex() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut checked = 0;
        let mut positives = 0;
        for _ in 0..600 {
            let t = random_template(&mut rng);
            for cs in [false, true] {
                let ocelot = ocelot_upstream_regex(&t, cs);
                let re = dotnet_to_rust(&ocelot.pattern);
                let ours = UpstreamTemplate::new(&t, cs);
                assert_eq!(ours.contains_query(), ocelot.contains_query, "{t}");
                for _ in 0..40 {
                    let (path, query) = request(&mut rng, &t);
                    let subject = match (&query, ocelot.contains_query) {
                        (Some(q), true) => format!("{path}?{q}"),
                        _ => path.clone(),
                    };
                    positives += usize::from(re.is_match(&subject));
                    assert_eq!(
                        ours.is_match(&path, query.as_deref()),
                        re.is_match(&subject),
                        "template {t} (cs={cs}) regex {} subject {subject}",
                        ocelot.pattern
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 40_000);
        // Keep the generators honest: plenty of both verdicts.
        assert!(positives > checked / 10 && positives < checked * 9 / 10);
    }

    /// `UrlPathPlaceholderNameAndValueFinder.Find`, spelled out with the regex crate.
    fn reference_extract(template: &str, path: &str, query: Option<&str>) -> Vec<(String, String)> {
        let catch_all_query = regex::Regex::new(r"^[^{}]*\?\{(.*?)\}$").unwrap();
        if let Some(c) = catch_all_query.captures(template) {
            return vec![(format!("{{{}}}", &c[1]), String::new())];
        }
        let mut escaped = String::from("^(?i)");
        let mut names = Vec::new();
        let ranges = placeholder_ranges(template);
        let mut i = 0;
        while i < template.len() {
            if let Some(&(s, e)) = ranges.iter().find(|r| r.0 == i) {
                let last = names.len() + 1 == ranges.len();
                let class = if last { "[^&]*" } else { "[^/|&]*" };
                escaped.push_str(&format!("(?<g{}>{class})", names.len()));
                names.push(template[s..e].to_string());
                i = e;
            } else {
                let c = template[i..].chars().next().unwrap();
                escaped.push_str(&regex::escape(&c.to_string()));
                i += c.len_utf8();
            }
        }
        let re = regex::Regex::new(&escaped).unwrap();
        let query = query.map(|q| format!("?{q}")).unwrap_or_default();
        let tested = if !query.is_empty() && !template.contains('?') {
            path.to_string()
        } else {
            format!("{path}{query}")
        };
        let collect = |caps: regex::Captures<'_>| {
            names
                .iter()
                .enumerate()
                .map(|(k, n)| (n.clone(), caps[format!("g{k}").as_str()].to_string()))
                .collect::<Vec<_>>()
        };
        if let Some(c) = re.captures(&tested) {
            if !names.is_empty() {
                return collect(c);
            }
        }
        let catch_all_path = regex::Regex::new(r"^[^{}]*\{(.*?)\}/?$").unwrap();
        if !catch_all_path.is_match(template) || template.contains('?') {
            return Vec::new();
        }
        re.captures(&format!("{tested}/"))
            .map(collect)
            .unwrap_or_default()
    }

    #[test]
    fn extraction_agrees_with_ocelot_regex() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        for _ in 0..600 {
            let t = random_template(&mut rng);
            let ours = UpstreamTemplate::new(&t, false);
            for _ in 0..30 {
                let (path, query) = request(&mut rng, &t);
                let mut got = Placeholders::new();
                ours.extract(&path, query.as_deref(), &mut got);
                let got: Vec<(String, String)> = got
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect();
                assert_eq!(
                    got,
                    reference_extract(&t, &path, query.as_deref()),
                    "{t} {path} {query:?}"
                );
            }
        }
    }

    #[test]
    fn header_matching_agrees_with_ocelot_regex() {
        const PARTS: &[&str] = &[
            "PL",
            "pl",
            "-",
            ".",
            "v1",
            "{header:a}",
            "{header:b}",
            "x",
            ",",
            "_",
        ];
        const VALUES: &[&str] = &["PL", "pl", "-", "v1", "x", ",", "_", "UK", ".", "é"];
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        for _ in 0..400 {
            let mut t = String::new();
            for _ in 0..=(rng.next() % 4) {
                t.push_str(rng.pick::<&str>(PARTS));
            }
            if t.matches("{header:a}").count() > 1 || t.matches("{header:b}").count() > 1 {
                continue;
            }
            for cs in [false, true] {
                let re = dotnet_to_rust(&ocelot_header_regex(&t, cs));
                let ours = HeaderTemplate::new("h", &t, cs);
                for _ in 0..30 {
                    let mut v = String::new();
                    for _ in 0..(rng.next() % 5) {
                        v.push_str(rng.pick::<&str>(VALUES));
                    }
                    assert_eq!(ours.is_match(&v), re.is_match(&v), "{t} {v}");
                    if let Some(c) = re.captures(&v) {
                        let mut got = Placeholders::new();
                        ours.extract(&v, &mut got);
                        for (name, value) in got.iter() {
                            let key = name.trim_matches(['{', '}']);
                            assert_eq!(value, &c[key], "{t} {v}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn hostile_input_stays_fast() {
        // Many embedded placeholders against a long near-miss: memoisation keeps
        // this polynomial where naive backtracking would explode.
        let t = UpstreamTemplate::new("/a/{p1}-{p2}-{p3}-{p4}-{p5}-{p6}/z", false);
        let path = format!("/a/{}", "-".repeat(3000));
        let start = std::time::Instant::now();
        assert!(!t.is_match(&path, None));
        let mut out = Placeholders::new();
        t.extract(&path, None, &mut out);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn never_panics_on_random_input() {
        const CHARS: &[char] = &[
            '/', '{', '}', '?', '&', '=', '.', 'a', 'B', '%', '|', 'é', '\\', '(', '*', '$', '+',
            ' ',
        ];
        let mut rng = Rng(0xABCD_EF01_2345_6789);
        let random = |rng: &mut Rng, n: u64| -> String {
            (0..rng.next() % n).map(|_| *rng.pick(CHARS)).collect()
        };
        for _ in 0..3000 {
            let t = random(&mut rng, 16);
            let path = random(&mut rng, 16);
            let q = random(&mut rng, 10);
            let up = UpstreamTemplate::new(&t, rng.next().is_multiple_of(2));
            let _ = up.is_match(&path, Some(&q));
            let _ = up.is_match(&path, None);
            let mut out = Placeholders::new();
            up.extract(&path, Some(&q), &mut out);
            let h = HeaderTemplate::new("h", &t, false);
            let _ = h.is_match(&path);
            h.extract(&path, &mut out);
            let d = DownstreamTemplate::parse(&t);
            let r = d.render(&out, &path, Some(&q));
            assert!(r.path.starts_with('/'));
            let _ = ocelot_upstream_regex(&t, false);
            let _ = path_template_literal_metachars(&t);
            let _ = header_template_literal_metachars(&t);
        }
    }
}
