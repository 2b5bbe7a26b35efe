#!/usr/bin/env python3
"""Import cycles among a Rust crate's top-level modules.

    scripts/module-cycles.py SRC_DIR [SRC_DIR ...]

For each crate source folder (e.g. gateway/src), every .rs file belongs to a
top-level module: src/foo.rs, src/foo/mod.rs and src/foo/** are module `foo`
(the crate roots lib.rs and main.rs belong to none). A path `crate::bar...`
in module foo's code, `use crate::{bar, baz::X}` groups and `super::` paths
that climb out of foo included, is an edge foo -> bar when src/bar.rs or
src/bar/ exists. Comments, string and character literals, `#[cfg(test)]`
items (a test module inline or in its own file) are not code for this check.

Prints each cycle (a strongly connected group of two or more modules) with
the edges inside it and where each one is first named, then a summary line
per folder. Exit status: 0 without cycles, 1 with a cycle, 2 on bad usage.
"""
import os
import re
import sys

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RAW_STRING = re.compile(r'b?r(#*)"')
CHAR_LITERAL = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F_]+\}|.)|[^\\'\n])'")


def code_only(text):
    """The text with comments and string/char literals blanked out (newlines
    kept, so that offsets and line numbers stay valid)."""
    out = list(text)
    n = len(text)
    i = 0

    def blank(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif (m := RAW_STRING.match(text, i)) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, m.end())
            j = n if j < 0 else j + len(end)
            blank(i, j)
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            blank(i, j + 1)
            i = j + 1
        elif c == "'":
            m = CHAR_LITERAL.match(text, i)
            if m:
                blank(i, m.end())
                i = m.end()
            else:  # a lifetime or label
                i += 1
        else:
            i += 1
    return "".join(out)


def matching_brace(text, open_at):
    depth = 0
    for k in range(open_at, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    return len(text) - 1


# `#[cfg(test)]` and `#[cfg(all(..., test, ...))]`.
CFG_TEST = re.compile(r"#\s*\[\s*cfg\s*\(\s*(?:test|all\s*\((?:[^\]]*[(,\s])?test\s*[,)][^\]]*\))\s*\)\s*\]")
ATTR = re.compile(r"\s*#\s*\[[^\]]*\]")
MOD_DECL = re.compile(r"\s*(?:pub(?:\s*\([^)]*\))?\s+)?mod\s+(" + IDENT.pattern + r")\s*;")


def strip_cfg_test(code):
    """Blanks `#[cfg(test)]` items; returns the code and the names of test
    modules declared in files of their own (`#[cfg(test)] mod tests;`)."""
    test_files = set()
    out = list(code)
    pos = 0
    while m := CFG_TEST.search(code, pos):
        start, k = m.start(), m.end()
        while a := ATTR.match(code, k):  # further attributes of the same item
            k = a.end()
        decl = MOD_DECL.match(code, k)
        brace, semi = code.find("{", k), code.find(";", k)
        if decl:
            test_files.add(decl.group(1))
            end = decl.end()
        elif brace >= 0 and (semi < 0 or brace < semi):
            end = matching_brace(code, brace) + 1
        elif semi >= 0:
            end = semi + 1
        else:
            end = len(code)
        for j in range(start, end):
            if out[j] != "\n":
                out[j] = " "
        pos = end
    return "".join(out), test_files


def use_group_heads(code, open_at):
    """First path segments of the items of the `{...}` use group at open_at."""
    close = matching_brace(code, open_at)
    heads, depth, item = [], 0, ""
    for ch in code[open_at + 1:close] + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            if m := IDENT.match(item.strip()):
                heads.append(m.group(0))
            item = ""
        else:
            item += ch
    return heads


PATH = re.compile(r"(?<![A-Za-z0-9_$])(?:\$?crate|(?:super\s*::\s*)+super|super)\s*::\s*")


def module_path(rel):
    """src-relative file path -> its module path, e.g. auth/jwt.rs -> [auth, jwt]."""
    parts = os.path.normpath(rel[:-3]).split(os.sep)
    if parts[-1] == "mod" and len(parts) > 1:
        parts = parts[:-1]
    return parts


def edges_of_file(path, rel):
    """[(top-level module named, line)] and the test modules declared in files
    of their own, for one file at src-relative path rel."""
    text = open(path, encoding="utf-8", errors="replace").read()
    code, test_files = strip_cfg_test(code_only(text))
    here = module_path(rel)
    # Inline `mod name { ... }` blocks change what `super` means inside them.
    spans = []
    for m in re.finditer(r"\bmod\s+(" + IDENT.pattern + r")\s*\{", code):
        open_at = m.end() - 1
        spans.append((open_at, matching_brace(code, open_at), m.group(1)))
    spans.sort()

    found = []
    for m in PATH.finditer(code):
        line = code.count("\n", 0, m.start()) + 1
        if "crate" in m.group(0):
            base = []
        else:
            ups = m.group(0).count("super")
            mod = here + [name for a, b, name in spans if a < m.start() < b]
            if ups > len(mod):
                continue
            base = mod[: len(mod) - ups]
        rest = m.end()
        if code.startswith("{", rest):
            names = use_group_heads(code, rest)
        else:
            names = [n.group(0)] if (n := IDENT.match(code, rest)) else []
        for name in names:
            full = base if name in ("self", "super", "crate") else base + [name]
            if full:
                found.append((full[0], line))
    return found, test_files


def crate_graph(src):
    """{top-level module: {module it names: "file:line" of the first mention}}."""
    src = os.path.abspath(src)
    files = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        files += [os.path.relpath(os.path.join(root, f), src) for f in sorted(names) if f.endswith(".rs")]
    parsed = {rel: edges_of_file(os.path.join(src, rel), rel) for rel in files}

    # Test modules in files of their own (foo/tests.rs, foo/tests/mod.rs and
    # everything under foo/tests/) are not code for this check.
    test_paths = set()
    for rel, (_, test_files) in parsed.items():
        if os.path.basename(rel) in ("mod.rs", "lib.rs", "main.rs"):
            base_dir = os.path.dirname(rel)
        else:
            base_dir = rel[:-3]
        for t in test_files:
            test_paths.add(os.path.normpath(os.path.join(base_dir, t)))

    def is_test(rel):
        parts = module_path(rel)
        return any(os.path.join(*parts[:k]) in test_paths for k in range(1, len(parts) + 1))

    modules = {module_path(rel)[0] for rel in files} - {"lib", "main"}
    graph = {m: {} for m in modules}
    for rel in files:
        top = module_path(rel)[0]
        if top not in modules or is_test(rel):
            continue
        for target, line in parsed[rel][0]:
            if target != top and target in modules:
                graph[top].setdefault(target, f"{os.path.join(os.path.relpath(src), rel)}:{line}")
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def main(argv):
    if len(argv) < 2 or any(a.startswith("-") for a in argv[1:]):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    status = 0
    for src in argv[1:]:
        if not os.path.isdir(src):
            print(f"module-cycles: {src}: not a folder", file=sys.stderr)
            return 2
        graph = crate_graph(src)
        found = cycles(graph)
        for comp in found:
            print(f"{src}: cycle: {', '.join(comp)}")
            for a in comp:
                for b in sorted(graph[a]):
                    if b in comp:
                        print(f"  {a} -> {b}  ({graph[a][b]})")
        n = sum(len(c) for c in found)
        print(f"{src}: {len(graph)} top-level modules, {len(found)} cycles ({n} modules in them)")
        if found:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
