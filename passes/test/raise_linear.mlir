// moe-raise-linear: MatMul / Gemm with a constant weight -> moe.linear (W as [K, N]), a constant bias and a
// residual Add folded in; products of two computed values stay.
// RUN: moec-opt %s --split-input-file --moe-raise-linear | FileCheck %s

// MatMul + bias Add + residual Add on a 3-D input: one op, the weight used as it is.
// CHECK-LABEL: func.func @matmul_bias_residual
// CHECK-DAG: %[[W:.+]] = onnx.Constant dense<{{\[}}[1.000000e+00, 2.000000e+00, 3.000000e+00], [4.000000e+00, 5.000000e+00, 6.000000e+00]]> : tensor<2x3xf32>
// CHECK-DAG: %[[B:.+]] = onnx.Constant dense<[1.000000e+00, 0.000000e+00, -1.000000e+00]> : tensor<3xf32>
// CHECK: %[[Y:.+]] = moe.linear %arg0, %[[W]] bias %[[B]] residual %arg1 {moe.fused = ["bias", "residual"], moe.source = "MatMul"}
// CHECK-SAME: (tensor<1x?x2xf32>, tensor<2x3xf32>, tensor<3xf32>, tensor<1x?x3xf32>) -> tensor<1x?x3xf32>
// CHECK-NOT: onnx.MatMul
// CHECK-NOT: onnx.Add
// CHECK: return %[[Y]]
func.func @matmul_bias_residual(%x: tensor<1x?x2xf32>, %r: tensor<1x?x3xf32>) -> tensor<1x?x3xf32> {
  %w = onnx.Constant dense<[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]> : tensor<2x3xf32>
  %b = onnx.Constant dense<[1.0, 0.0, -1.0]> : tensor<3xf32>
  %mm = onnx.MatMul %x, %w : (tensor<1x?x2xf32>, tensor<2x3xf32>) -> tensor<1x?x3xf32>
  %add = onnx.Add %mm, %b : (tensor<1x?x3xf32>, tensor<3xf32>) -> tensor<1x?x3xf32>
  %y = onnx.Add %r, %add : (tensor<1x?x3xf32>, tensor<1x?x3xf32>) -> tensor<1x?x3xf32>
  return %y : tensor<1x?x3xf32>
}

// -----

// Gemm with transB = 1 (torch's Linear, [N, K]): the weight becomes its transpose, C the bias.
// CHECK-LABEL: func.func @gemm_transposed
// CHECK: %[[W:.+]] = arith.constant dense<{{\[}}[1.000000e+00, 3.000000e+00], [2.000000e+00, 4.000000e+00]]> : tensor<2x2xf32>
// CHECK: moe.linear %arg0, %[[W]] bias %{{.+}} {moe.fused = ["bias"], moe.source = "Gemm"} : (tensor<?x2xf32>, tensor<2x2xf32>, tensor<2xf32>) -> tensor<?x2xf32>
// CHECK-NOT: onnx.Gemm
func.func @gemm_transposed(%x: tensor<?x2xf32>) -> tensor<?x2xf32> {
  %w = onnx.Constant dense<[[1.0, 2.0], [3.0, 4.0]]> : tensor<2x2xf32>
  %c = onnx.Constant dense<[0.5, -0.5]> : tensor<2xf32>
  %y = onnx.Gemm %x, %w, %c {transB = 1 : i64} : (tensor<?x2xf32>, tensor<2x2xf32>, tensor<2xf32>) -> tensor<?x2xf32>
  return %y : tensor<?x2xf32>
}

// -----

// MatMul of a transposed constant: the Transpose disappears into the packed weight.
// CHECK-LABEL: func.func @transposed_constant
// CHECK: %[[W:.+]] = arith.constant dense<{{\[}}[1.000000e+00, 3.000000e+00], [2.000000e+00, 4.000000e+00]]> : tensor<2x2xf32>
// CHECK: moe.linear %arg0, %[[W]] {moe.source = "MatMul"}
// CHECK-NOT: onnx.Transpose
func.func @transposed_constant(%x: tensor<?x2xf32>) -> tensor<?x2xf32> {
  %w = onnx.Constant dense<[[1.0, 2.0], [3.0, 4.0]]> : tensor<2x2xf32>
  %t = onnx.Transpose %w {perm = [1, 0]} : (tensor<2x2xf32>) -> tensor<2x2xf32>
  %y = onnx.MatMul %x, %t : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  return %y : tensor<?x2xf32>
}

// -----

// Attention's products of two computed values are not linear layers.
// CHECK-LABEL: func.func @activations
// CHECK: onnx.MatMul %arg0, %arg1
// CHECK-NOT: moe.linear
func.func @activations(%q: tensor<4x8xf32>, %k: tensor<8x4xf32>) -> tensor<4x4xf32> {
  %s = onnx.MatMul %q, %k : (tensor<4x8xf32>, tensor<8x4xf32>) -> tensor<4x4xf32>
  return %s : tensor<4x4xf32>
}

// -----

// A token embedding (rows as wide as the model's hidden size, the K of a linear layer) becomes moe.embedding;
// a table of another width (a rotary cos cache) stays an exact Gather.
// CHECK-LABEL: func.func @embedding
// CHECK: %[[E:.+]] = moe.embedding %{{.+}}, %arg0 {moe.source = "Gather"} : (tensor<5x4xf32>, tensor<1x?xi64>) -> tensor<1x?x4xf32>
// CHECK: moe.linear %[[E]]
// CHECK: onnx.Gather %{{.+}}, %arg0
func.func @embedding(%ids: tensor<1x?xi64>) -> (tensor<1x?x2xf32>, tensor<1x?x3xf32>) {
  %table = onnx.Constant dense<0.5> : tensor<5x4xf32>
  %cos = onnx.Constant dense<1.0> : tensor<5x3xf32>
  %w = onnx.Constant dense<1.0> : tensor<4x2xf32>
  %e = onnx.Gather %table, %ids : (tensor<5x4xf32>, tensor<1x?xi64>) -> tensor<1x?x4xf32>
  %y = onnx.MatMul %e, %w : (tensor<1x?x4xf32>, tensor<4x2xf32>) -> tensor<1x?x2xf32>
  %c = onnx.Gather %cos, %ids : (tensor<5x3xf32>, tensor<1x?xi64>) -> tensor<1x?x3xf32>
  return %y, %c : tensor<1x?x2xf32>, tensor<1x?x3xf32>
}
