#!/usr/bin/env bash
# Runs the moert_run input fuzzer for a bounded time (ctest `fuzz-moert-run`) on small artifacts moec compiles
# here with their kernels built with AddressSanitizer (an MoE block; a whole two-layer model taking token ids,
# so out-of-range ids reach the embedding Gather). Fails on any crash or sanitizer report.
#   run-run-fuzzer.sh FUZZER MOEC WORKDIR [SECONDS]
set -euo pipefail
fuzzer=$(realpath "$1") moec=$(realpath "$2") work=$(realpath -m "$3") seconds=${4:-15}
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$work/corpus" "$work/artifacts"
models=""
for f in qwen2_moe whole_qwen3_moe; do
  out=$work/$f.moex
  [ -f "$out" ] && [ "$out" -nt "$moec" ] ||
    "$moec" compile "$src/tests/fixtures/transformers/$f.onnx" -o "$out" --quiet --sanitize=address 2>/dev/null
  models=$models${models:+:}$out
done
# Seeds: each model's inputs with small valid shapes.
printf '\x00\x01\x00\x03\x02\x05\x20' > "$work/corpus/block"
printf '\x01\x01\x00\x02\x01\x07' > "$work/corpus/whole"
echo "fuzzing moert_run's inputs for ${seconds}s on $models"
cd "$work"
MOERT_FUZZ_ARTIFACTS=$models exec "$fuzzer" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 \
  -max_len=4096 -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus"
