#!/usr/bin/env python3
"""Expert parallelism (`moec compile --expert-parallel=N`, `mpirun -np N moert ...`) against one process.

MoE layers (moec.SparseMoE and ONNX Runtime's MoE with a norm, residual and shared expert fused in) are compiled
once for one process and once per rank count; `mpirun -np 2` and `mpirun -np 4 --oversubscribe` must give the
one-process outputs within BOUND (each expert's hidden dims are summed in other chunks on a rank: float
summation order only) and the NumPy oracle (tests/reference/sparse_moe.py) within 1e-4 where it applies: k = 1,
2 and 8, sigmoid gating with zero experts, a shared expert, a predictor, a static mask, int8/int4 weights with
int8 activations, bf16 weights, an explicit --expert-map, rows exchanged in bf16 (--expert-wire=bf16, within
BF16_WIRE_BOUND), uneven loads (every token to one expert, on the last
rank), and T = 1, 3 (fewer tokens than ranks), 64 and 512. Whole models: the decoder-with-past fixtures
(Qwen3-MoE-like, Mixtral-like; prefill and decode step against ONNX Runtime's outputs stored with them) and
DeepSeek-V3-like (shared experts), and `moert generate --greedy` giving one process's tokens. Memory: with
experts that dominate a model, each rank's peak RSS is about dense + experts / N (measured; asserted with a
margin for MPI's own memory). Bad input: a rank that stops (SIGSTOP) makes the others fail after
$MOERT_EP_TIMEOUT seconds with an error naming the exchange, not hang; a rank killed ends the job; ranks given
different inputs, the wrong rank count, mpirun on an artifact for one process, and moec's bad flags each end
with one error line and a non-zero exit. The C API (--comm-api, tests/e2e/ep_comm_api.cpp): two pairs of ranks,
each on a communicator of its own made by moert_mpi_comm_create, each matching one process on its own input.

    check_expert_parallel.py --moec build/bin/moec --moert build/bin/moert [--only NAME,...]
"""
import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import sparse_moe as oracle  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "transformers")
# EP against one process: |ep - single| <= BOUND * max(1, max |single|). A rank runs an expert's tokens with
# the same code, tiles and roundings as one process; only the chunks its hidden dims are summed in differ.
BOUND = 1e-5
ORACLE_BOUND = 1e-4
# --expert-wire=bf16: every row a rank sends and every result it returns rounded to bf16 (2^-9 relative each);
# measured up to 6e-3 of max |y| on these layers.
BF16_WIRE_BOUND = 2e-2
TOKENS = [1, 3, 64, 512]
RANKS = [2, 4]


def mpi_launch_env():
    """What mpirun needs here (bench/expert_parallel.py uses it too): root allowed, ranks sharing this
    machine's cores, shared memory without cross-process reads (containers forbid them)."""
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_btl_vader_single_copy_mechanism="none")
    return env


def mpi_env():
    env = mpi_launch_env()
    env["MOERT_SPIN_US"] = "0"
    env.setdefault("MOERT_EP_TIMEOUT", "120")
    # In a sanitizer build (make test SANITIZE=...) memory errors and UB stay checked, but not leaks: what Open
    # MPI keeps at exit is reported from modules it has unloaded, which no suppression can name.
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"

    return env


def run(cmd, env=None, timeout=300):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


class Checker:
    def __init__(self, args, tmp):
        self.args, self.tmp, self.failures, self.count = args, tmp, [], 0
        self.env = mpi_env()

    def check(self, ok, what):
        self.count += 1
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            self.failures.append(what)
        return ok

    def compile(self, model, out, extra=()):
        r = run([self.args.moec, "compile", model, "-o", out, "--quiet", *extra])
        if r.returncode != 0:
            raise RuntimeError(f"moec compile {model} {' '.join(extra)}: {r.stderr.strip()}")

    def moert_run(self, artifact, feeds, ranks, tag):
        """Outputs of `moert run` (under mpirun -np ranks when ranks > 1), as {name: array}."""
        d = os.path.join(self.tmp, tag)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        cmd = [self.args.moert, "run", artifact, "--output-dir", os.path.join(d, "out")]
        for name, value in feeds.items():
            path = os.path.join(d, name.replace("/", "_") + ".npy")
            np.save(path, value)
            cmd += ["--input", f"{name}={path}"]
        if ranks > 1:
            cmd = [self.args.mpirun, "-np", str(ranks)] + cmd
        r = run(cmd, env=self.env)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])}...: exit {r.returncode}: {r.stderr.strip()[-2000:]}")
        outs = {}
        for f in os.listdir(os.path.join(d, "out")):
            outs[f[:-4]] = np.load(os.path.join(d, "out", f))
        return outs


