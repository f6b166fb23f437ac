#!/usr/bin/env bash
# The README's demo: the furthest real step of the pipeline that exists today. Run by `make demo` and, as
# an end-to-end check, by ctest (label e2e). Prints each command before it runs it.
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${MOEC_BUILD:-$src/build}
[[ "$build" = /* ]] || build="$src/$build"
opt="$build/bin/moec-opt"
plugin="$build/lib/MoECExamplePlugin.so"
example="$src/examples/mlir/moe_layers.mlir"
[ -x "$opt" ] || { echo "demo: $opt not built; run 'make build' first" >&2; exit 1; }

run() { echo; echo "\$ ${*/#$src\//}"; "$@"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
t0=$EPOCHREALTIME

echo "== moec demo =="
echo "-- 0. import an ONNX router (ONNX text syntax) into moec's graph IR"
run "$build/bin/moec" import "$src/examples/mlir/router.onnxtxt"
echo "-- 0b. compile a Qwen2-MoE layer exported from PyTorch: RMSNorm, router, experts, gated shared expert and"
echo "--     residual Add become one moe.sparse_moe dispatch (the report goes to stderr)"
run "$build/bin/moec" compile --emit=mlir "$src/tests/fixtures/transformers/qwen2_moe.onnx" --report -o "$tmp/qwen2_moe.mlir" 2>&1 \
  | grep -v "warning: "
echo "   ops left in the compiled graph:"
grep -oE "= (onnx|moe|arith)\.[A-Za-z_]+" "$tmp/qwen2_moe.mlir" | sort | uniq -c | sed 's/= //; s/^/  /'
echo "-- 0c. the same model compiled for this CPU and run by moert; checked against ONNX Runtime's output"
fixture="$src/tests/fixtures/transformers/qwen2_moe"
run "$build/bin/moec" compile "$fixture.onnx" -o "$tmp/qwen2_moe.moex" --cpu=native
run "$build/bin/moert" inspect "$tmp/qwen2_moe.moex"
python3 -c "import numpy as np; np.save('$tmp/x.npy', np.load('$fixture.npz')['input'])"
run "$build/bin/moert" run "$tmp/qwen2_moe.moex" --input "hidden_states=$tmp/x.npy" --output-dir "$tmp/out" --repeat 50
python3 - "$fixture.npz" "$tmp/out/output.npy" <<'PY'
import sys, numpy as np
want, got = np.load(sys.argv[1])["output"].astype(np.float64), np.load(sys.argv[2]).astype(np.float64)
err = np.abs(got - want).max() / np.abs(want).max()
print(f"   max relative error vs ONNX Runtime: {err:.2e} ({'ok' if err <= 1e-4 else 'MISMATCH'}, tolerance 1e-4)")
sys.exit(0 if err <= 1e-4 else 1)
PY
echo "-- 0d. generate tokens: a small Qwen3-MoE-like decoder with KV caches (PyTorch export, random weights) compiled"
echo "--     for this CPU; moert generate runs the prompt, then decodes token by token, keeping the caches itself"
decoder="$src/tests/fixtures/transformers/past_qwen3_moe.onnx"
run "$build/bin/moec" compile "$decoder" -o "$tmp/decoder.moex" --cpu=native --quiet
python3 -c "import numpy as np; np.save('$tmp/prompt.npy', np.array([[3, 1, 4, 1, 5, 9]], np.int64))"
run "$build/bin/moert" generate "$tmp/decoder.moex" --prompt-ids "$tmp/prompt.npy" --max-new-tokens 32 --greedy \
  --output "$tmp/tokens.npy"
python3 - "$src" "$decoder" "$tmp/tokens.npy" <<'PY'
import sys, numpy as np
sys.path.insert(0, sys.argv[1] + "/tests/e2e")
from check_generate import ort_greedy
want, got = ort_greedy(sys.argv[2], [3, 1, 4, 1, 5, 9], 32), np.load(sys.argv[3]).tolist()
print(f"   ONNX Runtime's greedy loop on the same file: {'the same 32 tokens' if got == want else 'DIFFERENT: ' + str(want)}")
sys.exit(0 if got == want else 1)
PY
echo "-- 0e. text in and out: a word-level tokenizer.json for the decoder's 32 ids (w0 .. w31, made with Hugging Face's"
echo "--     tokenizers) goes into the artifact; moert generate --prompt encodes the text and streams the new words"
python3 - "$tmp/tokenizer.json" <<'PY'
import sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(32)}, unk_token="w0"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok.decoder = decoders.WordPiece(prefix="##")
tok.save(sys.argv[1])
PY
run "$build/bin/moec" compile "$decoder" -o "$tmp/decoder_text.moex" --cpu=native --quiet --tokenizer "$tmp/tokenizer.json"
run "$build/bin/moert" generate "$tmp/decoder_text.moex" --prompt "w3 w1 w4 w1 w5 w9" --max-new-tokens 12 --stream
echo "-- the MoE layers in examples/mlir/moe_layers.mlir through moec-opt"
echo "-- 1. cost of each layer per token (moe-print-cost; remarks go to stderr)"
run "$opt" "$example" --moe-print-cost -o /dev/null 2>&1
echo "-- 2. canonicalise: the zero router bias and the keep-everything mask disappear"
run "$opt" "$example" --canonicalize --symbol-dce
echo "-- 3. a user's pass from a plugin (examples/plugin): cap top-k at 1"
if [ -f "$plugin" ]; then
  run "$opt" "$example" --load-pass-plugin="$plugin" --load-dialect-plugin="$plugin" \
    --pass-pipeline='builtin.module(moe-example-cap-topk{max-k=1},canonicalize)' -o "$tmp/capped.mlir"
  grep -E "moe_example.note|k = " "$tmp/capped.mlir" | sed 's/^ */  /' | cut -c1-160
  run "$opt" "$example" --load-pass-plugin="$plugin" --load-dialect-plugin="$plugin" \
    --pass-pipeline='builtin.module(moe-example-cap-topk{max-k=1},func.func(moe-print-cost))' -o /dev/null 2>&1
else
  echo "(examples not built: configure with -DMOEC_BUILD_EXAMPLES=ON)"
fi
t1=$EPOCHREALTIME
printf '\n== demo done in %s s ==\n' "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')"
