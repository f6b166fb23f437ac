#!/usr/bin/env python3
"""moec's linear kernel vs GEMM libraries on the same shapes, in one run: which one should linear dispatches use?

Compiles tests/kernels/linear_kernel_test.cpp for this CPU (-march=native) and runs its --perf mode (K = N =
2048, M = 1, 8, 128, 512, every storage, bf16 with bf16 activations too, all threads), then times the BLAS numpy
links (OpenBLAS in the PyPI wheels) on the same f32 GEMMs with the same threads, and the Debian packages'
libraries bench/gemm_libs.cpp is built with where they are installed (`apt-get install libdnnl-dev libblis-dev
libxsmm-dev`): oneDNN's f32 sgemm, its bf16 matmul (weights reordered once into its own layout) and its
u8 x s8 -> s32 gemm, BLIS's and libxsmm's f32 gemm. None of them reads moec's block-quantised int8 / int4 rows
(a scale per 32 input features): oneDNN's integer gemm is the nearest (one scale for the whole product).

    python3 bench/gemm_candidates.py [--threads N]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def ours(threads):
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "perf")
        subprocess.run(["clang++-19", "-std=c++17", "-O3", "-march=native", "-Wno-psabi", "-Wno-invalid-feature-combination", f"-I{ROOT}",
                        f"-I{os.path.join(ROOT, 'kernels', 'cpu')}",
                        os.path.join(ROOT, "tests", "kernels", "linear_kernel_test.cpp"),
                        os.path.join(ROOT, "codegen", "WeightPacking.cpp"), "-o", exe, "-lpthread"], check=True)
        env = dict(os.environ)
        out = subprocess.run([exe, "--perf"], capture_output=True, text=True, check=True, env=env).stdout
    rows = {}
    for m in re.finditer(r"perf (\S+)\s+K=(\d+) N=(\d+) M=(\d+)\s+([\d.]+) ms\s+([\d.]+) GFLOP/s\s+([\d.]+) GB/s", out):
        rows[(m.group(1), int(m.group(4)))] = (float(m.group(5)), float(m.group(6)), float(m.group(7)))
    return rows


def blas(threads):
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    import numpy as np
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2048, 2048), dtype=np.float32)
    res = {}
    for m in (1, 8, 128, 512):
        x = rng.standard_normal((m, 2048), dtype=np.float32)
        x @ w
        best = 1e30
        for _ in range(50 if m < 128 else 5):
            t0 = time.perf_counter()
            x @ w
            best = min(best, time.perf_counter() - t0)
        res[m] = (best * 1e3, 2 * m * 2048 * 2048 / best / 1e9, 2048 * 2048 * 4 / best / 1e9)
    return res


def libraries(threads):
    """{(library, M): ms} of bench/gemm_libs.cpp built with the libraries installed here (g++: their OpenMP)."""
    have = [("HAVE_DNNL", "/usr/include/oneapi/dnnl/dnnl.hpp", ["-ldnnl"]),
            ("HAVE_BLIS", "/usr/include/x86_64-linux-gnu/blis-openmp/cblas.h",
             ["-L/usr/lib/x86_64-linux-gnu/blis-openmp", "-lblis"]),
            ("HAVE_XSMM", "/usr/include/libxsmm.h", ["-lxsmmext", "-lxsmm", "-lxsmmnoblas"])]
    found = [(d, libs) for d, header, libs in have if os.path.exists(header)]
    missing = [d for d, header, _ in have if not os.path.exists(header)]
    if missing:
        print(f"(not installed: {', '.join(missing)}; apt-get install libdnnl-dev libblis-dev libxsmm-dev)")
    if not found:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "libs")
        cmd = ["g++", "-std=c++17", "-O2", "-march=native", f"-I{ROOT}", "-I/usr/include/x86_64-linux-gnu",
               os.path.join(HERE, "gemm_libs.cpp"), "-o", exe]
        cmd += [f"-D{d}" for d, _ in found] + [x for _, libs in found for x in libs] + ["-fopenmp", "-ldl"]
        subprocess.run(cmd, check=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), BLIS_NUM_THREADS=str(threads))
        out = subprocess.run([exe], capture_output=True, text=True, check=True, env=env).stdout
    return {(m.group(1), int(m.group(2))): float(m.group(3))
            for m in re.finditer(r"lib (\S+) M=(\d+) ([\d.]+) ms", out)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    # numpy reads OPENBLAS_NUM_THREADS at import: run the BLAS side in a child with it set.
    code = (f"import sys; sys.path.insert(0, {HERE!r}); import gemm_candidates as g; "
            f"print(repr(g.blas({args.threads})))")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    b = eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout)
    import numpy as np
    cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    o = ours(args.threads)
    print(f"K = N = 2048, {args.threads} threads; BLAS: {cfg.get('name')} {cfg.get('version')} (numpy's)\n")
    print("| M | BLAS f32 ms | moec f32 ms | moec bf16 ms | moec bf16+a16 ms | moec int8 ms | moec int4 ms | "
          "moec int8+a8 ms | moec int4+a8 ms | moec f32 GFLOP/s | moec bf16+a16 GFLOP/s | BLAS GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in (1, 8, 128, 512):
        cells = " | ".join(f"{o[(k, m)][0]:.3f}"
                           for k in ("fp32", "bf16", "bf16+a16", "int8", "int4", "int8+a8", "int4+a8"))
        print(f"| {m} | {b[m][0]:.3f} | {cells} | {o[('fp32', m)][1]:.1f} | {o[('bf16+a16', m)][1]:.1f} | "
              f"{b[m][1]:.1f} |")
    lib = libraries(args.threads)
    if lib:
        names = sorted({k for k, _ in lib})
        ours_for = {"onednn-f32": "fp32", "blis-f32": "fp32", "libxsmm-f32": "fp32", "onednn-bf16": "bf16+a16",
                    "onednn-u8s8s32": "int8+a8"}
        print("\nLibraries (ms; in brackets moec's time for the same work over theirs: above 1, the library is"
              " faster):\n")
        print("| M | " + " | ".join(f"{n} ms (moec {ours_for.get(n, '?')} / it)" for n in names) + " |")
        print("|---|" + "---|" * len(names))
        for m in (1, 8, 128, 512):
            print(f"| {m} | " + " | ".join(
                f"{lib[(n, m)]:.3f} ({o[(ours_for[n], m)][0] / lib[(n, m)]:.2f})" if (n, m) in lib else "-"
                for n in names) + " |")


if __name__ == "__main__":
    main()
