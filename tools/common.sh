# Sourced by the tools scripts: run from the repository root with the real assets fetched
# and the binary built; $bin is that binary, $model the default model.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash models/fetch.sh
cargo build --locked --quiet
bin=${CARGO_TARGET_DIR:-target}/debug/embslim
model=models/all-MiniLM-L6-v2

# compress_f32 NAME ARGS...: compress $model into $res/NAME with an f32 body (so only the
# table differs between bundles), appending compress's JSON line to $res/compress.jsonl.
compress_f32() {
  local name=$1; shift
  $bin compress --model $model --out $res/$name --weights f32 --json "$@" >> $res/compress.jsonl
  echo "compressed $name" >&2
}