def close(got, want, bound):
    return float(np.abs(got.astype(np.float64) - want).max(initial=0.0)) <= bound * max(1.0, float(np.abs(want).max(initial=0.0)))


def err(got, want):
    return float(np.abs(got.astype(np.float64) - want).max(initial=0.0)) / max(1.0, float(np.abs(want).max(initial=0.0)))


# ---- layers --------------------------------------------------------------------------------------------------
def sparse_moe_model(path, attrs, w, h):
    order = ["x", "router", "router_bias", "fc1", "fc1_bias", "fc2", "fc2_bias", "mask", "pred_a", "pred_b"]
    inits, names = [], []
    logits = attrs.get("router") == "logits"
    for key in order:
        if key == "x" or (key == "router" and logits):
            names.append("logits" if logits and key == "router" else "x")
        elif key in w:
            inits.append(numpy_helper.from_array(w[key], key))
            names.append(key)
        else:
            names.append("")
    while names[-1] == "":
        names.pop()
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", h])]
    if logits:
        inputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", w["router"].shape[1]]))
    node = helper.make_node("SparseMoE", names, ["y"], domain="moec", **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", h])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("moec", 1)])
    model.ir_version = 8
    onnx.save(model, path)


def layer_cases(tmp):
    """(name, model path, moec flags, feeds(t, rng), oracle(feeds) or None)."""
    rng = np.random.default_rng(2024)

    def arr(*shape, s=0.3):
        return (s * rng.standard_normal(shape)).astype(np.float32)

    h, f = 64, 48
    specs = [
        ("k1_swiglu", dict(k=1), dict(router=arr(h, 8), fc1=arr(8, 2 * f, h), fc2=arr(8, h, f))),
        ("k2_sigmoid_zero_experts", dict(k=2, gate="sigmoid", normalize=1, scale=2.0, zero_experts=2, activation="silu"),
         dict(router=arr(h, 8), router_bias=arr(8), fc1=arr(6, f, h), fc2=arr(6, h, f))),
        ("k8_gelu_biases", dict(k=8, activation="gelu"),
         dict(router=arr(h, 16), fc1=arr(16, 32, h), fc1_bias=arr(16, 32), fc2=arr(16, h, 32), fc2_bias=arr(16, h))),
        ("predictor", dict(k=2, keep=12, activation="swiglu"),
         dict(router=arr(h, 6), fc1=arr(6, 2 * f, h), fc2=arr(6, h, f), pred_a=arr(6, h, 4), pred_b=arr(6, 4, f))),
        ("static_mask", dict(k=2, activation="relu"),
         dict(router=arr(h, 6), fc1=arr(6, f, h), fc2=arr(6, h, f),
              mask=np.concatenate([np.ones((1, f), bool), rng.random((5, f)) < 0.5]))),
        ("uneven_logits", dict(k=2, router="logits", normalize=1),
         dict(router=np.zeros((1, 8), np.float32), fc1=arr(8, 2 * f, h), fc2=arr(8, h, f))),
    ]
    for name, attrs, w in specs:
        path = os.path.join(tmp, f"{name}.onnx")
        sparse_moe_model(path, attrs, w, h)
        kw = {k: v for k, v in attrs.items() if k not in ("keep",)}
        kw["activation"] = attrs.get("activation", "swiglu")
        kw["router_kind"] = kw.pop("router", "linear")
        if "keep" in attrs:
            kw["keep"] = attrs["keep"]
        for key in ["router_bias", "fc1_bias", "fc2_bias", "mask", "pred_a", "pred_b"]:
            if key in w:
                kw[key] = w[key]
        if name == "uneven_logits":
            def feeds(t, rng):  # every token to experts 7 and 6: both on the last rank (2 and 4 ranks)
                logits = 0.1 * rng.standard_normal((t, 8)).astype(np.float32)
                logits[:, 7] += 8.0
                logits[:, 6] += 6.0
                return {"x": rng.standard_normal((t, h)).astype(np.float32), "logits": logits}

            def reference(d, w=w, kw=kw):
                return oracle.sparse_moe(d["x"], d["logits"], w["fc1"], w["fc2"], **kw)
        else:
            def feeds(t, rng):
                return {"x": rng.standard_normal((t, h)).astype(np.float32)}

            def reference(d, w=w, kw=kw):
                return oracle.sparse_moe(d["x"], w["router"], w["fc1"], w["fc2"], **kw)
        yield name, path, (), feeds, reference
        if name == "k1_swiglu":
            yield name + " (int8 weights, int8 activations)", path, ("--weights=int8", "--activations=int8"), feeds, None
            yield name + " (int4 weights, int8 activations)", path, ("--weights=int4", "--activations=int8"), feeds, None
            yield name + " (bf16 weights)", path, ("--weights=bf16",), feeds, None
        if name == "k8_gelu_biases":
            yield name + " (--expert-map)", path, ("@map",), feeds, reference
        if name == "k2_sigmoid_zero_experts":
            yield name + " (--expert-wire=bf16)", path, ("@wire",), feeds, None
    yield ("norm_shared_residual (ORT MoE)", norm_shared_residual_model(tmp, rng), (),
           lambda t, rng: {"x": rng.standard_normal((t, 64)).astype(np.float32)}, None)


def norm_shared_residual_model(tmp, rng):
    """y = x + MoE(rmsnorm(x)) + sigmoid(n @ g) * down(silu(n @ gate) * (n @ up)), n = rmsnorm(x): ONNX Runtime's
    MoE (router logits by a MatMul of n) with an RMSNorm in front, a gated shared expert and a residual, which
    moec fuses into one dispatch (checked on `moert inspect`)."""
    h, f, fs, e = 64, 32, 48, 8

    def arr(*shape):
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)

    inits = {"nw": (1 + arr(h)).astype(np.float32), "wr": arr(h, e), "w1": arr(e, 2 * f, h), "w2": arr(e, h, f),
             "s_gate": arr(h, fs), "s_up": arr(h, fs), "s_down": arr(fs, h), "s_g": arr(h, 1)}
    inits["two"], inits["eps"] = np.array(2.0, np.float32), np.array(1e-6, np.float32)
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]),  # RMSNorm as transformers' exports write it
             helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["mse"]), helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Div", ["x", "rms"], ["xn"]), helper.make_node("Mul", ["xn", "nw"], ["n"]),
             helper.make_node("MatMul", ["n", "wr"], ["logits"]),
             helper.make_node("MoE", ["n", "logits", "w1", "", "w2"], ["moe_y"], domain="com.microsoft", k=2,
                              activation_type="swiglu", swiglu_fusion=1, normalize_routing_weights=1),
             helper.make_node("MatMul", ["n", "s_gate"], ["sg"]), helper.make_node("Sigmoid", ["sg"], ["sg_sig"]),
             helper.make_node("Mul", ["sg", "sg_sig"], ["sg_silu"]), helper.make_node("MatMul", ["n", "s_up"], ["su"]),
             helper.make_node("Mul", ["sg_silu", "su"], ["s_act"]),
             helper.make_node("MatMul", ["s_act", "s_down"], ["s_out"]),
             helper.make_node("MatMul", ["n", "s_g"], ["s_logit"]), helper.make_node("Sigmoid", ["s_logit"], ["s_w"]),
             helper.make_node("Mul", ["s_w", "s_out"], ["s_y"]), helper.make_node("Add", ["moe_y", "s_y"], ["m"]),
             helper.make_node("Add", ["x", "m"], ["y"])]
    graph = helper.make_graph(nodes, "nsr", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", h])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    path = os.path.join(tmp, "norm_shared_residual.onnx")
    onnx.save(model, path)
    return path


def check_layers(c, only):
    for name, path, flags, feeds, reference in layer_cases(c.tmp):
        if only and not any(o in name for o in only):
            continue
        tag = name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "").replace("-", "")
        single = os.path.join(c.tmp, tag + ".moex")
        flags = list(flags)
        maps, wire, bound = {}, [], BOUND
        if "@wire" in flags:  # rows and results cross as bf16: each rounded once each way
            flags.remove("@wire")
            wire, bound = ["--expert-wire=bf16"], BF16_WIRE_BOUND
        if "@map" in flags:  # experts dealt out unevenly: 0 on the last rank, the rest round robin
            flags.remove("@map")
            for n in RANKS:
                maps[n] = ",".join(str(n - 1 if x == 0 else x % n) for x in range(16))
        c.compile(path, single, flags)
        if name.startswith("norm_shared_residual"):
            r = run([c.args.moert, "inspect", single])
            steps = [ln for ln in r.stdout.splitlines() if "dispatch 0:" in ln]
            c.check(len(steps) == 1 and all(s in steps[0] for s in ("shared expert", "rms norm", "residual")),
                    f"{name}: one dispatch with the norm, shared expert and residual fused ({steps})")
        eps = {}
        for n in RANKS:
            eps[n] = os.path.join(c.tmp, f"{tag}.ep{n}.moex")
            extra = [f"--expert-parallel={n}"] + ([f"--expert-map={maps[n]}"] if maps else []) + wire
            c.compile(path, eps[n], flags + extra)
        for t in TOKENS:
            d = feeds(t, np.random.default_rng(t))
            want = c.moert_run(single, d, 1, tag + f".single.T{t}")["y"]
            ref = reference(d) if reference else None
            for n in RANKS:
                got = c.moert_run(eps[n], d, n, tag + f".ep{n}.T{t}")["y"]
                ok = got.shape == want.shape and close(got, want, bound)
                what = f"{name} T={t} np={n}: vs one process {err(got, want):.2e}"
                if ref is not None:
                    ok = ok and close(got, ref, ORACLE_BOUND)
                    what += f", vs oracle {err(got, ref):.2e}"
                c.check(ok, what)


