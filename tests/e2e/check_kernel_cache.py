#!/usr/bin/env python3
"""moec's kernel cache (codegen/KernelCache.h): compiled kernel code reused when the same kernels are compiled
again, never when anything that went into them differs, and never a damaged entry.

A compiler wrapper counts the compiles (it runs clang++-19); each case says how many ran and checks the
artifact: byte-identical to the one compiled without the cache, and its outputs against the fixture's
reference outputs (ONNX Runtime's on the unfused model, tests/fixtures/transformers/olmoe.npz) within 1e-4.

    check_kernel_cache.py --moec build/bin/moec --moert build/bin/moert
"""
import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "transformers", "olmoe.onnx")
TOLERANCE = 1e-4

failed = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failed.append(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--moert", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        count = os.path.join(tmp, "compiles")
        wrapper = os.path.join(tmp, "cxx.sh")
        with open(wrapper, "w") as f:  # counts compiles (not the cache's `--version`), then compiles
            f.write(f'#!/bin/sh\n[ "$1" = --version ] || echo x >> {count}\nexec clang++-19 "$@"\n')
        os.chmod(wrapper, os.stat(wrapper).st_mode | stat.S_IXUSR)
        cache = os.path.join(tmp, "cache")
        env = dict(os.environ, MOEC_CXX=wrapper)
        env.pop("MOEC_KERNEL_CACHE", None)
        env.pop("MOEC_KERNEL_CACHE_MB", None)
        ref = np.load(FIXTURE.replace(".onnx", ".npz"))
        np.save(os.path.join(tmp, "input.npy"), ref["input"])

        def compiles():
            return sum(1 for _ in open(count)) if os.path.exists(count) else 0

        def compile_(name, *extra, model=FIXTURE, cache_arg=None, extra_env=None):
            """(compiles it ran, artifact bytes, stderr) of one `moec compile`."""
            before = compiles()
            out = os.path.join(tmp, name + ".moex")
            cmd = [args.moec, "compile", model, "-o", out, *extra]
            cmd += [f"--kernel-cache={cache_arg if cache_arg is not None else cache}"]
            run = subprocess.run(cmd, capture_output=True, text=True, env=dict(env, **(extra_env or {})))
            if run.returncode != 0:
                raise RuntimeError(f"moec compile ({name}) failed: {run.stderr.strip()}")
            return compiles() - before, open(out, "rb").read(), run.stderr, out

        def error_of(artifact):
            outdir = os.path.join(tmp, "out")
            shutil.rmtree(outdir, ignore_errors=True)
            run = subprocess.run([args.moert, "run", artifact, "--input", f"hidden_states={tmp}/input.npy",
                                  "--output-dir", outdir], capture_output=True, text=True)
            if run.returncode != 0:
                return float("inf")
            got = np.load(next(ln.split(" -> ")[1] for ln in run.stdout.splitlines() if ln.startswith("output ")))
            return float(np.max(np.abs(got - ref["output"])) / np.max(np.abs(ref["output"])))

        def entries():
            return sorted(os.listdir(cache)) if os.path.isdir(cache) else []

        n0, plain, _, _ = compile_("plain", cache_arg="off")
        check("--kernel-cache=off", n0 == 1 and entries() == [], f"{n0} compile(s), cache entries {entries()}")

        # A compiler named without a path is looked up on PATH (as the default clang++-19 is).
        nb, bare, _, _ = compile_("bare", "--cxx=cxx.sh", cache_arg="off",
                                  extra_env={"PATH": tmp + os.pathsep + os.environ.get("PATH", "")})
        check("--cxx given as a name on PATH", nb == 1 and bare == plain, f"{nb} compile(s), same bytes: {bare == plain}")

        n1, first, _, art = compile_("first")
        err = error_of(art)
        check("first compile", n1 == 1 and first == plain and len(entries()) == 1 and err <= TOLERANCE,
              f"{n1} compile(s), {len(entries())} entry, same bytes as without the cache: {first == plain}, "
              f"max rel error vs ONNX Runtime {err:.2e}")

        n2, again, log, art = compile_("again")
        err = error_of(art)
        check("the same model again", n2 == 0 and again == plain and "from the kernel cache" in log
              and err <= TOLERANCE,
              f"{n2} compile(s), same bytes: {again == plain}, max rel error {err:.2e}")

        os.makedirs(os.path.join(tmp, "elsewhere"))  # the same model in another directory
        moved = os.path.join(tmp, "elsewhere", os.path.basename(FIXTURE))
        shutil.copy(FIXTURE, moved)
        n3, other, _, _ = compile_("elsewhere", model=moved)
        check("the same model from another directory", n3 == 0 and other == plain, f"{n3} compile(s)")

        n4, _, _, art = compile_("v2", "--cpu=x86-64-v2")
        err = error_of(art)
        check("another --cpu", n4 == 1 and len(entries()) == 2 and err <= TOLERANCE,
              f"{n4} compile(s), {len(entries())} entries, max rel error {err:.2e}")

        # With a GPU target the experts keep their rows (GPU kernels read rows; CPU-only artifacts store f32
        # experts in panels), so the CPU code is another entry too; a second GPU target over the same rows
        # reuses it.
        n5, _, _, _ = compile_("emu", "--target=cpu,emu")
        check("a GPU target: its code object and the CPU code over rows are entries of their own",
              n5 == 2 and len(entries()) == 4, f"{n5} compile(s), {len(entries())} entries")
        n5b, _, _, _ = compile_("emu64", "--target=cpu,emu", "--emu-arch=emu-w64")
        check("another GPU target: its code object is an entry of its own, the CPU code reused",
              n5b == 1 and len(entries()) == 5, f"{n5b} compile(s), {len(entries())} entries")

        # A changed compiler (another wrapper: another executable, another --version) is another key.
        with open(wrapper, "a") as f:
            f.write("# changed\n")
        n6, changed, _, _ = compile_("changed")
        check("a changed compiler", n6 == 1 and changed == plain, f"{n6} compile(s)")

        # Damaged entries (cut short, or bytes changed) are misses, compiled again and replaced.
        for e in entries():
            p = os.path.join(cache, e)
            data = bytearray(open(p, "rb").read())
            if len(data) % 2:
                open(p, "wb").write(data[: len(data) // 2])
            else:
                data[-1] ^= 0xFF
                open(p, "wb").write(data)
        n7, mended, _, art = compile_("damaged")
        err = error_of(art)
        n8, _, _, _ = compile_("mended")
        check("damaged entries", n7 == 1 and mended == plain and n8 == 0 and err <= TOLERANCE,
              f"{n7} compile(s) over a damaged entry, then {n8}; same bytes: {mended == plain}, "
              f"max rel error {err:.2e}")

        # A limit of 0 MB keeps nothing; a cache directory that cannot be made is no cache (and no error).
        shutil.rmtree(cache)
        n9, _, _, _ = compile_("limit0", extra_env={"MOEC_KERNEL_CACHE_MB": "0"})
        check("MOEC_KERNEL_CACHE_MB=0", n9 == 1 and entries() == [], f"{n9} compile(s), entries {entries()}")
        blocked = os.path.join(tmp, "a-file")
        open(blocked, "w").close()
        n10, nocache, _, _ = compile_("unusable", cache_arg=os.path.join(blocked, "cache"))
        check("an unusable cache directory", n10 == 1 and nocache == plain, f"{n10} compile(s), no error")

        # $MOEC_KERNEL_CACHE is the default when the option is not given.
        env2 = dict(env, MOEC_KERNEL_CACHE=cache)
        run = subprocess.run([args.moec, "compile", FIXTURE, "-o", os.path.join(tmp, "env.moex")],
                             capture_output=True, text=True, env=env2)
        run2 = subprocess.run([args.moec, "compile", FIXTURE, "-o", os.path.join(tmp, "env2.moex")],
                              capture_output=True, text=True, env=env2)
        check("$MOEC_KERNEL_CACHE", run.returncode == 0 and run2.returncode == 0
              and "from the kernel cache" in run2.stderr and len(entries()) == 1,
              f"second compile {'reused' if 'from the kernel cache' in run2.stderr else 'compiled'}, "
              f"{len(entries())} entry")
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'all passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
