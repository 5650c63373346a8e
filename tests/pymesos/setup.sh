#!/usr/bin/env bash
# Makes a Python environment with pymesos 0.3.15 (the last release) for the pymesos tests, in
# target/pymesos (or $1). Idempotent: does nothing when it is there already.
#
# `pip install pymesos` fails on Python 3.11+: its dependency http-parser 0.9.0 builds a C extension that no
# longer compiles (douban/pymesos#130). pymesos also runs on http-parser's pure-Python parser, so pymesos and
# its other dependencies are installed without dependencies, and http-parser's pure-Python modules are copied
# from its source distribution by hand. kazoo (ZooKeeper) is left out: only zk:// masters need it.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${1:-$repo/target/pymesos}
if "$venv/bin/python" -c 'import pymesos, http_parser.http' 2>/dev/null; then
  exit 0
fi
source "$repo/deploy/local/ensure-deps.sh"
allot_ensure_python_venv
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps pymesos==0.3.15 six addict
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary :all: -d "$work" http-parser==0.9.0
tar -xzf "$work"/http-parser-0.9.0.tar.gz -C "$work"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$site/http_parser"
for f in __init__ http pyparser reader util _socketio; do
  cp "$work/http-parser-0.9.0/http_parser/$f.py" "$site/http_parser/"
done
"$venv/bin/python" -c 'import pymesos, http_parser.http; print("pymesos", pymesos.__VERSION__)'
