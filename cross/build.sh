#!/usr/bin/env bash
# Build the device binary (no `train` feature) for TARGET and leave it at
# target/TARGET/release/embslim (target/TARGET/debug/embslim with --profile dev).
# Installs what it needs: Debian cross gcc + qemu-user-static, the rustup target.
#
#   bash cross/build.sh aarch64-unknown-linux-gnu
#   bash cross/build.sh armv7-unknown-linux-gnueabihf
#   bash cross/build.sh aarch64-unknown-linux-musl      # static: also runs from an Android shell
#   ANDROID_NDK_HOME=... bash cross/build.sh aarch64-linux-android   # untested here
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[ $# -ge 1 ] || die "usage: cross/build.sh TARGET [--profile release|dev]"
TARGET="$1"
shift
PROFILE=release
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILE="${2:?--profile needs release or dev}"; shift 2 ;;
        --profile=*) PROFILE="${1#--profile=}"; shift ;;
        *) die "unknown option $1" ;;
    esac
done
check_target "$TARGET"
case "$PROFILE" in release) DIR=release ;; dev) DIR=debug ;; *) die "profile must be release or dev" ;; esac

case "$TARGET" in
    *-android*) setup_android "$TARGET" ;;
    *) ensure_apt "$TARGET" ;;
esac
ensure_rust_target "$TARGET"

cd "$ROOT"
start=$(date +%s)
EXTRA=()
STRIP=""
prefix="$(gnu_prefix_for "$TARGET")"
if [ "$PROFILE" = release ] && [ -n "$prefix" ]; then
    # functions in the order inference runs them (build.rs; tools/code_order.py writes the
    # list): resident code 9.2 -> 2.8 MB on x86_64 (cross/README.md, "Code order")
    order="$ROOT/cross/order/$TARGET.txt"
    [ -f "$order" ] && export EMBSLIM_CODE_ORDER="$order"
    # linked with symbols, stripped on the copy: tools/code_order.py reads the symbols of
    # this very build ($CARGO_TARGET_DIR/TARGET/release/embslim)
    export CARGO_PROFILE_RELEASE_STRIP=false
    # link through cross/nocfi-link.sh: drops the unwind tables panic = "abort" never uses
    export CROSS_LINKER="$prefix-gcc" CROSS_OBJCOPY="$prefix-objcopy"
    STRIP="$CROSS_OBJCOPY"
    EXTRA+=(--config "target.$TARGET.linker=\"$ROOT/cross/nocfi-link.sh\"")
    # non-PIE: a PIE this size carries 1.1 MB of relative relocations (.rela.dyn). Only
    # here, not in .cargo/config.toml, so the tests' build (and its CI cache) is unchanged.
    # Android requires PIE: its targets have no gnu prefix and never get here.
    FLAGS='"-C", "relocation-model=static"'
    # armv7: Thumb-2 code (every Pi since the 2 runs it) is 27 % smaller than A32: 7.4 vs
    # 10.2 MB. rustc calls the feature unstable and warns; the thumbv7neon target is the same.
    [ "$TARGET" = armv7-unknown-linux-gnueabihf ] && FLAGS="$FLAGS, \"-C\", \"target-feature=+thumb-mode\""
    EXTRA+=(--config "target.$TARGET.rustflags=[$FLAGS]")
fi
if [ "$TARGET" = aarch64-unknown-linux-musl ]; then
    # cc-rs (tract-linalg's assembly kernels) would look for aarch64-linux-musl-gcc
    export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
fi
cargo build --locked --bin embslim --no-default-features --profile "$PROFILE" --target "$TARGET" "${EXTRA[@]}"
secs=$(( $(date +%s) - start ))

mkdir -p "target/$TARGET/$DIR"
if [ -n "$STRIP" ]; then
    "$STRIP" --strip-all "$CARGO_TARGET_DIR/$TARGET/$DIR/embslim" "target/$TARGET/$DIR/embslim.tmp"
else
    cp "$CARGO_TARGET_DIR/$TARGET/$DIR/embslim" "target/$TARGET/$DIR/embslim.tmp"
fi
mv "target/$TARGET/$DIR/embslim.tmp" "target/$TARGET/$DIR/embslim"
out="target/$TARGET/$DIR/embslim"
bytes=$(stat -c %s "$out")
echo "cross: $out ($PROFILE, built in ${secs}s): $bytes bytes ($(awk -v b="$bytes" 'BEGIN{printf "%.2f MiB", b/1048576}'))"
if [ "$PROFILE" = release ] && command -v file >/dev/null; then
    file -b "$out" | sed 's/^/cross: /'
fi
