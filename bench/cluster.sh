#!/bin/bash
# The cluster figures of tuning.md ("Cluster"): a redis-server of its own on port $REDIS_PORT
# (no persistence: it holds only who is where), $NODES release nodes sharing it (one shard
# each, durability $DURABILITY), and the pairs load spread over them: --url lists every node,
# so the two ends of each pair are on different nodes and every message crosses from one
# node to another through Redis. Then, in the same run and on the same cores, the same load
# on one node alone, for the ratio. Reports the loadgen's summary (msg/s, ack and delivery
# p99, lost) and the Redis commands per message, counted twice: by Redis (INFO
# commandstats, before and after) and by the nodes (switchboard_cluster_redis_commands_total).
# Env: NODES (3), CONNS (1000), RATE (2000), DURATION (20s), DURABILITY (fsync), OUT
# (target/cluster-bench). Build first:
#   cargo build --release -p switchboard -p switchboard-loadgen
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-target/cluster-bench}
NODES=${NODES:-3}
CONNS=${CONNS:-1000}
RATE=${RATE:-2000}
DURATION=${DURATION:-20s}
DURABILITY=${DURABILITY:-fsync}
REDIS_PORT=${REDIS_PORT:-16379}
SECRET=cluster-bench
rm -rf "$OUT"; mkdir -p "$OUT"
export SWITCHBOARD_JWT_SECRET=$SECRET
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; redis-cli -p $REDIS_PORT shutdown nosave > /dev/null 2>&1' EXIT
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$OUT" \
  > "$OUT/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping > /dev/null 2>&1 && break; sleep 0.1; done
start() { # $1: node id or "alone"; $2: ws port; prints nothing, waits until ready
  local name=$1 ws=$2 http=$(($2 + 1)) cluster=()
  [ "$name" != alone ] && cluster=(--cluster "redis://127.0.0.1:$REDIS_PORT" --node-id "$name")
  target/release/switchboard serve --listen "127.0.0.1:$ws" --http-listen "127.0.0.1:$http" \
    --data-dir "$OUT/data-$name" --shards 1 --durability "$DURABILITY" \
    --user-msgs-per-s 0 --ip-connects-per-s 0 "${cluster[@]}" \
    > "$OUT/node-$name.out" 2> "$OUT/node-$name.err" &
  PIDS+=($!)
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$http/readyz" > /dev/null && return; sleep 0.1; done
  echo "node $name did not start" >&2; exit 1
}
URLS=
for i in $(seq 0 $((NODES - 1))); do
  start "$i" $((18100 + 2 * i))
  URLS=$URLS${URLS:+,}ws://127.0.0.1:$((18100 + 2 * i))/ws
done
commands() { # Redis's own count of the commands it ran, all kinds
  redis-cli -p "$REDIS_PORT" info commandstats | sed -nE 's/^cmdstat_[^:]+:calls=([0-9]+),.*/\1/p' \
    | awk '{ s += $1 } END { print s + 0 }'
}
node_commands() {
  local sum=0
  for i in $(seq 0 $((NODES - 1))); do
    n=$(curl -s "http://127.0.0.1:$((18101 + 2 * i))/metrics" \
      | sed -nE 's/^switchboard_cluster_redis_commands_total ([0-9]+)/\1/p')
    sum=$((sum + ${n:-0}))
  done
  echo "$sum"
}
for i in $(seq 0 $((NODES - 1))); do # until every node has seen the others' heartbeats
  for _ in $(seq 1 100); do
    seen=$(curl -s "http://127.0.0.1:$((18101 + 2 * i))/metrics" \
      | sed -nE 's/^switchboard_cluster_nodes ([0-9]+)/\1/p')
    [ "${seen:-0}" -ge "$NODES" ] && break; sleep 0.1
  done
done
LG="target/release/switchboard-loadgen pairs --jwt-secret $SECRET --conns $CONNS --rate $RATE --duration $DURATION --warmup 2s"
net() { # bytes Redis read and wrote, all clients
  redis-cli -p "$REDIS_PORT" info stats | sed -nE 's/^total_net_(input|output)_bytes:([0-9]+).*/\2/p' \
    | tr -d '\r' | awk '{ s += $1 } END { print s + 0 }'
}
before=$(commands); node_before=$(node_commands); net_before=$(net)
$LG --url "$URLS" --json "$OUT/cluster.json" > "$OUT/cluster.out" 2>&1; echo "cluster rc=$?"
after=$(commands); node_after=$(node_commands); net_after=$(net)
redis-cli -p "$REDIS_PORT" info commandstats > "$OUT/commandstats.txt"
start alone 18200
$LG --url ws://127.0.0.1:18200/ws --json "$OUT/alone.json" > "$OUT/alone.out" 2>&1; echo "alone rc=$?"
echo "redis commands during the cluster run: $((after - before)) (Redis's count), $((node_after - node_before)) (the nodes' count)"
for i in $(seq 0 $((NODES - 1))); do
  echo "node $i: $(curl -s "http://127.0.0.1:$((18101 + 2 * i))/metrics" \
    | grep -E '^switchboard_cluster_(items|entries)_(sent|received)_total' | tr '\n' ' ')"
done
python3 - "$OUT" $((after - before)) $((net_after - net_before)) <<'PY'
import json, sys
out, commands, net = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for run in ("cluster", "alone"):
    r = json.load(open(f"{out}/{run}.json"))
    c, l = r["counters"], r["latency_ms"]
    line = (f"{run}: delivered {r['throughput_per_second']['delivered']:.0f} msg/s, "
            f"ack p99 {l['ack']['p99']} ms, delivery p99 {l['delivery']['p99']} ms, "
            f"sent {c['sent']} acked {c['acknowledged']} delivered {c['delivered']} lost {c['lost']}")
    if run == "cluster":
        n = max(c['delivered'], 1)
        line += f", Redis commands per message {commands / n:.3f}, Redis bytes in+out per message {net / n:.0f}"
    print(line)
PY
