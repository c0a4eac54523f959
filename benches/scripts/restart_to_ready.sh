#!/usr/bin/env bash
# Restart-to-ready of a server holding N items (default 1M x 256-d): a clean restart (index dump)
# and a crash restart (kill -9, no usable dump: graphs rebuilt in the background).
# usage: [CLEAN_RUNS=3] benches/scripts/restart_to_ready.sh [ITEMS] [DIM]   (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/../.."
ITEMS=${1:-1000000}; DIM=${2:-256}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sidb-target}
cargo build --release --quiet
B=$CARGO_TARGET_DIR/release/sidb; D=$(mktemp -d /tmp/sidb-r2r.XXXX); A=127.0.0.1:7821
export SIDB__RETRIEVAL__INDEX_THREADS=${INDEX_THREADS:-2}

source benches/scripts/lib.sh

start "$D.load.log"
"$B" bench search --addr http://$A --items "$ITEMS" --dim "$DIM" --clients 2 --queries 4000 --recall-sample 50
kill -TERM $PID; wait $PID || true
grep -E 'index dumped' "$D.load.log"
du -sh "$D/db" "$D/index"

start "$D.clean.log"; echo "clean restart: ready after $READY s"
grep -E 'storage recovered|indexes loaded|engine ready' "$D.clean.log"
kill -9 $PID; wait $PID 2>/dev/null || true
# no write since the dump, so it stays valid: more clean restarts, now from a warm page cache
for i in $(seq 2 "${CLEAN_RUNS:-3}"); do
  start "$D.clean$i.log"; echo "clean restart $i (warm cache): ready after $READY s"
  grep -E 'indexes loaded' "$D.clean$i.log"
  kill -9 $PID; wait $PID 2>/dev/null || true
done
rm -rf "$D/index"   # as after a crash: no usable dump

start "$D.crash.log"; echo "crash restart: ready after $READY s (graphs rebuild in the background)"
grep -E 'storage recovered|indexes loaded|engine ready' "$D.crash.log"
kill -9 $PID; wait $PID 2>/dev/null || true
rm -rf "$D" "$D".*
