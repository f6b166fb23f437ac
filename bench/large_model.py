#!/usr/bin/env python3
"""Compile and load a model at real size under a memory cap (issue 20): `make bench-large`.

    python3 bench/large_model.py [--layers 26] [--weights bf16,int8] [--memory-max 4G] [--dir DIR] [--keep]

1. Generates (once; kept in --dir) a synthetic ZAYA1-8B-shaped MoE stack: hidden 2048, 16 experts + 1 zero
   expert (ZAYA1's skip), F 2048, top-1, SwiGLU, each layer one `moec.SparseMoE` with its residual Add. The
   weights are random (uniform in [-0.02, 0.02), from numpy's PCG64 bits, written 32 MiB at a time, never held
   whole) and stored as ONNX external data split over one file per layer, as exporters write large models.
   26 layers are 20.9 GB of fp32 weights.
2. For each storage in --weights: `moec compile --cpu=native` in a memory cgroup capped at --memory-max (cgroup
   v1 or v2 when this process may create one; otherwise `systemd-run --scope -p MemoryMax=`; otherwise no cap,
   and the report says so). Reports wall time, peak RSS (the child's ru_maxrss), the weights packed per second
   (fp32 bytes read / wall time) and the artifact's size.
3. Loads the fresh artifact in a new process (the default lazy checksums; the page cache dropped first when
   allowed) and times the load, the first decode step (one token: each layer reads its router and its chosen
   expert from disk, checking them on first use), the next five (tokens choosing experts not read yet), and,
   once a 256-token call has read every expert, warm steps.
4. Prints a Markdown table and writes bench/results/large.json.

The ONNX files (20.9 GB) and artifacts (10.5 GB bf16, 5.6 GB int8) need about 37 GB of free disk; artifacts are
removed after their row unless --keep.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

H, F, E, Z, K = 2048, 2048, 16, 1, 1  # ZAYA1-8B's MoE layer: 16 experts + the skip expert, top-1
CHUNK = 32 << 20


def layer_bytes():
    return 4 * (H * (E + Z) + E * 2 * F * H + E * H * F)


def write_random(f, count, rng):
    """`count` f32 values uniform in [-0.02, 0.02), written in chunks (exponent bits fixed to [1, 2))."""
    left = count
    while left:
        n = min(left, CHUNK // 4)
        bits = rng.integers(0, 1 << 23, size=n, dtype=np.uint32) | np.uint32(0x3F800000)
        v = bits.view(np.float32)
        v -= np.float32(1.5)
        v *= np.float32(0.04)
        f.write(v.tobytes())
        left -= n


def generate(path, layers, seed=0):
    import onnx
    from onnx import TensorProto, helper

    folder = os.path.dirname(path)
    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "x"
    t0 = time.time()
    for i in range(layers):
        data = f"layer{i:03d}.data"
        with open(os.path.join(folder, data), "wb") as f:
            for name, shape in [(f"wr{i}", (H, E + Z)), (f"w1_{i}", (E, 2 * F, H)), (f"w2_{i}", (E, H, F))]:
                offset = f.tell()
                count = int(np.prod(shape))
                write_random(f, count, rng)
                f.write(b"\0" * ((-f.tell()) % 64))
                t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
                t.data_location = TensorProto.EXTERNAL
                for k, v in [("location", data), ("offset", str(offset)), ("length", str(4 * count))]:
                    e = t.external_data.add()
                    e.key, e.value = k, v
                inits.append(t)
        out = "y" if i == layers - 1 else f"h{i}"
        nodes += [helper.make_node("SparseMoE", [prev, f"wr{i}", "", f"w1_{i}", "", f"w2_{i}"], [f"moe{i}"],
                                   domain="moec", k=K, zero_experts=Z, activation="swiglu"),
                  helper.make_node("Add", [prev, f"moe{i}"], [out])]
        prev = out
        done = (i + 1) * layer_bytes()
        print(f"\r  generated {done / 1e9:.1f} / {layers * layer_bytes() / 1e9:.1f} GB "
              f"({done / 1e6 / (time.time() - t0):.0f} MB/s)", end="", flush=True)
    print()
    graph = helper.make_graph(nodes, "zaya1_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", H])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", H])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("moec", 1)])
    m.ir_version = 8
    with open(path + ".tmp", "wb") as f:
        f.write(m.SerializeToString())
    os.replace(path + ".tmp", path)  # the model file last: its presence means the data is complete


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * units[s[-1].upper()]) if s[-1].upper() in units else int(s)


class MemoryCap:
    """A memory cgroup this process can put a child in (v2, v1), or systemd-run's scope, or nothing."""

    def __init__(self, limit):
        self.limit, self.path, self.how, self.prefix = limit, None, "none", []
        name = f"moec-bench-large-{os.getpid()}"
        for root, limit_file, procs in [("/sys/fs/cgroup", "memory.max", "cgroup.procs"),
                                        ("/sys/fs/cgroup/unified", "memory.max", "cgroup.procs"),
                                        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "cgroup.procs")]:
            try:
                if not os.path.exists(os.path.join(root, "cgroup.procs")):
                    continue
                p = os.path.join(root, name)
                os.mkdir(p)
                try:
                    with open(os.path.join(p, limit_file), "w") as f:
                        f.write(str(limit))
                    if limit_file == "memory.limit_in_bytes":  # v1: no swap either
                        try:
                            with open(os.path.join(p, "memory.memsw.limit_in_bytes"), "w") as f:
                                f.write(str(limit))
                        except OSError:
                            pass
                except OSError:
                    os.rmdir(p)
                    continue
                self.path, self.procs, self.how = p, os.path.join(p, procs), f"cgroup ({root})"
                return
            except OSError:
                continue
        if shutil.which("systemd-run") and subprocess.run(
                ["systemd-run", "--scope", "--quiet", "-p", f"MemoryMax={limit}", "true"],
                capture_output=True).returncode == 0:
            self.prefix, self.how = ["systemd-run", "--scope", "--quiet", "-p", f"MemoryMax={limit}"], "systemd-run"

    def preexec(self):
        if self.path:
            with open(self.procs, "w") as f:
                f.write(str(os.getpid()))

    def close(self):
        if self.path:
            try:
                os.rmdir(self.path)
            except OSError:
                pass


