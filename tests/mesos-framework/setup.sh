#!/usr/bin/env bash
# Installs mesos-framework 0.5.3 (npm; the last release), a Node.js client of Mesos' v1 scheduler HTTP API,
# into target/mesos-framework (or $1) for tests/tests/mesos_framework.rs: a second Mesos client, in another
# language than pymesos. Idempotent: does nothing when it is there already. Installs Debian's nodejs and npm
# when missing.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dir=${1:-$repo/target/mesos-framework}
if [[ -f $dir/node_modules/mesos-framework/package.json ]] && command -v node >/dev/null; then
  exit 0
fi
source "$repo/deploy/local/ensure-deps.sh"
allot_ensure_node
rm -rf "$dir"
mkdir -p "$dir/logs"   # the library's file logger writes logs/<date>.mesos-framework.log
cd "$dir"
echo '{"name": "allot-mesos-framework-test", "version": "1.0.0", "private": true}' >package.json
npm install --silent --no-audit --no-fund mesos-framework@0.5.3 >/dev/null
node -e 'console.log("mesos-framework", require("mesos-framework/package.json").version)'
