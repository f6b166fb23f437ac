#!/usr/bin/env python3
"""Writes small binary ONNX models for the frontend's lit tests (ones the text syntax cannot express).

  make_model.py external DIR     model.onnx + weights.data (external data), a MatMul over a 64x32 weight
  make_model.py truncated DIR    the same, with weights.data cut short
  make_model.py escape DIR       external data whose location points outside the model's folder
  make_model.py cut FILE         a valid model with inline weights, cut in half (a truncated download)
  make_model.py text IN OUT      the ONNX text IN parsed by the onnx package (newer syntax than libonnx 1.12
                                 reads: seq(...) and optional(...) types) and saved to OUT
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def matmul_model(weight_name="w"):
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 32])
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), weight_name)
    node = helper.make_node("MatMul", ["x", weight_name], ["y"], name="proj")
    graph = helper.make_graph([node], "external", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def main():
    mode, target = sys.argv[1], sys.argv[2]
    if mode == "text":
        with open(target) as f:
            onnx.save(onnx.parser.parse_model(f.read()), sys.argv[3])
        return
    if mode == "cut":
        data = matmul_model().SerializeToString()
        with open(target, "wb") as f:
            f.write(data[: len(data) // 2])
        return
    os.makedirs(target, exist_ok=True)
    model = matmul_model()
    path = os.path.join(target, "model.onnx")
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.data",
              size_threshold=0)
    data = os.path.join(target, "weights.data")
    if mode == "truncated":
        with open(data, "r+b") as f:
            f.truncate(100)
    elif mode == "escape":
        m = onnx.load(path, load_external_data=False)
        for entry in m.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = "../weights.data"
        onnx.save(m, path)
    elif mode != "external":
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
