//! A tiny backtracking VM whose instruction set is exactly what Ocelot's
//! generated regexes need: literals, `.`, `[^/]+`, `.*`, `[^/|&]*`, `[^&]*`,
//! `.+`, alternation and `$`. Failed `(instruction, position)` states are
//! memoised, so matching stays polynomial whatever the request.
//!
//! Why not `fancy-regex` (or `regex`) over the strings in `dotnet_regex.rs`:
//! checked against fancy-regex 0.14, it changes verdicts this crate keeps.
//! Template characters .NET reads as syntax are matched literally here
//! (`/a+(b)/{x}` matches `/a+(b)/1`; the regex does not, and `/a(` does not
//! even compile, where the VM must give a total answer for any template), and
//! `(?i)` folds ASCII only here (`/é/{x}` does not match `/É/1`; the regex
//! folds Unicode). Escaping the templates ourselves would mean generating
//! patterns Ocelot never builds, so the strings stay for diagnostics and
//! the cross-checks in `cross_check.rs`, and matching stays on this VM.

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

#[cfg(test)]
mod tests {
    use crate::template::Placeholders;
    use crate::template::UpstreamTemplate;

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
}
