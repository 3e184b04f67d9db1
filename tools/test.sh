#!/usr/bin/env bash
# The test command (README, CI): installs what the tests need, fetches the real assets,
# runs the whole suite. Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# numpy/onnxruntime/scikit-learn: the independent references some tests compare against
python3 -m pip install -q --disable-pip-version-check -r tools/requirements.txt
bash models/fetch.sh
cargo test --locked "$@"
