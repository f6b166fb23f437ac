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

// -----

// An RMSNorm read by three projections (Q, K, V) goes into each of them; the pre-norm x stays readable.
// CHECK-LABEL: func.func @norm_qkv
// CHECK-COUNT-3: moe.linear %arg0, %{{.+}} norm_weight %{{.+}} {moe.fused = ["rms_norm"], moe.source = "MatMul", norm = #moe.norm<rms>, norm_epsilon = 9.99999997E-7 : f32}
// CHECK-NOT: onnx.ReduceMean
func.func @norm_qkv(%x: tensor<1x?x2xf32>) -> (tensor<1x?x3xf32>, tensor<1x?x3xf32>, tensor<1x?x3xf32>) {
  %two = onnx.Constant dense<2.0> : tensor<f32>
  %last = onnx.Constant dense<-1> : tensor<1xi64>
  %eps = onnx.Constant dense<1.0e-6> : tensor<f32>
  %w = onnx.Constant dense<[1.5, 0.5]> : tensor<2xf32>
  %wq = onnx.Constant dense<1.0> : tensor<2x3xf32>
  %wk = onnx.Constant dense<2.0> : tensor<2x3xf32>
  %wv = onnx.Constant dense<3.0> : tensor<2x3xf32>
  %sq = onnx.Pow %x, %two : (tensor<1x?x2xf32>, tensor<f32>) -> tensor<1x?x2xf32>
  %mean = onnx.ReduceMean %sq, %last : (tensor<1x?x2xf32>, tensor<1xi64>) -> tensor<1x?x1xf32>
  %add = onnx.Add %mean, %eps : (tensor<1x?x1xf32>, tensor<f32>) -> tensor<1x?x1xf32>
  %rt = onnx.Sqrt %add : (tensor<1x?x1xf32>) -> tensor<1x?x1xf32>
  %inv = onnx.Reciprocal %rt : (tensor<1x?x1xf32>) -> tensor<1x?x1xf32>
  %n = onnx.Mul %x, %inv : (tensor<1x?x2xf32>, tensor<1x?x1xf32>) -> tensor<1x?x2xf32>
  %nw = onnx.Mul %w, %n : (tensor<2xf32>, tensor<1x?x2xf32>) -> tensor<1x?x2xf32>
  %q = onnx.MatMul %nw, %wq : (tensor<1x?x2xf32>, tensor<2x3xf32>) -> tensor<1x?x3xf32>
  %k = onnx.MatMul %nw, %wk : (tensor<1x?x2xf32>, tensor<2x3xf32>) -> tensor<1x?x3xf32>
  %v = onnx.MatMul %nw, %wv : (tensor<1x?x2xf32>, tensor<2x3xf32>) -> tensor<1x?x3xf32>
  return %q, %k, %v : tensor<1x?x3xf32>, tensor<1x?x3xf32>, tensor<1x?x3xf32>
}

// -----

// A LayerNormalization whose output is also returned stays where it is (the layer reads it as computed).
// CHECK-LABEL: func.func @norm_read_elsewhere
// CHECK: %[[N:[^,]+]], {{.*}} = onnx.LayerNormalization
// CHECK: moe.linear %[[N]], %{{.+}} {moe.source = "MatMul"}
func.func @norm_read_elsewhere(%x: tensor<?x2xf32>) -> (tensor<?x3xf32>, tensor<?x2xf32>) {
  %s = onnx.Constant dense<[1.5, 0.5]> : tensor<2xf32>
  %b = onnx.Constant dense<[0.1, 0.2]> : tensor<2xf32>
  %w = onnx.Constant dense<1.0> : tensor<2x3xf32>
  %n, %mean, %inv = onnx.LayerNormalization %x, %s, %b {axis = -1 : i64, epsilon = 1.0e-3 : f32}
      : (tensor<?x2xf32>, tensor<2xf32>, tensor<2xf32>) -> (tensor<?x2xf32>, tensor<*xf32>, tensor<*xf32>)
  %y = onnx.MatMul %n, %w : (tensor<?x2xf32>, tensor<2x3xf32>) -> tensor<?x3xf32>
  return %y, %n : tensor<?x3xf32>, tensor<?x2xf32>
}

