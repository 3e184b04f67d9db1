#!/usr/bin/env bash
# The results table: compress all-MiniLM-L6-v2 with every method at ratios 2, 3, 5, 10,
# then measure each bundle against the lossless one (sentence cosine over BBC News at
# 128 tokens) and train a head on each (held-out accuracy, seed 0).
# Writes out/results/{compress,eval}.jsonl and prints a markdown table.
# Usage: bash tools/results.sh [--eval-only]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash models/fetch.sh
cargo build --locked --quiet
bin=${CARGO_TARGET_DIR:-target}/debug/embslim
model=models/all-MiniLM-L6-v2
res=out/results
mkdir -p $res
run() { # name args...
  local name=$1; shift
  $bin compress --model $model --out $res/$name --weights f32 --json "$@" >> $res/compress.jsonl
  echo "$name" >&2
}
if [[ ${1:-} != --eval-only ]]; then
: > $res/compress.jsonl
run none --method none
run int8 --method int8
run int4 --method int4
for r in 2 3 5 10; do
  run svd-r$r --method svd --ratio $r
  run direction-r$r --method direction --ratio $r
  run direction-svdinit-r$r --method direction --ratio $r --init svd
done
fi
# one pass per bundle: sentence cosine against the lossless bundle and the held-out
# accuracy of a head fitted on that bundle's embeddings (train-head's split and C choice)
$bin eval $res/*/ --reference $res/none --data models/bbc-news --max-length 128 --accuracy --json --threads 1 > $res/eval.jsonl
python3 tools/results_table.py $res
