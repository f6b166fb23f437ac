#!/usr/bin/env python3
"""Models as real exporters write them, through moec and moert, against ONNX Runtime on the same file.

  - tests/fixtures/torchscript/mixtral_eager.onnx: the TorchScript exporter's (opset 17) graph of Mixtral's MoE
    block with transformers' default experts: NonZero for the experts hit and one per expert for its tokens,
    Gather'd expert weights, ScatterElements (made by tests/fixtures/torchscript/make_fixtures.py). Inputs of
    64 to 150 tokens (each hits all 8 experts, which the traced graph needs, as ONNX Runtime does).

Every output matches ONNX Runtime within 1e-5 relative to the largest magnitude.

    check_exporter_fixtures_e2e.py --moec build/bin/moec --lib build/lib/libmoert.so
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "runtime", "python"))
import moert  # noqa: E402

TOL = 1e-5
failures = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--lib", required=True, help="libmoert.so, for the Python binding")
    args = ap.parse_args()
    import onnxruntime as ort

    rng = np.random.default_rng(5)
    rt = moert.Runtime(args.lib)
    path = os.path.join(ROOT, "tests", "fixtures", "torchscript", "mixtral_eager.onnx")
    nonzero = sum(n.op_type == "NonZero" for n in onnx.load(path).graph.node)
    with tempfile.TemporaryDirectory() as tmp:
        art = os.path.join(tmp, "m.moex")
        r = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
        if r.returncode:
            check("TorchScript Mixtral block (eager experts)", False, "compile: " + r.stderr.strip())
        else:
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            m = rt.load(art, threads=2)
            worst = 0.0
            shapes = [(1, 64), (2, 75), (3, 50)]
            for b, s in shapes:
                x = rng.standard_normal((b, s, 32)).astype(np.float32)
                want = sess.run(None, {"x": x})[0]
                got = m.run({"x": x})["y"]
                worst = max(worst, np.inf if got.shape != want.shape else
                            float(np.abs(got - want).max() / np.abs(want).max()))
            m.close()
            check("TorchScript Mixtral block (eager experts)", nonzero >= 9 and worst <= TOL,
                  f"{nonzero} NonZero nodes; (batch, tokens) {shapes}: max |moec - ORT| / max |ORT| = {worst:.2e} "
                  f"(bound {TOL:g})")
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
