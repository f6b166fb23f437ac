#!/usr/bin/env python3
"""Imports the ONNX backend node tests (Debian's libonnx-testdata) with `moec import`.

A test is in scope when every op in its graph is in `moec import --list-ops` at the model's opset and all
its values are tensors of numeric or bool types (moec does not handle strings, sequences or optionals).
Each in-scope model must import without error, except those node_tests_known_failures.txt lists (e.g. a
Dropout in training mode, refused by design); the out-of-scope ones are counted, not run. Prints every
failure with moec's error line, a summary, and 'N passed, M failed'.

  import_node_tests.py --moec build/bin/moec [--data /usr/share/libonnx-testdata/data/node] [--list]
"""
import argparse
import collections
import os
import subprocess
import sys

import onnx


def supported_ops(moec):
    out = subprocess.run([moec, "import", "--list-ops"], check=True, capture_output=True, text=True).stdout
    table = collections.defaultdict(list)
    for line in out.splitlines()[1:]:
        domain, op, since = line.split("\t")
        table[("" if domain == "ai.onnx" else domain, op)].append(int(since))
    return table


def supported_type(t):
    """Numeric or bool tensors, sequences of them, and optionals of either (no strings, maps, sparse tensors)."""
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        return t.tensor_type.elem_type != onnx.TensorProto.STRING
    if kind == "sequence_type":
        return t.sequence_type.elem_type.WhichOneof("value") == "tensor_type" and supported_type(t.sequence_type.elem_type)
    if kind == "optional_type":
        return supported_type(t.optional_type.elem_type)
    return False


def unsupported_types(model):
    for vi in list(model.graph.input) + list(model.graph.output):
        if not supported_type(vi.type):
            return True
    for node in model.graph.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == onnx.TensorProto.STRING:
                return True
    return False


def in_scope(model, table):
    if unsupported_types(model):
        return ["<string values>"]
    opsets = {o.domain if o.domain != "ai.onnx" else "": o.version for o in model.opset_import}
    missing = []
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        since = table.get((domain, node.op_type))
        if not since or min(since) > opsets.get(domain, 0):
            missing.append(node.op_type)
    return missing


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moec", required=True)
    ap.add_argument("--data", default="/usr/share/libonnx-testdata/data/node")
    ap.add_argument("--list", action="store_true", help="print every in-scope test and its result")
    ap.add_argument("--known-failures",
                    default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_tests_known_failures.txt"))
    args = ap.parse_args()
    known = set()
    if os.path.exists(args.known_failures):
        known = {line.split()[0] for line in open(args.known_failures) if line.strip() and not line.startswith("#")}
    if not os.path.isdir(args.data):
        print(f"import_node_tests: {args.data} not found (Debian package libonnx-testdata)", file=sys.stderr)
        return 1
    table = supported_ops(args.moec)
    passed, failed, skipped = [], [], collections.Counter()
    for name in sorted(os.listdir(args.data)):
        path = os.path.join(args.data, name, "model.onnx")
        if not os.path.isfile(path):
            continue
        model = onnx.load(path, load_external_data=False)
        missing = in_scope(model, table)
        if missing:
            for op in set(missing):
                skipped[op] += 1
            continue
        r = subprocess.run([args.moec, "import", path, "-o", os.devnull], capture_output=True, text=True)
        if r.returncode != 0 and name in known:
            skipped["<known failure>"] += 1
            continue
        (passed if r.returncode == 0 else failed).append((name, r.stderr.strip().splitlines()[-1:] or [""]))
        if args.list:
            print(f"{'PASS' if r.returncode == 0 else 'FAIL'}: {name}")
    for name, err in failed:
        print(f"FAIL: {name}: {err[0]}")
    print(f"in scope: {len(passed) + len(failed)} of {len(passed) + len(failed) + sum(skipped.values())} "
          f"node tests (out of scope: tests using ops moec does not import, or non-numeric values)")
    print(f"{len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
