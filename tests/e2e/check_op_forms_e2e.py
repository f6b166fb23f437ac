#!/usr/bin/env python3
"""Forms of ONNX ops the node tests leave out, through moec and moert, against ONNX Runtime on the same file.

  - GridSample: bicubic with reflection padding and align_corners, nearest with border padding, on a 4-D input;
  - RoiAlign: max mode, opset 10's output_half_pixel, sampling_ratio 0 (adaptive), RoIs past the border;
  - DFT: a complex input along axis 2 with a dft_length that truncates, one that zero-pads, and the inverse
    of a onesided spectrum (a real signal back);
  - DFT at lengths 3 to 2048 (powers of two, a prime, 400, 1000), forward and inverse, complex and onesided,
    against numpy.fft; STFT with Whisper's n_fft 400 / hop 160 against numpy.fft.rfft;
  - STFT: a Hann window, hop 3, onesided off;
  - QLinearMatMul with a per-column b_scale, batched 3-D (ONNX Runtime takes per-tensor zero points only);
    QLinearConv with per-channel w_scale / w_zero_point and a bias, int8; ConvInteger with a per-channel
    weight zero point, strides and pads (against ONNX's reference evaluator: ORT takes per-tensor only);
  - BatchNormalization in training mode on a 3-D input (running statistics outputs);
  - TfIdfVectorizer in IDF and TFIDF modes with weights, max_skip_count 2, over a batch.
Every output matches ONNX Runtime (or ONNX's reference evaluator where it says so) within 1e-5 relative to the largest magnitude (exactly for the quantized ops).
The random ops (no implementation reproduces another's values) are checked by their distribution: a seeded
RandomNormal's mean and standard deviation, RandomUniform's range, training-mode Dropout's kept fraction and
its 1 / (1 - ratio) scaling (and the same values on every run when seeded).

    check_op_forms_e2e.py --moec build/bin/moec --lib build/lib/libmoert.so
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "runtime", "python"))
import moert  # noqa: E402

TOL = 1e-5
failures = []
NP = {np.float32: TensorProto.FLOAT, np.int64: TensorProto.INT64, np.uint8: TensorProto.UINT8,
      np.int8: TensorProto.INT8, np.int32: TensorProto.INT32, np.bool_: TensorProto.BOOL}


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


def model(nodes, inputs, outputs, inits=(), opset=17):
    """inputs: {name: array} (graph inputs), outputs: {name: (elem, shape)}."""
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, NP[v.dtype.type], v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, e, s) for k, (e, s) in outputs.items()],
        [numpy_helper.from_array(v, k) for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def run_both(args, rt, tmp, m, feeds, reference=False):
    """moert's outputs and ONNX Runtime's (reference: ONNX's own reference evaluator, for forms ORT lacks)."""
    path, art = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "m.moex")
    onnx.save(m, path)
    r = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
    if r.returncode:
        return None, None, r.stderr.strip()
    if reference:
        from onnx.reference import ReferenceEvaluator
        want = dict(zip([o.name for o in m.graph.output], ReferenceEvaluator(m).run(None, feeds)))
    else:
        import onnxruntime as ort
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    mm = rt.load(art, threads=2)
    got = {k: np.asarray(v) for k, v in mm.run(feeds).items()}
    mm.close()
    return want, got, ""


