#!/usr/bin/env bash
# Cross-compiles one workspace crate's tests for aarch64 and runs them under qemu-user, so the
# NEON code paths are exercised on an x86-64 machine. Run .ci/setup-neon.sh first.
#
#   bash .ci/test-neon.sh [CRATE] [extra cargo test args...]     (CRATE defaults to lowbit-core)
#   e.g. bash .ci/test-neon.sh lowbit-core -- --nocapture some_test
#
# Environment knobs:
#   NEON_QEMU_CPU   qemu -cpu model (default: max = every extension qemu emulates, incl.
#                   dotprod, i8mm, fp16, sve); e.g. cortex-a53 for a NEON-only baseline
#   NEON_PROFILE    release (default) or dev
#   NEON_TIMEOUT    seconds before the whole run is killed (default 2400)
#   CARGO_TARGET_DIR  default: <repo>/target/neon
#
# Uses Debian's rustc (/usr/bin/rustc, package rustc-web) because rustup cannot fetch the
# aarch64 std here; cargo itself is whatever is on PATH. Test binaries are linked statically:
# dynamically linked ones hang on thread creation under this qemu.
set -euo pipefail

crate=${1:-lowbit-core}
[ $# -gt 0 ] && shift

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

target=aarch64-unknown-linux-gnu
cpu=${NEON_QEMU_CPU:-max}
profile=${NEON_PROFILE:-release}
tmo=${NEON_TIMEOUT:-2400}

missing=()
for f in /usr/bin/rustc /usr/bin/rustdoc; do [ -x "$f" ] || missing+=("$f"); done
for c in aarch64-linux-gnu-gcc qemu-aarch64 cargo; do command -v "$c" >/dev/null || missing+=("$c"); done
compgen -G "/usr/lib/rustlib/$target/lib/libstd-*.rlib" >/dev/null || missing+=("aarch64 std")
if [ ${#missing[@]} -gt 0 ]; then
    echo "test-neon: missing ${missing[*]}; run: bash .ci/setup-neon.sh" >&2
    exit 1
fi

# Generic RUSTFLAGS/RUSTDOCFLAGS would override the per-target ones below (dropping
# +crt-static, and host flags like -C target-cpu=native break aarch64), so drop them.
for v in RUSTFLAGS CARGO_ENCODED_RUSTFLAGS RUSTDOCFLAGS CARGO_ENCODED_RUSTDOCFLAGS; do
    if [ -n "${!v+x}" ]; then
        echo "test-neon: ignoring $v=${!v}" >&2
        unset "$v"
    fi
done

export RUSTC=/usr/bin/rustc
export RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/neon}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTDOCFLAGS="-C target-feature=+crt-static"
# Tests don't need the release profile's fat LTO / single codegen unit; they only slow the
# cross build down. Optimisation level (and thus the code paths) is unchanged.
if [ "$profile" = release ]; then
    export CARGO_PROFILE_RELEASE_LTO=${CARGO_PROFILE_RELEASE_LTO:-off}
    export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-16}
fi

echo "test-neon: crate=$crate target=$target profile=$profile"
echo "test-neon: qemu cpu: $cpu ($(qemu-aarch64 --version | head -1))"
echo "test-neon: rustc: $(/usr/bin/rustc --version); cargo: $(cargo --version)"
echo "test-neon: target dir: $CARGO_TARGET_DIR"

start=$(date +%s)
set +e
timeout -k 30 "$tmo" cargo test -p "$crate" --target "$target" --profile "$profile" "$@"
rc=$?
set -e
[ $rc -eq 124 ] && echo "test-neon: timed out after ${tmo}s" >&2
echo "test-neon: finished in $(($(date +%s) - start))s (exit $rc)"
exit $rc
