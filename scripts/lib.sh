# Shared by the scripts: install what the build needs, pick the build cache.
# shellcheck shell=bash
set -euo pipefail

# RocksDB's C++ takes ~10 minutes to compile here; keep the target dir outside the
# clone so that a fresh clone on the same machine reuses it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/helios-target}"
export PATH="$HOME/.cargo/bin:$PATH"

need_pkgs=(clang libclang-dev pkg-config protobuf-compiler fuse3 sqlite3 git python3 python3-venv bubblewrap containerd runc podman busybox-static systemd)

install_deps() {
    local missing=()
    for p in "${need_pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "installing: ${missing[*]}" >&2
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
}
