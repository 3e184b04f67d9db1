#!/usr/bin/env bash
# Linker wrapper for release device builds (set by cross/build.sh, not .cargo/config.toml):
# removes the DWARF unwind tables (.eh_frame) from rustc's own object files, then links
# with the real cross gcc ($CROSS_LINKER).
#
# Why: the release profile has panic = "abort", so nothing ever unwinds, yet LLVM still
# emits call-frame information for nearly every function (-C force-unwind-tables=no does not
# remove it under fat LTO): 1.9 MB of the 9.3 MiB aarch64 binary. Without it the binary is
# 7.5 MiB. The one loss: a panic prints its message but no backtrace. Tests (panic =
# unwind) are built without this wrapper.
set -euo pipefail
: "${CROSS_LINKER:?set by cross/build.sh}" "${CROSS_OBJCOPY:?set by cross/build.sh}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
args=()
n=0
for a in "$@"; do
    case "$a" in
        *.rcgu.o)
            n=$((n + 1))
            "$CROSS_OBJCOPY" --remove-section=.eh_frame --remove-section=.rela.eh_frame "$a" "$tmp/$n.o"
            args+=("$tmp/$n.o")
            ;;
        *) args+=("$a") ;;
    esac
done
"$CROSS_LINKER" "${args[@]}"