# ---- whole models ---------------------------------------------------------------------------------------------
def check_models(c, only):
    for name in ["past_qwen3_moe", "past_mixtral", "whole_deepseek_v3"]:
        if only and not any(o in name for o in only):
            continue
        path = os.path.join(FIXTURES, name + ".onnx")
        data = np.load(os.path.join(FIXTURES, name + ".npz"))
        single = os.path.join(c.tmp, name + ".moex")
        c.compile(path, single)
        eps = {}
        for n in RANKS:
            eps[n] = os.path.join(c.tmp, f"{name}.ep{n}.moex")
            c.compile(path, eps[n], [f"--expert-parallel={n}"])
        steps = ["prefill", "decode"] if name.startswith("past_") else [""]
        for step in steps:
            prefix = step + "." if step else ""
            inputs = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
            feeds = {i: data[prefix + i] for i in inputs}
            want = c.moert_run(single, feeds, 1, f"{name}.{step}.single")
            for n in RANKS:
                got = c.moert_run(eps[n], feeds, n, f"{name}.{step}.ep{n}")
                worst, worst_ref = 0.0, 0.0
                ok = set(got) == set(want)
                for out in want:
                    ok = ok and close(got[out], want[out], BOUND)
                    worst = max(worst, err(got[out], want[out]))
                    if prefix + out.replace("present_", "present.") in data:
                        ref = data[prefix + out.replace("present_", "present.")]
                        ok = ok and close(got[out], ref, ORACLE_BOUND)
                        worst_ref = max(worst_ref, err(got[out], ref))
                c.check(ok, f"{name} {step or 'run'} np={n}: {len(want)} outputs vs one process {worst:.2e}, "
                            f"vs ONNX Runtime's stored outputs {worst_ref:.2e}")
        if name.startswith("past_"):
            ids = os.path.join(c.tmp, name + ".ids.npy")
            np.save(ids, data["prefill.input_ids"][0])
            gen = [c.args.moert, "generate", "--prompt-ids", ids, "--max-new-tokens", "12", "--greedy"]
            r = run(gen[:2] + [single] + gen[2:])
            want = [ln for ln in r.stdout.splitlines() if ln.startswith("tokens:")]
            for n in RANKS:
                r2 = run([c.args.mpirun, "-np", str(n)] + gen[:2] + [eps[n]] + gen[2:], env=c.env)
                got = [ln for ln in r2.stdout.splitlines() if ln.startswith("tokens:")]
                c.check(r.returncode == 0 and r2.returncode == 0 and len(want) == 1 and got == want,
                        f"{name} generate --greedy np={n}: {got} (one process: {want}) {r2.stderr.strip()[-300:]}")


