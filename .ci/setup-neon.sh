#!/usr/bin/env bash
# Installs what .ci/test-neon.sh needs to cross-compile Rust tests for aarch64 and run them
# under qemu-user, from Debian's packages only (rustup cannot download targets here):
#   rustc-web                  Debian's rustc + rustdoc (/usr/bin/rustc), x86-64 host
#   libstd-rust-web-dev:arm64  the matching std for aarch64-unknown-linux-gnu
#   gcc-aarch64-linux-gnu      cross linker (+ binutils)
#   libc6-dev-arm64-cross      aarch64 glibc, static libs for +crt-static
#   qemu-user                  qemu-aarch64
# Idempotent: does nothing when all of it is installed and working. Non-interactive.
# Exits non-zero on any failure. Needs root (or passwordless sudo).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PKGS=(rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
TARGET=aarch64-unknown-linux-gnu

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup-neon: need root or sudo" >&2; exit 1; }
    SUDO=(sudo -n)
fi

pkg_installed() { [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]; }
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null; }

is_ready() {
    local p
    for p in "${PKGS[@]}"; do pkg_installed "$p" || return 1; done
    # host rustc and aarch64 std must be the same build
    [ "$(pkg_version rustc-web)" = "$(pkg_version libstd-rust-web-dev:arm64)" ] || return 1
    [ -x /usr/bin/rustc ] && [ -x /usr/bin/rustdoc ] || return 1
    compgen -G "/usr/lib/rustlib/$TARGET/lib/libstd-*.rlib" >/dev/null || return 1
    command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null
}

retry() { # retry N cmd...: apt mirrors occasionally fail transiently
    local n=$1 i; shift
    for ((i = 1; i <= n; i++)); do
        "$@" && return 0
        [ "$i" -lt "$n" ] && { echo "setup-neon: attempt $i failed, retrying: $*" >&2; sleep $((i * 5)); }
    done
    return 1
}

smoke_test() { # cross-compile and run a threaded static binary under qemu
    local d rc=0
    d=$(mktemp -d)
    smoke_build_run "$d" || rc=$?
    rm -rf "$d"
    return $rc
}

smoke_build_run() {
    local d=$1
    cat >"$d/t.rs" <<'EOF'
fn main() {
    let h: Vec<_> = (0..4).map(|i| std::thread::spawn(move || i * 2)).collect();
    let s: i32 = h.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(s, 12);
    assert!(std::arch::is_aarch64_feature_detected!("neon"));
    println!("ok");
}
EOF
    /usr/bin/rustc --edition 2021 --target "$TARGET" -C linker=aarch64-linux-gnu-gcc \
        -C target-feature=+crt-static -o "$d/t" "$d/t.rs"
    [ "$(timeout 60 qemu-aarch64 -cpu max "$d/t")" = ok ]
}

if is_ready; then
    echo "setup-neon: already installed ($(/usr/bin/rustc --version), $(qemu-aarch64 --version | head -1))"
    exit 0
fi

start=$(date +%s)
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "setup-neon: dpkg --add-architecture arm64"
    "${SUDO[@]}" dpkg --add-architecture arm64
fi
APT=("${SUDO[@]}" apt-get -q -y -o DPkg::Lock::Timeout=300)
echo "setup-neon: apt-get update"
retry 3 "${APT[@]}" update
echo "setup-neon: apt-get install ${PKGS[*]}"
retry 3 "${APT[@]}" install --no-install-recommends "${PKGS[@]}"

if ! is_ready; then
    echo "setup-neon: packages installed but the toolchain is incomplete" >&2
    exit 1
fi
if ! smoke_test; then
    echo "setup-neon: smoke test (cross-compile + qemu run) failed" >&2
    exit 1
fi
echo "setup-neon: done in $(($(date +%s) - start))s: $(/usr/bin/rustc --version), $(qemu-aarch64 --version | head -1)"
