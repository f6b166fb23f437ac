#!/usr/bin/env python3
"""Runs the ONNX backend node tests (Debian's libonnx-testdata) end to end on the CPU: `moec compile` each
model to an artifact, run it with libmoert on every test_data_set, and compare with the expected outputs the
test data ships (made by ONNX's reference implementation).

Every test of the suite runs. Two rates are reported: over the whole suite, and over the tests in scope of
moec's op table (every op in `moec import --list-ops` at the model's opset, numeric or bool tensors only; ops
ONNX defines as functions are imported as their bodies, so they count as the whole suite's).
Tolerance: ONNX's backend-test default, |got - want| <= 1e-7 + 1e-3 * |want| elementwise (exact for integers
and bools); shapes and dtypes must match.

Prints every failure with its reason (the compiler's or runtime's error line, or the mismatch) and the two
pass rates. Exit 1 when the in-scope rate is under --min-pass (95%), the whole suite's under --min-pass-all,
or a test outside --known-failures fails; the known-failures file lists tests expected to fail, one per line
with the reason. --write-known-failures FILE writes the failures of this run in that format.

  run_node_tests.py --moec build/bin/moec --lib build/lib/libmoert.so [--filter SUBSTR] [--list]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "runtime", "python"))
import moert  # noqa: E402
from import_node_tests import in_scope, supported_ops  # noqa: E402


def load_pb(path, type_proto=None):
    """A test data file as the value it holds: an array, or (for a graph input or output `type_proto` declares a
    sequence or an optional) a list of arrays, or None for an empty optional."""
    with open(path, "rb") as f:
        raw = f.read()
    kind = type_proto.WhichOneof("value") if type_proto is not None else "tensor_type"
    if kind == "sequence_type":
        s = onnx.SequenceProto()
        s.ParseFromString(raw)
        return s.name, numpy_helper.to_list(s)
    if kind == "optional_type":
        o = onnx.OptionalProto()
        o.ParseFromString(raw)
        return o.name, numpy_helper.to_optional(o)
    t = onnx.TensorProto()
    t.ParseFromString(raw)
    return t.name, numpy_helper.to_array(t)


def same(a, b):
    """Equal values (arrays, lists of arrays, None), NaNs equal."""
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def compare(name, got, want):
    if isinstance(want, list):
        if not isinstance(got, list):
            return f"output '{name}': {type(got).__name__}, expected a sequence"
        if len(got) != len(want):
            return f"output '{name}': a sequence of {len(got)} tensors, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            why = compare(f"{name}[{i}]", g, w)
            if why:
                return why
        return None
    if want is None or got is None:
        return None if want is None and got is None else f"output '{name}': {got!r:.40}, expected {want!r:.40}"
    if not isinstance(got, np.ndarray):
        return f"output '{name}': {type(got).__name__}, expected a tensor"
    if got.shape != want.shape:
        return f"output '{name}': shape {got.shape}, expected {want.shape}"
    if want.dtype.kind in "fc":
        if got.dtype != want.dtype:
            return f"output '{name}': dtype {got.dtype}, expected {want.dtype}"
        g, w = got.astype(np.float64), want.astype(np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~((np.abs(g - w) <= 1e-7 + 1e-3 * np.abs(w)) | (np.isnan(g) & np.isnan(w)) | (g == w))
        if bad.any():
            i = np.unravel_index(np.argmax(bad), bad.shape)
            return f"output '{name}': {int(bad.sum())} of {bad.size} elements off, e.g. at {i}: {g[i]} vs {w[i]}"
        return None
    if got.dtype != want.dtype and not (want.dtype == np.uint16 and got.dtype == np.uint16):
        return f"output '{name}': dtype {got.dtype}, expected {want.dtype}"
    if not np.array_equal(got, want):
        return f"output '{name}': values differ"
    return None


def run_test(args, rt, test_dir, tmp):
    model_path = os.path.join(test_dir, "model.onnx")
    artifact = os.path.join(tmp, "m.moex")
    if os.path.exists(artifact):
        os.remove(artifact)
    r = subprocess.run([args.moec, "compile", model_path, "-o", artifact, "--quiet"], capture_output=True,
                       text=True)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines()
        return "compile: " + (lines[-1] if lines else f"exit {r.returncode}")
    model = onnx.load(model_path, load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    types = {v.name: v.type for v in list(model.graph.input) + list(model.graph.output)}
    try:
        m = rt.load(artifact, threads=1)
    except moert.Error as e:
        return f"load: {e}"
    try:
        sets = sorted(d for d in os.listdir(test_dir) if d.startswith("test_data_set"))
        for s in sets:
            d = os.path.join(test_dir, s)
            feeds = {}
            for i in range(len(inputs)):
                p = os.path.join(d, f"input_{i}.pb")
                if os.path.exists(p):
                    feeds[inputs[i]] = load_pb(p, types[inputs[i]])[1]
            try:
                # Twice: the second run places the intermediates by the memory plan (sizes learned by the first).
                got = m.run(feeds)
                again = m.run(feeds)
            except moert.Error as e:
                return f"run: {e}"
            for name in got:
                if not same(got[name], again[name]):
                    return f"{s}: output '{name}' differs on the second run (memory plan)"
            for i, name in enumerate(outputs):
                want = load_pb(os.path.join(d, f"output_{i}.pb"), types[name])[1]
                if name not in got:
                    return f"output '{name}' missing"
                why = compare(name, got[name], want)
                if why:
                    return f"{s}: {why}"
    finally:
        m.close()
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moec", required=True)
    ap.add_argument("--lib", required=True, help="libmoert.so")
    ap.add_argument("--data", default="/usr/share/libonnx-testdata/data/node")
    ap.add_argument("--filter", default="", help="only tests whose name contains this")
    ap.add_argument("--known-failures", default=os.path.join(HERE, "node_tests_known_failures.txt"))
    ap.add_argument("--min-pass", type=float, default=95.0, help="over the in-scope tests")
    ap.add_argument("--min-pass-all", type=float, default=0.0, help="over the whole suite")
    ap.add_argument("--list", action="store_true", help="print every test and its result")
    ap.add_argument("--write-known-failures", metavar="FILE", help="write this run's failures as a known-failures file")
    args = ap.parse_args()
    if not os.path.isdir(args.data):
        print(f"run_node_tests: {args.data} not found (Debian package libonnx-testdata)", file=sys.stderr)
        return 1
    known = {}
    if os.path.exists(args.known_failures):
        for line in open(args.known_failures):
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, why = line.partition(" ")
                known[name] = why.strip()
    table = supported_ops(args.moec)
    rt = moert.Runtime(args.lib)
    passed, failed, scoped = [], [], set()
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(os.listdir(args.data)):
            test_dir = os.path.join(args.data, name)
            if args.filter not in name or not os.path.isfile(os.path.join(test_dir, "model.onnx")):
                continue
            if not in_scope(onnx.load(os.path.join(test_dir, "model.onnx"), load_external_data=False), table):
                scoped.add(name)
            why = run_test(args, rt, test_dir, tmp)
            (failed if why else passed).append((name, why))
            if args.list:
                print(f"{'FAIL' if why else 'PASS'}: {name}", flush=True)
    unexpected = [(n, w) for n, w in failed if n not in known]
    for name, why in failed:
        print(f"FAIL{'' if name in known else ' (unexpected)'}: {name}: {why}")
    fixed = sorted(set(known) & {n for n, _ in passed})
    for name in fixed:
        print(f"now passing (remove from the known failures): {name}")
    if args.write_known_failures:
        with open(args.write_known_failures, "w") as f:
            f.write(KNOWN_HEADER)
            for name, why in failed:
                old = known.get(name, "")
                f.write(f"{name} {old if old and 'not supported yet' not in old else short_reason(why)}\n")
    total = len(passed) + len(failed)
    rate = 100.0 * len(passed) / max(total, 1)
    in_total = len(scoped)
    in_passed = sum(1 for n, _ in passed if n in scoped)
    in_rate = 100.0 * in_passed / max(in_total, 1)
    print(f"in scope of moec's op table: passed {in_passed} of {in_total} ({in_rate:.1f}%)")
    print(f"whole suite: passed {len(passed)} of {total} node tests ({rate:.1f}%); {len(failed)} failed, "
          f"{len(unexpected)} of them not known failures")
    return 1 if in_rate < args.min_pass or rate < args.min_pass_all or unexpected else 0


KNOWN_HEADER = """# ONNX backend node tests (libonnx-testdata 1.12) that moec is expected to fail, one per line: name, then why.
# run_node_tests.py fails on any other failure, and says when one of these starts passing.
# Regenerate after a change with --write-known-failures (reasons already here are kept).
"""


def short_reason(why):
    """The error line without the test's path: 'op X not supported yet', or moec's message."""
    m = re.search(r"\((\w+)(?:, [\w.]+ opset \d+)?(?:, in ONNX function (\w+))?\): "
                  r"(?:unsupported op|op not supported by moec)", why)
    if m:
        return f"op {m.group(1)} not supported yet" + (f" (in the body of {m.group(2)})" if m.group(2) else "")
    if "is not a tensor, sequence or optional of a supported type" in why:
        return "string tensors (out of scope: docs/onnx-support.md)"
    return re.sub(r"/\S*/data/\w+/", "", why)


if __name__ == "__main__":
    sys.exit(main())
