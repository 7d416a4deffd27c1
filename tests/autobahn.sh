#!/usr/bin/env bash
# Runs the Autobahn|Testsuite cases (through kosoku, installed by .ci/setup-tools) against
# `switchboard --echo` on an ephemeral port and fails if any case is not OK. The compression
# cases 12.x and 13.x may be UNIMPLEMENTED (no permessage-deflate); see tests/autobahn/check.py
# for the exact verdicts accepted. Reports (HTML and JSON per case) go to target/autobahn/.
#
# Usage: tests/autobahn.sh            (builds the debug binary first)
#        SWITCHBOARD_BIN=path tests/autobahn.sh   (tests that binary)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import kosoku' 2>/dev/null; then
  echo "autobahn: kosoku is missing; run .ci/setup-tools first" >&2
  exit 1
fi

bin=${SWITCHBOARD_BIN:-}
if [ -z "$bin" ]; then
  cargo build --quiet -p switchboard --bin switchboard
  bin=${CARGO_TARGET_DIR:-target}/debug/switchboard
fi

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The suite opens hundreds of connections from one address: the address limit is off.
RUST_LOG=warn "$bin" serve --echo --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  --ip-connects-per-s 0 --shards 2 --data-dir "$work/data" --jwt-secret autobahn >"$work/stdout" 2>"$work/stderr" &
server_pid=$!

# The server prints one line once it accepts connections; wait for it (20 s at most).
line=
for _ in $(seq 1 400); do
  line=$(head -n 1 "$work/stdout" 2>/dev/null || true)
  [ -n "$line" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "autobahn: the server exited:" >&2
    cat "$work/stderr" >&2
    exit 1
  fi
  sleep 0.05
done
if [ -z "$line" ]; then
  echo "autobahn: no listening line within 20 s" >&2
  exit 1
fi
addr=$(sed -n 's#^switchboard listening on ws://\([^/ ]*\)/ws .*#\1#p' <<<"$line")
if [ -z "$addr" ]; then
  echo "autobahn: cannot read the address from: $line" >&2
  exit 1
fi

reports=target/autobahn
rm -rf "$reports"
mkdir -p "$reports"
status=0
timeout 900 "$venv/bin/python" tests/autobahn/check.py "ws://$addr/echo" "$reports" || status=$?
if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "autobahn: the server died during the run:" >&2
  cat "$work/stderr" >&2
  status=1
fi
exit "$status"
