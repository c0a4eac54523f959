#!/usr/bin/env bash
# Restart after kill -9 of a server holding N items (default 100k x 256-d) whose graphs were
# checkpointed while serving: load and index N items, wait for the graph checkpoint, write a tail of
# TAIL items (DURABLE), kill -9, restart; report time to ready, the points the restart found pending,
# and time until the graphs caught up. With CHECKPOINTS=0 the same run without checkpoints while
# serving (the graphs rebuilt from scratch after the crash), for comparison.
# usage: [TAIL=10000] [CHECKPOINTS=1] [CHECKPOINT_SECS=10] benches/scripts/crash_restart.sh [ITEMS] [DIM]   (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/../.."
ITEMS=${1:-100000}; DIM=${2:-256}; TAIL=${TAIL:-10000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sidb-target}
cargo build --release --quiet --bin sidb
B=$CARGO_TARGET_DIR/release/sidb; D=$(mktemp -d /tmp/sidb-crash.XXXX); A=127.0.0.1:7822
export SIDB__RETRIEVAL__INDEX_THREADS=${INDEX_THREADS:-2}
# a checkpoint CHECKPOINT_SECS (default 10) after the graphs took inserts (0: none while serving)
export SIDB__RETRIEVAL__GRAPH_CHECKPOINT_SECS=$([ "${CHECKPOINTS:-1}" = 1 ] && echo "${CHECKPOINT_SECS:-10}" || echo 0)

source benches/scripts/lib.sh

start "$D.load.log"
"$B" bench search --addr http://$A --items "$ITEMS" --dim "$DIM" --clients 2 --queries 2000 --recall-sample 50 | tee "$D.search.txt"
COLL=$(grep -o '^collection [A-Za-z0-9_]*' "$D.search.txt" | cut -d' ' -f2)
if [ "${CHECKPOINTS:-1}" = 1 ]; then
  # the first checkpoint after the graphs caught up with the load
  until grep -q 'graphs caught up' "$D.load.log"; do sleep 0.2; done
  L=$(grep -n 'graphs caught up' "$D.load.log" | head -1 | cut -d: -f1)
  until tail -n +"$L" "$D.load.log" | grep -q 'graph checkpoint written'; do sleep 0.2; done
  grep 'graph checkpoint written' "$D.load.log" | sed 's/^.*Z //'

fi
"$B" bench ingest --addr http://$A --collection "$COLL" --clients 2 --items "$TAIL" --batch 256 --durability durable --seed 7 | tail -2
kill -9 $PID; wait $PID 2>/dev/null || true
du -sh "$D/db" "$D/index" 2>/dev/null || true

start "$D.crash.log"; echo "restart after kill -9: ready after $READY s"
grep -E 'index dump|indexes loaded' "$D.crash.log" | sed 's/^.*Z //'
until grep -q 'graphs caught up' "$D.crash.log"; do sleep 0.2; done
echo "graphs caught up $(echo "$(now) - $T0" | bc) s after the start"
kill -9 $PID; wait $PID 2>/dev/null || true
rm -rf "$D" "$D".*
