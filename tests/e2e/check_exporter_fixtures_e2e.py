#!/usr/bin/env python3
"""Models as real exporters write them, through moec and moert, against ONNX Runtime on the same file.

  - tests/fixtures/torchscript/mixtral_eager.onnx: the TorchScript exporter's (opset 17) graph of Mixtral's MoE
    block with transformers' default experts: NonZero for the experts hit and one per expert for its tokens,
    Gather'd expert weights, ScatterElements (made by tests/fixtures/torchscript/make_fixtures.py). It holds a
    body per expert, so moec raises it to one MoE dispatch. Inputs of 64 to 150 tokens (each hits all 8
    experts, which the traced graph needs, as ONNX Runtime does). qwen3_moe_eager, gpt_oss_eager, phimoe_eager,
    ernie4_5_moe_eager and dbrx_eager: Qwen3-MoE's, GPT-OSS's, PhiMoE's and Ernie-4.5-MoE's blocks and DBRX's
    FFN (4 experts, L1-renormalised top-2) the same way.

  - Optimum's merged-decoder layout, built here from tests/fixtures/transformers/past_qwen3_moe.onnx (a
    Qwen3-MoE decoder with KV caches, opset 20) the way Optimum's merge_decoders joins a decoder with and one
    without past: the initializers shared at the top, one `If` on a `use_cache_branch` input whose branches
    hold the whole decoder (the "without past" one reading zero cached positions: its past Sliced to length
    0). Run with the cache branch on a prefill and a decode step, and with the other on a prompt with a
    one-position dummy past (as Optimum feeds it).

  - tests/fixtures/ortgenai/gpt_oss.onnx: ONNX Runtime GenAI's model builder's export of a tiny gpt-oss (opset
    22: com.microsoft.MoE with clamped SwiGLU, GroupQueryAttention with head sinks and, on the sliding layer,
    window-sized KV buffers `sliding_window_cache`; made by tests/fixtures/ortgenai/make_fixtures.py). Driven
    as GenAI drives it: full layers' past and present share one max-length buffer, the sliding layer's buffer
    holds C >= window positions (C = 8 and 12), prefill of 11 tokens (more than the window) then 6 decode
    steps, at batch 1 and 2, each runtime fed its own presents. Compared: the logits, and the valid rows of
    the presents (full layers: the T positions so far; sliding layer: the L(T) rows ONNX Runtime's contract
    says it keeps); and a session (`moert generate`) over it, greedy tokens against ONNX Runtime's, and a
    padded batch session (prompts of 11 and 5 tokens), each sequence's logits against ONNX Runtime running it
    alone.

Every output matches ONNX Runtime within 1e-5 relative to the largest magnitude (1e-4 for the decoders).

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


def merged_decoder(src, dst):
    """Optimum's merged layout from a decoder with past `src`: If(use_cache_branch, with past, without)."""
    from onnx import TensorProto, helper
    m = onnx.load(src)
    g = m.graph
    outer = {i.name for i in g.input} | {t.name for t in g.initializer}
    pasts = [i.name for i in g.input if i.name.startswith("past_key_values.")]

    def branch(tag, no_past):
        rename = {}
        nodes = []
        if no_past:  # the decoder without past: zero cached positions
            nodes.append(helper.make_node("Constant", [], [f"{tag}::zero"],
                                          value=helper.make_tensor("z", TensorProto.INT64, [1], [0])))
            nodes.append(helper.make_node("Constant", [], [f"{tag}::axis"],
                                          value=helper.make_tensor("a", TensorProto.INT64, [1], [2])))
            for p in pasts:
                rename[p] = f"{tag}::{p}"
                nodes.append(helper.make_node("Slice", [p, f"{tag}::zero", f"{tag}::zero", f"{tag}::axis"],
                                              [rename[p]]))
        for n in g.node:
            for o in n.output:
                if o:
                    rename[o] = f"{tag}::{o}"
        for n in g.node:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            c.name = f"{tag}::{n.name}"
            c.input[:] = [rename.get(i, i) if i not in outer or i in pasts and no_past else i for i in n.input]
            c.output[:] = [rename[o] if o else o for o in n.output]
            nodes.append(c)
        outs = []
        for o in g.output:
            v = onnx.ValueInfoProto()
            v.CopyFrom(o)
            v.name = rename[o.name]
            outs.append(v)
        info = []
        for v in g.value_info:
            w = onnx.ValueInfoProto()
            w.CopyFrom(v)
            w.name = rename.get(v.name, v.name)
            info.append(w)
        return helper.make_graph(nodes, tag, [], outs, value_info=info)

    flag = helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
    node = helper.make_node("If", ["use_cache_branch"], [o.name for o in g.output], name="optimum::if",
                            then_branch=branch("with_past", False), else_branch=branch("without_past", True))
    graph = helper.make_graph([node], "merged", list(g.input) + [flag], list(g.output), list(g.initializer))
    merged = helper.make_model(graph, opset_imports=m.opset_import, ir_version=m.ir_version)
    onnx.save(merged, dst)


