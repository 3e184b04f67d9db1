#!/usr/bin/env bash
# Trainer scale benchmark: a synthetic 256k x 4096 f32 table (4.3 GB, larger than the
# 2 GB RSS budget) compressed with the streaming methods; prints time and peak RSS
# (/usr/bin/time -v) for each. Usage: bash tools/bench_scale.sh [ROWS] [DIM]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rows=${1:-262144}
dim=${2:-4096}
dir=out/scale
mkdir -p $dir
cargo build --locked --quiet
model=$dir/synthetic-${rows}x${dim}.safetensors
if [[ ! -f $model ]]; then
  # low-rank structure plus noise, written chunk by chunk so the generator stays small
  python3 - "$model" "$rows" "$dim" <<'PY'
import json, struct, sys
import numpy as np
path, rows, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
name = "embeddings.word_embeddings.weight"
hdr = json.dumps({name: {"dtype": "F32", "shape": [rows, dim], "data_offsets": [0, rows * dim * 4]}}).encode()
hdr += b" " * ((8 - len(hdr) % 8) % 8)
rng = np.random.default_rng(0)
basis = rng.standard_normal((64, dim)).astype(np.float32) / 8
with open(path + ".tmp", "wb") as f:
    f.write(struct.pack("<Q", len(hdr)) + hdr)
    for start in range(0, rows, 8192):
        n = min(8192, rows - start)
        x = rng.standard_normal((n, 64)).astype(np.float32) @ basis + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
        f.write(x.astype("<f4").tobytes())
import os
os.rename(path + ".tmp", path)
PY
fi
echo "table: $rows x $dim f32, $(stat -c %s "$model") bytes"
printf "| method | seconds | peak RSS (MB) | factor file (MB) |\n|---|---|---|---|\n"
for args in "--method svd --ratio 10" "--method int4" "--method int8"; do
  out=$dir/out-$(echo "$args" | tr ' -' '_')
  /usr/bin/time -v target/debug/embslim compress --model "$model" --out "$out" $args --table-only --json \
    > $dir/report.json 2> $dir/time.txt || { cat $dir/time.txt; exit 1; }
  secs=$(grep "Elapsed (wall clock)" $dir/time.txt | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" $dir/time.txt | awk '{print int($NF/1024)}')
  size=$(python3 -c "import json;print(round(json.load(open('$dir/report.json'))['bytes']/1e6,1))")
  echo "| ${args} | $secs | $rss | $size |"
  rm -rf "$out"
done
