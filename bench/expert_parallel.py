#!/usr/bin/env python3
"""Expert parallelism on this machine (docs/scale-out.md): one MoE layer on 1, 2 and 4 ranks (`mpirun -np N moert
run`, the artifact compiled with --expert-parallel=N), and MPI's all-to-all cost against message size.

Per rank count and token count: the time per layer call (best / median, rank 0's clock; the ranks share this
machine's cores, so more ranks get fewer threads each: it will not be faster here), the bytes each rank sent in
the layer's exchanges (rows to other ranks' experts, results back, the outputs gathered), the share of the
dispatch's time spent in those exchanges (waiting for the other ranks included), and each rank's peak RSS.
Then `bench/alltoall.c` (MPI_Alltoall, the slowest rank's time, best / median) on 2 and 4 ranks.

    python3 bench/expert_parallel.py [--build build] [--layer olmoe|zaya1] [--tokens 1,8,64,512] [--repeat 10]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

LAYERS = {  # name: (title, H, F, E, k)
    "olmoe": ("OLMoE-like MoE layer (64 experts, top-8, H 2048, F 1024, fp32)", 2048, 1024, 64, 8),
    "zaya1": ("ZAYA1-8B MoE layer (16 experts, top-1, H 2048, F 2048, fp32)", 2048, 2048, 16, 1),
}
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from check_expert_parallel import RSS_WRAPPER, mpi_launch_env as mpi_env  # noqa: E402


def exchange_stats(profile):
    """(seconds in exchanges, seconds in MoE dispatches, bytes sent) of one call's profile."""
    events = json.load(open(profile))
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    ex = sum(e["dur"] for e in events if e["name"].startswith("exchange")) * 1e-6
    moe = sum(e["dur"] for e in events if e["name"].startswith("moe dispatch")) * 1e-6
    sent = sum(e.get("args", {}).get("bytes_sent", 0) for e in events if e["name"].startswith("exchange"))
    return ex, moe, sent


def run_layer(moert, art, ranks, threads, x, repeat, tmp):
    wrapper = os.path.join(tmp, "rss.py")
    with open(wrapper, "w") as f:
        f.write(RSS_WRAPPER)
    prof, rss = os.path.join(tmp, "profile.json"), os.path.join(tmp, f"rss{ranks}")
    cmd = [sys.executable, wrapper, rss, moert, "run", art, "--input", f"x={x}", "--repeat", str(repeat),
           "--threads", str(threads), "--profile", prof, "--output-dir", os.path.join(tmp, "out")]
    if ranks > 1:
        cmd = ["mpirun", "-np", str(ranks)] + cmd
    env = mpi_env()
    if ranks * threads > (os.cpu_count() or 1):
        env["MOERT_SPIN_US"] = "0"  # more threads than cores: spinning workers would take the others' time
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}...: {r.stderr.strip()[-1000:]}")
    m = re.search(r"best ([\d.]+) ms, median ([\d.]+) ms", r.stdout)
    ex, moe, sent = exchange_stats(prof) if ranks > 1 else (0.0, 0.0, 0)
    peaks = [int(open(f"{rss}.{i}").read()) / 1024 for i in range(ranks)]
    return dict(best_ms=float(m.group(1)), median_ms=float(m.group(2)), exchange_ms=round(ex * 1e3, 3),
                dispatch_ms=round(moe * 1e3, 3), bytes_sent=sent, peak_rss_mb=round(max(peaks)))


def alltoall(tmp, ranks_list, lo=64, hi=16 << 20, repeats=20):
    exe = os.path.join(tmp, "alltoall")
    subprocess.run(["mpicc", "-O2", os.path.join(HERE, "alltoall.c"), "-o", exe], check=True)
    rows = []
    for n in ranks_list:
        r = subprocess.run(["mpirun", "-np", str(n), exe, str(lo), str(hi), str(repeats)], capture_output=True,
                           text=True, env=mpi_env(), timeout=1800, check=True)
        rows += [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    return rows


def run(build, layer="olmoe", tokens=(1, 8, 64, 512), ranks_list=(1, 2, 4), repeat=10, cores=None):
    import run as bench  # bench/run.py: the layer as ONNX Runtime's MoE, weights in an external file
    moec, moert = os.path.join(build, "bin", "moec"), os.path.join(build, "bin", "moert")
    title, h, f, e, k = LAYERS[layer]
    cores = cores or os.cpu_count() or 1
    os.makedirs(bench.CACHE, exist_ok=True)
    src = os.path.join(bench.CACHE, f"ep_{layer}.onnx")
    bench.ort_moe_model(src, h, f, e, k)
    rows = []
    print(f"== expert parallelism: {title}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        arts = {}
        for n in ranks_list:
            arts[n] = os.path.join(tmp, f"ep{n}.moex")
            flags = [f"--expert-parallel={n}"] if n > 1 else []
            subprocess.run([moec, "compile", src, "-o", arts[n], "--quiet", "--cpu=native", *flags], check=True)
        for t in tokens:
            x = os.path.join(tmp, f"x{t}.npy")
            np.save(x, np.random.default_rng(t).standard_normal((t, h)).astype(np.float32))
            for n in ranks_list:
                threads = max(1, cores // n)
                row = dict(layer=layer, tokens=t, ranks=n, threads_per_rank=threads,
                           **run_layer(moert, arts[n], n, threads, x, repeat, tmp))
                row["exchange_share"] = round(row["exchange_ms"] / row["dispatch_ms"], 2) if row["dispatch_ms"] else 0
                rows.append(row)
                print(f"   T={t:4d} ranks={n} ({threads} thread(s) each): {row['best_ms']:.3f} / {row['median_ms']:.3f} ms "
                      f"per call; exchanges {row['exchange_ms']:.3f} ms of the dispatch's {row['dispatch_ms']:.3f} "
                      f"({row['exchange_share']:.0%}), {row['bytes_sent'] / 1e6:.2f} MB sent by rank 0; peak RSS "
                      f"{row['peak_rss_mb']} MB per rank", flush=True)
        a2a = alltoall(tmp, [n for n in ranks_list if n > 1])
    for r in a2a:
        print(f"   MPI_Alltoall ranks={r['ranks']} {r['bytes_per_pair']:>9d} B per pair: {r['best_us']:.1f} / "
              f"{r['median_us']:.1f} us", flush=True)
    return dict(layer=title, rows=rows, alltoall=a2a, date=time.strftime("%Y-%m-%d %H:%M"), cores=cores)


def table(result):
    lines = ["| T | ranks | threads per rank | ms per call (best / median) | rank 0 sent MB | exchange ms of dispatch ms "
             "(share) | peak RSS per rank MB |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['tokens']} | {r['ranks']} | {r['threads_per_rank']} | {r['best_ms']} / {r['median_ms']} | "
                     f"{r['bytes_sent'] / 1e6:.2f} | {r['exchange_ms']} of {r['dispatch_ms']} ({r['exchange_share']:.0%}) "
                     f"| {r['peak_rss_mb']} |")
    lines += ["", "| ranks | bytes per pair | MPI_Alltoall us (best / median) |", "|---|---|---|"]
    lines += [f"| {a['ranks']} | {a['bytes_per_pair']} | {a['best_us']} / {a['median_us']} |" for a in result["alltoall"]]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--layer", default="olmoe", choices=sorted(LAYERS))
    ap.add_argument("--tokens", default="1,8,64,512")
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "expert_parallel.json"))
    args = ap.parse_args()
    result = run(args.build, args.layer, [int(t) for t in args.tokens.split(",")],
                 [int(n) for n in args.ranks.split(",")], args.repeat)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("\n" + table(result) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
