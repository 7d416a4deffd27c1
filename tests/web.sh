#!/usr/bin/env bash
# Runs the web page's browser test (tests/web/chat.test.js): Debian's headless Chromium,
# driven by puppeteer-core (both installed by .ci/setup-tools), as three users chatting through
# a real server on loopback. The test starts the server itself on free ports (it must kill
# and restart it on the same ports), in a temporary data directory with a secret made here,
# and this script mints the users' tokens with `switchboard token`. The server is stopped
# in every case, also when the test is killed (the pid it last started is in a file here).
# Screenshots go to target/web-screenshots/.
#
# Usage: tests/web.sh            (builds the debug binary first)
#        SWITCHBOARD_BIN=path tests/web.sh   (tests that binary)
set -euo pipefail
cd "$(dirname "$0")/.."

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ] || [ ! -d tests/web/node_modules/puppeteer-core ]; then
  echo "web: chromium or puppeteer-core is missing; run .ci/setup-tools first" >&2
  exit 1
fi

bin=${SWITCHBOARD_BIN:-}
if [ -z "$bin" ]; then
  cargo build --quiet -p switchboard --bin switchboard
  bin=${CARGO_TARGET_DIR:-target}/debug/switchboard
fi
bin=$(realpath "$bin")

work=$(mktemp -d)
cleanup() {
  if [ -s "$work/server.pid" ]; then
    kill -9 "$(cat "$work/server.pid")" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

head -c 32 /dev/urandom | base64 >"$work/secret"
token() { "$bin" token "$1" --ttl 1h --jwt-secret-file "$work/secret"; }

export SWITCHBOARD_BIN="$bin" CHROMIUM="$chromium"
export WEB_DATA_DIR="$work/data" WEB_SECRET_FILE="$work/secret" WEB_PIDFILE="$work/server.pid"
export WEB_SCREENSHOTS="$PWD/target/web-screenshots"
WEB_TOKEN_ALICE=$(token alice)
WEB_TOKEN_BOB=$(token bob)
WEB_TOKEN_CAROL=$(token carol)
export WEB_TOKEN_ALICE WEB_TOKEN_BOB WEB_TOKEN_CAROL
rm -rf "$WEB_SCREENSHOTS"
mkdir -p "$WEB_SCREENSHOTS"

cd tests/web
# Bounded: the test's own waits are 30 s at most each; this catches a hang anywhere else.
timeout 300 node --test --test-concurrency=1 --test-reporter=spec chat.test.js
