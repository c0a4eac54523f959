#!/usr/bin/env bash
# Side-by-side: hnswlib (PyPI) and sidb's HNSW index on the same files, same M / ef_construction,
# same machine, one run. Prints markdown tables (build throughput, single-thread QPS at
# recall@10 = 0.95, the ef sweep) and the ratios ours/hnswlib.
#
# Usage: benches/compare/run.sh [WORKDIR]   (data goes to WORKDIR, default ~/.cache/sidb-compare;
# never commit it). Needs python3 with numpy + hnswlib: set PYTHON or let the script make a venv.
# Knobs (env): N=100000 DIM=256 NQ=1000 M=16 EFC=200 THREADS=2 EFS=10,16,...
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-$HOME/.cache/sidb-compare}
N=${N:-100000}; DIM=${DIM:-256}; NQ=${NQ:-1000}; M=${M:-16}; EFC=${EFC:-200}; THREADS=${THREADS:-2}
EFS=${EFS:-10,16,24,32,48,64,96,128,192,256,384,512}
ML=${ML:-$HOME/.cache/sidb-datasets/out/ml-1m/item_emb.f32}
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=$WORK/venv/bin/python
  [[ -x $PYTHON ]] || { python3 -m venv "$WORK/venv" && "$WORK/venv/bin/pip" install -q numpy hnswlib; }
fi
cargo build --release --example ann_compare
BIN=${CARGO_TARGET_DIR:-target}/release/examples/ann_compare
compare() { # name dir
  local out=$WORK/$1.jsonl
  "$PYTHON" benches/compare/hnswlib_side.py "$2" "$M" "$EFC" "$THREADS" "$EFS" > "$out"
  "$BIN" run "$2" "$M" "$EFC" "$THREADS" "$EFS" >> "$out"
  "$PYTHON" benches/compare/report.py "$out" "$1: M=$M ef_construction=$EFC, build with $THREADS threads"
}
SYN=$WORK/synth-${N}x${DIM}-q${NQ}
[[ -f $SYN/meta.json ]] || "$BIN" gen-synth "$SYN" "$N" "$DIM" "$NQ" 42
compare "clustered ${N}x${DIM}" "$SYN"
if [[ -f $ML ]]; then
  [[ -f $WORK/ml1m/meta.json ]] || "$BIN" gen-from "$WORK/ml1m" "$ML" 384 500
  compare "MovieLens-1M items 384-d" "$WORK/ml1m"
else
  echo "(MovieLens item vectors not found at $ML: skipped)"
fi
