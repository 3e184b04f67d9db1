#!/usr/bin/env bash
# Run the device binary built by cross/build.sh for TARGET under qemu-user, with ARGS;
# stdin, stdout and stderr pass through and the exit code is the binary's.
#
#   bash cross/run.sh aarch64-unknown-linux-gnu classify BUNDLE "The striker scored twice"
#   echo "some text" | bash cross/run.sh armv7-unknown-linux-gnueabihf embed BUNDLE --json
#
# EMBSLIM_BIN=path runs another build of the binary (cross/test.sh uses the test build).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[ $# -ge 1 ] || die "usage: cross/run.sh TARGET ARGS..."
TARGET="$1"
shift
check_target "$TARGET"
RUNNER="$(runner_for "$TARGET")"
[ -n "$RUNNER" ] || die "$TARGET cannot be emulated here: copy the binary to the device (adb push ... /data/local/tmp)"
BIN="${EMBSLIM_BIN:-$ROOT/target/$TARGET/release/embslim}"
[ -x "$BIN" ] || die "$BIN is missing: run bash cross/build.sh $TARGET first"
ensure_apt "$TARGET"
# word splitting of $RUNNER is intended: it is a command with its options
exec $RUNNER "$BIN" "$@"
