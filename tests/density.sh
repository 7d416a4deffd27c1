#!/usr/bin/env bash
# Measures the server's resident memory per idle authenticated WebSocket connection: starts
# the release build on an ephemeral port, opens COUNT (default 19,000) upgraded /ws
# connections from 127.0.0.1-127.0.0.9 with tests/density/idle_conns.py, and prints the RSS
# growth per connection. Needs a file limit above COUNT (it raises the soft limit to the
# hard one). Extra arguments go to `switchboard serve` (e.g. --shards 1).
#
# Usage: tests/density.sh [COUNT] [serve flags...]
#        SWITCHBOARD_DRIVER=epoll tests/density.sh    (the epoll driver)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-19000}
shift || true
ulimit -n "$(ulimit -Hn)"

cargo build --quiet --release -p switchboard --bin switchboard
bin=target/release/switchboard
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

export SWITCHBOARD_JWT_SECRET=density
# Thousands of connections from a few loopback addresses: the address limit is off (a flag
# among the extra arguments still wins).
export SWITCHBOARD_IP_CONNECTS_PER_S=0
RUST_LOG=warn "$bin" serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  --data-dir "$work/data" "$@" >"$work/stdout" 2>"$work/stderr" &
server_pid=$!
line=
for _ in $(seq 1 400); do
  line=$(head -n 1 "$work/stdout" 2>/dev/null || true)
  [ -n "$line" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/stderr" >&2; exit 1; }
  sleep 0.05
done
[ -n "$line" ] || { echo "density: no listening line" >&2; exit 1; }
echo "$line"
addr=$(sed -n 's#^switchboard listening on ws://\([^/ ]*\)/ws .*#\1#p' <<<"$line")
token=$("$bin" token density)
python3 tests/density/idle_conns.py "$server_pid" "$addr" "$token" "$count"