def run_measured(cmd, cap):
    """Runs `cmd` in the cap; returns (rc, wall seconds, peak RSS bytes, stderr text)."""
    t0 = time.time()
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cap.prefix + cmd, stderr=err, stdout=subprocess.DEVNULL, preexec_fn=cap.preexec)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.time() - t0
        err.seek(0)
        text = err.read().decode(errors="replace")
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss * 1024, text


def drop_page_cache():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


LOAD_PROBE = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import moert
rt = moert.Runtime(sys.argv[2])
t0 = time.perf_counter()
m = rt.load(sys.argv[3], threads=int(sys.argv[4]))
load = time.perf_counter() - t0
rng = np.random.default_rng(1)
def step(t):
    x = rng.standard_normal((t, %d), dtype=np.float32)
    t0 = time.perf_counter()
    y = m.run({"x": x})["y"]
    assert np.isfinite(y).all()
    return time.perf_counter() - t0
steps = [step(1) for i in range(6)]  # cold: each step's experts read (and checked) on their first use
step(256)                             # every expert of every layer read once
warm = [step(1) for i in range(6)]
print(json.dumps({"load_s": load, "steps_s": steps, "warm_s": warm}))
""" % H


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=26, help="MoE layers (805 MB of fp32 weights each; default 26)")
    ap.add_argument("--weights", default="bf16,int8", help="storages to compile, comma-separated")
    ap.add_argument("--memory-max", default="4G", help="memory cap for the compile (default 4G)")
    ap.add_argument("--dir", default=os.path.join(HERE, ".cache", "large"), help="where the model is generated")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--keep", action="store_true", help="keep the artifacts")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "large.json"))
    args = ap.parse_args()

    folder = os.path.join(args.dir, f"zaya1_stack_{args.layers}")
    os.makedirs(folder, exist_ok=True)
    model = os.path.join(folder, "model.onnx")
    total = args.layers * layer_bytes()
    if not os.path.exists(model):
        need = total + total // 2 + (1 << 30)
        free = shutil.disk_usage(folder).free
        if free < need:
            sys.exit(f"large_model.py: {folder}: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed "
                     f"(the model and a bf16 artifact); use --dir or fewer --layers")
        print(f"generating {args.layers} ZAYA1-shaped layers ({total / 1e9:.1f} GB fp32) in {folder}", flush=True)
        generate(model, args.layers)
    moec = os.path.join(args.build, "bin", "moec")
    lib = os.path.join(args.build, "lib", "libmoert.so")
    cap = MemoryCap(parse_size(args.memory_max))
    print(f"memory cap: {args.memory_max} via {cap.how}", flush=True)
    rows = []
    try:
        for storage in args.weights.split(","):
            out = os.path.join(folder, f"model_{storage}.moex")
            print(f"== moec compile --weights={storage}", flush=True)
            rc, wall, rss, err = run_measured(
                [moec, "compile", model, "-o", out, f"--weights={storage}", "--cpu=native", "--kernel-cache=off"], cap)
            sys.stderr.write("".join(l + "\n" for l in err.splitlines() if "packed" in l or "error" in l)[-2000:])
            row = {"storage": storage, "rc": rc, "compile_s": round(wall, 1), "peak_rss_gb": round(rss / 1e9, 2),
                   "packed_mb_s": round(total / 1e6 / wall), "fp32_gb": round(total / 1e9, 2)}
            if rc != 0:
                row["error"] = err.strip().splitlines()[-1] if err.strip() else f"exit {rc}"
                rows.append(row)
                print(f"   failed: {row['error']}", flush=True)
                continue
            row["artifact_gb"] = round(os.path.getsize(out) / 1e9, 2)
            row["cold"] = drop_page_cache()
            probe = subprocess.run([sys.executable, "-c", LOAD_PROBE, os.path.join(ROOT, "runtime", "python"), lib,
                                    out, str(args.threads)], capture_output=True, text=True)
            if probe.returncode != 0:
                row["error"] = probe.stderr.strip().splitlines()[-1]
            else:
                r = json.loads(probe.stdout)
                row["load_ms"] = round(r["load_s"] * 1e3, 2)
                row["first_step_ms"] = round(r["steps_s"][0] * 1e3, 1)
                row["next_steps_ms"] = round(sorted(r["steps_s"][1:])[2] * 1e3, 1)  # median of 5
                row["warm_step_ms"] = round(min(r["warm_s"]) * 1e3, 2)
            rows.append(row)
            print("   " + json.dumps(row), flush=True)
            if not args.keep:
                os.remove(out)
    finally:
        cap.close()

    print(f"\n{args.layers} layers (H {H}, {E}+{Z} experts, F {F}, top-{K}), {total / 1e9:.1f} GB fp32 weights over "
          f"{args.layers} external data files; compile under {args.memory_max} ({cap.how}), {args.threads} threads, "
          f"{platform.processor() or platform.machine()}\n")
    print("| storage | compile s | peak RSS GB | fp32 MB/s packed | artifact GB | load ms | first step ms "
          "(page cache dropped: yes/no) | next 5 steps ms (median; new experts) | warm step ms (best) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "load_ms" in r:
            print(f"| {r['storage']} | {r['compile_s']} | {r['peak_rss_gb']} | {r['packed_mb_s']} | {r['artifact_gb']} | "
                  f"{r['load_ms']} | {r['first_step_ms']} ({'yes' if r['cold'] else 'no'}) | {r['next_steps_ms']} | "
                  f"{r['warm_step_ms']} |")
        else:
            print(f"| {r['storage']} | {r['compile_s']} | {r['peak_rss_gb']} | - | - | - | {r.get('error')} | - | - |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"layers": args.layers, "fp32_bytes": total, "memory_max": args.memory_max, "cap": cap.how,
                   "threads": args.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
