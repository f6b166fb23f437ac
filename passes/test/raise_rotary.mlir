// moe-raise-rotary: transformers' apply_rotary_pos_emb as exported -> one moe.rotary, with the Transpose
// and the q/k RMSNorm in front folded in; near misses stay and say why.
// RUN: moec-opt %s --split-input-file --moe-raise-rotary=remarks=true --verify-diagnostics | FileCheck %s

// Qwen3's query path: view [B, S, H, D] -> q_norm -> Transpose -> q * cos + rotate_half(q) * sin, cos / sin
// [B, S, D] unsqueezed over the heads.
// CHECK-LABEL: func.func @qwen3_query
// CHECK: %[[R:.+]] = moe.rotary %arg0, %arg1, %arg2 norm %{{.*}} {moe.fused = ["transpose", "rms_norm"], norm_epsilon = 9.99999974E-6 : f32, rotary_dim = 16 : i64, seq_axis = 1 : i64, transpose}
// CHECK-SAME: (tensor<1x?x4x16xf32>, tensor<1x?x16xf32>, tensor<1x?x16xf32>, tensor<16xf32>) -> tensor<1x4x?x16xf32>
// CHECK-NOT: onnx.Transpose
// CHECK-NOT: onnx.Neg
// CHECK-NOT: onnx.ReduceMean
// CHECK: return %[[R]]
func.func @qwen3_query(%view: tensor<1x?x4x16xf32>, %cos: tensor<1x?x16xf32>, %sin: tensor<1x?x16xf32>) -> tensor<1x4x?x16xf32> {
  %two = onnx.Constant dense<2.0> : tensor<f32>
  %last = onnx.Constant dense<-1> : tensor<1xi64>
  %eps = onnx.Constant dense<1.0e-5> : tensor<f32>
  %w = onnx.Constant dense<1.5> : tensor<16xf32>
  %one = onnx.Constant dense<1> : tensor<1xi64>
  %z = onnx.Constant dense<0> : tensor<1xi64>
  %h = onnx.Constant dense<8> : tensor<1xi64>
  %big = onnx.Constant dense<9223372036854775807> : tensor<1xi64>
  %ax = onnx.Constant dense<3> : tensor<1xi64>
  %sq = onnx.Pow %view, %two : (tensor<1x?x4x16xf32>, tensor<f32>) -> tensor<1x?x4x16xf32>
  %mean = onnx.ReduceMean %sq, %last : (tensor<1x?x4x16xf32>, tensor<1xi64>) -> tensor<1x?x4x1xf32>
  %add = onnx.Add %mean, %eps : (tensor<1x?x4x1xf32>, tensor<f32>) -> tensor<1x?x4x1xf32>
  %rt = onnx.Sqrt %add : (tensor<1x?x4x1xf32>) -> tensor<1x?x4x1xf32>
  %inv = onnx.Reciprocal %rt : (tensor<1x?x4x1xf32>) -> tensor<1x?x4x1xf32>
  %n = onnx.Mul %view, %inv : (tensor<1x?x4x16xf32>, tensor<1x?x4x1xf32>) -> tensor<1x?x4x16xf32>
  %nw = onnx.Mul %w, %n : (tensor<16xf32>, tensor<1x?x4x16xf32>) -> tensor<1x?x4x16xf32>
  %q = onnx.Transpose %nw {perm = [0, 2, 1, 3]} : (tensor<1x?x4x16xf32>) -> tensor<1x4x?x16xf32>
  %cu = onnx.Unsqueeze %cos, %one : (tensor<1x?x16xf32>, tensor<1xi64>) -> tensor<1x1x?x16xf32>
  %su = onnx.Unsqueeze %sin, %one : (tensor<1x?x16xf32>, tensor<1xi64>) -> tensor<1x1x?x16xf32>
  %qc = onnx.Mul %q, %cu : (tensor<1x4x?x16xf32>, tensor<1x1x?x16xf32>) -> tensor<1x4x?x16xf32>
  %lo = onnx.Slice %q, %z, %h, %ax, %one : (tensor<1x4x?x16xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x4x?x8xf32>
  %hi = onnx.Slice %q, %h, %big, %ax, %one : (tensor<1x4x?x16xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x4x?x8xf32>
  %neg = onnx.Neg %hi : (tensor<1x4x?x8xf32>) -> tensor<1x4x?x8xf32>
  %rh = onnx.Concat %neg, %lo {axis = -1 : i64} : (tensor<1x4x?x8xf32>, tensor<1x4x?x8xf32>) -> tensor<1x4x?x16xf32>
  %rs = onnx.Mul %rh, %su : (tensor<1x4x?x16xf32>, tensor<1x1x?x16xf32>) -> tensor<1x4x?x16xf32>
  %y = onnx.Add %qc, %rs : (tensor<1x4x?x16xf32>, tensor<1x4x?x16xf32>) -> tensor<1x4x?x16xf32>
  return %y : tensor<1x4x?x16xf32>
}

// -----

// Partial rotary (R = 8 of D = 16, the rest concatenated untouched), operands in the other order, cos / sin
// as [S, R] tables (reshaped to [1, S, R] for the op); the transposed input is also read elsewhere, so the
// Transpose stays.
// CHECK-LABEL: func.func @partial
// CHECK: %[[T:.+]] = onnx.Transpose %arg0
// CHECK: %[[C:.+]] = onnx.Reshape %arg1
// CHECK: %[[S:.+]] = onnx.Reshape %arg2
// CHECK: %[[R:.+]] = moe.rotary %[[T]], %[[C]], %[[S]] {rotary_dim = 8 : i64}
// CHECK-SAME: (tensor<2x4x?x16xf32>, tensor<1x?x8xf32>, tensor<1x?x8xf32>) -> tensor<2x4x?x16xf32>
// CHECK-NOT: onnx.Neg
// CHECK: return %[[R]], %[[T]]
func.func @partial(%x: tensor<2x?x4x16xf32>, %cos: tensor<?x8xf32>, %sin: tensor<?x8xf32>) -> (tensor<2x4x?x16xf32>, tensor<2x4x?x16xf32>) {
  %one = onnx.Constant dense<1> : tensor<1xi64>
  %z = onnx.Constant dense<0> : tensor<1xi64>
  %h = onnx.Constant dense<4> : tensor<1xi64>
  %r = onnx.Constant dense<8> : tensor<1xi64>
  %big = onnx.Constant dense<9223372036854775807> : tensor<1xi64>
  %ax = onnx.Constant dense<-1> : tensor<1xi64>
  %q = onnx.Transpose %x {perm = [0, 2, 1, 3]} : (tensor<2x?x4x16xf32>) -> tensor<2x4x?x16xf32>
  %qr = onnx.Slice %q, %z, %r, %ax, %one : (tensor<2x4x?x16xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<2x4x?x8xf32>
  %qp = onnx.Slice %q, %r, %big, %ax, %one : (tensor<2x4x?x16xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<2x4x?x8xf32>
  %qc = onnx.Mul %cos, %qr : (tensor<?x8xf32>, tensor<2x4x?x8xf32>) -> tensor<2x4x?x8xf32>
  %lo = onnx.Slice %qr, %z, %h, %ax, %one : (tensor<2x4x?x8xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<2x4x?x4xf32>
  %hi = onnx.Slice %qr, %h, %big, %ax, %one : (tensor<2x4x?x8xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<2x4x?x4xf32>
  %neg = onnx.Neg %hi : (tensor<2x4x?x4xf32>) -> tensor<2x4x?x4xf32>
  %rh = onnx.Concat %neg, %lo {axis = 3 : i64} : (tensor<2x4x?x4xf32>, tensor<2x4x?x4xf32>) -> tensor<2x4x?x8xf32>
  %rs = onnx.Mul %sin, %rh : (tensor<?x8xf32>, tensor<2x4x?x8xf32>) -> tensor<2x4x?x8xf32>
  %y = onnx.Add %rs, %qc : (tensor<2x4x?x8xf32>, tensor<2x4x?x8xf32>) -> tensor<2x4x?x8xf32>
  %out = onnx.Concat %y, %qp {axis = -1 : i64} : (tensor<2x4x?x8xf32>, tensor<2x4x?x8xf32>) -> tensor<2x4x?x16xf32>
  return %out, %q : tensor<2x4x?x16xf32>, tensor<2x4x?x16xf32>
}

// -----

// Near miss: the halves swapped the wrong way (Concat(-x[..., :h], x[..., h:]) is not rotate_half).
// CHECK-LABEL: func.func @wrong_halves
// CHECK: onnx.Neg
// CHECK-NOT: moe.rotary
func.func @wrong_halves(%q: tensor<1x4x?x16xf32>, %cos: tensor<1x1x?x16xf32>, %sin: tensor<1x1x?x16xf32>) -> tensor<1x4x?x16xf32> {
  %one = onnx.Constant dense<1> : tensor<1xi64>
  %z = onnx.Constant dense<0> : tensor<1xi64>
  %h = onnx.Constant dense<8> : tensor<1xi64>
  %big = onnx.Constant dense<9223372036854775807> : tensor<1xi64>
  %ax = onnx.Constant dense<3> : tensor<1xi64>
  %qc = onnx.Mul %q, %cos : (tensor<1x4x?x16xf32>, tensor<1x1x?x16xf32>) -> tensor<1x4x?x16xf32>
  %lo = onnx.Slice %q, %z, %h, %ax, %one : (tensor<1x4x?x16xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x4x?x8xf32>
  %hi = onnx.Slice %q, %h, %big, %ax, %one : (tensor<1x4x?x16xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x4x?x8xf32>
  %neg = onnx.Neg %lo : (tensor<1x4x?x8xf32>) -> tensor<1x4x?x8xf32>
  %rh = onnx.Concat %neg, %hi {axis = -1 : i64} : (tensor<1x4x?x8xf32>, tensor<1x4x?x8xf32>) -> tensor<1x4x?x16xf32>
  %rs = onnx.Mul %rh, %sin : (tensor<1x4x?x16xf32>, tensor<1x1x?x16xf32>) -> tensor<1x4x?x16xf32>
  // expected-remark @+1 {{rotary embedding not raised: not x * cos + Concat(-x[..., h:], x[..., :h]) * sin over the same x}}
  %y = onnx.Add %qc, %rs : (tensor<1x4x?x16xf32>, tensor<1x4x?x16xf32>) -> tensor<1x4x?x16xf32>
  return %y : tensor<1x4x?x16xf32>
}

// -----

// Near miss: cos differs per head ([1, 4, S, D]), which moe.rotary's [B, S, R] tables cannot say.
// CHECK-LABEL: func.func @per_head_cos
// CHECK-NOT: moe.rotary
func.func @per_head_cos(%q: tensor<1x4x?x16xf32>, %cos: tensor<1x4x?x16xf32>, %sin: tensor<1x4x?x16xf32>) -> tensor<1x4x?x16xf32> {
  %one = onnx.Constant dense<1> : tensor<1xi64>
  %z = onnx.Constant dense<0> : tensor<1xi64>
  %h = onnx.Constant dense<8> : tensor<1xi64>
  %big = onnx.Constant dense<9223372036854775807> : tensor<1xi64>
  %ax = onnx.Constant dense<3> : tensor<1xi64>
  %qc = onnx.Mul %q, %cos : (tensor<1x4x?x16xf32>, tensor<1x4x?x16xf32>) -> tensor<1x4x?x16xf32>
  %lo = onnx.Slice %q, %z, %h, %ax, %one : (tensor<1x4x?x16xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x4x?x8xf32>
  %hi = onnx.Slice %q, %h, %big, %ax, %one : (tensor<1x4x?x16xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x4x?x8xf32>
  %neg = onnx.Neg %hi : (tensor<1x4x?x8xf32>) -> tensor<1x4x?x8xf32>
  %rh = onnx.Concat %neg, %lo {axis = -1 : i64} : (tensor<1x4x?x8xf32>, tensor<1x4x?x8xf32>) -> tensor<1x4x?x16xf32>
  %rs = onnx.Mul %rh, %sin : (tensor<1x4x?x16xf32>, tensor<1x4x?x16xf32>) -> tensor<1x4x?x16xf32>
  // expected-remark @+1 {{rotary embedding not raised: cos/sin vary over the heads}}
  %y = onnx.Add %qc, %rs : (tensor<1x4x?x16xf32>, tensor<1x4x?x16xf32>) -> tensor<1x4x?x16xf32>
  return %y : tensor<1x4x?x16xf32>
}
