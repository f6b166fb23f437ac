#!/usr/bin/env python3
"""A session's KV caches in device memory: sessions on the GPU (or the emulated device) against the same
artifact's sessions on the CPU, call by call.

On a device whose code has the cache-append kernel, a session keeps each cache (f32, bf16, fp16) in device
memory: runs append the new positions there and the attention dispatches read it there, so a decode step sends
back only the logits. Checked here, per cache storage, on the decoder-with-past fixture past_qwen3_moe:

  - every call's logits (a 7-token prompt, decode steps, a 260-token append that grows the buffers past 256
    positions, a rewind to 100 and more tokens) against a CPU session fed the same tokens, within a bound
    relative to the largest logit (f32 1e-5; bf16 / fp16 caches 1e-3: both sides round the same rows,
    but their projections differ in the last bits, and a row may round the other way);
  - the attention and cache-append steps run on the device (the session's profile), and a decode step copies
    to the host only the logits (moert_gpu_traffic); int8 caches stay on the host and are checked the same way;
  - the keys' rotary embeddings and the values' Transposes write the new positions into the caches (the
    appends launch nothing), the keys' rotary in the queries' launch;
  - `moert generate` of a left-padded batch of two gives the CPU's tokens (f32 and bf16 caches);
  - kernels sent as CUDA / HIP graphs (default 16 kernels a graph, 3, and off): the same logits, and decode
    steps reusing their graphs (nodes updated in place, none built);

and, on a GroupQueryAttention decoder (each sequence's positions from row 0), a left-padded batch of two (each
sequence's new rows at its own length, the prompt's padding rows cleared on the host afterwards), 4 decode
steps, a rewind to 0 and the prompts again, against the CPU session.

Exit 77 (skipped) when the device does not open.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "runtime", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

BOUND = {"f32": 1e-5, "bf16": 1e-3, "f16": 1e-3, "int8": 1e-5}
failed = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failed.append(name)


def rel(a, b):
    """max |a - b| / max |b|; infinite when either holds a NaN or an infinity (max() would skip a NaN)."""
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def steps_on(trace, what):
    return [e["name"] for e in json.loads(trace)["traceEvents"] if e["name"].startswith(what)]


def decoder_case(rt, art, device, cache_dtype):
    dev, cpu = rt.load(art, threads=2, device=device), rt.load(art, threads=2)
    sd = dev.session(max_context=600, cache_dtype=cache_dtype, profile=True)
    sc = cpu.session(max_context=600, cache_dtype=cache_dtype)
    rng = np.random.default_rng(11)
    errs, copies, vocab = [], [], None

    def both(tokens, decode=False):
        nonlocal vocab
        a, b = sd.append(tokens), sc.append(tokens)
        vocab = b.size
        errs.append(rel(a, b))
        if decode:
            copies.append(dev.gpu_copies()[1])
        return b

    logits = both(rng.integers(0, 32, 7))
    for _ in range(5):
        logits = both([int(np.argmax(logits))], decode=True)
    trace = sd.profile()
    attention, appends = steps_on(trace, "attention "), steps_on(trace, "Concat (cache append")
    producers = steps_on(trace, "moec.Rotary (into the cache") + steps_on(trace, "Transpose (into the cache")
    logits = both(rng.integers(0, 32, 260))  # 272 positions: the buffers grow past 256
    for _ in range(3):
        logits = both([int(np.argmax(logits))], decode=True)
    sd.rewind(100), sc.rewind(100)
    logits = both(rng.integers(0, 32, 2))
    for _ in range(2):
        logits = both([int(np.argmax(logits))], decode=True)
    length = (len(sd), len(sc))
    sd.close(), sc.close(), dev.close(), cpu.close()
    bound = BOUND[cache_dtype]
    check(f"past_qwen3_moe, {cache_dtype} caches: {len(errs)} session calls on the device vs the CPU",
          max(errs) <= bound and length == (104, 104),
          f"logits max rel error {max(errs):.2e} (bound {bound:g}); lengths {length} (want 104)")
    on_device = cache_dtype != "int8"
    ran = all(n.endswith(", gpu)") for n in attention + appends) and attention and appends
    check(f"past_qwen3_moe, {cache_dtype} caches: attention and cache appends "
          + ("on the device" if on_device else "on the host (int8 caches)"),
          bool(ran) == on_device, f"{attention + appends}")
    if on_device:  # both layers' keys (rotary) and values (Transpose) written into the caches by their producers
        check(f"past_qwen3_moe, {cache_dtype} caches: the new keys and values written into the caches by the "
              "steps that make them, the appends launching nothing",
              len(producers) == 4 and all("written by the step making it" in n for n in appends),
              f"{producers + appends}")
        keys = steps_on(trace, "moec.Rotary (into the cache")
        check(f"past_qwen3_moe, {cache_dtype} caches: each layer's keys' rotary embedding launched with its "
              "queries'", len(keys) == 2 and all("launched with the step before" in n for n in keys), f"{keys}")
        check(f"past_qwen3_moe, {cache_dtype} caches: a decode step copies back only the logits",
              all(c == 4 * vocab for c in copies), f"bytes to the host per decode step {sorted(set(copies))} "
              f"(the logits: {4 * vocab})")


def graphs_case(rt, art, device):
    """A session's kernels sent as graphs of up to 16 kernels (the default), of 3 (many graph boundaries, the
    staging slots taken in turn) and launched one by one (MOERT_GPU_GRAPHS=0): the same logits call by call,
    within the f32 bound of the CPU session, and bit for bit alike on the emulated device (it runs a kernel's
    blocks in order, so only a node's stale arguments or a misplaced upload could make them differ); decode
    steps reuse the graphs of the step before, updating nodes in place, building none."""
    models = {}
    for n in ("0", "3", "16"):
        os.environ["MOERT_GPU_GRAPHS"] = n
        models[n] = rt.load(art, threads=2, device=device)
    del os.environ["MOERT_GPU_GRAPHS"]
    cpu = rt.load(art, threads=2)
    sessions = {n: m.session(max_context=300) for n, m in models.items()}
    sc = cpu.session(max_context=300)
    rng = np.random.default_rng(5)
    errs, same, steady = [], True, {}

    def call(tokens):
        nonlocal same
        b = sc.append(tokens)
        outs = {n: s.append(tokens) for n, s in sessions.items()}
        errs.extend(rel(a, b) for a in outs.values())
        same = same and all(np.array_equal(outs["0"], a) for a in outs.values())
        return b

    logits = call(rng.integers(0, 32, 9))
    for step in range(30):
        if step == 10:  # decode steps warmed up: the next 20 should build nothing
            steady = {n: m.gpu_graphs() for n, m in models.items()}
        logits = call([int(np.argmax(logits))])
    after = {n: m.gpu_graphs() for n, m in models.items()}
    logits = call(rng.integers(0, 32, 40))  # a longer append, then decode again
    for _ in range(3):
        logits = call([int(np.argmax(logits))])
    for s in [*sessions.values(), sc]:
        s.close()
    for m in [*models.values(), cpu]:
        m.close()
    check("past_qwen3_moe: graphs of 16 and of 3 kernels, and every kernel launched directly, vs the CPU",
          max(errs) <= BOUND["f32"] and (same or device != "emu"),
          f"{len(errs)} results, logits max rel error {max(errs):.2e} (bound {BOUND['f32']:g})"
          + (f"; bit for bit alike: {same}" if device == "emu" else ""))
    states = {n: after[n]["state"] for n in after}
    check("past_qwen3_moe: graphs on by default, off with MOERT_GPU_GRAPHS=0",
          states["0"] == "off (MOERT_GPU_GRAPHS=0)" and after["0"]["graphs"] == 0
          and states["16"].startswith("on (16 ") and states["3"].startswith("on (3 "), f"{states}")
    for n in ("16", "3"):
        a, b = steady[n], after[n]
        launched, built, updated = (b[k] - a[k] for k in ("graphs", "builds", "updates"))
        check(f"past_qwen3_moe, graphs of up to {n} kernels: 20 decode steps reuse the graphs of the steps before",
              built == 0 and launched >= 20 and updated > 0,
              f"{launched} graphs launched, {built} built, {updated} nodes updated in place")
    if device != "emu":
        return
    # A driver that refuses a graph (HIP without graphs of module kernels, say): graphs off from the first one,
    # the recorded kernels launched directly, the same results. One that accepts node updates and ignores them:
    # the self-test at load turns graphs off.
    for knob, what, want in (("MOERT_EMU_REFUSE_GRAPHS", "refusing graphs: graphs off, every kernel launched "
                              "directly", "off (graph creation failed: refused (MOERT_EMU_REFUSE_GRAPHS))"),
                             ("MOERT_EMU_STALE_GRAPH_UPDATES", "ignoring graph node updates: the self-test at "
                              "load turns graphs off", "off (self-test at load: an updated graph's copies gave "
                              "other bytes)")):
        os.environ[knob] = "1"
        try:
            dev = rt.load(art, threads=2, device=device)
        finally:
            del os.environ[knob]
        cpu = rt.load(art, threads=2)
        sd, sc = dev.session(max_context=64), cpu.session(max_context=64)
        errs = [rel(sd.append(t), sc.append(t)) for t in ([3, 1, 4, 1, 5], [9], [2], [6])]
        state = dev.gpu_graphs()
        sd.close(), sc.close(), dev.close(), cpu.close()
        check(f"past_qwen3_moe: a driver {what}, the same logits",
              max(errs) <= BOUND["f32"] and state["state"] == want and state["graphs"] == 0,
              f"logits max rel error {max(errs):.2e}; {state}")


def gqa_case(rt, moec, targets, tmp, device):
    import check_gqa_e2e as gqa
    rng = np.random.default_rng(3)
    path, art = os.path.join(tmp, "gqa.onnx"), os.path.join(tmp, "gqa.moex")
    gqa.build(path, 16, 16, False, True, rng)
    c = subprocess.run([moec, "compile", path, "-o", art, f"--target={targets}", "--quiet"], capture_output=True,
                       text=True)
    if c.returncode != 0:
        check("GroupQueryAttention decoder", False, "moec compile failed: " + c.stderr.strip())
        return
    dev, cpu = rt.load(art, threads=2, device=device), rt.load(art, threads=2)
    sd, sc = (m.session(batch=2, max_context=32, profile=m is dev) for m in (dev, cpu))
    ids = np.array([rng.integers(0, gqa.VOCAB, 5), [7, 7, 7, *rng.integers(0, gqa.VOCAB, 2)]], np.int64)
    mask = np.array([[1] * 5, [0, 0, 0, 1, 1]], np.int64)
    errs = []
    for _round in range(2):
        a, b = sd.append(ids, mask), sc.append(ids, mask)
        errs.append(rel(a, b))
        for _ in range(4):
            nxt = np.argmax(b, axis=1).astype(np.int64)[:, None]
            a, b = sd.append(nxt), sc.append(nxt)
            errs.append(rel(a, b))
        sd.rewind(0), sc.rewind(0)
    attention = steps_on(sd.profile(), "attention ")
    sd.close(), sc.close(), dev.close(), cpu.close()
    check("GroupQueryAttention decoder: a left-padded batch of two, 4 decode steps, a rewind to 0 and again",
          max(errs) <= 1e-4 and attention and all(n.endswith(", gpu)") for n in attention),
          f"{len(errs)} calls, logits max rel error {max(errs):.2e} vs the CPU session (bound 1e-4); "
          f"attention steps {attention}")


def padded_batch_case(moert_cli, art, device, tmp):
    """`moert generate` of a left-padded batch of two on past_qwen3_moe (Concat-appended caches, their new
    positions written by the rotary / Transpose steps on the device): the CPU's tokens, greedy."""
    rng = np.random.default_rng(3)
    ids, mask = rng.integers(0, 32, (2, 9)).astype(np.int64), np.ones((2, 9), np.int64)
    ids[1, :3], mask[1, :3] = 0, 0
    np.save(os.path.join(tmp, "ids.npy"), ids), np.save(os.path.join(tmp, "mask.npy"), mask)
    for cache in ("f32", "bf16"):
        runs = [subprocess.run([moert_cli, "generate", art, "--prompt-ids", os.path.join(tmp, "ids.npy"),
                                "--attention-mask", os.path.join(tmp, "mask.npy"), "--max-new-tokens", "12",
                                "--greedy", "--kv-cache", cache, f"--device={d}"], capture_output=True, text=True)
                for d in (device, "cpu")]
        tokens = [[ln for ln in r.stdout.splitlines() if ln.startswith("tokens[")] for r in runs]
        check(f"past_qwen3_moe, {cache} caches: a left-padded batch of two generated on the device",
              all(r.returncode == 0 for r in runs) and tokens[0] == tokens[1] and len(tokens[0]) == 2,
              f"device {tokens[0] or runs[0].stderr.strip()}, CPU {tokens[1] or runs[1].stderr.strip()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--moert", required=True)
    ap.add_argument("--lib", required=True, help="libmoert.so, for the Python binding")
    ap.add_argument("--device", default="emu", help="emu (default), gpu, cuda or hip")
    ap.add_argument("--targets", default=None, help="moec targets (default: cpu,emu for emu, else cpu,cuda,hip)")
    args = ap.parse_args()
    probe = subprocess.run([args.moert, "devices", "--device", args.device], capture_output=True, text=True)
    if probe.returncode != 0:
        print("skipped: " + probe.stderr.strip())
        return 77
    targets = args.targets or ("cpu,emu" if args.device == "emu" else "cpu,cuda,hip")
    import moert
    rt = moert.Runtime(args.lib)
    with tempfile.TemporaryDirectory() as tmp:
        art = os.path.join(tmp, "past_qwen3_moe.moex")
        c = subprocess.run([args.moec, "compile", os.path.join(ROOT, "tests", "fixtures", "transformers",
                                                               "past_qwen3_moe.onnx"),
                            "-o", art, f"--target={targets}", "--quiet"], capture_output=True, text=True)
        if c.returncode != 0:
            check("past_qwen3_moe", False, "moec compile failed: " + c.stderr.strip())
        else:
            for cache_dtype in ("f32", "bf16", "f16", "int8"):
                decoder_case(rt, art, args.device, cache_dtype)
            padded_batch_case(args.moert, art, args.device, tmp)
            graphs_case(rt, art, args.device)
        gqa_case(rt, args.moec, targets, tmp, args.device)
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'all passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
