#!/usr/bin/env bash
# Installs what building and running Allot needs on Debian, when it is missing: etcd (etcd-server) and protoc
# (protobuf-compiler, also needed by etcd-client's build). Sourced by deploy/local/run.sh and tests/run.sh.
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
