#!/usr/bin/env bash
# Runs the ONNX importer fuzzer for a bounded time (ctest `fuzz-onnx-import`), seeded with the ONNX backend
# node-test models from libonnx-testdata (all of them: every op moec imports, and the function ops it expands)
# and its small multi-node models (sequences built and taken apart).
# Fails on any crash or sanitizer report.
#   run-fuzzer.sh FUZZER WORKDIR [SECONDS]
set -euo pipefail
fuzzer=$(realpath "$1") work=$(realpath -m "$2") seconds=${3:-20}
corpus=$work/corpus
mkdir -p "$corpus" "$work/artifacts"
if [ -z "$(ls -A "$corpus")" ]; then
  for m in /usr/share/libonnx-testdata/data/node/*/model.onnx /usr/share/libonnx-testdata/data/simple/*/model.onnx; do
    [ -f "$m" ] || continue
    cp "$m" "$corpus/$(basename "$(dirname "$m")").onnx"
  done
fi
# Inputs that once crashed the importer (tests/fuzz/regressions) always run first.
here=$(cd "$(dirname "$0")" && pwd)
for r in "$here"/regressions/*.onnx; do
  [ -f "$r" ] && cp "$r" "$corpus/regression-$(basename "$r")"
done
echo "fuzzing the ONNX importer for ${seconds}s with $(ls "$corpus" | wc -l) seed models"
cd "$work"
exec "$fuzzer" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/" "$corpus"
