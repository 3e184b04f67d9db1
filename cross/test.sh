#!/usr/bin/env bash
# Run the integration tests (tests/cli.rs) and a real classification of BBC headlines on
# TARGET under qemu-user, against the host's results. Installs what it needs.
#
#   bash cross/test.sh aarch64-unknown-linux-gnu           # what CI runs
#   bash cross/test.sh armv7-unknown-linux-gnueabihf
#   bash cross/test.sh aarch64-unknown-linux-musl --release   # also classify with build.sh's binary
#   bash cross/test.sh armv7-unknown-linux-gnueabihf --release-only   # only build.sh's binary (no test build)
#
# 1. Host fixtures: the test bundle target/test-bundles/minilm-int4-head (built by the host
#    binary: training is host-only) and the host's headline embeddings
#    target/test-bundles/host-headline-embeddings.json, both written by the host
#    `cargo test --test cli`; run only when missing or stale.
# 2. `cargo test --target TARGET --no-default-features --test cli`: the test harness is an
#    ARM binary run by the cargo runner (.cargo/config.toml); CROSS_RUNNER makes the tests
#    start the ARM embslim under the same qemu (no binfmt_misc here). The profile is the
#    test/dev one (dependencies at opt-level 3, one build) unless CROSS_TEST_PROFILE says
#    otherwise.
# 3. 50 real BBC headlines (first lines of articles the test head was not trained on):
#    labels must equal the host binary's; embedding cosine to the host is reported and
#    checked against the same tolerance as the tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[ $# -ge 1 ] || die "usage: cross/test.sh TARGET [--release | --release-only] [-- extra cargo test args]"
TARGET="$1"
shift
RELEASE=0
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --release) RELEASE=1; shift ;;
        --release-only) RELEASE=2; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        *) die "unknown option $1" ;;
    esac
done
check_target "$TARGET"
RUNNER="$(runner_for "$TARGET")"
[ -n "$RUNNER" ] || die "$TARGET cannot be emulated here (Android: run the binary on a device)"
PROFILE="${CROSS_TEST_PROFILE:-test}"
case "$PROFILE" in dev | test) PDIR=debug ;; release) PDIR=release ;; *) PDIR="$PROFILE" ;; esac
# the same value cargo would read from .cargo/config.toml, from one place (common.sh)
export "CARGO_TARGET_$(echo "$TARGET" | tr 'a-z-' 'A-Z_')_RUNNER=$RUNNER"

ensure_apt "$TARGET"
ensure_rust_target "$TARGET"
cd "$ROOT"
bash models/fetch.sh
T0=$(date +%s)

# --- 1. host fixtures ----------------------------------------------------------------
B=target/test-bundles/minilm-int4-head
G=target/test-bundles/host-headline-embeddings.json
host_cargo() { env -u CARGO_TARGET_DIR ${HOST_CARGO_TARGET_DIR:+CARGO_TARGET_DIR=$HOST_CARGO_TARGET_DIR} cargo "$@"; }
if [ ! -f "$B/manifest.json" ] || [ ! -f "$B/head.safetensors" ] || [ ! -f "$G" ] || [ "$B/head.safetensors" -nt "$G" ]; then
    echo "cross: building the host test bundle and golden embeddings (host cargo test --test cli)" >&2
    host_cargo test --locked --test cli
fi
host_cargo build --locked --bin embslim
HOST_BIN="${HOST_CARGO_TARGET_DIR:-target}/debug/embslim"
T1=$(date +%s)

# --- 2. the integration tests under qemu -----------------------------------------------
if [ "$RELEASE" != 2 ]; then
    echo "cross: cargo test --target $TARGET --no-default-features --test cli (profile $PROFILE, runner: $RUNNER)" >&2
    CROSS_RUNNER="$RUNNER" cargo test --locked --target "$TARGET" --no-default-features --profile "$PROFILE" --test cli -- "${EXTRA[@]}"
fi
T2=$(date +%s)

# --- 3. a real classification ------------------------------------------------------------
WORK="$CARGO_TARGET_DIR/$TARGET/check"
mkdir -p "$WORK"
for c in business entertainment politics sports tech; do
    for f in $(ls models/bbc-news/$c | sort | sed -n '301,310p'); do
        head -n 1 "models/bbc-news/$c/$f" | tr -d '\r'
    done
done >"$WORK/headlines.txt"

"$HOST_BIN" classify "$B" <"$WORK/headlines.txt" | cut -f1 >"$WORK/host-labels.txt"
"$HOST_BIN" embed "$B" --json <"$WORK/headlines.txt" >"$WORK/host-embed.jsonl"

check_bin() { # name binary
    local name="$1" bin="$2"
    EMBSLIM_BIN="$bin" bash cross/run.sh "$TARGET" classify "$B" <"$WORK/headlines.txt" | cut -f1 >"$WORK/$name-labels.txt"
    EMBSLIM_BIN="$bin" bash cross/run.sh "$TARGET" embed "$B" --json <"$WORK/headlines.txt" >"$WORK/$name-embed.jsonl"
    python3 - "$WORK" "$name" "$TARGET" <<'PY'
import json, math, sys
work, name, target = sys.argv[1:]
read = lambda p: open(p).read().split()
host, dev = read(f"{work}/host-labels.txt"), read(f"{work}/{name}-labels.txt")
classes = ["business", "entertainment", "politics", "sports", "tech"]
truth = [c for c in classes for _ in range(10)]
vecs = lambda p: [json.loads(l)["embedding"] for l in open(p)]
h, d = vecs(f"{work}/host-embed.jsonl"), vecs(f"{work}/{name}-embed.jsonl")
assert len(h) == len(d) == len(host) == len(dev) == 50, (len(h), len(d), len(host), len(dev))
cos = []
for a, b in zip(h, d):
    dot = sum(x * y for x, y in zip(a, b))
    cos.append(dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)))
maxabs = max(abs(x - y) for a, b in zip(h, d) for x, y in zip(a, b))
same = sum(x == y for x, y in zip(host, dev))
right = sum(x == y for x, y in zip(dev, truth))
print(f"cross: {target} {name} binary: {same}/50 BBC headline labels equal the host's "
      f"({right}/50 match the article's class); embedding cosine to host min {min(cos):.9f} "
      f"(max 1-cos {1 - min(cos):.2e}), max abs diff {maxabs:.2e}")
MIN_COS = 0.9999  # tests/cli.rs CROSS_PLATFORM_MIN_COS
if same != 50 or min(cos) < MIN_COS:
    for i, (x, y) in enumerate(zip(host, dev)):
        if x != y:
            print(f"cross:   headline {i + 1}: host {x}, {target} {y}", file=sys.stderr)
    sys.exit(1)
PY
}
[ "$RELEASE" = 2 ] || check_bin test "$CARGO_TARGET_DIR/$TARGET/$PDIR/embslim"
if [ "$RELEASE" != 0 ]; then
    bash cross/build.sh "$TARGET"
    check_bin release "$ROOT/target/$TARGET/release/embslim"
fi
T3=$(date +%s)
echo "cross: $TARGET passed (host fixtures $((T1 - T0))s, build+tests $((T2 - T1))s, classification $((T3 - T2))s)" >&2
