// moe-raise-attention: the SDPA chain exporters write -> one moe.attention reading the unrepeated K and V,
// the scale factors folded into one constant; near misses stay and say why.
// RUN: moec-opt %s --split-input-file --moe-raise-attention=remarks=true --verify-diagnostics | FileCheck %s

// PyTorch's export: Q and K^T each scaled by d^-1/4, K^T through Reshape -> Transpose -> Reshape over Shape
// slices, K and V repeated for 2 query heads per key/value head, an additive mask, NaN rows zeroed.
// CHECK-LABEL: func.func @sdpa_gqa
// CHECK: %[[A:.+]] = moe.attention %arg0, %arg1, %arg2 mask %arg3 {moe.fused = ["repeat_kv", "nan_to_zero"], moe.source = "sdpa", nan_to_zero, scale = 2.500000e-01 : f32}
// CHECK-SAME: (tensor<1x4x?x16xf32>, tensor<1x2x?x16xf32>, tensor<1x2x?x8xf32>, tensor<1x1x?x?xf32>) -> tensor<1x4x?x8xf32>
// CHECK-NOT: onnx.Softmax
// CHECK-NOT: onnx.Expand
// CHECK-NOT: onnx.MatMul
// CHECK: return %[[A]]
func.func @sdpa_gqa(%q: tensor<1x4x?x16xf32>, %k: tensor<1x2x?x16xf32>, %v: tensor<1x2x?x8xf32>,
                    %mask: tensor<1x1x?x?xf32>) -> tensor<1x4x?x8xf32> {
  %c = onnx.Constant dense<0.5> : tensor<f32>
  %zero = onnx.Constant dense<0.0> : tensor<f32>
  %ax2 = onnx.Constant dense<2> : tensor<1xi64>
  %g = onnx.Constant dense<2> : tensor<1xi64>
  %rep = onnx.Constant dense<[1, 4, -1, 16]> : tensor<4xi64>
  %repv = onnx.Constant dense<[1, 4, -1, 8]> : tensor<4xi64>
  %m1 = onnx.Constant dense<-1> : tensor<1xi64>
  %m2 = onnx.Constant dense<-2> : tensor<1xi64>
  %big = onnx.Constant dense<9223372036854775807> : tensor<1xi64>
  %small = onnx.Constant dense<-9223372036854775808> : tensor<1xi64>
  %z1 = onnx.Constant dense<0> : tensor<1xi64>
  %o1 = onnx.Constant dense<1> : tensor<1xi64>
  // repeat_kv(K), repeat_kv(V)
  %ks = onnx.Shape %k : (tensor<1x2x?x16xf32>) -> tensor<4xi64>
  %kbh = onnx.Slice %ks, %z1, %ax2, %z1, %o1 : (tensor<4xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<2xi64>
  %ktd = onnx.Slice %ks, %ax2, %big, %z1, %o1 : (tensor<4xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<2xi64>
  %kshape = onnx.Concat %kbh, %g, %ktd {axis = 0 : i64} : (tensor<2xi64>, tensor<1xi64>, tensor<2xi64>) -> tensor<5xi64>
  %ku = onnx.Unsqueeze %k, %ax2 : (tensor<1x2x?x16xf32>, tensor<1xi64>) -> tensor<1x2x1x?x16xf32>
  %ke = onnx.Expand %ku, %kshape : (tensor<1x2x1x?x16xf32>, tensor<5xi64>) -> tensor<1x2x2x?x16xf32>
  %kr = onnx.Reshape %ke, %rep : (tensor<1x2x2x?x16xf32>, tensor<4xi64>) -> tensor<1x4x?x16xf32>
  %vs = onnx.Shape %v : (tensor<1x2x?x8xf32>) -> tensor<4xi64>
  %vbh = onnx.Slice %vs, %z1, %ax2, %z1, %o1 : (tensor<4xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<2xi64>
  %vtd = onnx.Slice %vs, %ax2, %big, %z1, %o1 : (tensor<4xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<2xi64>
  %vshape = onnx.Concat %vbh, %g, %vtd {axis = 0 : i64} : (tensor<2xi64>, tensor<1xi64>, tensor<2xi64>) -> tensor<5xi64>
  %vu = onnx.Unsqueeze %v, %ax2 : (tensor<1x2x?x8xf32>, tensor<1xi64>) -> tensor<1x2x1x?x8xf32>
  %ve = onnx.Expand %vu, %vshape : (tensor<1x2x1x?x8xf32>, tensor<5xi64>) -> tensor<1x2x2x?x8xf32>
  %vr = onnx.Reshape %ve, %repv : (tensor<1x2x2x?x8xf32>, tensor<4xi64>) -> tensor<1x4x?x8xf32>
  // K^T as the exporter writes it
  %s = onnx.Shape %kr : (tensor<1x4x?x16xf32>) -> tensor<4xi64>
  %d = onnx.Slice %s, %m1, %big, %z1, %o1 : (tensor<4xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1xi64>
  %t = onnx.Slice %s, %m2, %m1, %z1, %o1 : (tensor<4xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1xi64>
  %bh = onnx.Slice %s, %small, %m2, %z1, %o1 : (tensor<4xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<2xi64>
  %s3 = onnx.Concat %m1, %t, %d {axis = 0 : i64} : (tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<3xi64>
  %k3 = onnx.Reshape %kr, %s3 : (tensor<1x4x?x16xf32>, tensor<3xi64>) -> tensor<?x?x?xf32>
  %k3t = onnx.Transpose %k3 {perm = [0, 2, 1]} : (tensor<?x?x?xf32>) -> tensor<?x?x?xf32>
  %s4 = onnx.Concat %bh, %d, %t {axis = 0 : i64} : (tensor<2xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<4xi64>
  %kt = onnx.Reshape %k3t, %s4 : (tensor<?x?x?xf32>, tensor<4xi64>) -> tensor<?x?x?x?xf32>
  %qs = onnx.Mul %q, %c : (tensor<1x4x?x16xf32>, tensor<f32>) -> tensor<1x4x?x16xf32>
  %kts = onnx.Mul %kt, %c : (tensor<?x?x?x?xf32>, tensor<f32>) -> tensor<?x?x?x?xf32>
  %sc = onnx.MatMul %qs, %kts : (tensor<1x4x?x16xf32>, tensor<?x?x?x?xf32>) -> tensor<?x4x?x?xf32>
  %sm = onnx.Add %sc, %mask : (tensor<?x4x?x?xf32>, tensor<1x1x?x?xf32>) -> tensor<?x4x?x?xf32>
  %p = onnx.Softmax %sm : (tensor<?x4x?x?xf32>) -> tensor<?x4x?x?xf32>
  %nan = onnx.IsNaN %p : (tensor<?x4x?x?xf32>) -> tensor<?x4x?x?xi1>
  %p0 = onnx.Where %nan, %zero, %p : (tensor<?x4x?x?xi1>, tensor<f32>, tensor<?x4x?x?xf32>) -> tensor<?x4x?x?xf32>
  %o = onnx.MatMul %p0, %vr : (tensor<?x4x?x?xf32>, tensor<1x4x?x8xf32>) -> tensor<1x4x?x8xf32>
  return %o : tensor<1x4x?x8xf32>
}

// -----

// Eager attention: Transpose(K), scores divided by sqrt(d) after the product, no mask, no NaN guard.
// CHECK-LABEL: func.func @eager_div
// CHECK: moe.attention %arg0, %arg1, %arg2 {moe.source = "sdpa", scale = 1.250000e-01 : f32}
// CHECK-SAME: (tensor<?x2x?x64xf32>, tensor<?x2x?x64xf32>, tensor<?x2x?x64xf32>) -> tensor<?x2x?x64xf32>
// CHECK-NOT: onnx.Softmax
func.func @eager_div(%q: tensor<?x2x?x64xf32>, %k: tensor<?x2x?x64xf32>, %v: tensor<?x2x?x64xf32>) -> tensor<?x2x?x64xf32> {
  %c = onnx.Constant dense<8.0> : tensor<f32>
  %kt = onnx.Transpose %k {perm = [0, 1, 3, 2]} : (tensor<?x2x?x64xf32>) -> tensor<?x2x64x?xf32>
  %sc = onnx.MatMul %q, %kt : (tensor<?x2x?x64xf32>, tensor<?x2x64x?xf32>) -> tensor<?x2x?x?xf32>
  %sd = onnx.Div %sc, %c : (tensor<?x2x?x?xf32>, tensor<f32>) -> tensor<?x2x?x?xf32>
  %p = onnx.Softmax %sd {axis = -1 : i64} : (tensor<?x2x?x?xf32>) -> tensor<?x2x?x?xf32>
  %o = onnx.MatMul %p, %v : (tensor<?x2x?x?xf32>, tensor<?x2x?x64xf32>) -> tensor<?x2x?x64xf32>
  return %o : tensor<?x2x?x64xf32>
}

// -----

// Eager logit softcapping (Gemma 2): scores * 0.125, then 30 * tanh(s / 30), then the mask.
// CHECK-LABEL: func.func @softcap
// CHECK: moe.attention %arg0, %arg1, %arg2 mask %arg3 {moe.fused = ["softcap"], moe.source = "sdpa", scale = 1.250000e-01 : f32, softcap = 3.000000e+01 : f32}
// CHECK-NOT: onnx.Tanh
func.func @softcap(%q: tensor<?x2x?x64xf32>, %k: tensor<?x2x?x64xf32>, %v: tensor<?x2x?x64xf32>,
                   %mask: tensor<?x1x?x?xf32>) -> tensor<?x2x?x64xf32> {
  %s = onnx.Constant dense<0.125> : tensor<f32>
  %c = onnx.Constant dense<30.0> : tensor<f32>
  %kt = onnx.Transpose %k {perm = [0, 1, 3, 2]} : (tensor<?x2x?x64xf32>) -> tensor<?x2x64x?xf32>
  %sc = onnx.MatMul %q, %kt : (tensor<?x2x?x64xf32>, tensor<?x2x64x?xf32>) -> tensor<?x2x?x?xf32>
  %ss = onnx.Mul %sc, %s : (tensor<?x2x?x?xf32>, tensor<f32>) -> tensor<?x2x?x?xf32>
  %sd = onnx.Div %ss, %c : (tensor<?x2x?x?xf32>, tensor<f32>) -> tensor<?x2x?x?xf32>
  %th = onnx.Tanh %sd : (tensor<?x2x?x?xf32>) -> tensor<?x2x?x?xf32>
  %cap = onnx.Mul %th, %c : (tensor<?x2x?x?xf32>, tensor<f32>) -> tensor<?x2x?x?xf32>
  %m = onnx.Add %mask, %cap : (tensor<?x1x?x?xf32>, tensor<?x2x?x?xf32>) -> tensor<?x2x?x?xf32>
  %p = onnx.Softmax %m {axis = -1 : i64} : (tensor<?x2x?x?xf32>) -> tensor<?x2x?x?xf32>
  %o = onnx.MatMul %p, %v : (tensor<?x2x?x?xf32>, tensor<?x2x?x64xf32>) -> tensor<?x2x?x64xf32>
  return %o : tensor<?x2x?x64xf32>
}

// -----

// The dynamic-batch export: repeat_kv's target shapes take the batch from Shape(attention_mask) and the length
// computed (past + new). The mask's batch symbol is the past cache's, so the batch is the keys' own: unrepeated.
// CHECK-LABEL: func.func @repeat_kv_batch_by_symbol
// CHECK: %[[K:.+]] = onnx.Concat %arg1, %arg2
// CHECK: moe.attention %arg0, %[[K]], %[[K]] {moe.fused = ["repeat_kv"], moe.source = "sdpa", scale = 1.000000e+00 : f32}
// CHECK-SAME: (tensor<?x4x?x8xf32>, tensor<?x2x?x8xf32>, tensor<?x2x?x8xf32>) -> tensor<?x4x?x8xf32>
func.func @repeat_kv_batch_by_symbol(%q: tensor<?x4x?x8xf32>, %past: tensor<?x2x?x8xf32> {onnx.dim_params = ["batch", "", "past", ""]},
    %new: tensor<?x2x?x8xf32>, %mask: tensor<?x?xi64> {onnx.dim_params = ["batch", "total"]}) -> tensor<?x4x?x8xf32> {
  %ax2 = onnx.Constant dense<2> : tensor<1xi64>
  %g = onnx.Constant dense<2> : tensor<1xi64>
  %h = onnx.Constant dense<4> : tensor<1xi64>
  %d = onnx.Constant dense<8> : tensor<1xi64>
  %total = onnx.Constant dense<7> : tensor<1xi64>
  %k = onnx.Concat %past, %new {axis = -2 : i64} : (tensor<?x2x?x8xf32>, tensor<?x2x?x8xf32>) -> tensor<?x2x?x8xf32>
  %b = onnx.Shape %mask {end = 1 : i64} : (tensor<?x?xi64>) -> tensor<1xi64>
  %n = onnx.Add %total, %total : (tensor<1xi64>, tensor<1xi64>) -> tensor<1xi64>
  %shape5 = onnx.Concat %b, %g, %g, %n, %d {axis = 0 : i64} : (tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<5xi64>
  %shape4 = onnx.Concat %b, %h, %n, %d {axis = 0 : i64} : (tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<4xi64>
  %ku = onnx.Unsqueeze %k, %ax2 : (tensor<?x2x?x8xf32>, tensor<1xi64>) -> tensor<?x2x1x?x8xf32>
  %ke = onnx.Expand %ku, %shape5 : (tensor<?x2x1x?x8xf32>, tensor<5xi64>) -> tensor<?x2x2x?x8xf32>
  %kr = onnx.Reshape %ke, %shape4 {allowzero = 1 : i64} : (tensor<?x2x2x?x8xf32>, tensor<4xi64>) -> tensor<?x4x?x8xf32>
  %kt = onnx.Transpose %kr {perm = [0, 1, 3, 2]} : (tensor<?x4x?x8xf32>) -> tensor<?x4x8x?xf32>
  %sc = onnx.MatMul %q, %kt : (tensor<?x4x?x8xf32>, tensor<?x4x8x?xf32>) -> tensor<?x4x?x?xf32>
  %p = onnx.Softmax %sc : (tensor<?x4x?x?xf32>) -> tensor<?x4x?x?xf32>
  %o = onnx.MatMul %p, %kr : (tensor<?x4x?x?xf32>, tensor<?x4x?x8xf32>) -> tensor<?x4x?x8xf32>
  return %o : tensor<?x4x?x8xf32>
}

// -----

// The same with the mask's batch under another symbol: nothing says the two batches are equal, so the keys stay
// repeated (the attention reads 4 key/value heads).
// CHECK-LABEL: func.func @repeat_kv_batch_other_symbol
// CHECK: onnx.Expand
// CHECK: moe.attention
// CHECK-SAME: (tensor<?x4x?x8xf32>, tensor<?x4x?x8xf32>, tensor<?x4x?x8xf32>) -> tensor<?x4x?x8xf32>
func.func @repeat_kv_batch_other_symbol(%q: tensor<?x4x?x8xf32>, %past: tensor<?x2x?x8xf32> {onnx.dim_params = ["batch", "", "past", ""]},
    %new: tensor<?x2x?x8xf32>, %mask: tensor<?x?xi64> {onnx.dim_params = ["b2", "total"]}) -> tensor<?x4x?x8xf32> {
  %ax2 = onnx.Constant dense<2> : tensor<1xi64>
  %g = onnx.Constant dense<2> : tensor<1xi64>
  %h = onnx.Constant dense<4> : tensor<1xi64>
  %d = onnx.Constant dense<8> : tensor<1xi64>
  %total = onnx.Constant dense<7> : tensor<1xi64>
  %k = onnx.Concat %past, %new {axis = -2 : i64} : (tensor<?x2x?x8xf32>, tensor<?x2x?x8xf32>) -> tensor<?x2x?x8xf32>
  %b = onnx.Shape %mask {end = 1 : i64} : (tensor<?x?xi64>) -> tensor<1xi64>
  %n = onnx.Add %total, %total : (tensor<1xi64>, tensor<1xi64>) -> tensor<1xi64>
  %shape5 = onnx.Concat %b, %g, %g, %n, %d {axis = 0 : i64} : (tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<5xi64>
  %shape4 = onnx.Concat %b, %h, %n, %d {axis = 0 : i64} : (tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<4xi64>
  %ku = onnx.Unsqueeze %k, %ax2 : (tensor<?x2x?x8xf32>, tensor<1xi64>) -> tensor<?x2x1x?x8xf32>
  %ke = onnx.Expand %ku, %shape5 : (tensor<?x2x1x?x8xf32>, tensor<5xi64>) -> tensor<?x2x2x?x8xf32>
  %kr = onnx.Reshape %ke, %shape4 {allowzero = 1 : i64} : (tensor<?x2x2x?x8xf32>, tensor<4xi64>) -> tensor<?x4x?x8xf32>
  %kt = onnx.Transpose %kr {perm = [0, 1, 3, 2]} : (tensor<?x4x?x8xf32>) -> tensor<?x4x8x?xf32>
  %sc = onnx.MatMul %q, %kt : (tensor<?x4x?x8xf32>, tensor<?x4x8x?xf32>) -> tensor<?x4x?x?xf32>
  %p = onnx.Softmax %sc : (tensor<?x4x?x?xf32>) -> tensor<?x4x?x?xf32>
  %o = onnx.MatMul %p, %kr : (tensor<?x4x?x?xf32>, tensor<?x4x?x8xf32>) -> tensor<?x4x?x8xf32>
  return %o : tensor<?x4x?x8xf32>
}

// -----

// GPT-OSS's sinks: Concat(scores, sinks expanded) -> Sub(row max) -> Softmax -> Slice(all but the last column).
// CHECK-LABEL: func.func @sinks
// CHECK: %[[S:.+]] = onnx.Constant dense<[1.000000e+00, 2.000000e+00]> : tensor<2xf32>
// CHECK: moe.attention %arg0, %arg1, %arg2 mask %arg3 sinks %[[S]] {moe.fused = ["sinks"], moe.source = "sdpa", scale = 5.000000e-01 : f32}
// CHECK-NOT: onnx.Softmax
// CHECK-NOT: onnx.ReduceMax
func.func @sinks(%q: tensor<1x2x?x4xf32>, %k: tensor<1x2x?x4xf32>, %v: tensor<1x2x?x4xf32>,
                 %mask: tensor<1x1x?x?xf32>) -> tensor<1x2x?x4xf32> {
  %c = onnx.Constant dense<0.5> : tensor<f32>
  %sk = onnx.Constant dense<[1.0, 2.0]> : tensor<2xf32>
  %s4 = onnx.Constant dense<[1, 2, 1, 1]> : tensor<4xi64>
  %tgt = onnx.Constant dense<[1, 2, 3, 1]> : tensor<4xi64>
  %z = onnx.Constant dense<0> : tensor<1xi64>
  %m1 = onnx.Constant dense<-1> : tensor<1xi64>
  %o = onnx.Constant dense<1> : tensor<1xi64>
  %kt = onnx.Transpose %k {perm = [0, 1, 3, 2]} : (tensor<1x2x?x4xf32>) -> tensor<1x2x4x?xf32>
  %qk = onnx.MatMul %q, %kt : (tensor<1x2x?x4xf32>, tensor<1x2x4x?xf32>) -> tensor<1x2x?x?xf32>
  %sc = onnx.Mul %qk, %c : (tensor<1x2x?x?xf32>, tensor<f32>) -> tensor<1x2x?x?xf32>
  %m = onnx.Add %sc, %mask : (tensor<1x2x?x?xf32>, tensor<1x1x?x?xf32>) -> tensor<1x2x?x?xf32>
  %r = onnx.Reshape %sk, %s4 : (tensor<2xf32>, tensor<4xi64>) -> tensor<1x2x1x1xf32>
  %e = onnx.Expand %r, %tgt : (tensor<1x2x1x1xf32>, tensor<4xi64>) -> tensor<1x2x?x1xf32>
  %cat = onnx.Concat %m, %e {axis = -1 : i64} : (tensor<1x2x?x?xf32>, tensor<1x2x?x1xf32>) -> tensor<1x2x?x?xf32>
  %mx = onnx.ReduceMax %cat, %m1 {keepdims = 1 : i64} : (tensor<1x2x?x?xf32>, tensor<1xi64>) -> tensor<1x2x?x1xf32>
  %sh = onnx.Sub %cat, %mx : (tensor<1x2x?x?xf32>, tensor<1x2x?x1xf32>) -> tensor<1x2x?x?xf32>
  %p = onnx.Softmax %sh : (tensor<1x2x?x?xf32>) -> tensor<1x2x?x?xf32>
  %pk = onnx.Slice %p, %z, %m1, %m1, %o : (tensor<1x2x?x?xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x2x?x?xf32>
  %out = onnx.MatMul %pk, %v : (tensor<1x2x?x?xf32>, tensor<1x2x?x4xf32>) -> tensor<1x2x?x4xf32>
  return %out : tensor<1x2x?x4xf32>
}

// -----

// The same with the exporter's reshape of the sinks folded into a [1, H, 1, 1] constant: reshaped back to [H].
// CHECK-LABEL: func.func @sinks_folded
// CHECK: %[[S:.+]] = onnx.Reshape %{{.+}}, %{{.+}} : (tensor<1x2x1x1xf32>, tensor<1xi64>) -> tensor<2xf32>
// CHECK: moe.attention %arg0, %arg1, %arg2 mask %arg3 sinks %[[S]] {moe.fused = ["sinks"], moe.source = "sdpa", scale = 5.000000e-01 : f32}
// CHECK-NOT: onnx.Softmax
// CHECK-NOT: onnx.ReduceMax
func.func @sinks_folded(%q: tensor<1x2x?x4xf32>, %k: tensor<1x2x?x4xf32>, %v: tensor<1x2x?x4xf32>,
                 %mask: tensor<1x1x?x?xf32>) -> tensor<1x2x?x4xf32> {
  %c = onnx.Constant dense<0.5> : tensor<f32>
  %r = onnx.Constant dense<[[[[1.0]], [[2.0]]]]> : tensor<1x2x1x1xf32>
  %tgt = onnx.Constant dense<[1, 2, 3, 1]> : tensor<4xi64>
  %z = onnx.Constant dense<0> : tensor<1xi64>
  %m1 = onnx.Constant dense<-1> : tensor<1xi64>
  %o = onnx.Constant dense<1> : tensor<1xi64>
  %kt = onnx.Transpose %k {perm = [0, 1, 3, 2]} : (tensor<1x2x?x4xf32>) -> tensor<1x2x4x?xf32>
  %qk = onnx.MatMul %q, %kt : (tensor<1x2x?x4xf32>, tensor<1x2x4x?xf32>) -> tensor<1x2x?x?xf32>
  %sc = onnx.Mul %qk, %c : (tensor<1x2x?x?xf32>, tensor<f32>) -> tensor<1x2x?x?xf32>
  %m = onnx.Add %sc, %mask : (tensor<1x2x?x?xf32>, tensor<1x1x?x?xf32>) -> tensor<1x2x?x?xf32>
  %e = onnx.Expand %r, %tgt : (tensor<1x2x1x1xf32>, tensor<4xi64>) -> tensor<1x2x?x1xf32>
  %cat = onnx.Concat %m, %e {axis = -1 : i64} : (tensor<1x2x?x?xf32>, tensor<1x2x?x1xf32>) -> tensor<1x2x?x?xf32>
  %mx = onnx.ReduceMax %cat, %m1 {keepdims = 1 : i64} : (tensor<1x2x?x?xf32>, tensor<1xi64>) -> tensor<1x2x?x1xf32>
  %sh = onnx.Sub %cat, %mx : (tensor<1x2x?x?xf32>, tensor<1x2x?x1xf32>) -> tensor<1x2x?x?xf32>
  %p = onnx.Softmax %sh : (tensor<1x2x?x?xf32>) -> tensor<1x2x?x?xf32>
  %pk = onnx.Slice %p, %z, %m1, %m1, %o : (tensor<1x2x?x?xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x2x?x?xf32>
  %out = onnx.MatMul %pk, %v : (tensor<1x2x?x?xf32>, tensor<1x2x?x4xf32>) -> tensor<1x2x?x4xf32>
  return %out : tensor<1x2x?x4xf32>
}

// -----

// Near misses stay op steps: a softmax over another axis; K^T transposing other dims than the last two.
// CHECK-LABEL: func.func @near_misses
// CHECK-NOT: moe.attention
// CHECK-COUNT-2: onnx.Softmax
func.func @near_misses(%q: tensor<1x2x4x8xf32>, %k: tensor<1x2x4x8xf32>, %v: tensor<1x2x4x8xf32>) -> (tensor<1x2x4x8xf32>, tensor<2x2x4x8xf32>) {
  %kt = onnx.Transpose %k {perm = [0, 1, 3, 2]} : (tensor<1x2x4x8xf32>) -> tensor<1x2x8x4xf32>
  %sc = onnx.MatMul %q, %kt : (tensor<1x2x4x8xf32>, tensor<1x2x8x4xf32>) -> tensor<1x2x4x4xf32>
  // expected-remark @+1 {{attention not raised: the softmax is not over the last axis}}
  %p = onnx.Softmax %sc {axis = 2 : i64} : (tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32>
  %o = onnx.MatMul %p, %v : (tensor<1x2x4x4xf32>, tensor<1x2x4x8xf32>) -> tensor<1x2x4x8xf32>
  %kt2 = onnx.Transpose %k {perm = [1, 0, 3, 2]} : (tensor<1x2x4x8xf32>) -> tensor<2x1x8x4xf32>
  %sc2 = onnx.MatMul %q, %kt2 : (tensor<1x2x4x8xf32>, tensor<2x1x8x4xf32>) -> tensor<2x2x4x4xf32>
  // expected-remark @+1 {{attention not raised: K^T is not a Transpose of the keys' last two dims}}
  %p2 = onnx.Softmax %sc2 : (tensor<2x2x4x4xf32>) -> tensor<2x2x4x4xf32>
  %o2 = onnx.MatMul %p2, %v : (tensor<2x2x4x4xf32>, tensor<1x2x4x8xf32>) -> tensor<2x2x4x8xf32>
  return %o, %o2 : tensor<1x2x4x8xf32>, tensor<2x2x4x8xf32>
}

// -----

// A moe.attention imported whole (ONNX's Attention, torch.onnx at opset 23) over repeat_kv's K and V reads
// the unrepeated ones; the repeats go.
// CHECK-LABEL: func.func @imported_repeat_kv
// CHECK: moe.attention %arg0, %arg1, %arg2 mask %arg3 {moe.fused = ["repeat_kv"], moe.source = "Attention", nan_to_zero, scale = 2.500000e-01 : f32} : (tensor<1x4x?x16xf32>, tensor<1x2x?x16xf32>, tensor<1x2x?x16xf32>, tensor<1x1x?x?xf32>) -> tensor<1x4x?x16xf32>
// CHECK-NOT: onnx.Expand
func.func @imported_repeat_kv(%q: tensor<1x4x?x16xf32>, %k: tensor<1x2x?x16xf32>, %v: tensor<1x2x?x16xf32>, %mask: tensor<1x1x?x?xf32>) -> tensor<1x4x?x16xf32> {
  %ax2 = onnx.Constant dense<2> : tensor<1xi64>
  %z1 = onnx.Constant dense<0> : tensor<1xi64>
  %o1 = onnx.Constant dense<1> : tensor<1xi64>
  %g = onnx.Constant dense<2> : tensor<1xi64>
  %big = onnx.Constant dense<9223372036854775807> : tensor<1xi64>
  %rep = onnx.Constant dense<[1, 4, -1, 16]> : tensor<4xi64>
  %ks = onnx.Shape %k : (tensor<1x2x?x16xf32>) -> tensor<4xi64>
  %kbh = onnx.Slice %ks, %z1, %ax2, %z1, %o1 : (tensor<4xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<2xi64>
  %ktd = onnx.Slice %ks, %ax2, %big, %z1, %o1 : (tensor<4xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<2xi64>
  %tgt = onnx.Concat %kbh, %g, %ktd {axis = 0 : i64} : (tensor<2xi64>, tensor<1xi64>, tensor<2xi64>) -> tensor<5xi64>
  %ku = onnx.Unsqueeze %k, %ax2 : (tensor<1x2x?x16xf32>, tensor<1xi64>) -> tensor<1x2x1x?x16xf32>
  %ke = onnx.Expand %ku, %tgt : (tensor<1x2x1x?x16xf32>, tensor<5xi64>) -> tensor<1x2x2x?x16xf32>
  %kr = onnx.Reshape %ke, %rep : (tensor<1x2x2x?x16xf32>, tensor<4xi64>) -> tensor<1x4x?x16xf32>
  %vs = onnx.Shape %v : (tensor<1x2x?x16xf32>) -> tensor<4xi64>
  %vbh = onnx.Slice %vs, %z1, %ax2, %z1, %o1 : (tensor<4xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<2xi64>
  %vtd = onnx.Slice %vs, %ax2, %big, %z1, %o1 : (tensor<4xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<2xi64>
  %vtgt = onnx.Concat %vbh, %g, %vtd {axis = 0 : i64} : (tensor<2xi64>, tensor<1xi64>, tensor<2xi64>) -> tensor<5xi64>
  %vu = onnx.Unsqueeze %v, %ax2 : (tensor<1x2x?x16xf32>, tensor<1xi64>) -> tensor<1x2x1x?x16xf32>
  %ve = onnx.Expand %vu, %vtgt : (tensor<1x2x1x?x16xf32>, tensor<5xi64>) -> tensor<1x2x2x?x16xf32>
  %vr = onnx.Reshape %ve, %rep : (tensor<1x2x2x?x16xf32>, tensor<4xi64>) -> tensor<1x4x?x16xf32>
  %a = moe.attention %q, %kr, %vr mask %mask {moe.source = "Attention", nan_to_zero, scale = 0.25 : f32} : (tensor<1x4x?x16xf32>, tensor<1x4x?x16xf32>, tensor<1x4x?x16xf32>, tensor<1x1x?x?xf32>) -> tensor<1x4x?x16xf32>
  return %a : tensor<1x4x?x16xf32>
}

// -----

// The Transpose back to [B, S, H, D] after attention becomes the op's output layout (`transpose_output`),
// its static dims kept; the Reshape merging the heads reads the op directly.
// CHECK-LABEL: func.func @output_transpose
// CHECK: %[[A:.+]] = moe.attention %arg0, %arg1, %arg2 {moe.fused = ["transpose"], moe.source = "sdpa", scale = 1.250000e-01 : f32, transpose_output}
// CHECK-SAME: -> tensor<2x?x2x64xf32>
// CHECK-NOT: onnx.Transpose
// CHECK: onnx.Reshape %[[A]]
func.func @output_transpose(%q: tensor<?x2x?x64xf32>, %k: tensor<?x2x?x64xf32>, %v: tensor<?x2x?x64xf32>) -> tensor<2x?x128xf32> {
  %c = onnx.Constant dense<8.0> : tensor<f32>
  %shape = onnx.Constant dense<[2, -1, 128]> : tensor<3xi64>
  %kt = onnx.Transpose %k {perm = [0, 1, 3, 2]} : (tensor<?x2x?x64xf32>) -> tensor<?x2x64x?xf32>
  %sc = onnx.MatMul %q, %kt : (tensor<?x2x?x64xf32>, tensor<?x2x64x?xf32>) -> tensor<?x2x?x?xf32>
  %sd = onnx.Div %sc, %c : (tensor<?x2x?x?xf32>, tensor<f32>) -> tensor<?x2x?x?xf32>
  %p = onnx.Softmax %sd {axis = -1 : i64} : (tensor<?x2x?x?xf32>) -> tensor<?x2x?x?xf32>
  %o = onnx.MatMul %p, %v : (tensor<?x2x?x?xf32>, tensor<?x2x?x64xf32>) -> tensor<?x2x?x64xf32>
  %t = onnx.Transpose %o {perm = [0, 2, 1, 3]} : (tensor<?x2x?x64xf32>) -> tensor<2x?x2x64xf32>
  %r = onnx.Reshape %t, %shape : (tensor<2x?x2x64xf32>, tensor<3xi64>) -> tensor<2x?x128xf32>
  return %r : tensor<2x?x128xf32>
}

// -----

// Not folded: the output read by something besides the Transpose, and a Transpose to another layout.
// CHECK-LABEL: func.func @output_transpose_near_misses
// CHECK: %[[A:.+]] = moe.attention %arg0, %arg1, %arg2 {moe.source = "Attention", scale = 1.250000e-01 : f32} :
// CHECK-SAME: -> tensor<1x2x4x8xf32>
// CHECK: onnx.Transpose %[[A]] {perm = [0, 2, 1, 3]}
// CHECK: %[[B:.+]] = moe.attention %arg0, %arg1, %arg2 {moe.source = "Attention", scale = 1.250000e-01 : f32} :
// CHECK-SAME: -> tensor<1x2x4x8xf32>
// CHECK: onnx.Transpose %[[B]] {perm = [0, 2, 3, 1]}
func.func @output_transpose_near_misses(%q: tensor<1x2x4x8xf32>, %k: tensor<1x2x4x8xf32>, %v: tensor<1x2x4x8xf32>) -> (tensor<1x4x2x8xf32>, tensor<1x2x4x8xf32>, tensor<1x4x8x2xf32>) {
  %a = moe.attention %q, %k, %v {moe.source = "Attention", scale = 0.125 : f32} : (tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>) -> tensor<1x2x4x8xf32>
  %t = onnx.Transpose %a {perm = [0, 2, 1, 3]} : (tensor<1x2x4x8xf32>) -> tensor<1x4x2x8xf32>
  %b = moe.attention %q, %k, %v {moe.source = "Attention", scale = 0.125 : f32} : (tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>) -> tensor<1x2x4x8xf32>
  %u = onnx.Transpose %b {perm = [0, 2, 3, 1]} : (tensor<1x2x4x8xf32>) -> tensor<1x4x8x2xf32>
  return %t, %a, %u : tensor<1x4x2x8xf32>, tensor<1x2x4x8xf32>, tensor<1x4x8x2xf32>
}

// -----

// A Transpose without perm (all dims reversed) is no K^T and no output layout: nothing raised or folded.
// CHECK-LABEL: func.func @transpose_without_perm
// CHECK-NOT: moe.attention
func.func @transpose_without_perm(%q: tensor<2x2x2x2xf32>, %k: tensor<2x2x2x2xf32>, %v: tensor<2x2x2x2xf32>) -> tensor<2x2x2x2xf32> {
  %kt = onnx.Transpose %k : (tensor<2x2x2x2xf32>) -> tensor<2x2x2x2xf32>
  %sc = onnx.MatMul %q, %kt : (tensor<2x2x2x2xf32>, tensor<2x2x2x2xf32>) -> tensor<2x2x2x2xf32>
  // expected-remark @+1 {{attention not raised: K^T is not a Transpose of the keys' last two dims}}
  %p = onnx.Softmax %sc {axis = -1 : i64} : (tensor<2x2x2x2xf32>) -> tensor<2x2x2x2xf32>
  %o = onnx.MatMul %p, %v : (tensor<2x2x2x2xf32>, tensor<2x2x2x2xf32>) -> tensor<2x2x2x2xf32>
  %t = onnx.Transpose %o : (tensor<2x2x2x2xf32>) -> tensor<2x2x2x2xf32>
  return %t : tensor<2x2x2x2xf32>
}