// -----

// A LayerNormalization read only by a linear layer goes into it, bias and epsilon included.
// CHECK-LABEL: func.func @layer_norm
// CHECK: moe.linear %arg0, %{{.+}} norm_weight %{{.+}} norm_bias %{{.+}} {moe.fused = ["layer_norm"], moe.source = "MatMul", norm = #moe.norm<layer>, norm_epsilon = 1.000000e-03 : f32}
// CHECK-NOT: onnx.LayerNormalization
func.func @layer_norm(%x: tensor<?x2xf32>) -> tensor<?x3xf32> {
  %s = onnx.Constant dense<[1.5, 0.5]> : tensor<2xf32>
  %b = onnx.Constant dense<[0.1, 0.2]> : tensor<2xf32>
  %w = onnx.Constant dense<1.0> : tensor<2x3xf32>
  %n, %mean, %inv = onnx.LayerNormalization %x, %s, %b {axis = -1 : i64, epsilon = 1.0e-3 : f32}
      : (tensor<?x2xf32>, tensor<2xf32>, tensor<2xf32>) -> (tensor<?x2xf32>, tensor<*xf32>, tensor<*xf32>)
  %y = onnx.MatMul %n, %w : (tensor<?x2xf32>, tensor<2x3xf32>) -> tensor<?x3xf32>
  return %y : tensor<?x3xf32>
}

// -----

// Three layers reading one input (Q, K and V projections): one moe.linear with three results, the weights
// concatenated along N ([2, 2 + 1 + 2]), the biases too with zeros where a layer has none (K). A layer whose
// result is a graph output (an LM head) stays apart.
// CHECK-LABEL: func.func @merged_projections
// CHECK-DAG: %[[W:.+]] = arith.constant dense<{{\[}}[1.000000e+00, 2.000000e+00, 5.000000e+00, 7.000000e+00, 8.000000e+00], [3.000000e+00, 4.000000e+00, 6.000000e+00, 9.000000e+00, 1.000000e+01]]> : tensor<2x5xf32>
// CHECK-DAG: %[[B:.+]] = arith.constant dense<[1.000000e+00, 2.000000e+00, 0.000000e+00, 3.000000e+00, 4.000000e+00]> : tensor<5xf32>
// CHECK: %[[Y:.+]]:3 = moe.linear %arg0, %[[W]] bias %[[B]] {moe.fused = ["bias", "3 layers of one input"], moe.source = "MatMul + MatMul + MatMul"}
// CHECK-SAME: (tensor<?x2xf32>, tensor<2x5xf32>, tensor<5xf32>) -> (tensor<?x2xf32>, tensor<?x1xf32>, tensor<?x2xf32>)
// CHECK: %[[H:.+]] = moe.linear %arg0, %{{.+}} {moe.source = "MatMul"} : (tensor<?x2xf32>, tensor<2x3xf32>) -> tensor<?x3xf32>
// CHECK-NOT: onnx.MatMul
// CHECK: onnx.Mul %[[Y]]#0, %[[Y]]#2
// CHECK: onnx.Expand %[[Y]]#1
func.func @merged_projections(%x: tensor<?x2xf32>) -> (tensor<?x2xf32>, tensor<?x2xf32>, tensor<?x3xf32>) {
  %wq = onnx.Constant dense<[[1.0, 2.0], [3.0, 4.0]]> : tensor<2x2xf32>
  %bq = onnx.Constant dense<[1.0, 2.0]> : tensor<2xf32>
  %wk = onnx.Constant dense<[[5.0], [6.0]]> : tensor<2x1xf32>
  %wv = onnx.Constant dense<[[7.0, 8.0], [9.0, 10.0]]> : tensor<2x2xf32>
  %bv = onnx.Constant dense<[3.0, 4.0]> : tensor<2xf32>
  %wh = onnx.Constant dense<[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]> : tensor<2x3xf32>
  %shape = onnx.Constant dense<[1, 2]> : tensor<2xi64>
  %q0 = onnx.MatMul %x, %wq : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %q = onnx.Add %q0, %bq : (tensor<?x2xf32>, tensor<2xf32>) -> tensor<?x2xf32>
  %k = onnx.MatMul %x, %wk : (tensor<?x2xf32>, tensor<2x1xf32>) -> tensor<?x1xf32>
  %v0 = onnx.MatMul %x, %wv : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
  %v = onnx.Add %v0, %bv : (tensor<?x2xf32>, tensor<2xf32>) -> tensor<?x2xf32>
  %h = onnx.MatMul %x, %wh : (tensor<?x2xf32>, tensor<2x3xf32>) -> tensor<?x3xf32>
  %qv = onnx.Mul %q, %v : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  %ke = onnx.Expand %k, %shape : (tensor<?x1xf32>, tensor<2xi64>) -> tensor<?x2xf32>
  return %qv, %ke, %h : tensor<?x2xf32>, tensor<?x2xf32>, tensor<?x3xf32>
}

