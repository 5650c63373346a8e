#!/usr/bin/env bash
# Runs every test: unit tests of the scheduling core and the integration tests against a real etcd, real
# services on loopback ports and real agents. Installs etcd-server, protobuf-compiler, prometheus (promtool
# checks the alert rules), clang, lld and wasi-libc when missing.
#
# Usage: bash tests/run.sh [extra arguments for cargo nextest / cargo test]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$repo/deploy/local/ensure-deps.sh"
allot_ensure_deps
allot_ensure_prometheus
cd "$repo"
# The service binaries (the telemetry tests run them as real processes) and the native builds of the
# built-in policies, which the policy tests load into a running allocator.
cargo build --bins
cargo build -p allot-drf-native -p allot-priority-native
# The WASM policies and fixtures (target/wasm/): C with Debian's clang, Rust where wasm32 is available.
bash plugins/wasm/build.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "(cargo-nextest not found: using cargo test)"
  cargo test --workspace --no-fail-fast "$@"
fi
