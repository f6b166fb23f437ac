#!/usr/bin/env bash
# Runs the tokenizer.json fuzzer for a bounded time (ctest `fuzz-tokenizer`), seeded with the six tokenizers
# tests/e2e/check_tokenizer.py trains (each file, a 0 byte, a sample text). Fails on any crash or report.
#   run-tokenizer-fuzzer.sh FUZZER WORKDIR [SECONDS]
set -euo pipefail
fuzzer=$(realpath "$1") work=$(realpath -m "$2") seconds=${3:-15}
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
corpus=$work/corpus
mkdir -p "$corpus" "$work/artifacts"
if [ -z "$(ls -A "$corpus")" ]; then
  python3 - "$src/tests/e2e" "$corpus" <<'PY'
import os, sys, tempfile
import numpy as np
sys.path.insert(0, sys.argv[1])
import check_tokenizer as ct
rng = np.random.default_rng(1)
with tempfile.TemporaryDirectory() as tmp:
    for kind in ("gpt2", "llama3", "sentencepiece", "metaspace", "mixed", "wordlevel"):
        path, specials = ct.build(kind, rng, tmp)
        with open(path, "rb") as f:
            spec = f.read()
        with open(os.path.join(sys.argv[2], kind), "wb") as f:
            f.write(spec + b"\0" + ct.sample_text(rng, specials).encode())
PY
fi
echo "fuzzing the tokenizer.json reader for ${seconds}s with $(ls "$corpus" | wc -l) seeds"
cd "$work"
exec "$fuzzer" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 -max_len=200000 -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/" "$corpus"
