#!/bin/sh
# fuzz/run.sh -- builds the libFuzzer targets (clang, ASan + UBSan) and runs each one.
#   fuzz/run.sh [runs]            default 1000000 executions per target
# Needs a normal build in build/ first (the seed script loads fiskaly.core from it).
# Environment: FUZZ_OUT (default build-fuzz), FISKALY_SHARED_DIR (default ../shared),
#              FUZZ_TARGETS (default "qr log lua"), FUZZ_JOBS extra libFuzzer flags.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${FUZZ_OUT:-$ROOT/build-fuzz}
SHARED=${FISKALY_SHARED_DIR:-$ROOT/../shared}
RUNS=${1:-1000000}
TARGETS=${FUZZ_TARGETS:-"qr log lua"}
CC=${CC:-clang}

mkdir -p "$OUT"
CFLAGS="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="$CFLAGS -DFISKALY_VERSION=\"fuzz\" -DFISKALY_LUA_DIR=\"$ROOT/lua\" -I$ROOT/core $(pkg-config --cflags lua5.4 libcurl sqlite3 openssl)"
LIBS="$(pkg-config --libs lua5.4 libcurl sqlite3 openssl) -lm"

mkdir -p "$OUT/corpus_qr" "$OUT/corpus_log" "$OUT/corpus_lua"
for t in $TARGETS; do
  # shellcheck disable=SC2086
  $CC $CFLAGS -o "$OUT/fuzz_$t" "$ROOT/fuzz/fuzz_$t.c" "$ROOT"/core/*.c $LIBS
  mkdir -p "$OUT/corpus_$t" "$OUT/work_$t"
done

LUA_PATH="$ROOT/lua/?.lua;;" LUA_CPATH="$ROOT/build/lib/?.so;;" \
  lua5.4 "$ROOT/fuzz/seeds.lua" "$SHARED/testdata/tse-vectors" "$OUT/corpus_qr" "$OUT/corpus_log" "$OUT/corpus_lua"

for t in $TARGETS; do
  echo "== fuzz_$t: $RUNS runs"
  # shellcheck disable=SC2086
  # full libFuzzer output in $OUT/fuzz_$t.log; the summary lines are echoed
  status=0
  ASAN_OPTIONS=detect_leaks=1 "$OUT/fuzz_$t" -runs="$RUNS" -max_len=8192 -print_final_stats=1 \
    ${FUZZ_JOBS:-} "$OUT/work_$t" "$OUT/corpus_$t" > "$OUT/fuzz_$t.log" 2>&1 || status=$?
  grep -E "INITED|DONE|^Done|stat::|ERROR|SUMMARY" "$OUT/fuzz_$t.log" || true
  if [ "$status" -ne 0 ]; then
    echo "fuzz_$t FAILED (exit $status): see $OUT/fuzz_$t.log" >&2
    exit "$status"
  fi
done