# ---- memory per rank ------------------------------------------------------------------------------------------
RSS_WRAPPER = r"""
import os, resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
with open(sys.argv[1] + "." + os.environ.get("OMPI_COMM_WORLD_RANK", "0"), "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc)
"""


def check_memory(c, only):
    if only and not any(o in "memory" for o in only):
        return
    rng = np.random.default_rng(5)
    h, f, e = 512, 1024, 16  # 96 MiB of f32 experts, a few KiB else
    w = dict(router=(0.3 * rng.standard_normal((h, e))).astype(np.float32),
             fc1=(0.05 * rng.standard_normal((e, 2 * f, h))).astype(np.float32),
             fc2=(0.05 * rng.standard_normal((e, h, f))).astype(np.float32))
    experts = (w["fc1"].nbytes + w["fc2"].nbytes) / 2**20
    path = os.path.join(c.tmp, "memory.onnx")
    sparse_moe_model(path, dict(k=2), w, h)
    del w
    wrapper = os.path.join(c.tmp, "rss.py")
    with open(wrapper, "w") as fh:
        fh.write(RSS_WRAPPER)
    x = os.path.join(c.tmp, "memory.x.npy")
    np.save(x, rng.standard_normal((256, h)).astype(np.float32))  # 256 tokens: every expert chosen
    peaks = {}
    for n in [1] + RANKS:
        art = os.path.join(c.tmp, f"memory.ep{n}.moex")
        c.compile(path, art, [f"--expert-parallel={n}"] if n > 1 else [])
        prefix = os.path.join(c.tmp, f"rss{n}")
        cmd = [sys.executable, wrapper, prefix, c.args.moert, "run", art, "--input", f"x={x}",
               "--output-dir", os.path.join(c.tmp, f"memory.out{n}")]
        r = run(([c.args.mpirun, "-np", str(n)] if n > 1 else []) + cmd, env=c.env)
        if not c.check(r.returncode == 0, f"memory: run on {n} rank(s) {r.stderr.strip()[-300:]}"):
            return
        peaks[n] = [int(open(f"{prefix}.{i}").read()) / 1024 for i in range(n)]
    print(f"     peak RSS per rank (MiB), {experts:.0f} MiB of experts: " +
          ", ".join(f"{n} rank(s): {', '.join(f'{p:.0f}' for p in peaks[n])}" for n in peaks))
    # Each rank maps only its experts' pages: about experts / N of them (MPI's own memory on top of a process's).
    for n in RANKS:
        saved = peaks[1][0] - max(peaks[n])
        c.check(saved >= 0.6 * experts * (1 - 1 / n),
                f"memory: {n} ranks: each rank peaks {saved:.0f} MiB below one process (experts / N would save "
                f"{experts * (1 - 1 / n):.0f})")


