// moe-fuse-shared-expert: an always-active MLP of the layer's input added to its output joins the op
// (shared_fc1 in the op's gated layout, shared_fc2, and Qwen2-MoE's sigmoid gate as shared_gate).
// RUN: moec-opt %s --split-input-file --moe-fuse-shared-expert | FileCheck %s
// RUN: moec-opt %s --split-input-file --moe-fuse-shared-expert=remarks=true --verify-diagnostics -o /dev/null

// Qwen2-MoE: y = moe(x) + sigmoid(x @ g^T) * down(silu(gate(x)) * up(x)), Linear weights stored [out, in].
// gate rows [[1, 0], [0, 1]], up rows [[2, 2], [3, 3]] -> block layout: gate rows first, then up rows.
// CHECK-LABEL: func.func @qwen_gated
// CHECK-DAG: %[[S1:.+]] = arith.constant dense<{{\[}}[1.000000e+00, 0.000000e+00], [0.000000e+00, 1.000000e+00], [2.000000e+00, 2.000000e+00], [3.000000e+00, 3.000000e+00]]> : tensor<4x2xf32>
// CHECK-DAG: %[[S2:.+]] = arith.constant dense<{{\[}}[5.000000e-01, 6.250000e-01], [7.500000e-01, 8.750000e-01]]> : tensor<2x2xf32>
// CHECK-DAG: %[[G:.+]] = arith.constant dense<[2.500000e-01, -2.500000e-01]> : tensor<2xf32>
// CHECK: %[[Y:.+]] = moe.sparse_moe %arg0, %arg1, fc1 %arg2, fc2 %arg3 shared(%[[S1]], %[[S2]]) shared_gate %[[G]] {activation = #moe.activation<swiglu>, k = 1 : i64, moe.fused = ["gated_shared_expert"]}
// CHECK-NOT: onnx.
// CHECK: return %[[Y]]
func.func @qwen_gated(%x: tensor<?x2xf32>, %r: tensor<2x3xf32>, %w1: tensor<3x4x2xf32>, %w2: tensor<3x2x2xf32>) -> tensor<?x2xf32> {
  %wg = onnx.Constant dense<[[1.0, 0.0], [0.0, 1.0]]> : tensor<2x2xf32>
  %wu = onnx.Constant dense<[[2.0, 2.0], [3.0, 3.0]]> : tensor<2x2xf32>
  %wd = onnx.Constant dense<[[0.5, 0.625], [0.75, 0.875]]> : tensor<2x2xf32>
  %sg = onnx.Constant dense<[[0.25, -0.25]]> : tensor<1x2xf32>
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<swiglu>}
     : (tensor<?x2xf32>, tensor<2x3xf32>, tensor<3x4x2xf32>, tensor<3x2x2xf32>) -> tensor<?x2xf32>
  %g = onnx.Gemm %x, %wg {transB = 1 : i64} : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %gs = onnx.Sigmoid %g : (tensor<?x2xf32>) -> tensor<?x2xf32>
  %silu = onnx.Mul %g, %gs : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  %u = onnx.Gemm %x, %wu {transB = 1 : i64} : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %h = onnx.Mul %silu, %u : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  %d = onnx.Gemm %h, %wd {transB = 1 : i64} : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %sl = onnx.Gemm %x, %sg {transB = 1 : i64} : (tensor<?x2xf32>, tensor<1x2xf32>) -> tensor<?x1xf32>
  %ss = onnx.Sigmoid %sl : (tensor<?x1xf32>) -> tensor<?x1xf32>
  %shared = onnx.Mul %ss, %d : (tensor<?x1xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  %sum = onnx.Add %y, %shared : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  return %sum : tensor<?x2xf32>
}

// -----

