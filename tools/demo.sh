#!/usr/bin/env bash
# The main job, end to end on the default model and data: fetch the real assets, build,
# compress all-MiniLM-L6-v2 into the default bundle and a lossless reference, measure what
# the compression keeps on BBC News, train a classification head on the default bundle
# (held-out accuracy), and classify real BBC headlines with it.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
mkdir -p out
echo "== compress: lossless reference bundle"
$bin compress --model $model --out out/minilm-lossless --method none --weights f32
echo "== compress: default bundle"
$bin compress --model $model --out out/minilm-default
echo "== eval: default vs lossless sentence embeddings, BBC News at 128 tokens"
$bin eval out/minilm-default --reference out/minilm-lossless --data models/bbc-news --max-length 128
echo "== train-head: BBC News, stratified 80/20 split, seed 0"
$bin train-head out/minilm-default --data models/bbc-news --max-length 128
echo "== classify: the headlines (first lines) of five BBC articles"
for f in models/bbc-news/{business,entertainment,politics,sports,tech}/010.txt; do head -n1 "$f"; done \
  | $bin classify out/minilm-default --top 2