// -----

// Five layers of one input: at most four results per op (MOERT_LIN_MAX_OUTPUTS), the fifth stays alone.
// CHECK-LABEL: func.func @at_most_four
// CHECK: moe.linear %arg0, %{{.+}} {moe.fused = ["4 layers of one input"]{{.*}}} : (tensor<?x2xf32>, tensor<2x4xf32>) -> (tensor<?x1xf32>, tensor<?x1xf32>, tensor<?x1xf32>, tensor<?x1xf32>)
// CHECK: moe.linear %arg0, %{{.+}} {moe.source = "MatMul"} : (tensor<?x2xf32>, tensor<2x1xf32>) -> tensor<?x1xf32>
func.func @at_most_four(%x: tensor<?x2xf32>) -> tensor<?x1xf32> {
  %w = onnx.Constant dense<[[1.0], [2.0]]> : tensor<2x1xf32>
  %a = onnx.MatMul %x, %w : (tensor<?x2xf32>, tensor<2x1xf32>) -> tensor<?x1xf32>
  %b = onnx.MatMul %x, %w : (tensor<?x2xf32>, tensor<2x1xf32>) -> tensor<?x1xf32>
  %c = onnx.MatMul %x, %w : (tensor<?x2xf32>, tensor<2x1xf32>) -> tensor<?x1xf32>
  %d = onnx.MatMul %x, %w : (tensor<?x2xf32>, tensor<2x1xf32>) -> tensor<?x1xf32>
  %e = onnx.MatMul %x, %w : (tensor<?x2xf32>, tensor<2x1xf32>) -> tensor<?x1xf32>
  %ab = onnx.Mul %a, %b : (tensor<?x1xf32>, tensor<?x1xf32>) -> tensor<?x1xf32>
  %cd = onnx.Mul %c, %d : (tensor<?x1xf32>, tensor<?x1xf32>) -> tensor<?x1xf32>
  %abcd = onnx.Mul %ab, %cd : (tensor<?x1xf32>, tensor<?x1xf32>) -> tensor<?x1xf32>
  %y = onnx.Mul %abcd, %e : (tensor<?x1xf32>, tensor<?x1xf32>) -> tensor<?x1xf32>
  return %y : tensor<?x1xf32>
}

// -----

// An input whose last dim inference left unknown: the weight says K = 2 (an Identity refines the type) and the
// result's N = 3 (an Identity back to the type its readers have).
// CHECK-LABEL: func.func @unknown_last_dim
// CHECK: %[[X:.+]] = onnx.Identity %arg0 : (tensor<?x?xf32>) -> tensor<?x2xf32>
// CHECK: %[[Y:.+]] = moe.linear %[[X]], %{{.+}} {moe.source = "MatMul"} : (tensor<?x2xf32>, tensor<2x3xf32>) -> tensor<?x3xf32>
// CHECK: %[[R:.+]] = onnx.Identity %[[Y]] : (tensor<?x3xf32>) -> tensor<?x?xf32>
// CHECK-NOT: onnx.MatMul
// CHECK: return %[[R]]
func.func @unknown_last_dim(%x: tensor<?x?xf32>) -> tensor<?x?xf32> {
  %w = onnx.Constant dense<[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]> : tensor<2x3xf32>
  %mm = onnx.MatMul %x, %w : (tensor<?x?xf32>, tensor<2x3xf32>) -> tensor<?x?xf32>
  return %mm : tensor<?x?xf32>
}
