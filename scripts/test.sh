#!/usr/bin/env bash
# Installs, builds and runs every test: the normal build, then the same tests
# again on an ASan+UBSan build (build-asan/), with a short libFuzzer run between.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

echo "==> tests (build/)"
ctest --test-dir build --output-on-failure -j2

echo "==> short fuzz run (20000 executions per target; fuzz/README.md has the long run)"
sh fuzz/run.sh 20000

echo "==> building with ASan+UBSan (build-asan/)"
cmake -S . -B build-asan -DFISKALY_SANITIZERS=ON -DFISKALY_WERROR=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-asan -j"$(nproc)"
echo "==> tests (build-asan/)"
ctest --test-dir build-asan --output-on-failure -j2
