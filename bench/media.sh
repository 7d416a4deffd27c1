#!/bin/bash
# The media figures of tuning.md ("Media"): one release server on a fresh data directory
# (durability fsync), then
# 1. $N uploads of a 64 MiB file of random bytes (each file different, so every upload is
#    hashed, written, fsynced and renamed) and $N downloads of one of them, over loopback with
#    curl, which reports each transfer's bytes per second;
# 2. the pairs load (1,000 connections, 5,000 msg/s, 20 s) with 64 MiB uploads running back
#    to back beside it (A) and without (B), A B repeated $PAIRS times, for the message
#    path's ack p99 ratio ($UPLOAD_PAUSE_S seconds between two uploads, default 0). The
#    uploading curl runs at nice $UPLOAD_NICE (default 10): on
#    this 2-core machine the client's own reading and sending of 64 MiB files would
#    otherwise take the server's cores, which a remote phone's upload does not.
# MEDIA_DIR, when set, is passed as --media-dir (uploads on another disk than the log's);
# UPLOAD_CAP as --media-upload-bytes-per-s (each upload read at most that fast).
# Reports land in $OUT (default target/media-bench). Build first:
#   cargo build --release -p switchboard -p switchboard-loadgen
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-target/media-bench}
DATA=$OUT/data
N=${N:-3}
PAIRS=${PAIRS:-2}
UPLOAD_NICE=${UPLOAD_NICE:-10}
# Seconds between two uploads of run A: 0 (the default) is back to back.
UPLOAD_PAUSE_S=${UPLOAD_PAUSE_S:-0}
SECRET=media-bench
mkdir -p "$OUT"
rm -rf "$DATA" "$OUT"/a*.uploads "$OUT/stop" ${MEDIA_DIR:+"$MEDIA_DIR"}
export SWITCHBOARD_JWT_SECRET=$SECRET
target/release/switchboard serve --listen 127.0.0.1:18080 --http-listen 127.0.0.1:18081 \
  --data-dir "$DATA" --user-msgs-per-s 0 --ip-connects-per-s 0 ${MEDIA_DIR:+--media-dir "$MEDIA_DIR"} \
  ${UPLOAD_CAP:+--media-upload-bytes-per-s "$UPLOAD_CAP"} \
  > "$OUT/server.out" 2> "$OUT/server.err" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:18081/readyz > /dev/null && break; sleep 0.1; done
TOKEN=$(target/release/switchboard token alice)
API=http://127.0.0.1:18081
upload() { # $1: the file; prints the hash, then "bytes/s seconds" on stderr
  curl -sS -o "$OUT/upload.json" -w '%{speed_upload} %{time_total}\n' \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: video/mp4' \
    --data-binary @"$1" "$API/v1/media" >&2
  sed -E 's/.*"hash":"([0-9a-f]+)".*/\1/' "$OUT/upload.json"
}
FILE=$OUT/upload.bin
for i in $(seq 1 "$N"); do
  head -c $((64 << 20)) /dev/urandom > "$FILE"
  echo -n "upload $i: " >&2
  HASH=$(upload "$FILE")
done
for i in $(seq 1 "$N"); do
  echo -n "download $i: "
  curl -sS -o /dev/null -w '%{speed_download} %{time_total} %{size_download}\n' \
    -H "Authorization: Bearer $TOKEN" "$API/v1/media/$HASH"
done
LG="target/release/switchboard-loadgen pairs --url ws://127.0.0.1:18080/ws --jwt-secret $SECRET --conns 1000 --rate 5000 --duration 20s --warmup 2s"
for i in $(seq 1 "$PAIRS"); do
  # A: uploads back to back, each of new bytes, until the run ends.
  ( renice -n "$UPLOAD_NICE" -p "$BASHPID" > /dev/null; n=0; while [ ! -e "$OUT/stop" ]; do
      n=$((n + 1)); printf '%08d' "$n" | dd of="$FILE" bs=8 count=1 conv=notrunc status=none
      upload "$FILE" > /dev/null 2>> "$OUT/a$i.uploads"
      sleep "$UPLOAD_PAUSE_S"
    done ) &
  UPLOADER=$!
  $LG --json "$OUT/a$i.json" > "$OUT/a$i.out" 2>&1; echo "a$i rc=$?"
  touch "$OUT/stop"; wait "$UPLOADER"; rm -f "$OUT/stop"
  $LG --json "$OUT/b$i.json" > "$OUT/b$i.out" 2>&1; echo "b$i rc=$?"
done
echo "run: ack | count | mean | p50 | p90 | p99 | p99.9 (ms)"
for i in $(seq 1 "$PAIRS"); do
  for run in a$i b$i; do
    echo "$run: $(grep -E '^\| ack ' "$OUT/$run.out")"
  done
  echo "uploads during a$i: $(wc -l < "$OUT/a$i.uploads")"
done
