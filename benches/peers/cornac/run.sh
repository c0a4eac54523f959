#!/usr/bin/env bash
# Cornac's TIGER tokenizers on the items of sidb's evaluation data sets, scored by `sidb eval`
# beside DAS (the peer for the semantic IDs themselves).
#
# usage: benches/peers/cornac/run.sh [DATA_ROOT]   (default ~/.cache/sidb-datasets/out)
# For every data set under DATA_ROOT (scripts/datasets.sh builds them), every tokenizer and
# every seed, writes DATA_ROOT/<set>/sids/<tokenizer>/seed-<seed>/ (cornac_sids.py's layout),
# which `sidb eval --data DATA_ROOT/<set> --methods sids:<tokenizer> --seeds ...` reads (the data
# set's `sids` directory is `--sids-dir`'s default); report.py tabulates the IDs. The levels x codes
# are sidb's defaults for the catalogue (3 levels; 64 codes up to 10,000 items, 128 up to 100,000).
# The venv lives in WORK (default ~/.cache/sidb-peers/cornac-venv); nothing of it is committed.
# Knobs (env): SEEDS="1 2 3" TOKENIZERS="tiger-rqvae tiger-rkmeans" THREADS=1
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=${1:-$HOME/.cache/sidb-datasets/out}
VENV=${VENV:-$HOME/.cache/sidb-peers/cornac-venv}
SEEDS=${SEEDS:-1 2 3}
TOKENIZERS=${TOKENIZERS:-tiger-rqvae tiger-rkmeans}
export THREADS=${THREADS:-1}
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
fi
for set in "$ROOT"/*/; do
  set=${set%/}
  [[ -f $set/item_emb.f32 ]] || continue
  items=$(wc -l < "$set/items.tsv"); items=$((items - 1))
  codes=64; (( items > 10000 )) && codes=128; (( items > 100000 )) && codes=256
  for tok in $TOKENIZERS; do
    for seed in $SEEDS; do
      out=$set/sids/$tok/seed-$seed
      [[ -f $out/sids.json ]] && continue
      echo "== $(basename "$set") $tok seed $seed (3 x $codes)" >&2
      "$VENV/bin/python" "$HERE/cornac_sids.py" "$set" "$tok" 3 "$codes" "$seed" "$out"
    done
  done
done
