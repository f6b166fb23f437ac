#!/usr/bin/env bash
# Runs the artifact-loader fuzzer for a bounded time (ctest `fuzz-moert-load`), seeded with artifacts that
# moec compiles from small MoE models. Fails on any crash or sanitizer report.
#   run-loader-fuzzer.sh FUZZER MOEC WORKDIR [SECONDS]
set -euo pipefail
fuzzer=$(realpath "$1") moec=$(realpath "$2") work=$(realpath -m "$3") seconds=${4:-15}
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
corpus=$work/corpus
mkdir -p "$corpus" "$work/artifacts"
if [ -z "$(ls -A "$corpus")" ]; then
  "$moec" compile "$src/tests/fixtures/transformers/mixtral.onnx" -o "$corpus/mixtral.moex" --quiet
  "$moec" compile "$src/tests/fixtures/transformers/deepseek_v3.onnx" -o "$corpus/deepseek.moex" --quiet
fi
echo "fuzzing the artifact loader for ${seconds}s with $(ls "$corpus" | wc -l) seed artifacts"
cd "$work"
exec "$fuzzer" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 -max_len=400000 -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/" "$corpus"
