#!/usr/bin/env python3
"""Checks that importing weights kept in external data does not copy them: writes a MoE model with
MB megabytes of external weights, imports it with moec, and compares moec's peak RSS with that of a tiny
model. Fails when the difference exceeds a quarter of the weights. Prints both numbers.

  import_rss.py MOEC DIR [MB]
"""
import os
import resource
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper


def write_model(path, experts, hidden, inter):
    shapes = {"fc1": (experts, 2 * inter, hidden), "fc2": (experts, hidden, inter)}
    inits, offset = [], 0
    with open(os.path.join(path, "weights.bin"), "wb") as f:
        for name, shape in shapes.items():
            a = np.full(shape, 0.01, np.float32)
            a.tofile(f)
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape, data_location=TensorProto.EXTERNAL)
            for k, v in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(a.nbytes))):
                entry = t.external_data.add()
                entry.key, entry.value = k, v
            offset += a.nbytes
            inits.append(t)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", hidden])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", experts])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", hidden])
    node = helper.make_node("MoE", ["x", "logits", "fc1", "", "fc2"], ["y"], domain="com.microsoft", k=1,
                            activation_type="swiglu", swiglu_fusion=1)
    model = helper.make_model(helper.make_graph([node], "moe", [x, logits], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    onnx.save(model, os.path.join(path, "model.onnx"))
    return offset


def peak_rss_kb(cmd):
    """Peak RSS of `cmd`, measured from a fresh small interpreter: a forked child's ru_maxrss starts at its
    parent's, and this process has just held the weights in memory."""
    out = subprocess.run([sys.executable, __file__, "--measure", *cmd], check=True, capture_output=True, text=True)
    return int(out.stdout)


def measure(cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"import_rss: {' '.join(cmd)} failed")
    print(usage.ru_maxrss)


def main():
    if sys.argv[1] == "--measure":
        measure(sys.argv[2:])
        return 0
    moec, work = sys.argv[1], sys.argv[2]
    mb = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    small, big = os.path.join(work, "small"), os.path.join(work, "big")
    os.makedirs(small, exist_ok=True)
    os.makedirs(big, exist_ok=True)
    write_model(small, 2, 64, 64)
    inter = 1024
    experts = max(1, (mb << 20) // (3 * inter * 1024 * 4))
    weight_bytes = write_model(big, experts, 1024, inter)
    base = peak_rss_kb([moec, "import", os.path.join(small, "model.onnx"), "-o", os.devnull])
    peak = peak_rss_kb([moec, "import", os.path.join(big, "model.onnx"), "-o", os.devnull])
    grew = (peak - base) * 1024
    print(f"weights {weight_bytes / 2**20:.0f} MiB: peak RSS {peak / 1024:.1f} MiB vs {base / 1024:.1f} MiB for "
          f"a tiny model (+{grew / 2**20:.1f} MiB, {grew / weight_bytes:.1%} of the weights)")
    if grew > weight_bytes / 4:
        print("FAIL: importing copies the weights")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
