#!/usr/bin/env bash
# Installs what building and running Allot needs on Debian, when it is missing: etcd (etcd-server) and protoc
# (protobuf-compiler, also needed by etcd-client's build). Sourced by deploy/local/run.sh and tests/run.sh.
# allot_ensure_prometheus adds Debian's prometheus (the server and promtool, which checks and unit-tests the
# alert rules in observability/prometheus/).
set -euo pipefail

allot_ensure_deps() {
  local missing=()
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
  command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
  if ((${#missing[@]})); then
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    echo "==> installing ${missing[*]} (Debian packages)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install the Rust toolchain (https://rustup.rs) first" >&2
    return 1
  fi
}

allot_ensure_prometheus() {
  if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    echo "==> installing prometheus (Debian package)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
}

# What building the WASM policies needs: clang and wasm-ld (lld) for --target=wasm32-wasi, wasi-libc for
# malloc and string.h, and compiler-rt's wasm32 builtins.
allot_ensure_wasm_deps() {
  allot_ensure_deps
  local missing=() sudo=""
  [[ $(id -u) == 0 ]] || sudo="sudo"
  command -v clang >/dev/null 2>&1 || missing+=(clang)
  command -v wasm-ld >/dev/null 2>&1 || missing+=(lld)
  [[ -d /usr/share/wasi-sysroot || -d /usr/lib/wasm32-wasi ]] || missing+=(wasi-libc)
  if ((${#missing[@]})); then
    echo "==> installing ${missing[*]} (Debian packages)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a" >/dev/null; then
    local v
    v=$(clang --version | sed -n 's/.*version \([0-9]*\).*/\1/p' | head -1)
    echo "==> installing libclang-rt-$v-dev-wasm32 (Debian package)"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "libclang-rt-$v-dev-wasm32" >/dev/null
  fi
}