def compare(name, args, rt, tmp, m, feeds, exact=False, reference=False):
    want, got, err = run_both(args, rt, tmp, m, feeds, reference)
    if want is None:
        check(name, False, err)
        return
    worst = 0.0
    for k, w in want.items():
        g = got[k]
        if g.shape != w.shape or g.dtype != w.dtype:
            worst = np.inf
            break
        if exact:
            worst = max(worst, float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max()))
        else:
            worst = max(worst, float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-30)))
    who = "ONNX's reference" if reference else "ORT"
    check(name, worst <= (0 if exact else TOL),
          f"max |moec - {who}|{'' if exact else f' / max |{who}|'} = {worst:.3g} over {', '.join(want)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--lib", required=True)
    args = ap.parse_args()
    rt = moert.Runtime(args.lib)
    rng = np.random.default_rng(3)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        x, grid = f32(2, 3, 5, 6), rng.uniform(-1.3, 1.3, (2, 4, 7, 2)).astype(np.float32)
        for mode, pad, align in (("bicubic", "reflection", 1), ("nearest", "border", 0), ("bilinear", "zeros", 0)):
            m = model([helper.make_node("GridSample", ["x", "grid"], ["y"], mode=mode, padding_mode=pad,
                                        align_corners=align)], {"x": x, "grid": grid},
                      {"y": (TensorProto.FLOAT, [2, 3, 4, 7])}, opset=16)
            compare(f"GridSample {mode} {pad} align_corners={align}", args, rt, tmp, m, {"x": x, "grid": grid})

        x = f32(2, 3, 10, 12)
        rois = np.array([[0, 0, 9, 9], [2.5, 1.5, 11.7, 8.2], [-3, -2, 14, 13], [4, 4, 4.6, 4.8]], np.float32)
        bi = np.array([0, 1, 1, 0], np.int64)
        for opset, attrs in ((16, dict(mode="max", output_height=3, output_width=4, sampling_ratio=2,
                                       spatial_scale=0.9)),
                             (10, dict(mode="avg", output_height=2, output_width=5, sampling_ratio=0))):
            m = model([helper.make_node("RoiAlign", ["x", "rois", "bi"], ["y"], **attrs)],
                      {"x": x, "rois": rois, "bi": bi},
                      {"y": (TensorProto.FLOAT, [4, 3, attrs["output_height"], attrs["output_width"]])}, opset=opset)
            compare(f"RoiAlign opset {opset} {attrs['mode']}", args, rt, tmp, m, {"x": x, "rois": rois, "bi": bi})

        sig = f32(2, 3, 9, 2)
        for length in (6, 13):
            m = model([helper.make_node("DFT", ["x", "n"], ["y"], axis=2)], {"x": sig},
                      {"y": (TensorProto.FLOAT, [2, 3, length, 2])}, inits=[("n", np.array(length, np.int64))])
            compare(f"DFT complex, axis 2, dft_length {length}", args, rt, tmp, m, {"x": sig})
        spec = f32(2, 6, 2)
        m = model([helper.make_node("DFT", ["x", "n"], ["y"], inverse=1, onesided=1)], {"x": spec},
                  {"y": (TensorProto.FLOAT, [2, 10, 1])}, inits=[("n", np.array(10, np.int64))])
        want, got, err = run_both(args, rt, tmp, m, {"x": spec})
        if want is None:
            check("DFT inverse onesided (irfft)", False, err)
        else:  # ORT's inverse onesided differs from ONNX's definition: numpy's irfft is the reference here
            ref = np.fft.irfft(spec[..., 0] + 1j * spec[..., 1], n=10, axis=1)[..., None]
            err = float(np.abs(got["y"] - ref).max() / np.abs(ref).max())
            check("DFT inverse onesided (irfft)", err <= TOL, f"max |moec - numpy.fft.irfft| / max = {err:.3g}")

        # Long transforms (radix-2 FFT, Bluestein for other lengths, the direct sum for short ones) against
        # numpy.fft: complex forward and inverse along axis 1, a real onesided forward, at lengths a power of two,
        # prime, Whisper's 400, and 1000 with the signal zero-padded.
        for length, inverse, onesided, parts in ((64, 0, 0, 2), (97, 0, 0, 2), (400, 1, 0, 2), (400, 0, 1, 1),
                                                  (1000, 0, 0, 2), (2048, 1, 0, 2), (3, 0, 0, 2)):
            x = f32(2, min(length, 700), parts)
            bins = length // 2 + 1 if onesided else length
            m = model([helper.make_node("DFT", ["x", "n"], ["y"], axis=1, inverse=inverse, onesided=onesided)],
                      {"x": x}, {"y": (TensorProto.FLOAT, [2, bins, 2])}, inits=[("n", np.array(length, np.int64))])
            want, got, err = run_both(args, rt, tmp, m, {"x": x})
            name = f"DFT length {length}{' inverse' if inverse else ''}{' onesided' if onesided else ''}"
            if want is None:
                check(name, False, err)
                continue
            z = x[..., 0] + (1j * x[..., 1] if parts == 2 else 0)
            ref = (np.fft.ifft if inverse else np.fft.fft)(z.astype(np.complex128), n=length, axis=1)[:, :bins]
            ref = np.stack([ref.real, ref.imag], -1)
            err = float(np.abs(got["y"] - ref).max() / np.abs(ref).max())
            check(name, err <= TOL, f"max |moec - numpy.fft| / max = {err:.3g}")

        # Whisper's front end: n_fft 400, hop 160, a periodic Hann window, onesided.
        sig = f32(1, 3200, 1)
        win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)).astype(np.float32)
        m = model([helper.make_node("STFT", ["x", "step", "w"], ["y"])], {"x": sig},
                  {"y": (TensorProto.FLOAT, [1, 18, 201, 2])}, inits=[("step", np.array(160, np.int64)), ("w", win)])
        want, got, err = run_both(args, rt, tmp, m, {"x": sig})
        if want is None:
            check("STFT n_fft 400, hop 160 (Whisper's)", False, err)
        else:
            frames = np.stack([sig[0, f * 160:f * 160 + 400, 0] * win for f in range(18)]).astype(np.float64)
            ref = np.fft.rfft(frames, axis=1)[None]
            ref = np.stack([ref.real, ref.imag], -1)
            err = float(np.abs(got["y"] - ref).max() / np.abs(ref).max())
            check("STFT n_fft 400, hop 160 (Whisper's)", err <= TOL, f"max |moec - numpy.fft.rfft| / max = {err:.3g}")

        sig = f32(2, 40, 1)
        win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(16) / 16)).astype(np.float32)
        m = model([helper.make_node("STFT", ["x", "step", "w"], ["y"], onesided=0)], {"x": sig},
                  {"y": (TensorProto.FLOAT, [2, 9, 16, 2])}, inits=[("step", np.array(3, np.int64)), ("w", win)])
        compare("STFT Hann window, hop 3, two-sided", args, rt, tmp, m, {"x": sig})

        a = rng.integers(0, 256, (2, 4, 5)).astype(np.uint8)
        b = rng.integers(0, 256, (5, 3)).astype(np.uint8)
        inits = [("as", np.array(0.02, np.float32)), ("az", np.array(120, np.uint8)),
                 ("bs", np.array([0.04, 0.02, 0.03], np.float32)), ("bz", np.array(127, np.uint8)),
                 ("ys", np.array(0.7, np.float32)), ("yz", np.array(100, np.uint8))]
        m = model([helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])],
                  {"a": a, "b": b}, {"y": (TensorProto.UINT8, [2, 4, 3])}, inits=inits)
        compare("QLinearMatMul per-column b_scale, 3-D", args, rt, tmp, m,
                {"a": a, "b": b}, exact=True)

        x = rng.integers(-128, 128, (1, 3, 7, 6)).astype(np.int8)
        w = rng.integers(-128, 128, (4, 3, 3, 3)).astype(np.int8)
        inits = [("w", w), ("xs", np.array(0.05, np.float32)), ("xz", np.array(-3, np.int8)),
                 ("ws", np.array([0.01, 0.02, 0.005, 0.03], np.float32)), ("wz", np.array([0, 0, 0, 0], np.int8)),
                 ("ys", np.array(2.5, np.float32)), ("yz", np.array(5, np.int8)),
                 ("bias", rng.integers(-500, 500, 4).astype(np.int32))]
        m = model([helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "bias"], ["y"],
                                    pads=[1, 1, 1, 1], strides=[2, 1])],
                  {"x": x}, {"y": (TensorProto.INT8, [1, 4, 4, 6])}, inits=inits, opset=13)
        compare("QLinearConv int8, per-channel w_scale, bias, pads and strides", args, rt, tmp, m, {"x": x},
                exact=True)
        xu = rng.integers(0, 256, (1, 2, 6, 6)).astype(np.uint8)
        wu = rng.integers(0, 256, (3, 2, 2, 2)).astype(np.uint8)
        m = model([helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], strides=[2, 2], pads=[1, 0, 1, 0])],
                  {"x": xu}, {"y": (TensorProto.INT32, [1, 3, 4, 3])},
                  inits=[("w", wu), ("xz", np.array(7, np.uint8)), ("wz", np.array([1, 128, 255], np.uint8))])
        compare("ConvInteger per-channel weight zero point, strides, pads", args, rt, tmp, m, {"x": xu}, exact=True,
                reference=True)

        x = f32(4, 3, 10)
        inits = [("s", f32(3)), ("b", f32(3)), ("mean", f32(3)), ("var", np.abs(f32(3)) + 0.5)]
        m = model([helper.make_node("BatchNormalization", ["x", "s", "b", "mean", "var"], ["y", "rm", "rv"],
                                    training_mode=1, momentum=0.8, epsilon=1e-3)], {"x": x},
                  {"y": (TensorProto.FLOAT, [4, 3, 10]), "rm": (TensorProto.FLOAT, [3]),
                   "rv": (TensorProto.FLOAT, [3])}, inits=inits, opset=15)
        compare("BatchNormalization training mode (3-D, momentum 0.8)", args, rt, tmp, m, {"x": x})

        toks = rng.integers(0, 6, (3, 12)).astype(np.int64)
        for mode in ("IDF", "TFIDF"):
            m = model([helper.make_node("TfIdfVectorizer", ["x"], ["y"], mode=mode, min_gram_length=1,
                                        max_gram_length=3, max_skip_count=2, ngram_counts=[0, 4, 10],
                                        ngram_indexes=list(range(9)), pool_int64s=[0, 2, 3, 5, 0, 1, 2, 2, 4, 3, 1, 2, 0],
                                        weights=[0.5, 1.5, 2.0, 0.1, 1.0, 3.0, 0.7, 0.2, 1.1])],
                      {"x": toks}, {"y": (TensorProto.FLOAT, [3, 9])}, opset=9)
            compare(f"TfIdfVectorizer {mode}, weights, skips up to 2, n-grams up to 3", args, rt, tmp, m,
                    {"x": toks})

        # Random ops: the distribution, and seeded runs that repeat.
        m = model([helper.make_node("RandomNormal", [], ["n"], shape=[200, 100], mean=2.0, scale=3.0, seed=5.0),
                   helper.make_node("RandomUniform", [], ["u"], shape=[200, 100], low=-1.0, high=4.0)],
                  {}, {"n": (TensorProto.FLOAT, [200, 100]), "u": (TensorProto.FLOAT, [200, 100])})
        path, art = os.path.join(tmp, "r.onnx"), os.path.join(tmp, "r.moex")
        onnx.save(m, path)
        r = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
        if r.returncode:
            check("RandomNormal / RandomUniform", False, r.stderr.strip())
        else:
            mm = rt.load(art, threads=1)
            one, two = mm.run({}), mm.run({})
            mm.close()
            n, u = np.asarray(one["n"]), np.asarray(one["u"])
            ok = (abs(n.mean() - 2.0) < 0.1 and abs(n.std() - 3.0) < 0.1 and np.array_equal(n, np.asarray(two["n"]))
                  and u.min() >= -1.0 and u.max() < 4.0 and abs(u.mean() - 1.5) < 0.1)
            check("RandomNormal (seeded) / RandomUniform", ok,
                  f"normal mean {n.mean():.3f} std {n.std():.3f} (2, 3), same on a second run: "
                  f"{np.array_equal(n, np.asarray(two['n']))}; uniform in [{u.min():.3f}, {u.max():.3f}] mean "
                  f"{u.mean():.3f} (1.5)")
        x = np.abs(f32(100, 100)) + 1
        m = model([helper.make_node("Dropout", ["x", "r", "t"], ["y", "mask"], seed=7)],
                  {"x": x, "r": np.array(0.3, np.float32), "t": np.array(True)},
                  {"y": (TensorProto.FLOAT, [100, 100]), "mask": (TensorProto.BOOL, [100, 100])})
        path = os.path.join(tmp, "d.onnx")
        onnx.save(m, path)
        r = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
        if r.returncode:
            check("Dropout training mode", False, r.stderr.strip())
        else:
            mm = rt.load(art, threads=1)
            out = mm.run({"x": x, "r": np.array(0.3, np.float32), "t": np.array(True)})
            off = mm.run({"x": x, "r": np.array(0.3, np.float32), "t": np.array(False)})
            mm.close()
            y, mask = np.asarray(out["y"]), np.asarray(out["mask"])
            kept = mask.mean()
            ok = (abs(kept - 0.7) < 0.02 and np.allclose(y[mask], x[mask] / 0.7, rtol=1e-6) and
                  not y[~mask].any() and np.array_equal(np.asarray(off["y"]), x) and np.asarray(off["mask"]).all())
            check("Dropout training mode (run-time flag)", ok,
                  f"kept {kept:.3f} (0.7), kept values x / 0.7, dropped 0; training off: the input, mask all true")
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