def k1_pair(c, tag):
    """The k = 1 layer (H 64, 8 experts) and its artifacts for one process and for 2 ranks."""
    path = os.path.join(c.tmp, "k1_swiglu.onnx")
    if not os.path.exists(path):
        list(layer_cases(c.tmp))
    one, two = os.path.join(c.tmp, f"{tag}.one.moex"), os.path.join(c.tmp, f"{tag}.ep2.moex")
    c.compile(path, one)
    c.compile(path, two, ["--expert-parallel=2"])
    return path, one, two


# ---- the C API with the caller's communicators ------------------------------------------------------------------
def check_comm_api(c, only):
    if not c.args.comm_api or (only and not any(o in "comm-api" for o in only)):
        return
    path, one, two = k1_pair(c, "api")
    if c.args.lib:  # the Python binding: libmoert opens MPI_COMM_WORLD itself
        x = os.path.join(c.tmp, "api.x.npy")
        np.save(x, np.random.default_rng(9).standard_normal((40, 64)).astype(np.float32))
        want = c.moert_run(one, {"x": np.load(x)}, 1, "api.single")["y"]
        np.save(os.path.join(c.tmp, "api.want.npy"), want)
        script = (f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'runtime', 'python')!r}); import moert\n"
                  "import numpy as np\n"
                  f"m = moert.Runtime({c.args.lib!r}).load({two!r})\n"
                  f"y = m.run({{'x': np.load({x!r})}})\n"
                  "y = y['y'] if isinstance(y, dict) else y[0]\n"
                  f"want = np.load({os.path.join(c.tmp, 'api.want.npy')!r})\n"
                  "line = f'python {m.ranks} {float(np.abs(y - want).max() / max(1.0, np.abs(want).max()))}'\n"
                  f"open({os.path.join(c.tmp, 'api.python.')!r} + str(m.ranks[0]), 'w').write(line)\n")
        r = run([c.args.mpirun, "-np", "2", sys.executable, "-c", script], env=c.env)
        # each rank writes its own file (the ranks' stdout lines can interleave on mpirun's)
        lines = [open(os.path.join(c.tmp, f"api.python.{i}")).read() if os.path.exists(os.path.join(
            c.tmp, f"api.python.{i}")) else "" for i in range(2)]
        ok = r.returncode == 0 and len(lines) == 2 and all(f"({i}, 2)" in lines[i] for i in range(2))
        ok = ok and all(float(ln.split()[-1]) <= BOUND for ln in lines)
        c.check(ok, f"Python binding under mpirun -np 2: {lines} {r.stderr.strip()[-500:]}")
    r = run([c.args.mpirun, "-np", "4", c.args.comm_api, one, two, "64"], env=c.env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("rank ")]
    c.check(r.returncode == 0 and len(lines) == 4,
            f"C API: MPI_COMM_WORLD split into two pairs, each its own moert_comm (moert_mpi_comm_create) and input: "
            f"{'; '.join(sorted(lines))} {r.stderr.strip()[-500:]}")