// DeepSeek-V3: ungated sum, MatMul with [in, out] weights, interleaved routed layout -> interleaved rows.
// CHECK-LABEL: func.func @deepseek_interleaved
// CHECK: %[[S1:.+]] = arith.constant dense<{{\[}}[1.000000e+00, 0.000000e+00], [2.000000e+00, 3.000000e+00], [0.000000e+00, 1.000000e+00], [2.000000e+00, 3.000000e+00]]> : tensor<4x2xf32>
// CHECK: moe.sparse_moe {{.*}} shared(%[[S1]], %{{.*}}) {activation = #moe.activation<swiglu>, gated_layout = #moe.gated_layout<interleaved>, k = 1 : i64, moe.fused = ["shared_expert"]}
func.func @deepseek_interleaved(%x: tensor<?x2xf32>, %r: tensor<2x3xf32>, %w1: tensor<3x4x2xf32>, %w2: tensor<3x2x2xf32>) -> tensor<?x2xf32> {
  %wg = onnx.Constant dense<[[1.0, 0.0], [0.0, 1.0]]> : tensor<2x2xf32>
  %wu = onnx.Constant dense<[[2.0, 2.0], [3.0, 3.0]]> : tensor<2x2xf32>
  %wd = onnx.Constant dense<[[0.5, 0.625], [0.75, 0.875]]> : tensor<2x2xf32>
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<swiglu>, gated_layout = #moe.gated_layout<interleaved>}
     : (tensor<?x2xf32>, tensor<2x3xf32>, tensor<3x4x2xf32>, tensor<3x2x2xf32>) -> tensor<?x2xf32>
  %g = onnx.MatMul %x, %wg : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %gs = onnx.Sigmoid %g : (tensor<?x2xf32>) -> tensor<?x2xf32>
  %silu = onnx.Mul %gs, %g : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  %u = onnx.MatMul %x, %wu : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %h = onnx.Mul %u, %silu : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  %d = onnx.MatMul %h, %wd : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %sum = onnx.Add %d, %y : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  return %sum : tensor<?x2xf32>
}

// -----

// A ReLU MLP added to SwiGLU experts: the op has one activation for both, so nothing fuses.
// CHECK-LABEL: func.func @activation_differs
// CHECK: onnx.Add
func.func @activation_differs(%x: tensor<?x2xf32>, %r: tensor<2x3xf32>, %w1: tensor<3x4x2xf32>, %w2: tensor<3x2x2xf32>) -> tensor<?x2xf32> {
  %wu = onnx.Constant dense<1.0> : tensor<2x2xf32>
  %wd = onnx.Constant dense<1.0> : tensor<2x2xf32>
  // expected-remark @+1 {{shared expert not fused into the MoE layer: the shared MLP's activation differs from the routed experts' 'swiglu'}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<swiglu>}
     : (tensor<?x2xf32>, tensor<2x3xf32>, tensor<3x4x2xf32>, tensor<3x2x2xf32>) -> tensor<?x2xf32>
  %u = onnx.MatMul %x, %wu : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %a = onnx.Relu %u : (tensor<?x2xf32>) -> tensor<?x2xf32>
  %d = onnx.MatMul %a, %wd : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %sum = onnx.Add %y, %d : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  return %sum : tensor<?x2xf32>
}

// -----

// The MLP reads another tensor than the layer's input.
// CHECK-LABEL: func.func @other_input
// CHECK: onnx.Add
func.func @other_input(%x: tensor<?x2xf32>, %z: tensor<?x2xf32>, %r: tensor<2x3xf32>, %w1: tensor<3x2x2xf32>, %w2: tensor<3x2x2xf32>) -> tensor<?x2xf32> {
  %wu = onnx.Constant dense<1.0> : tensor<2x2xf32>
  %wd = onnx.Constant dense<1.0> : tensor<2x2xf32>
  // expected-remark @+1 {{shared expert not fused into the MoE layer: the shared MLP reads a tensor other than the layer's input}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<?x2xf32>, tensor<2x3xf32>, tensor<3x2x2xf32>, tensor<3x2x2xf32>) -> tensor<?x2xf32>
  %u = onnx.MatMul %z, %wu : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %a = onnx.Relu %u : (tensor<?x2xf32>) -> tensor<?x2xf32>
  %d = onnx.MatMul %a, %wd : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %sum = onnx.Add %y, %d : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  return %sum : tensor<?x2xf32>
}

// -----

// The shared MLP's hidden activations are also a graph output.
// CHECK-LABEL: func.func @hidden_read_outside
// CHECK: onnx.Add
func.func @hidden_read_outside(%x: tensor<?x2xf32>, %r: tensor<2x3xf32>, %w1: tensor<3x2x2xf32>, %w2: tensor<3x2x2xf32>) -> (tensor<?x2xf32>, tensor<?x2xf32>) {
  %wu = onnx.Constant dense<1.0> : tensor<2x2xf32>
  %wd = onnx.Constant dense<1.0> : tensor<2x2xf32>
  // expected-remark @+1 {{shared expert not fused into the MoE layer: an intermediate of the shared MLP is also read outside it}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<?x2xf32>, tensor<2x3xf32>, tensor<3x2x2xf32>, tensor<3x2x2xf32>) -> tensor<?x2xf32>
  %u = onnx.MatMul %x, %wu : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %a = onnx.Relu %u : (tensor<?x2xf32>) -> tensor<?x2xf32>
  %d = onnx.MatMul %a, %wd : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %sum = onnx.Add %y, %d : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  return %sum, %a : tensor<?x2xf32>, tensor<?x2xf32>
}
