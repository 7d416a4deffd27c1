#!/bin/bash
# The history figures of tuning.md ("History and the disk"): one server on a fresh data
# directory; the loadgen's `history` scenario seeds a chat of 1,000,000 messages and runs the
# pairs load at 5,000 messages/s beside 200 pages/s (A) or none (B), A B repeated $PAIRS
# times (default 2); then the server restarts and the index's tables are measured. Reports land in $OUT (default
# target/history-bench). Build first:
#   cargo build --release -p switchboard -p switchboard-loadgen
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-target/history-bench}
DATA=$OUT/data
mkdir -p "$OUT"
rm -rf "$DATA"
serve() {
  target/release/switchboard serve --listen 127.0.0.1:18080 --http-listen 127.0.0.1:18081 \
    --data-dir "$DATA" --user-msgs-per-s 0 --ip-connects-per-s 0 >> "$OUT/server.out" 2>> "$OUT/server.err" &
  SERVER=$!
  sleep 1
}
serve
LG="target/release/switchboard-loadgen history --url ws://127.0.0.1:18080/ws --http-addr 127.0.0.1:18081 --data-dir $DATA --conns 1000 --rate 5000 --duration 20s --server-pid $SERVER"
PAIRS=${PAIRS:-2}
RUNS=""
for i in $(seq 1 "$PAIRS"); do
  if [ "$i" = 1 ]; then SEED="--history-seed 1000000"; else SEED="--history-seeded"; fi
  $LG $SEED --history-rate 200 --json "$OUT/a$i.json" > "$OUT/a$i.out" 2>&1; echo "a$i rc=$?"
  $LG --history-seeded --history-rate 0 --json "$OUT/b$i.json" > "$OUT/b$i.out" 2>&1; echo "b$i rc=$?"
  RUNS="$RUNS a$i b$i"
done
kill "$SERVER"; wait "$SERVER"
# Restarted, the index has flushed its memtables: its tables are what it stores.
serve
sleep 10
echo "index tables $(du -s --block-size=1 "$DATA/history/keyspaces" | cut -f1) bytes," \
  "journals $(du -c --block-size=1 "$DATA"/history/*.jnl | tail -1 | cut -f1) bytes"
kill "$SERVER"; wait "$SERVER"
for run in $RUNS; do
  echo "== $run"
  grep -E '^\| (history page|message ack) ' "$OUT/$run.out"
done