# ---- bad input -------------------------------------------------------------------------------------------------
def rank_pids(program, want):
    """{rank: pid} of the `program` processes tagged `want` (their environment says their rank)."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
            with open(f"/proc/{pid}/comm") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        if comm == os.path.basename(program)[:15] and b"OMPI_COMM_WORLD_RANK" in env and env.get(b"MOERT_TEST_TAG") == want:
            found[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(pid)
    return found


def check_bad(c, only):
    if only and not any(o in "bad" for o in only):
        return
    path, single, ep2 = k1_pair(c, "bad")
    x = os.path.join(c.tmp, "bad.x.npy")
    np.save(x, np.random.default_rng(1).standard_normal((512, 64)).astype(np.float32))

    def one_error(r, needle, what):
        lines = [ln for ln in r.stderr.splitlines() if "error:" in ln]
        c.check(r.returncode != 0 and len(lines) >= 1 and needle in lines[0],
                f"{what}: exit {r.returncode}, {lines[:1]}")

    # A rank that stops: the other fails its exchange after the timeout instead of waiting for ever.
    for kill in (signal.SIGSTOP, signal.SIGKILL):
        env = dict(c.env, MOERT_EP_TIMEOUT="3", MOERT_TEST_TAG=kill.name)
        p = subprocess.Popen([c.args.mpirun, "-np", "2", c.args.moert, "run", ep2, "--input", f"x={x}",
                              "--repeat", "1000000", "--output-dir", os.path.join(c.tmp, "bad.out")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        pids = {}
        for _ in range(200):
            pids = rank_pids(c.args.moert, kill.name.encode())
            if len(pids) == 2:
                break
            time.sleep(0.1)
        time.sleep(1.5)  # both ranks well into their runs
        start = time.time()
        if 1 in pids:
            os.kill(pids[1], kill)
        try:
            out, errs = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, errs = p.communicate()
        took = time.time() - start
        for pid in pids.values():  # what is left of a stopped rank
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        lines = [ln for ln in errs.splitlines() if "moert: error:" in ln]
        if kill == signal.SIGSTOP:
            c.check(1 in pids and p.returncode != 0 and took < 45 and lines and "rank 0:" in lines[0] and
                    "did not complete in 3 s" in lines[0],
                    f"rank 1 stopped: rank 0 fails in {took:.1f} s with {lines[:1]}")
        else:
            c.check(1 in pids and p.returncode != 0 and took < 45,
                    f"rank 1 killed: the job ends in {took:.1f} s, exit {p.returncode}")

    # Ranks given different inputs.
    y = os.path.join(c.tmp, "bad.y.npy")
    np.save(y, np.random.default_rng(2).standard_normal((512, 64)).astype(np.float32))
    r = run([c.args.mpirun, "-np", "2", "sh", "-c",
             f'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then f={y}; else f={x}; fi; exec {c.args.moert} run {ep2} '
             f'--input x=$f --output-dir {os.path.join(c.tmp, "bad.out")}'], env=c.env)
    one_error(r, "rank 1's inputs differ from rank 0's", "ranks given different inputs")
    r = run([c.args.mpirun, "-np", "3", c.args.moert, "run", ep2, "--input", f"x={x}"], env=c.env)
    one_error(r, "was compiled for 2 ranks", "an artifact for 2 ranks on 3")
    r = run([c.args.moert, "run", ep2, "--input", f"x={x}"], env=c.env)
    one_error(r, "start it with mpirun -np 2", "an artifact for 2 ranks run without mpirun")
    r = run([c.args.mpirun, "-np", "2", c.args.moert, "run", single, "--input", f"x={x}"], env=c.env)
    one_error(r, "runs on one process", "mpirun on an artifact for one process")
    bad_flags = [
        (["--expert-parallel=0"], "expected a rank count"),
        (["--expert-parallel=2", "--expert-map=0,1"], "this MoE layer has 8"),
        (["--expert-parallel=2", "--expert-map=0,1,2,0,1,0,1,0"], "is not a rank in 0..1"),
        (["--expert-map=0,1"], "needs --expert-parallel"),
        (["--expert-parallel=2", "--target=cpu,emu"], "CPU ranks only"),
        (["--expert-parallel=2", "--expert-wire=f16"], "expected f32 or bf16"),
        (["--expert-wire=bf16"], "needs --expert-parallel"),
    ]
    for flags, needle in bad_flags:
        out = os.path.join(c.tmp, "bad.flags.moex")
        r = run([c.args.moec, "compile", path, "-o", out, "--quiet", *flags])
        one_error(r, needle, f"moec compile {' '.join(flags)}")
        c.check(not os.path.exists(out), f"moec compile {' '.join(flags)}: no artifact left")
    dense = os.path.join(c.tmp, "dense.onnx")
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "d",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, dense)
    r = run([c.args.moec, "compile", dense, "-o", os.path.join(c.tmp, "dense.moex"), "--quiet", "--expert-parallel=2"])
    one_error(r, "no fused MoE layer", "--expert-parallel on a model without MoE layers")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--moert", required=True)
    ap.add_argument("--mpirun", default=shutil.which("mpirun") or "mpirun")
    ap.add_argument("--comm-api", help="tests/e2e/ep_comm_api.cpp built: the C API given communicators")
    ap.add_argument("--lib", help="libmoert.so: the Python binding under mpirun")
    ap.add_argument("--only", default="", help="comma-separated parts of case names (layers, models, memory, bad)")
    args = ap.parse_args()
    if not shutil.which(args.mpirun):
        print(f"{args.mpirun} not found: install Open MPI (scripts/install-deps.sh)", file=sys.stderr)
        return 1
    only = [o for o in args.only.split(",") if o]
    with tempfile.TemporaryDirectory() as tmp:
        c = Checker(args, tmp)
        check_layers(c, only)
        check_models(c, only)
        check_memory(c, only)
        check_comm_api(c, only)
        check_bad(c, only)
    print(f"{c.count - len(c.failures)}/{c.count} checks passed")
    for f in c.failures:
        print("FAILED:", f)
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
