#!/usr/bin/env python3
"""Prints the `crate::` module dependency graph of one crate and fails if it has a cycle.

    python3 .ci/module_graph.py agent/src            # top-level modules (`docker`, `tailer`, ...)
    python3 .ci/module_graph.py agent/src --depth 2  # one level deeper (`tailer::read`, ...)

A module depends on another when its non-test code names it through `crate::…` (in a `use` or
inline), `super::…` or `self::…`. Comments and doc links do not count; test code does not count
(files named `tests.rs` or under a `tests/` folder, and the rest of a file from a column-0
`#[cfg(test)]` followed by `mod`). A name re-exported at the crate root (`crate::AgentConfig`) is
resolved through lib.rs's `pub use`. References from a module to its own parts are not edges.
Exit status 1 when the graph has a cycle; each cycle's modules are listed.
"""

import re
import sys
from pathlib import Path


def module_path(root: Path, file: Path) -> tuple:
    rel = file.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts.pop()
    return tuple(parts)


def is_test_file(root: Path, file: Path) -> bool:
    rel = file.relative_to(root)
    return rel.name == "tests.rs" or "tests" in rel.parts[:-1]


def code_lines(text: str):
    """The non-test, non-comment lines of a file."""
    lines = text.splitlines()
    out = []
    in_block_comment = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#[cfg(test)]") and i + 1 < len(lines) and re.match(
            r"(pub(\(\w+\))? )?mod \w+", lines[i + 1]
        ):
            if lines[i + 1].rstrip().endswith("{"):
                break  # the test module runs to the end of the file (the convention here)
            i += 2
            continue
        stripped = line.strip()
        if in_block_comment:
            if "*/" in stripped:
                in_block_comment = False
            i += 1
            continue
        if stripped.startswith("/*"):
            in_block_comment = "*/" not in stripped
            i += 1
            continue
        if stripped.startswith("//"):
            i += 1
            continue
        # A trailing comment: cut at `//` outside a string literal (good enough for paths).
        cut, quoted = len(line), False
        for j, ch in enumerate(line):
            if ch == '"' and (j == 0 or line[j - 1] != "\\"):
                quoted = not quoted
            elif not quoted and line.startswith("//", j):
                cut = j
                break
        out.append(line[:cut])
        i += 1
    return out


def strip_strings(code: str) -> str:
    return re.sub(r'"(\\.|[^"\\])*"', '""', code)


def expand_use_groups(code: str) -> list:
    """`use crate::{a::X, b::{Y, Z}}` -> ['crate::a::X', 'crate::b::Y', 'crate::b::Z']."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", code, re.S):
        paths.extend(expand(re.sub(r"\s+", "", m.group(1))))
    return paths


def expand(tree: str) -> list:
    i = tree.find("{")
    if i < 0:
        return [tree]
    prefix, inner = tree[:i], tree[i + 1 : tree.rfind("}")]
    items, depth, start = [], 0, 0
    for j, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(inner[start:j])
            start = j + 1
    items.append(inner[start:])
    out = []
    for item in items:
        if item:
            out.extend(prefix + p for p in expand(item))
    return out


def main() -> int:
    args = sys.argv[1:]
    depth = 1
    if "--depth" in args:
        k = args.index("--depth")
        depth = int(args[k + 1])
        del args[k : k + 2]
    root = Path(args[0] if args else "agent/src")
    files = sorted(p for p in root.rglob("*.rs") if not is_test_file(root, p))
    modules = {module_path(root, f) for f in files}

    # Root re-exports: `pub use config::{AgentConfig, …};` -> AgentConfig => ('config',)
    reexports = {}
    lib = root / "lib.rs"
    if lib.exists():
        lib_code = strip_strings("\n".join(code_lines(lib.read_text())))
        for m in re.finditer(r"\bpub\s+use\s+([^;]+);", lib_code, re.S):
            for p in expand(re.sub(r"\s+", "", m.group(1))):
                segs = p.split("::")
                if (segs[0],) in modules:
                    reexports[segs[-1]] = (segs[0],)

    def resolve(segs: list) -> tuple:
        """The longest known module prefix of an absolute path, cut to `depth`."""
        if segs and (segs[0],) not in modules and segs[0] in reexports:
            segs = list(reexports[segs[0]])
        best = ()
        for n in range(1, len(segs) + 1):
            if tuple(segs[:n]) in modules:
                best = tuple(segs[:n])
        return best[:depth]

    edges = {}
    for f in files:
        me = module_path(root, f)
        is_mod_file = f.stem in ("mod", "lib", "main")
        here = me if is_mod_file else me[:-1]  # what `self::`/`super::` are relative to
        code = strip_strings("\n".join(code_lines(f.read_text())))
        paths = expand_use_groups(code)
        # Inline paths outside `use` statements.
        no_use = re.sub(r"\buse\s+[^;]+;", "", code, flags=re.S)
        paths += re.findall(r"\b(?:crate|super|self)(?:::\w+)+", no_use)
        for p in paths:
            segs = p.split("::")
            if segs[0] == "crate":
                target = resolve(segs[1:])
            elif segs[0] == "super":
                base = list(me[:-1])
                segs = segs[1:]
                while segs and segs[0] == "super":
                    base, segs = base[:-1], segs[1:]
                target = resolve(base + segs)
            elif segs[0] == "self":
                target = resolve(list(here) + segs[1:])
            else:
                continue
            src = me[:depth]
            if not target or not src or target == src:
                continue
            if src[: len(target)] == target or target[: len(src)] == src:
                continue  # a module and its own parts
            edges.setdefault(src, {}).setdefault(target, set()).add(p)

    nodes = sorted({m[:depth] for m in modules if m} )
    name = lambda m: "::".join(m)
    for n in nodes:
        outs = edges.get(n, {})
        line = ", ".join(name(t) for t in sorted(outs))
        print(f"{name(n)} -> {line}" if line else f"{name(n)} -> (nothing)")

    # Tarjan's strongly connected components: a component of more than one module is a cycle.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
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
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for n in nodes:
        if n not in index:
            visit(n)
    cycles = [sorted(c) for c in sccs if len(c) > 1]
    if cycles:
        for c in cycles:
            print("CYCLE: " + " <-> ".join(name(m) for m in c))
            for a in c:
                for b in sorted(edges.get(a, {})):
                    if b in c:
                        items = ", ".join(sorted(edges[a][b]))
                        print(f"    {name(a)} -> {name(b)}: {items}")
        return 1
    print(f"acyclic: {len(nodes)} modules, {sum(len(v) for v in edges.values())} edges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
