#!/usr/bin/env python3
"""The guides, run as written: every marked block of a Markdown guide, in order, from the repository's root.

Usage: python3 tests/doc-test.py [--print] DOC.md [DOC.md ...]

Blocks are marked in their fence's info string, which Markdown renderers ignore after the language:

  ```bash doctest                       run it (all blocks of one guide share one bash: variables carry over)
  ```bash doctest background wait="W"   start it in the background and go on once its output shows W (at most
                                        20 minutes; it is stopped, with its process group, when the guide ends)
  ```bash doctest if=wasm32             run it only where rustup has the wasm32-unknown-unknown target
  ```rust file=PATH                     write the block to PATH (relative to the root) before what follows

Everything a guide writes (its `file=` blocks, and whatever it changes in Cargo.lock or plugins/wasm/Cargo.toml
and Cargo.lock) is removed or restored when the guide ends, passed or failed. The run stops at the first block
that fails (bash -e), naming the guide and line. --print prints the generated script instead of running it.
"""

import os
import re
import shlex
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^(```+)(.*)$")
RESTORED = ["Cargo.lock", "plugins/wasm/Cargo.toml", "plugins/wasm/Cargo.lock"]


def blocks(path):
    """(line number, info words, body) of every fenced block of the file."""
    out, lines = [], open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start, body = m.group(1), m.group(2), i + 1, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != fence:
            body.append(lines[i])
            i += 1
        out.append((start, shlex.split(info), "\n".join(body) + "\n"))
        i += 1
    return out


def script(doc, work):
    """The bash script that runs the marked blocks of `doc`, its state in directory `work`."""
    q = shlex.quote
    s = [
        "set -euo pipefail",
        f"cd {q(REPO)}",
        "created=(); bg=()",
        "cleanup() {",
        "  local code=$? p",
        f"  cd {q(REPO)}",
        "  for p in \"${bg[@]}\"; do kill -TERM -- \"-$p\" 2>/dev/null || true; done",
        # Every process of the background block's group, not only its leader, must be gone before the next
        # step (the chaos test refuses to start beside a cluster still stopping); SIGKILL after 30 s.
        "  local n",
        "  for p in \"${bg[@]}\"; do n=0; while kill -0 -- \"-$p\" 2>/dev/null; do",
        "    ((++n == 150)) && kill -KILL -- \"-$p\" 2>/dev/null; sleep 0.2; done; done",
        "  for p in \"${created[@]}\"; do rm -rf -- \"$p\"; done",
        "  for p in $(snapshot | comm -13 \"$before\" -); do rm -rf -- \"$p\"; done",
    ]
    for i, f in enumerate(RESTORED):
        s.append(f"  if [[ -f {q(work)}/keep{i} ]]; then cp {q(work)}/keep{i} {q(f)}; else rm -f {q(f)}; fi")
    s += ["  exit $code", "}"]
    # What a guide's commands leave beside the sources (libraries, generated bindings) goes too.
    s += [
        "snapshot() { find . plugins plugins/wasm -mindepth 1 -maxdepth 1 ! -name target ! -name .allot | sort; }",
        f"before={q(work)}/before; snapshot >\"$before\"",
        "trap cleanup EXIT",
        "trap 'exit 130' INT TERM",
    ]
    for i, f in enumerate(RESTORED):
        s.append(f"[[ -f {q(f)} ]] && cp {q(f)} {q(work)}/keep{i}")
    s += [
        "new_path() { # records the topmost part of $1 that does not exist yet, for the cleanup",
        "  local p=$1 top=''",
        "  while [[ -n $p && $p != . && ! -e $p ]]; do top=$p; p=$(dirname \"$p\"); done",
        "  [[ -n $top ]] && created+=(\"$top\")",
        "  return 0",
        "}",
        "wait_for() { # log, text, pid",
        "  for _ in $(seq 6000); do",
        "    grep -qF -- \"$2\" \"$1\" && return 0",
        "    kill -0 \"$3\" 2>/dev/null || { echo \"the background block ended before printing: $2\" >&2; tail -n 30 \"$1\" >&2; return 1; }",
        "    sleep 0.2",
        "  done",
        "  echo \"timed out waiting for: $2\" >&2; return 1",
        "}",
    ]
    n = 0
    for line, info, body in blocks(doc):
        where = f"{os.path.relpath(doc, REPO)}:{line}"
        files = [w[5:] for w in info if w.startswith("file=")]
        if files:
            path = files[0]
            s += [
                f"new_path {q(path)}",
                f"mkdir -p \"$(dirname {q(path)})\"",
                f"cat > {q(path)} <<'ALLOT_DOC_TEST_EOF'",
                body.rstrip("\n"),
                "ALLOT_DOC_TEST_EOF",
                f"echo '== {where}: wrote {path}'",
            ]
            continue
        if "doctest" not in info:
            continue
        n += 1
        body_file = os.path.join(work, f"block{n}.sh")
        with open(body_file, "w", encoding="utf-8") as f:
            f.write(body)
        guard = ""
        if "if=wasm32" in info:
            guard = "rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown && "
            s.append(f"{guard}true || echo '== {where}: skipped (no wasm32-unknown-unknown target)'")
        waits = [w[5:] for w in info if w.startswith("wait=")]
        s.append(f"{guard}echo '== {where}'")
        s.append(f"{guard}sed 's/^/   $ /' {q(body_file)}")
        if "background" in info:
            log = os.path.join(work, f"block{n}.log")
            s += [
                f"setsid bash -euo pipefail {q(body_file)} >{q(log)} 2>&1 &",
                "bg+=($!)",
                f"echo '   (in the background; output in {log})'",
            ]
            if waits:
                s.append(f"wait_for {q(log)} {q(waits[0])} \"${{bg[-1]}}\"")
        else:
            # Sourced, so that what a block exports or defines reaches the next one.
            s.append(f"{guard}source {q(body_file)}")
    s.append("echo '== all blocks passed'")
    return "\n".join(s) + "\n"


def main(argv):
    printing = "--print" in argv
    docs = [a for a in argv if a != "--print"]
    if not docs:
        print(__doc__.strip(), file=sys.stderr)
        return 64
    for doc in docs:
        doc = os.path.abspath(doc)
        with tempfile.TemporaryDirectory(prefix="allot-doc-test-") as work:
            text = script(doc, work)
            if printing:
                print(text)
                continue
            print(f"==> {os.path.relpath(doc, REPO)}", flush=True)
            code = subprocess.call(["bash", "-c", text])
            if code != 0:
                print(f"==> {os.path.relpath(doc, REPO)}: a block failed (exit {code})", file=sys.stderr)
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