def resident(t, cap, window):
    """How many positions a window-sized cache of capacity `cap` keeps after `t` (ORT's GroupQueryAttention)."""
    gap = cap - window + 1
    return t if t <= cap else t - gap * -(-(t - cap) // gap)


def gpt_oss(moec, rt, tmp, ort):
    """The ORT-GenAI gpt-oss fixture over prefill + decode steps; returns the worst relative error."""
    path = os.path.join(ROOT, "tests", "fixtures", "ortgenai", "gpt_oss.onnx")
    art = os.path.join(tmp, "gpt_oss.moex")
    r = subprocess.run([moec, "compile", path, "-o", art], capture_output=True, text=True)
    if r.returncode:
        return None, "compile: " + r.stderr.strip()
    # Both layers' MoE and attention become dispatches (the window-sized cache's attention too).
    fused = "2 MoE dispatches" in r.stderr and "2 attention dispatches" in r.stderr
    check("gpt-oss: both layers' MoE and attention are dispatches", fused,
          next((ln for ln in r.stderr.splitlines() if "dispatches" in ln), r.stderr.strip()))
    model = onnx.load(path)
    window = {}  # past name -> local_window_size of its sliding_window_cache attention
    for n in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "GroupQueryAttention" and attrs.get("sliding_window_cache"):
            window[n.input[3]] = window[n.input[4]] = attrs["local_window_size"]
    pasts = [i for i in model.graph.input if i.name.startswith("past_key_values.")]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    m = rt.load(art, threads=2)
    rng = np.random.default_rng(11)
    worst, max_len, runs = 0.0, 32, 0
    for batch, cap in [(1, 8), (1, 12), (2, 8)]:
        def zeros(i):
            length = cap if i.name in window else max_len
            return np.zeros((batch, 2, length, 16), np.float32)  # 2 key-value heads of 16 (make_fixtures.py)
        state = [{i.name: zeros(i) for i in pasts} for _ in range(2)]  # ORT's, moert's
        ids, total = rng.integers(0, 96, (batch, 11)), 0
        for step in range(7):
            total += ids.shape[1]
            outs = []
            for who, st in enumerate(state):
                feeds = dict(st, input_ids=ids, attention_mask=np.ones((batch, total), np.int64))
                if who == 0:
                    outs.append(dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds))))
                else:
                    outs.append(m.run(feeds))
            want, got = outs
            for name, w in want.items():
                g = got[name]
                if name.startswith("present."):
                    past = name.replace("present", "past_key_values")
                    rows = resident(total, cap, window[past]) if past in window else total
                    w, g = w[:, :, :rows], g[:, :, :rows]
                worst = max(worst, np.inf if g.shape != w.shape else
                            float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-30)))
            for who, st in enumerate(state):
                for k in st:
                    st[k] = np.asarray(outs[who][k.replace("past_key_values", "present")])
            ids = want["logits"][:, -1:].argmax(-1).astype(np.int64)
            runs += 1
    # A session (moert generate) keeps the window-sized caches itself (capacity = the window): greedy tokens
    # from a prompt longer than the window are ONNX Runtime's, driven as above.
    prompt = rng.integers(0, 96, (1, 11))
    state = {i.name: np.zeros((1, 2, min(window.values()) if i.name in window else max_len, 16), np.float32)
             for i in pasts}
    ids, total, want_tokens = prompt, 0, []
    for _ in range(6):
        total += ids.shape[1]
        out = dict(zip([o.name for o in sess.get_outputs()],
                       sess.run(None, dict(state, input_ids=ids, attention_mask=np.ones((1, total), np.int64)))))
        state = {k: out[k.replace("past_key_values", "present")] for k in state}
        ids = out["logits"][:, -1:].argmax(-1).astype(np.int64)
        want_tokens.append(int(ids[0, 0]))
    got_tokens, _ = m.generate(prompt[0], max_new_tokens=6)
    check("gpt-oss: a session's greedy tokens over window-sized caches are ONNX Runtime's",
          [int(t) for t in got_tokens] == want_tokens, f"{[int(t) for t in got_tokens]} vs {want_tokens}")
    # Prompts of 11 and 5 tokens as one left-padded batch (the session moves each sequence's tokens to the front
    # of its row: right padding, which ONNX Runtime 1.31 refuses with window-sized caches), then 5 greedy decode
    # steps: each sequence's logits at every call against ONNX Runtime running it alone as above (1e-4).
    def alone(tokens, steps):
        st = {i.name: np.zeros((1, 2, min(window.values()) if i.name in window else max_len, 16), np.float32)
              for i in pasts}
        ids, total, logits = np.array([tokens]), 0, []
        for _ in range(steps + 1):
            total += ids.shape[1]
            out = dict(zip([o.name for o in sess.get_outputs()],
                           sess.run(None, dict(st, input_ids=ids, attention_mask=np.ones((1, total), np.int64)))))
            st = {k: out[k.replace("past_key_values", "present")] for k in st}
            logits.append(out["logits"][0, -1])
            ids = out["logits"][:, -1:].argmax(-1).astype(np.int64)
        return logits
    seqs = [rng.integers(0, 96, 11).tolist(), rng.integers(0, 96, 5).tolist()]
    refs = [alone(t, 5) for t in seqs]
    session = m.session(batch=2, max_context=max_len)
    got = session.append(np.array([seqs[0], [0] * 6 + seqs[1]]), np.array([[1] * 11, [0] * 6 + [1] * 5]))
    errs = []
    for step in range(6):
        errs += [float(np.abs(got[j] - refs[j][step]).max() / np.abs(refs[j][step]).max()) for j in range(2)]
        if step < 5:
            got = session.append(got.argmax(-1).astype(np.int64)[:, None])
    session.close()
    check("gpt-oss: a padded batch session (prompts of 11 and 5 tokens) over window-sized caches",
          max(errs) <= 1e-4, f"{len(errs)} sequence-calls, logits max rel error {max(errs):.2e} vs ONNX Runtime "
          "per sequence")
    # Evicted positions cannot be rewound to: one error line.
    session = m.session()
    session.append(prompt[0])
    session.append(prompt[0, :3])
    try:
        session.rewind(4)
        rewound = "no error"
    except Exception as e:  # moert.Error
        rewound = str(e)
    session.close()
    check("gpt-oss: rewinding past a window-sized cache's evicted positions is one error",
          "window-sized" in rewound and "\n" not in rewound, rewound)
    m.close()
    return worst, f"{runs} runs (batch, sliding-cache capacity) in [(1, 8), (1, 12), (2, 8)], prefill 11 " \
                  f"tokens then 6 decode steps each; a session's greedy decode"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--lib", required=True, help="libmoert.so, for the Python binding")
    args = ap.parse_args()
    import onnxruntime as ort

    rng = np.random.default_rng(5)
    rt = moert.Runtime(args.lib)
    with tempfile.TemporaryDirectory() as tmp:
        art = os.path.join(tmp, "m.moex")
        # TorchScript traces of loops over the experts hit, each holding a body per expert: the loop form,
        # raised to one dispatch (passes/test/torchscript_expert_loop.test).
        for label, name, experts in [("TorchScript Mixtral block (eager experts)", "mixtral_eager", 8),
                                     ("TorchScript Qwen3-MoE block (eager experts)", "qwen3_moe_eager", 8),
                                     ("TorchScript GPT-OSS block (eager experts)", "gpt_oss_eager", 8),
                                     ("TorchScript PhiMoE block (eager experts)", "phimoe_eager", 4),
                                     ("TorchScript Ernie-4.5-MoE block (eager experts)", "ernie4_5_moe_eager", 8),
                                     ("TorchScript DBRX FFN", "dbrx_eager", 4)]:
            path = os.path.join(ROOT, "tests", "fixtures", "torchscript", f"{name}.onnx")
            nonzero = sum(n.op_type == "NonZero" for n in onnx.load(path).graph.node)
            r = subprocess.run([args.moec, "compile", path, "-o", art], capture_output=True, text=True)
            if r.returncode:
                check(label, False, "compile: " + r.stderr.strip())
                continue
            check(f"{label}: one MoE dispatch", "1 MoE dispatch," in r.stderr,
                  next((ln for ln in r.stderr.splitlines() if "dispatches" in ln), r.stderr.strip()))
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
            check(label, nonzero == experts + 1 and worst <= TOL,
                  f"{nonzero} NonZero nodes; (batch, tokens) {shapes}: max |moec - ORT| / max |ORT| = {worst:.2e} "
                  f"(bound {TOL:g})")
        # Optimum's merged decoder: both branches, against ONNX Runtime.
        path = os.path.join(tmp, "merged.onnx")
        merged_decoder(os.path.join(ROOT, "tests", "fixtures", "transformers", "past_qwen3_moe.onnx"), path)
        r = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
        if r.returncode:
            check("Optimum-style merged decoder", False, "compile: " + r.stderr.strip())
        else:
            z = np.load(os.path.join(ROOT, "tests", "fixtures", "transformers", "past_qwen3_moe.npz"))
            steps = []
            for step in ("prefill", "decode"):
                feeds = {k[len(step) + 1:]: z[k] for k in z.files if k.startswith(step + ".") and
                         (k.endswith("input_ids") or k.endswith("attention_mask") or ".past_key_values." in k)}
                feeds["use_cache_branch"] = np.array([True])
                steps.append((step + " (cache branch)", feeds))
            ids = z["prefill.input_ids"]
            dummy = {k[len("prefill."):]: np.zeros(z[k].shape[:2] + (1,) + z[k].shape[3:], np.float32)
                     for k in z.files if k.startswith("prefill.past_key_values.")}
            steps.append(("prompt (no-cache branch, a dummy past)",
                          dict(dummy, input_ids=ids, attention_mask=np.ones(ids.shape, np.int64),
                               use_cache_branch=np.array([False]))))
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            m = rt.load(art, threads=2)
            worst = 0.0
            for what, feeds in steps:
                want = sess.run(None, feeds)
                got = m.run(feeds)
                for o, w in zip(sess.get_outputs(), want):
                    g = got[o.name]
                    worst = max(worst, np.inf if g.shape != w.shape else
                                float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-30)))
            # A session (moert_session_*) over it: a prompt, then one token, against ONNX Runtime's cache
            # branch fed its own presents.
            prompt, nxt = ids[:1], np.array([[3]], np.int64)
            sess_err = 0.0
            session = m.session()
            got = [session.append(prompt[0]), session.append(nxt[0])]
            session.close()
            past = {k: np.zeros((1,) + v.shape[1:2] + (0,) + v.shape[3:], np.float32) for k, v in dummy.items()}
            total = 0
            for toks, g in zip([prompt, nxt], got):
                total += toks.shape[1]
                feeds = dict(past, input_ids=toks, attention_mask=np.ones((1, total), np.int64),
                             use_cache_branch=np.array([True]))
                out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
                want = out["logits"][0, -1]
                sess_err = max(sess_err, float(np.abs(np.asarray(g).reshape(-1) - want).max() / np.abs(want).max()))
                past = {k: out[k.replace("past_key_values", "present")] for k in past}
            worst = max(worst, sess_err)
            steps.append(("a session: prompt, then a token", None))
            m.close()
            steps_text = subprocess.run([os.path.join(os.path.dirname(args.moec), "moert"), "inspect", art],
                                        capture_output=True, text=True).stdout
            inside = len([ln for ln in steps_text.splitlines() if ln.startswith("    ") and
                          ("linear " in ln or "attention " in ln or "dispatch " in ln)])
            check("Optimum-style merged decoder", worst <= 1e-4 and inside > 0,
                  f"{len(steps)} steps ({', '.join(w for w, _ in steps)}): max |moec - ORT| / max |ORT| = "
                  f"{worst:.2e} (bound 1e-4); {inside} dispatches inside the If's branches")
        worst, what = gpt_oss(args.moec, rt, tmp, ort)
        check("ORT-GenAI builder's gpt-oss (window-sized KV buffers)", worst is not None and worst <= 1e-4,
              what if worst is None else f"{what}: max |moec - ORT| / max |ORT| = {worst:.2e} (bound 1e-4), "
              "presents compared on their valid rows")
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
