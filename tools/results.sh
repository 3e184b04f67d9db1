#!/usr/bin/env bash
# The results table: compress all-MiniLM-L6-v2 with every method at ratios 2, 3, 5, 10,
# then measure each bundle against the lossless one (sentence cosine over BBC News at
# 128 tokens) and train a head on each (held-out accuracy, seed 0).
# Writes out/results/{compress,eval}.jsonl and prints a markdown table.
# Usage: bash tools/results.sh [--eval-only]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
res=out/results
mkdir -p $res
if [[ ${1:-} != --eval-only ]]; then
: > $res/compress.jsonl
compress_f32 none --method none
compress_f32 int8 --method int8
compress_f32 int4 --method int4
for r in 2 3 5 10; do
  compress_f32 svd-r$r --method svd --ratio $r
  compress_f32 direction-r$r --method direction --ratio $r
  compress_f32 direction-svdinit-r$r --method direction --ratio $r --init svd
done
fi
# one pass per bundle: sentence cosine against the lossless bundle and the held-out
# accuracy of a head fitted on that bundle's embeddings (train-head's split and C choice)
$bin eval $res/*/ --reference $res/none --data models/bbc-news --max-length 128 --accuracy --json --threads 1 > $res/eval.jsonl
python3 tools/results_table.py $res
