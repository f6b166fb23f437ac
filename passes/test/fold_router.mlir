// moe-fold-router: logits computed as a linear layer of the MoE layer's own input move into the op
// (router_kind = linear, weights [H, N], bias); any other router stays outside.
// RUN: moec-opt %s --split-input-file --moe-fold-router | FileCheck %s
// RUN: moec-opt %s --split-input-file --moe-fold-router=remarks=true --verify-diagnostics -o /dev/null

// Gemm with transB = 1 (weights stored [N, H], as torch's Linear exports): the router is the transpose.
// CHECK-LABEL: func.func @gemm_transposed
// CHECK-NOT: onnx.Gemm
// CHECK: %[[W:.+]] = arith.constant dense<{{\[}}[1.000000e+00, 4.000000e+00, 7.000000e+00], [2.000000e+00, 5.000000e+00, 8.000000e+00], [3.000000e+00, 6.000000e+00, 9.000000e+00]]> : tensor<3x3xf32>
// CHECK: moe.sparse_moe %arg0, %[[W]], fc1 %arg1, fc2 %arg2 {activation = #moe.activation<relu>, k = 1 : i64, moe.fused = ["router_matmul"]}
// CHECK-SAME: (tensor<?x3xf32>, tensor<3x3xf32>, tensor<3x2x3xf32>, tensor<3x3x2xf32>)
func.func @gemm_transposed(%x: tensor<?x3xf32>, %w1: tensor<3x2x3xf32>, %w2: tensor<3x3x2xf32>) -> tensor<?x3xf32> {
  %w = onnx.Constant dense<[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]> : tensor<3x3xf32>
  %logits = onnx.Gemm %x, %w {transB = 1 : i64} : (tensor<?x3xf32>, tensor<3x3xf32>) -> tensor<?x3xf32>
  %y = moe.sparse_moe %x, %logits, fc1 %w1, fc2 %w2 {k = 1, router_kind = #moe.router<logits>, activation = #moe.activation<relu>}
     : (tensor<?x3xf32>, tensor<?x3xf32>, tensor<3x2x3xf32>, tensor<3x3x2xf32>) -> tensor<?x3xf32>
  return %y : tensor<?x3xf32>
}

// -----

// MatMul + bias Add on a reshaped copy of the input ([H, N] weights: used as they are), as in front of
// com.microsoft.MoE.
// CHECK-LABEL: func.func @matmul_bias
// CHECK-DAG: %[[W:.+]] = arith.constant dense<{{\[}}[1.000000e+00, 2.000000e+00], [3.000000e+00, 4.000000e+00]]> : tensor<2x2xf32>
// CHECK-DAG: %[[B:.+]] = arith.constant dense<[5.000000e-01, -5.000000e-01]> : tensor<2xf32>
// CHECK: moe.sparse_moe %arg0, %[[W]] router_bias %[[B]], fc1
// CHECK-NOT: router_kind
func.func @matmul_bias(%x: tensor<?x2xf32>, %w1: tensor<2x4x2xf32>, %w2: tensor<2x2x2xf32>) -> tensor<?x2xf32> {
  %shape = onnx.Constant dense<[1, -1, 2]> : tensor<3xi64>
  %flat = onnx.Constant dense<[-1, 2]> : tensor<2xi64>
  %x3 = onnx.Reshape %x, %shape : (tensor<?x2xf32>, tensor<3xi64>) -> tensor<1x?x2xf32>
  %w = onnx.Constant dense<[[1.0, 2.0], [3.0, 4.0]]> : tensor<2x2xf32>
  %b = onnx.Constant dense<[0.5, -0.5]> : tensor<2xf32>
  %mm = onnx.MatMul %x3, %w : (tensor<1x?x2xf32>, tensor<2x2xf32>) -> tensor<1x?x2xf32>
  %add = onnx.Add %mm, %b : (tensor<1x?x2xf32>, tensor<2xf32>) -> tensor<1x?x2xf32>
  %logits = onnx.Reshape %add, %flat : (tensor<1x?x2xf32>, tensor<2xi64>) -> tensor<?x2xf32>
  %y = moe.sparse_moe %x, %logits, fc1 %w1, fc2 %w2 {k = 1, router_kind = #moe.router<logits>, activation = #moe.activation<swiglu>}
     : (tensor<?x2xf32>, tensor<?x2xf32>, tensor<2x4x2xf32>, tensor<2x2x2xf32>) -> tensor<?x2xf32>
  return %y : tensor<?x2xf32>
}

// -----

// The router reads another tensor than the layer's input: not foldable.
// CHECK-LABEL: func.func @other_input
// CHECK: onnx.Gemm %arg1
// CHECK: router_kind = #moe.router<logits>
func.func @other_input(%x: tensor<?x3xf32>, %z: tensor<?x3xf32>, %w1: tensor<3x2x3xf32>, %w2: tensor<3x3x2xf32>) -> tensor<?x3xf32> {
  %w = onnx.Constant dense<1.0> : tensor<3x3xf32>
  %logits = onnx.Gemm %z, %w {transB = 1 : i64} : (tensor<?x3xf32>, tensor<3x3xf32>) -> tensor<?x3xf32>
  // expected-remark @+1 {{router not folded into the MoE layer: the router is not one linear layer of the layer's input}}
  %y = moe.sparse_moe %x, %logits, fc1 %w1, fc2 %w2 {k = 1, router_kind = #moe.router<logits>, activation = #moe.activation<relu>}
     : (tensor<?x3xf32>, tensor<?x3xf32>, tensor<3x2x3xf32>, tensor<3x3x2xf32>) -> tensor<?x3xf32>
  return %y : tensor<?x3xf32>
}

// -----

// The logits are also a graph output: folding would still need them computed, so the layer keeps them.
// CHECK-LABEL: func.func @logits_read_outside
// CHECK: router_kind = #moe.router<logits>
func.func @logits_read_outside(%x: tensor<?x3xf32>, %w1: tensor<3x2x3xf32>, %w2: tensor<3x3x2xf32>) -> (tensor<?x3xf32>, tensor<?x3xf32>) {
  %w = onnx.Constant dense<1.0> : tensor<3x3xf32>
  %logits = onnx.Gemm %x, %w {transB = 1 : i64} : (tensor<?x3xf32>, tensor<3x3xf32>) -> tensor<?x3xf32>
  // expected-remark @+1 {{router not folded into the MoE layer: the router logits are also read outside the MoE layer}}
  %y = moe.sparse_moe %x, %logits, fc1 %w1, fc2 %w2 {k = 1, router_kind = #moe.router<logits>, activation = #moe.activation<relu>}
     : (tensor<?x3xf32>, tensor<?x3xf32>, tensor<3x2x3xf32>, tensor<3x3x2xf32>) -> tensor<?x3xf32>
  return %y, %logits : tensor<?x3xf32>, tensor<?x3xf32>
}

// -----

// Router weights of the wrong shape (4 columns for 3 experts) are left to the verifier's user.
// CHECK-LABEL: func.func @wrong_columns
// CHECK: router_kind = #moe.router<logits>
func.func @wrong_columns(%x: tensor<?x3xf32>, %w1: tensor<3x2x3xf32>, %w2: tensor<3x3x2xf32>) -> tensor<?x3xf32> {
  %w = onnx.Constant dense<1.0> : tensor<4x3xf32>
  %logits = onnx.Gemm %x, %w {transB = 1 : i64} : (tensor<?x3xf32>, tensor<4x3xf32>) -> tensor<?x?xf32>
  // expected-remark @+1 {{router not folded into the MoE layer: the router weights' shape does not match H and the router columns}}
  %y = moe.sparse_moe %x, %logits, fc1 %w1, fc2 %w2 {k = 1, router_kind = #moe.router<logits>, activation = #moe.activation<relu>}
     : (tensor<?x3xf32>, tensor<?x?xf32>, tensor<3x2x3xf32>, tensor<3x3x2xf32>) -> tensor<?x3xf32>
  return %y : tensor<?x3xf32>
}
