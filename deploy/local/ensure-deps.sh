#!/usr/bin/env bash
# Installs what building and running Allot needs on Debian, when it is missing: etcd (etcd-server) and protoc
# (protobuf-compiler, also needed by etcd-client's build). Sourced by deploy/local/run.sh, tests/run.sh and
# tests/chaos.sh.
# allot_ensure_prometheus adds Debian's prometheus (the server and promtool, which checks and unit-tests the
# alert rules in observability/prometheus/).
set -euo pipefail

# The toolchain rust-toolchain.toml pins, from an installed `stable` of the same version when rustup knows no
# toolchain of that name (a machine with one toolchain, and no network for rustup to fetch the pinned one).
allot_ensure_toolchain() {
  command -v rustup >/dev/null 2>&1 || return 0
  local repo pinned home triple stable
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  pinned=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$repo/rust-toolchain.toml")
  [[ -n $pinned ]] || return 0
  home=${RUSTUP_HOME:-$HOME/.rustup}
  if rustup toolchain list | grep -q "^$pinned"; then
    return 0
  fi
  stable=$(rustup toolchain list | sed -n 's/^\(stable-[^ ]*\).*/\1/p' | head -1)
  if [[ -n $stable ]] && "$home/toolchains/$stable/bin/rustc" --version | grep -q "^rustc $pinned "; then
    triple=${stable#stable-}
    echo "==> using $stable as the pinned toolchain $pinned (rust-toolchain.toml)"
    ln -s "$home/toolchains/$stable" "$home/toolchains/$pinned-$triple"
  fi
}

allot_ensure_deps() {
  allot_ensure_toolchain
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

# The tools .ci/run checks the workspace with beyond the toolchain: cargo-deny (licenses, bans, sources),
# installed from crates.io when missing.
allot_ensure_ci_tools() {
  allot_ensure_deps
  if ! command -v python3 >/dev/null 2>&1; then # .ci/module-cycles.py and tests/doc-test.py
    echo "==> installing python3 (Debian package)"
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-minimal >/dev/null
  fi
  if ! cargo deny --version >/dev/null 2>&1; then
    echo "==> installing cargo-deny (crates.io; a few minutes)"
    cargo install --locked --quiet cargo-deny
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

# allot_http_get HOST:PORT PATH: the body of a plain HTTP/1.0 GET, with bash's /dev/tcp (no curl needed); for
# /metrics, /health and Prometheus' API on loopback.
allot_http_get() {
  local answer
  answer=$(exec 3<>"/dev/tcp/${1%:*}/${1##*:}" && printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&3 && cat <&3) || return 1
  printf '%s' "${answer#*$'\r\n\r\n'}"
}

# Python with venv and pip (Debian's python3-venv brings ensurepip): the pymesos tests make an environment
# with pymesos in target/pymesos (tests/pymesos/setup.sh).
# Node.js and npm (Debian's nodejs and npm), for the Node.js Mesos client the tests run (tests/mesos-framework).
allot_ensure_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    echo "==> installing nodejs and npm (Debian packages)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
  fi
}

allot_ensure_python_venv() {
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    echo "==> installing python3-venv (Debian package)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
  fi
}
