#!/usr/bin/env bash
# Table methods measured honestly for corpus-trained storage (mixed bits): BBC News is split
# in two halves (even/odd files of each class, sorted); token counts come only from the
# first half, sentence cosine against the lossless bundle and BBC accuracy (a head fitted on
# each bundle's embeddings, train-head's split) only from the second. All bundles keep the
# f32 body, so the table is the only difference.
# Writes out/heldout/{compress,eval}.jsonl and prints the markdown table.
# Usage: bash tools/heldout.sh [RATIO...]   (mixed ratios; default 8 10 12 16 20)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
res=out/heldout
split=target/bbc-split
ratios=("${@:-8 10 12 16 20}")
# shellcheck disable=SC2206
ratios=(${ratios[*]})
python3 - "$split" <<'PY'
import os, sys
src, dst = "models/bbc-news", sys.argv[1]
for c in sorted(os.listdir(src)):
    if not os.path.isdir(f"{src}/{c}"):
        continue
    for i, f in enumerate(sorted(os.listdir(f"{src}/{c}"))):
        part = "freq" if i % 2 == 0 else "eval"
        os.makedirs(f"{dst}/{part}/{c}", exist_ok=True)
        link = f"{dst}/{part}/{c}/{f}"
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(f"{src}/{c}/{f}"), link)
PY
mkdir -p $res
: > $res/compress.jsonl
run() { compress_f32 "$@" --corpus $split/freq; }
run none --method none
run int8 --method int8
run int4 --method int4
run svd-r10 --method svd --ratio 10
for r in "${ratios[@]}"; do run mixed-r$r --method mixed --ratio "$r"; done
names=(int8 int4 svd-r10); for r in "${ratios[@]}"; do names+=(mixed-r$r); done
$bin eval "${names[@]/#/$res/}" --reference $res/none --data $split/eval --max-length 128 --accuracy --json > $res/eval.jsonl
python3 tools/results_table.py $res
