#!/usr/bin/env bash
# Builds Allot's WASM policies (components of plugins/wit/<version>, world `policy`) into target/wasm/:
#   fairshare-c.wasm             a policy written in C against allot:policy@0.3.0 (it preempts), built with
#                                Debian's clang
#   fairshare-c-0.2.0.wasm, fairshare-c-0.1.0.wasm   the C policy as it was written against the frozen
#                                allot:policy@0.2.0 and 0.1.0 (c/v0.2.0/, c/v0.1.0/): hosts must keep loading them
#   fault-{trap,loop,oom,garbage,error,overcommit,columns,revocation}.wasm   C fixtures that misbehave, for the
#                                containment tests
#   wrong-version.wasm           fairshare-c built against allot:policy@0.9.0, which hosts must refuse
#   drf.wasm, priority.wasm      the built-in Rust policies (allocators/drf), when the Rust target
#                                wasm32-unknown-unknown is installed or `rustup target add` can fetch it
# Installs clang, lld and wasi-libc when missing (Debian packages). Needs no wasm-tools/wit-bindgen CLI: the
# two component-model steps run through plugins/wasm/tool (allot-wasm-tool).
#
# Usage: bash plugins/wasm/build.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$repo/deploy/local/ensure-deps.sh"
allot_ensure_wasm_deps
out="$repo/target/wasm"
build="$repo/target/wasm-build"
mkdir -p "$out"
cd "$repo/plugins/wasm"

echo "==> allot-wasm-tool"
cargo build -q --target-dir "$build" -p allot-wasm-tool
tool="$build/debug/allot-wasm-tool"

echo "==> C bindings of plugins/wit/0.3.0 and the frozen 0.2.0 and 0.1.0"
gen="$build/c-bindings"
"$tool" c-bindings "$repo/plugins/wit/0.3.0" "$gen" >/dev/null
for v in 0.2.0 0.1.0; do
  "$tool" c-bindings "$repo/plugins/wit/$v" "$build/c-bindings-$v" >/dev/null
done

c_policy() { # NAME SOURCE [CFLAGS...]
  local name=$1 src=$2
  shift 2
  clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Werror -I "$gen" "$@" \
    -o "$build/$name.core.wasm" "$src" "$gen/policy.c" "$gen/policy_component_type.o"
  "$tool" component "$build/$name.core.wasm" "$out/$name.wasm" >/dev/null
  echo "    $out/$name.wasm"
}
echo "==> C policies (clang --target=wasm32-wasi)"
c_policy fairshare-c c/fairshare.c
for fault in trap loop oom garbage error overcommit columns revocation; do
  c_policy "fault-$fault" c/fault.c "-DFAULT_$(echo "$fault" | tr a-z A-Z)"
done
for v in 0.2.0 0.1.0; do
  gen="$build/c-bindings-$v" c_policy "fairshare-c-$v" "c/v$v/fairshare.c"
done

# The same C policy against the WIT package at another version: hosts must refuse it.
other="$build/wit-0.9.0"
mkdir -p "$other"
sed 's/^package allot:policy@0.3.0;/package allot:policy@0.9.0;/' "$repo/plugins/wit/0.3.0/policy.wit" >"$other/policy.wit"
"$tool" c-bindings "$other" "$build/c-bindings-0.9.0" >/dev/null
gen="$build/c-bindings-0.9.0" c_policy wrong-version c/fairshare.c

echo "==> Rust policies (wasm32-unknown-unknown)"
if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown ||
  rustup target add wasm32-unknown-unknown >/dev/null 2>&1; then
  cargo build -q --release --target wasm32-unknown-unknown --target-dir "$build" \
    -p allot-drf-wasm -p allot-priority-wasm
  for p in drf priority; do
    "$tool" component "$build/wasm32-unknown-unknown/release/allot_${p}_wasm.wasm" "$out/$p.wasm" >/dev/null
    echo "    $out/$p.wasm"
  done
else
  echo "    skipped: the Rust target wasm32-unknown-unknown is not installed and rustup could not add it"
fi
