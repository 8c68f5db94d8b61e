#!/usr/bin/env bash
# Installs the Debian 12 packages lua-fiskaly needs and builds it into build/.
#   bash scripts/bootstrap.sh            # packages + build/
#   FISKALY_SKIP_APT=1 bash scripts/bootstrap.sh   # build only
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake pkg-config ca-certificates
  lua5.4 liblua5.4-dev lua-cjson lua-unit
  libcurl4-openssl-dev libssl-dev openssl libsqlite3-dev libmicrohttpd-dev
  clang libclang-rt-14-dev
)

if [ -z "${FISKALY_SKIP_APT:-}" ]; then
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "==> installing: ${missing[*]}"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
  fi
fi

echo "==> building (build/)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
