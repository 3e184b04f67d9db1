# Sourced by cross/*.sh: per-target settings shared by build.sh, run.sh and test.sh.
# The runner commands match .cargo/config.toml (keep the two in sync).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Cross builds get their own target dir: cargo locks a whole target dir while it builds,
# and the host build in target/ must not wait for (or invalidate) the ARM ones.
HOST_CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-}"
export CARGO_TARGET_DIR="${CROSS_TARGET_DIR:-$ROOT/target/cross}"

SUPPORTED="x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl aarch64-linux-android armv7-linux-androideabi"

die() { echo "cross: $*" >&2; exit 2; }

check_target() {
    local t="$1"
    case " $SUPPORTED " in
        *" $t "*) ;;
        *) die "unknown target '$t' (supported: $SUPPORTED)" ;;
    esac
}

# The qemu-user command that runs a binary built for $1 (empty for Android: no emulation here).
# x86_64 is the host itself: the device build (same flags as the ARM ones) that the memory
# benchmarks measure on this machine, started through `env` (no emulation).
runner_for() {
    case "$1" in
        x86_64-unknown-linux-gnu) echo "env" ;;
        aarch64-unknown-linux-gnu) echo "qemu-aarch64-static -L /usr/aarch64-linux-gnu -cpu cortex-a72" ;;
        armv7-unknown-linux-gnueabihf) echo "qemu-arm-static -L /usr/arm-linux-gnueabihf -cpu cortex-a7 -E TRACT_CPU_ARM32_NEON=true" ;;
        aarch64-unknown-linux-musl) echo "qemu-aarch64-static -cpu cortex-a72" ;;
        *) echo "" ;;
    esac
}

# The Debian cross toolchain prefix used for $1 (its gcc links, its objcopy edits objects).
gnu_prefix_for() {
    case "$1" in
        x86_64-unknown-linux-gnu) echo x86_64-linux-gnu ;;
        aarch64-unknown-linux-gnu | aarch64-unknown-linux-musl) echo aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
        *) echo "" ;;
    esac
}

# Debian packages: the cross linkers, their C libraries, qemu-user. Installed only when a
# needed command or sysroot is missing; `apt-get update` only when installing.
ensure_apt() {
    local t="$1" need=()
    case "$t" in
        aarch64-unknown-linux-gnu | aarch64-unknown-linux-musl)
            command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
            [ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || need+=(libc6-dev-arm64-cross)
            command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
            ;;
        armv7-unknown-linux-gnueabihf)
            command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf)
            [ -e /usr/arm-linux-gnueabihf/lib/libc.so.6 ] || need+=(libc6-dev-armhf-cross)
            command -v qemu-arm-static >/dev/null || need+=(qemu-user-static)
            ;;
        *) return 0 ;;
    esac
    [ ${#need[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "cross: installing ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# The target's standard library.
ensure_rust_target() {
    rustup target list --installed | grep -qx "$1" || rustup target add "$1"
}

# Android: the NDK's clang for cc-rs (tract's assembly) and the linker wrappers in cross/ndk.
setup_android() {
    local t="$1"
    [ -n "${ANDROID_NDK_HOME:-}" ] && [ -d "${ANDROID_NDK_HOME}" ] || die "$t needs the Android NDK: set ANDROID_NDK_HOME to it (r26 or later). Untested here; the static aarch64-unknown-linux-musl binary also runs from an Android shell."
    local bin="$ANDROID_NDK_HOME/toolchains/llvm/prebuilt/linux-x86_64/bin" api="${ANDROID_API:-24}" clang
    case "$t" in
        aarch64-linux-android) clang="aarch64-linux-android$api-clang" ;;
        armv7-linux-androideabi) clang="armv7a-linux-androideabi$api-clang" ;;
    esac
    [ -x "$bin/$clang" ] || die "$bin/$clang not found (check ANDROID_NDK_HOME and ANDROID_API)"
    local var="${t//-/_}"
    export "CC_$var=$bin/$clang" "AR_$var=$bin/llvm-ar"
}
