#!/usr/bin/env python3
"""Fails when the top-level modules of `src/` import each other in a circle.

Every `src/**/*.rs` file belongs to one top-level module: `src/x.rs` and `src/x/**` are `x`,
`src/lib.rs` and `src/main.rs` are the crate root (`crate`). An edge `x -> y` is any `crate::y`
path in `x` (in `use` lines and in expressions, grouped `use crate::{a, b::c}` included; comments
and string literals are skipped). In the crate root, bare `y::` paths to a declared module count
too. `crate::Item` for an item defined in lib.rs is an edge to `crate`.

On success prints the layer order (one line, top first; modules on one layer are separated by
commas). On a cycle prints each strongly connected group with one concrete circle and the file:line
of every edge in it, and exits 1.

    scripts/check-layers.py [--src DIR] [--allow-cycles]
    scripts/check-layers.py --self-test

`--allow-cycles` reports cycles but exits 0: for local runs while a refactor is in flight, never
in scripts/test.sh. `--self-test` runs the check over a generated fixture with a cycle and one
without, and fails unless the first fails and the second passes.
"""

import os
import re
import sys
import tempfile

ROOT = "crate"
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def strip(text):
    """Blanks comments, string and char literals, keeping newlines so line numbers hold."""
    out = []
    i, n = 0, len(text)

    def blank(s):
        return "".join(c if c == "\n" else " " for c in s)

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(text[i:j]))
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
            out.append(blank(text[i:j]))
            i = j
        elif (m := re.compile(r'b?r(#*)"').match(text, i)) and (
            i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            end = '"' + m.group(1)
            j = text.find(end, m.end())
            j = n if j < 0 else j + len(end)
            out.append(blank(text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(blank(text[i : j + 1]))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}', '"'); otherwise a lifetime or label.
            m = re.compile(r"'(\\u\{[0-9A-Fa-f]+\}|\\.|[^\\'])'").match(text, i)
            if m:
                out.append(blank(m.group(0)))
                i = m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def group_heads(text, start):
    """The first path segment of each item in the `{...}` group opening at text[start]."""
    depth, j, item_start, heads = 0, start, start + 1, []
    while j < len(text):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                heads.append(text[item_start:j])
                break
        elif text[j] == "," and depth == 1:
            heads.append(text[item_start:j])
            item_start = j + 1
        j += 1
    names = []
    for item in heads:
        m = IDENT.search(item)
        if m:
            names.append(m.group(0))
    return names


def module_of(rel):
    """Top-level module of a path relative to src/ (`x.rs`, `x/...` -> x; lib.rs/main.rs -> crate)."""
    parts = rel.replace(os.sep, "/").split("/")
    if len(parts) == 1:
        name = parts[0][:-3]
        return ROOT if name in ("lib", "main") else name
    return parts[0]


def graph(src):
    """Nodes and edges {(from, to): [file:line, ...]} of the top-level modules under src."""
    files = []
    for dirpath, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(dirpath, name)
                files.append((os.path.relpath(path, src), path))
    files.sort()
    modules = {module_of(rel) for rel, _ in files}
    edges = {}
    path_re = re.compile(r"(?<![A-Za-z0-9_$])crate\s*::\s*")
    for rel, path in files:
        with open(path, encoding="utf-8") as f:
            text = strip(f.read())
        here = module_of(rel)
        targets = []
        for m in path_re.finditer(text):
            j = m.end()
            if j < len(text) and text[j] == "{":
                names = group_heads(text, j)
            else:
                ident = IDENT.match(text, j)
                names = [ident.group(0)] if ident else []
            targets += [(name, m.start()) for name in names]
        if here == ROOT:
            bare = re.compile(r"(?<![A-Za-z0-9_$:])([a-z_][a-z0-9_]*)\s*::")
            targets += [(m.group(1), m.start()) for m in bare.finditer(text) if m.group(1) in modules]
        for name, pos in targets:
            to = name if name in modules else ROOT
            if name == "self":
                to = ROOT
            if to == here:
                continue
            line = text.count("\n", 0, pos) + 1
            edges.setdefault((here, to), []).append(f"src/{rel}:{line}")
    return modules, edges


def components(nodes, adj):
    """Strongly connected components (Tarjan), each as a sorted list."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(adj.get(v, ())):
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
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def shortest_cycle(start, members, adj):
    """A shortest circle start -> ... -> start inside one component (BFS)."""
    prev, queue = {start: None}, [start]
    for v in queue:
        for w in sorted(adj.get(v, ())):
            if w not in members:
                continue
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return path[::-1] + [start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return None


def layers(nodes, adj):
    """Layers, top first: a module's depth is the longest import chain below it."""
    depth = {}

    def d(v):
        if v not in depth:
            depth[v] = 0
            depth[v] = max((d(w) + 1 for w in adj.get(v, ())), default=0)
        return depth[v]

    for v in nodes:
        d(v)
    out = []
    for level in sorted(set(depth.values()), reverse=True):
        out.append(", ".join(sorted(v for v in nodes if depth[v] == level)))
    return out


def check(src, allow_cycles=False, quiet=False):
    """Prints the verdict for src; returns (exit code, list of cyclic components)."""
    say = (lambda *a, **k: None) if quiet else print
    modules, edges = graph(src)
    nodes = modules | {n for e in edges for n in e}
    adj = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
    cyclic = [c for c in components(nodes, adj) if len(c) > 1]
    if not cyclic:
        say("layers: " + " > ".join(layers(nodes, adj)))
        return 0, []
    say(f"module cycles in {os.path.relpath(src)}: {len(cyclic)} group(s)", file=sys.stderr)
    for comp in cyclic:
        members = set(comp)
        say(f"  group: {', '.join(comp)}", file=sys.stderr)
        seen = set()
        for start in comp:
            cyc = shortest_cycle(start, members, adj)
            if not cyc:
                continue
            key = frozenset(zip(cyc, cyc[1:]))
            if key in seen:
                continue
            seen.add(key)
            say(f"    cycle: {' -> '.join(cyc)}", file=sys.stderr)
            for a, b in zip(cyc, cyc[1:]):
                where = edges[(a, b)]
                more = f" (+{len(where) - 1} more)" if len(where) > 1 else ""
                say(f"      {a} -> {b}: {where[0]}{more}", file=sys.stderr)
    if allow_cycles:
        say("(--allow-cycles: not failing)", file=sys.stderr)
        return 0, cyclic
    return 1, cyclic


FIXTURE_CYCLIC = {
    "lib.rs": "pub mod a;\npub mod b;\npub mod c;\npub mod d;\npub struct Root;\n",
    "a.rs": "use crate::b::Thing;\n// crate::d is only mentioned in a comment\n",
    "b/mod.rs": 'pub mod inner;\nconst S: &str = "crate::d";\nconst R: &str = r#"crate::d"#;\n',
    "b/inner.rs": "use crate::{c::{self, X}, d};\nfn f() -> char { '\"' }\n",
    "c.rs": "fn g() { let _ = crate::a::h(); }\n",
    "d.rs": "/* crate::a */ pub struct D;\n",
}
FIXTURE_ACYCLIC = {
    "lib.rs": "pub mod a;\npub mod b;\npub mod c;\nuse crate::a::run;\n",
    "main.rs": "use fixture::a::run;\n",
    "a.rs": "use crate::{b, c::Leaf};\nfn f(x: &'static str) -> &str { x }\n",
    "b.rs": "fn g() -> crate::c::Leaf { crate::c::Leaf }\n",
    "c.rs": "pub struct Leaf;\n/// See [`crate::a`].\n",
}


def self_test():
    """Proves the check fails on a cycle and passes without one."""
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, files in (("cyclic", FIXTURE_CYCLIC), ("acyclic", FIXTURE_ACYCLIC)):
            for rel, body in files.items():
                path = os.path.join(tmp, name, "src", rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(body)
        code, cyclic = check(os.path.join(tmp, "cyclic", "src"), quiet=True)
        if code != 1 or cyclic != [["a", "b", "c"]]:
            failures.append(f"cyclic fixture: exit {code}, groups {cyclic} (want 1, [['a', 'b', 'c']])")
        code, _ = check(os.path.join(tmp, "cyclic", "src"), allow_cycles=True, quiet=True)
        if code != 0:
            failures.append(f"cyclic fixture with --allow-cycles: exit {code} (want 0)")
        _, edges = graph(os.path.join(tmp, "cyclic", "src"))
        if ("b", "d") not in edges or ("a", "d") in edges or ("d", "a") in edges:
            failures.append(f"cyclic fixture edges wrong: {sorted(edges)}")
        src = os.path.join(tmp, "acyclic", "src")
        code, cyclic = check(src, quiet=True)
        modules, edges = graph(src)
        adj = {}
        for a, b in edges:
            adj.setdefault(a, set()).add(b)
        order = layers(modules, adj)
        if code != 0 or order != ["crate", "a", "b", "c"]:
            failures.append(f"acyclic fixture: exit {code}, layers {order} (want 0, crate > a > b > c)")
    for f in failures:
        print("self-test FAILED: " + f, file=sys.stderr)
    if not failures:
        print("self-test: a cycle fails, no cycle passes")
    return 1 if failures else 0


def main(argv):
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    allow = False
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--self-test":
            return self_test()
        if a == "--allow-cycles":
            allow = True
        elif a == "--src" and args:
            src = args.pop(0)
        else:
            print(__doc__, file=sys.stderr)
            return 2
    return check(os.path.normpath(src), allow_cycles=allow)[0]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
