#!/usr/bin/env bash
# The main job, end to end on the default model and data: fetch the real assets, build,
# compress all-MiniLM-L6-v2 into the default bundle and a lossless reference bundle, and
# report what the compression keeps on BBC News.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash models/fetch.sh
cargo build --locked --quiet
bin=target/debug/embslim
model=models/all-MiniLM-L6-v2
mkdir -p out
echo "== lossless reference bundle"
$bin compress --model $model --out out/minilm-lossless --method none
echo "== default bundle"
$bin compress --model $model --out out/minilm-default
echo "== sentence embeddings of the default bundle vs lossless, BBC News at 128 tokens"
$bin eval out/minilm-default --reference out/minilm-lossless --data models/bbc-news --max-length 128 --threads 2
