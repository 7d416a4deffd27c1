#!/bin/bash
# The TLS figures of tuning.md ("TLS"): for plain ws:// and for wss://, a fresh server opens
# CONNS idle authenticated connections from the loadgen's `idle` scenario, and the script
# prints the server's resident memory growth per connection (the loadgen's --server-pid
# figure), the connections opened per second, and the server's CPU time per connection
# (utime + stime of /proc/PID/stat across the run, divided by the connections): for wss://
# that is one full TLS handshake (ECDSA P-256 certificate, made here with openssl) and one
# WebSocket upgrade each. Client and server share the machine's cores.
#
# Usage: bench/tls.sh [CONNS] [serve flags...]     e.g. bench/tls.sh 5000 --shards 1
# Build first: cargo build --release -p switchboard -p switchboard-loadgen
set -u
cd "$(dirname "$0")/.."
conns=${1:-5000}
shift || true
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "| mode | connections | RSS growth per connection | opened per second | server CPU per connection |"
echo "|---|---:|---:|---:|---:|"
for mode in ws wss; do
  tls=(); ca=(); url=ws://127.0.0.1:18090/ws
  if [ "$mode" = wss ]; then
    tls=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
    ca=(--tls-ca "$work/cert.pem"); url=wss://localhost:18090/ws
  fi
  rm -rf "$work/data"
  RUST_LOG=warn target/release/switchboard serve --listen 127.0.0.1:18090 \
    --http-listen 127.0.0.1:18091 --data-dir "$work/data" --jwt-secret tls-bench \
    --ip-connects-per-s 0 "${tls[@]}" "$@" > "$work/server.out" 2> "$work/server.err" &
  server=$!
  for _ in $(seq 1 100); do [ -s "$work/server.out" ] && break; sleep 0.05; done
  before=$(cpu_ticks "$server")
  target/release/switchboard-loadgen idle --url "$url" "${ca[@]}" --jwt-secret tls-bench \
    --conns "$conns" --server-pid "$server" --hold 3s > "$work/report.md" 2>&1
  rc=$?
  after=$(cpu_ticks "$server")
  kill "$server"; wait "$server" 2>/dev/null
  [ "$rc" = 0 ] || { cat "$work/report.md" "$work/server.err" >&2; exit 1; }
  rate=$(awk -F'|' '/^\| [0-9]+ \| 0 \| 0 \|/ {gsub(/ /, "", $6); print $6; exit}' "$work/report.md")
  growth=$(grep -A2 'RSS before' "$work/report.md" | tail -1 | awk -F'|' '{gsub(/^ +| +$/, "", $5); print $5}')
  cpu_us=$(( (after - before) * 1000000 / hz / conns ))
  echo "| $mode | $conns | $growth | $rate | ${cpu_us} µs |"
done
