#!/usr/bin/env bash
# Cost of the request metrics on Search: one collection of N items (default 100k x 256-d) searched
# over gRPC by `sidb bench search --reuse` from 2 clients, ROUNDS times (default 3) with the HTTP
# port off (the metrics layer then passes requests through) and on, interleaved, each after a clean
# restart on the same data. With the port on, a scrape runs every SCRAPE_SECS (default 1) during
# the searches, as a Prometheus server would (at a far higher rate than the usual 15 s).
# usage: [ROUNDS=3] [QUERIES=20000] benches/scripts/metrics_overhead.sh [ITEMS] [DIM]   (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/../.."
ITEMS=${1:-100000}; DIM=${2:-256}; ROUNDS=${ROUNDS:-3}; QUERIES=${QUERIES:-20000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sidb-target}
cargo build --release --quiet --bin sidb
B=$CARGO_TARGET_DIR/release/sidb; D=$(mktemp -d /tmp/sidb-metrics.XXXX); A=127.0.0.1:7824; H=127.0.0.1:7825
export SIDB__RETRIEVAL__INDEX_THREADS=2
source benches/scripts/lib.sh

export SIDB__SERVER__HTTP_LISTEN=""
start "$D.load.log"
"$B" bench search --addr http://$A --items "$ITEMS" --dim "$DIM" --clients 2 --queries 2000 | tee "$D.search.txt"
COLL=$(grep -o '^collection [A-Za-z0-9_]*' "$D.search.txt" | cut -d' ' -f2)
kill -TERM $PID; wait $PID || true

for round in $(seq 1 "$ROUNDS"); do
  for mode in off on; do
    if [ $mode = on ]; then export SIDB__SERVER__HTTP_LISTEN=$H; else export SIDB__SERVER__HTTP_LISTEN=""; fi
    start "$D.$mode.$round.log"
    SCRAPER=""
    if [ $mode = on ]; then
      (while sleep "${SCRAPE_SECS:-1}"; do curl -s "http://$H/metrics" > "$D.scrape.txt"; done) &
      SCRAPER=$!
    fi
    LINE=$("$B" bench search --addr http://$A --reuse "$COLL" --items "$ITEMS" --dim "$DIM" --clients 2 --queries "$QUERIES" | grep 'queries in')
    echo "round $round metrics $mode: $LINE"
    if [ -n "$SCRAPER" ]; then
      kill $SCRAPER; wait $SCRAPER 2>/dev/null || true
      echo "  scrape: $(wc -c < "$D.scrape.txt") bytes, $(grep -c '^sidb_' "$D.scrape.txt") sidb series; $(grep '^sidb_requests_total{code="OK",collection="'"$COLL"'",rpc="Search"}' "$D.scrape.txt")"
    fi
    kill -TERM $PID; wait $PID || true
  done
done
[ -n "${KEEP:-}" ] || rm -rf "$D" "$D".*
