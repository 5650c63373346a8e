#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a circle.

For every crate of the workspace (a folder with Cargo.toml and src/), each .rs file under src/ is a module
(`src/a.rs` and `src/a/mod.rs` are `a`, `src/a/b.rs` is `a::b`). A module depends on another when its code
(comments and `#[cfg(test)]` parts left out) names `crate::a::...`, `use crate::{a, ...}` or, in a nested
module, `super::x`. The crate root (lib.rs, main.rs) is the crate's facade and is left out. Prints every
circle found, one per line, and exits 1 if there is any.

Usage: python3 .ci/module-cycles.py [REPO]
"""

import pathlib
import re
import sys


def strip(text: str) -> str:
    """The code of a file without comments, string contents and `#[cfg(test)]` items that end the file."""
    # One pass, so that whichever starts first wins: a string holding `/*` or `//`, a comment holding a quote.
    token = re.compile(r"""'(?:\\.|[^'\\\n])'|"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/""", re.S)
    text = token.sub(lambda m: '""' if m.group(0)[0] == '"' else ("' '" if m.group(0)[0] == "'" else ""), text)
    cut = text.find("#[cfg(test)]")
    return text if cut < 0 else text[:cut]


def module_name(src: pathlib.Path, path: pathlib.Path) -> str | None:
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"]) or (parts and parts[0] == "bin"):
        return None
    return "::".join(parts)


def references(code: str, me: str, modules: set[str]) -> set[str]:
    """The modules of `modules` that `code` (of module `me`) names."""
    paths: set[str] = set()
    for m in re.finditer(r"\bcrate::((?:[A-Za-z_][A-Za-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)", code):
        paths.add(m.group(1))
    # use crate::{a, b::c, ...}
    for m in re.finditer(r"\bcrate::\{([^}]*)\}", code):
        for item in m.group(1).split(","):
            item = item.strip().split(" as ")[0]
            if item:
                paths.add(item.replace(" ", ""))
    parent = me.rsplit("::", 1)[0] if "::" in me else ""
    for m in re.finditer(r"\bsuper::((?:[A-Za-z_][A-Za-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)", code):
        paths.add(f"{parent}::{m.group(1)}" if parent else m.group(1))
    found = set()
    for p in paths:
        parts = p.split("::")
        for n in range(len(parts), 0, -1):
            cand = "::".join(parts[:n])
            if cand in modules:
                if cand != me and not me.startswith(cand + "::"):
                    found.add(cand)
                break
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    repo = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    bad = 0
    for manifest in sorted(repo.glob("**/Cargo.toml")):
        if "target" in manifest.parts or any(p.startswith(".") for p in manifest.relative_to(repo).parts):
            continue
        src = manifest.parent / "src"
        if not src.is_dir():
            continue
        files = {}
        for f in src.rglob("*.rs"):
            name = module_name(src, f)
            if name is not None:
                files[name] = f
        modules = set(files)
        graph = {m: references(strip(f.read_text()), m, modules) for m, f in files.items()}
        for comp in cycles(graph):
            bad += 1
            crate = manifest.parent.relative_to(repo)
            edges = ", ".join(f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp)
            print(f"{crate}: modules import each other in a circle: {edges}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
