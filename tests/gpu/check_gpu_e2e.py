#!/usr/bin/env python3
"""The GPU kernels end to end: the CPU e2e fixtures compiled with `--target=cpu,hip,cuda`, run by
`moert run --device=gpu`, compared with the same references as the CPU test (ONNX Runtime or the NumPy
oracle) and with moert's own CPU run of the same artifact (int8/int4 weights, moec's own and ONNX Runtime QMoE's,
included).

Two phases, so the GPU half runs where moec cannot (a lent GPU machine without LLVM):

  check_gpu_e2e.py --moec build/bin/moec --moert build/bin/moert --prepare DIR   compile + references into DIR
  check_gpu_e2e.py --moert build/bin/moert --run DIR [--device cuda]             run them on the GPU and compare
  check_gpu_e2e.py --moec ... --moert ...                                        both (ctest `gpu-e2e`)

With no GPU driver or device, exits 77 (ctest: skipped). Tolerance: max |gpu - reference| / max |reference|
<= 1e-4 (f32 accumulation everywhere; the GPU sums slots and F splits with atomics, in no fixed order), and
the same bound between the GPU and CPU runs. bf16 transformers blocks and the int8 ones with quantised shared
experts are held to the CPU test's stated bounds (bf16 1e-2, int8 3e-2) against ONNX Runtime on the fp32 model,
and to 1e-4 against moert's CPU run of the artifact. Layers with a low-rank predictor have no GPU kernels yet: their
cases are listed as not run.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))

TOLERANCE = 1e-4
TOKENS = [1, 3, 8, 40, 300]


def rel_error(got, want):
    want = np.asarray(want, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / max(np.max(np.abs(want)), 1e-30))


def gpu_cases(tmp):
    import check_cpu_e2e as e2e
    cases = (list(e2e.transformers_cases()) + list(e2e.ort_moe_cases(tmp)) + list(e2e.qmoe_cases(tmp)) +
             list(e2e.sparse_moe_cases(tmp)))
    for name, model, feeds, reference in cases:
        extra, ref_model, tolerance = (), model, TOLERANCE
        if isinstance(reference, tuple):
            reference, ref_model, extra, drift = reference
            if ref_model is None:  # only the stated bound against the fp32 model (quantised shared experts)
                ref_model, tolerance = model, drift
        if "predictor" in name:
            yield name, None, None, None, None, "no GPU kernels yet (low-rank predictor)"
            continue
        yield name, model, feeds, reference, (ref_model, tuple(extra), tolerance), None
    # The bf16 transformers blocks (the weights a GPU deployment stores): against ONNX Runtime on the fp32 model
    # within the CPU test's stated bf16 bound, and against moert's CPU run of the same artifact within 1e-4.
    for family in ["mixtral", "qwen2_moe", "deepseek_v3"]:
        path = os.path.join(e2e.ROOT, "tests", "fixtures", "transformers", f"{family}.onnx")
        feeds = next(f for n, p, f, r in e2e.transformers_cases() if p == path)
        yield (f"transformers/{family} (bf16)", path, feeds, "ort", (path, ("--weights=bf16",), e2e.DRIFT["bf16"]),
               None)


def prepare(args, out):
    import check_cpu_e2e as e2e
    os.makedirs(out, exist_ok=True)
    manifest = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model, feeds, reference, ref, skip) in enumerate(gpu_cases(tmp)):
            entry = {"name": name, "skip": skip, "runs": []}
            manifest.append(entry)
            if skip:
                continue
            ref_model, extra, entry["tolerance"] = ref
            artifact = os.path.join(out, f"case{i}.moex")
            run = subprocess.run([args.moec, "compile", model, "-o", artifact, "--target=cpu,hip,cuda", "--quiet",
                                  *extra], capture_output=True, text=True)
            if run.returncode != 0:
                entry["skip"] = "moec compile failed: " + run.stderr.strip().splitlines()[-1]
                continue
            entry["artifact"] = os.path.basename(artifact)
            rng = np.random.default_rng(3)
            for t in TOKENS:
                d = feeds(t, rng)
                want = e2e.ort_run(ref_model, d) if reference == "ort" else reference(d)
                files = {}
                for k, v in d.items():
                    files[k] = f"case{i}_T{t}_{k}.npy"
                    np.save(os.path.join(out, files[k]), v)
                np.save(os.path.join(out, f"case{i}_T{t}_want.npy"), np.asarray(want, np.float32))
                entry["runs"].append({"T": t, "inputs": files, "want": f"case{i}_T{t}_want.npy"})
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def moert_run(moert, artifact, inputs, device, tmp):
    outdir = os.path.join(tmp, "out")
    shutil.rmtree(outdir, ignore_errors=True)
    cmd = [moert, "run", artifact, "--output-dir", outdir, f"--device={device}"]
    for k, v in inputs.items():
        cmd += ["--input", f"{k}={v}"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(run.stderr.strip())
    outs = [ln.split(" -> ")[1] for ln in run.stdout.splitlines() if ln.startswith("output ")]
    return np.load(outs[0])


def run_all(args, where):
    probe = subprocess.run([args.moert, "devices", "--device", args.device], capture_output=True, text=True)
    if probe.returncode != 0:
        print("skipped: " + probe.stderr.strip())
        return 77
    print("device: " + probe.stdout.strip())
    with open(os.path.join(where, "manifest.json")) as f:
        manifest = json.load(f)
    failures = ran = 0
    with tempfile.TemporaryDirectory() as tmp:
        for entry in manifest:
            if entry["skip"]:
                print(f"--   {entry['name']:48s} not run: {entry['skip']}")
                continue
            ran += 1
            errors, worst, worst_cpu = [], 0.0, 0.0
            artifact = os.path.join(where, entry["artifact"])
            for r in entry["runs"]:
                inputs = {k: os.path.join(where, v) for k, v in r["inputs"].items()}
                want = np.load(os.path.join(where, r["want"]))
                try:
                    got = moert_run(args.moert, artifact, inputs, args.device, tmp)
                    cpu = moert_run(args.moert, artifact, inputs, "cpu", tmp)
                except RuntimeError as e:
                    errors.append(f"T={r['T']}: {e}")
                    continue
                if got.shape != want.shape:
                    errors.append(f"T={r['T']}: shape {got.shape}, reference {want.shape}")
                    continue
                err, err_cpu = rel_error(got, want), rel_error(got, cpu)
                worst, worst_cpu = max(worst, err), max(worst_cpu, err_cpu)
                if not (err <= entry["tolerance"] and err_cpu <= TOLERANCE):
                    errors.append(f"T={r['T']}: {err:.2e} from the reference, {err_cpu:.2e} from moert's CPU run")
            print(f"{'ok  ' if not errors else 'FAIL'} {entry['name']:48s} T={[r['T'] for r in entry['runs']]} "
                  f"max rel error {worst:.2e} (bound {entry['tolerance']:g}; vs CPU run {worst_cpu:.2e})")
            for e in errors:
                print("       " + e)
            failures += bool(errors)
    print(f"{ran - failures}/{ran} cases match within {TOLERANCE:g} on the GPU "
          f"({sum(1 for e in manifest if e['skip'])} not run)")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec")
    ap.add_argument("--moert", required=True)
    ap.add_argument("--device", default="gpu", choices=["gpu", "cuda", "hip"])
    ap.add_argument("--prepare", metavar="DIR")
    ap.add_argument("--run", metavar="DIR")
    args = ap.parse_args()
    if args.prepare:
        if not args.moec:
            ap.error("--prepare needs --moec")
        prepare(args, args.prepare)
        return 0
    if args.run:
        return run_all(args, args.run)
    if not args.moec:
        ap.error("--moec is needed unless --run DIR")
    probe = subprocess.run([args.moert, "devices", "--device", args.device], capture_output=True, text=True)
    if probe.returncode != 0:
        print("skipped: " + probe.stderr.strip())
        return 77
    with tempfile.TemporaryDirectory() as where:
        prepare(args, where)
        return run_all(args, where)


if __name__ == "__main__":
    sys.exit(main())
