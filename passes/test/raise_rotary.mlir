// moe-raise-rotary: transformers' apply_rotary_pos_emb as exported (and the pair layouts of GPT-OSS, DeepSeek's
// MLA and Ernie-4.5) -> one moe.rotary, with the Transpose and the q/k RMSNorm in front folded in; near misses
// stay and say why.
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
  // expected-remark @+1 {{rotary embedding not raised: not x * cos + Concat(-x[..., h:], x[..., :h]) * sin (or its interleaved form) over the same x}}
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

// -----

// GPT-OSS: the transposed heads Split into halves a, b; Concat(a * cos - b * sin, b * cos + a * sin) with cos /
// sin of R / 2 = 4 values per position (W = R / 2, half-split); the Transpose folds in.
// CHECK-LABEL: func.func @gpt_oss_halves
// CHECK: %[[R:.+]] = moe.rotary %arg0, %arg1, %arg2 {moe.fused = ["transpose"], rotary_dim = 8 : i64, seq_axis = 1 : i64, transpose}
// CHECK-SAME: (tensor<1x?x2x8xf32>, tensor<1x?x4xf32>, tensor<1x?x4xf32>) -> tensor<1x2x?x8xf32>
// CHECK-NOT: onnx.Split
// CHECK-NOT: onnx.Sub
// CHECK: return %[[R]]
func.func @gpt_oss_halves(%view: tensor<1x?x2x8xf32>, %cos: tensor<1x?x4xf32>, %sin: tensor<1x?x4xf32>) -> tensor<1x2x?x8xf32> {
  %one = onnx.Constant dense<1> : tensor<1xi64>
  %q = onnx.Transpose %view {perm = [0, 2, 1, 3]} : (tensor<1x?x2x8xf32>) -> tensor<1x2x?x8xf32>
  %cu = onnx.Unsqueeze %cos, %one : (tensor<1x?x4xf32>, tensor<1xi64>) -> tensor<1x1x?x4xf32>
  %su = onnx.Unsqueeze %sin, %one : (tensor<1x?x4xf32>, tensor<1xi64>) -> tensor<1x1x?x4xf32>
  %a, %b = onnx.Split %q {axis = 3 : i64, num_outputs = 2 : i64} : (tensor<1x2x?x8xf32>) -> (tensor<1x2x?x4xf32>, tensor<1x2x?x4xf32>)
  %ac = onnx.Mul %a, %cu : (tensor<1x2x?x4xf32>, tensor<1x1x?x4xf32>) -> tensor<1x2x?x4xf32>
  %bs = onnx.Mul %b, %su : (tensor<1x2x?x4xf32>, tensor<1x1x?x4xf32>) -> tensor<1x2x?x4xf32>
  %first = onnx.Sub %ac, %bs : (tensor<1x2x?x4xf32>, tensor<1x2x?x4xf32>) -> tensor<1x2x?x4xf32>
  %bc = onnx.Mul %cu, %b : (tensor<1x1x?x4xf32>, tensor<1x2x?x4xf32>) -> tensor<1x2x?x4xf32>
  %as = onnx.Mul %a, %su : (tensor<1x2x?x4xf32>, tensor<1x1x?x4xf32>) -> tensor<1x2x?x4xf32>
  %second = onnx.Add %as, %bc : (tensor<1x2x?x4xf32>, tensor<1x2x?x4xf32>) -> tensor<1x2x?x4xf32>
  %y = onnx.Concat %first, %second {axis = -1 : i64} : (tensor<1x2x?x4xf32>, tensor<1x2x?x4xf32>) -> tensor<1x2x?x8xf32>
  return %y : tensor<1x2x?x8xf32>
}

// -----

// DeepSeek's MLA rotary: a, b = x[..., 0::2], x[..., 1::2] (Slices with step 2), the halves form over them:
// interleaved pairs written as halves (deinterleave); cos / sin [1, 1, S, R / 2].
// CHECK-LABEL: func.func @deepseek_even_odd
// CHECK: %[[R:.+]] = moe.rotary %arg0, %{{.+}}, %{{.+}} {deinterleave, interleaved, rotary_dim = 4 : i64}
// CHECK-SAME: (tensor<1x1x?x4xf32>, tensor<1x?x2xf32>, tensor<1x?x2xf32>) -> tensor<1x1x?x4xf32>
// CHECK-NOT: onnx.Slice %arg0
// CHECK: return %[[R]]
func.func @deepseek_even_odd(%k: tensor<1x1x?x4xf32>, %cu: tensor<1x1x?x2xf32>, %su: tensor<1x1x?x2xf32>) -> tensor<1x1x?x4xf32> {
  %z = onnx.Constant dense<0> : tensor<1xi64>
  %one = onnx.Constant dense<1> : tensor<1xi64>
  %two = onnx.Constant dense<2> : tensor<1xi64>
  %big = onnx.Constant dense<9223372036854775807> : tensor<1xi64>
  %ax = onnx.Constant dense<3> : tensor<1xi64>
  %e = onnx.Slice %k, %z, %big, %ax, %two : (tensor<1x1x?x4xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x1x?x2xf32>
  %o = onnx.Slice %k, %one, %big, %ax, %two : (tensor<1x1x?x4xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x1x?x2xf32>
  %ec = onnx.Mul %e, %cu : (tensor<1x1x?x2xf32>, tensor<1x1x?x2xf32>) -> tensor<1x1x?x2xf32>
  %os = onnx.Mul %o, %su : (tensor<1x1x?x2xf32>, tensor<1x1x?x2xf32>) -> tensor<1x1x?x2xf32>
  %first = onnx.Sub %ec, %os : (tensor<1x1x?x2xf32>, tensor<1x1x?x2xf32>) -> tensor<1x1x?x2xf32>
  %oc = onnx.Mul %o, %cu : (tensor<1x1x?x2xf32>, tensor<1x1x?x2xf32>) -> tensor<1x1x?x2xf32>
  %es = onnx.Mul %e, %su : (tensor<1x1x?x2xf32>, tensor<1x1x?x2xf32>) -> tensor<1x1x?x2xf32>
  %second = onnx.Add %oc, %es : (tensor<1x1x?x2xf32>, tensor<1x1x?x2xf32>) -> tensor<1x1x?x2xf32>
  %y = onnx.Concat %first, %second {axis = -1 : i64} : (tensor<1x1x?x2xf32>, tensor<1x1x?x2xf32>) -> tensor<1x1x?x4xf32>
  return %y : tensor<1x1x?x4xf32>
}

// -----

// Ernie-4.5: x * cos + Reshape(stack(-x[..., 1::2], x[..., 0::2])) * sin, cos / sin [1, 1, S, R] (interleaved,
// W = R); the Reshape's exporter writes allowzero = 1 (no 0 in its shape).
// CHECK-LABEL: func.func @ernie_interleaved
// CHECK: %[[R:.+]] = moe.rotary %arg0, %{{.+}}, %{{.+}} {interleaved, rotary_dim = 8 : i64}
// CHECK-SAME: (tensor<1x2x?x8xf32>, tensor<1x?x8xf32>, tensor<1x?x8xf32>) -> tensor<1x2x?x8xf32>
// CHECK-NOT: onnx.Neg
// CHECK: return %[[R]]
func.func @ernie_interleaved(%q: tensor<1x2x?x8xf32>, %cu: tensor<1x1x?x8xf32>, %su: tensor<1x1x?x8xf32>) -> tensor<1x2x?x8xf32> {
  %z = onnx.Constant dense<0> : tensor<1xi64>
  %one = onnx.Constant dense<1> : tensor<1xi64>
  %two = onnx.Constant dense<2> : tensor<1xi64>
  %big = onnx.Constant dense<9223372036854775807> : tensor<1xi64>
  %ax = onnx.Constant dense<3> : tensor<1xi64>
  %last = onnx.Constant dense<-1> : tensor<1xi64>
  %shape = onnx.Constant dense<[1, 2, -1, 8]> : tensor<4xi64>
  %qc = onnx.Mul %q, %cu : (tensor<1x2x?x8xf32>, tensor<1x1x?x8xf32>) -> tensor<1x2x?x8xf32>
  %e = onnx.Slice %q, %z, %big, %ax, %two : (tensor<1x2x?x8xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x2x?x4xf32>
  %o = onnx.Slice %q, %one, %big, %ax, %two : (tensor<1x2x?x8xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x2x?x4xf32>
  %neg = onnx.Neg %o : (tensor<1x2x?x4xf32>) -> tensor<1x2x?x4xf32>
  %nu = onnx.Unsqueeze %neg, %last : (tensor<1x2x?x4xf32>, tensor<1xi64>) -> tensor<1x2x?x4x1xf32>
  %eu = onnx.Unsqueeze %e, %last : (tensor<1x2x?x4xf32>, tensor<1xi64>) -> tensor<1x2x?x4x1xf32>
  %st = onnx.Concat %nu, %eu {axis = -1 : i64} : (tensor<1x2x?x4x1xf32>, tensor<1x2x?x4x1xf32>) -> tensor<1x2x?x4x2xf32>
  %rh = onnx.Reshape %st, %shape {allowzero = 1 : i64} : (tensor<1x2x?x4x2xf32>, tensor<4xi64>) -> tensor<1x2x?x8xf32>
  %rs = onnx.Mul %rh, %su : (tensor<1x2x?x8xf32>, tensor<1x1x?x8xf32>) -> tensor<1x2x?x8xf32>
  %y = onnx.Add %qc, %rs : (tensor<1x2x?x8xf32>, tensor<1x2x?x8xf32>) -> tensor<1x2x?x8xf32>
  return %y : tensor<1x2x?x8xf32>
}

// -----

// Ernie-4.5's tables as exported: the first half of cos / sin repeat-interleaved (Unsqueeze, Expand by
// [1, 1, 1, 1, 2], Reshape); the op reads the half tables (W = R / 2, interleaved) and the repeat goes.
// CHECK-LABEL: func.func @ernie_repeated_tables
// CHECK: %[[R:.+]] = moe.rotary %arg0, %{{.+}}, %{{.+}} {interleaved, rotary_dim = 8 : i64}
// CHECK-SAME: (tensor<1x2x?x8xf32>, tensor<1x?x4xf32>, tensor<1x?x4xf32>) -> tensor<1x2x?x8xf32>
// CHECK-NOT: onnx.Expand
// CHECK: return %[[R]]
func.func @ernie_repeated_tables(%q: tensor<1x2x?x8xf32>, %ch: tensor<1x1x?x4xf32>, %sh: tensor<1x1x?x4xf32>) -> tensor<1x2x?x8xf32> {
  %z = onnx.Constant dense<0> : tensor<1xi64>
  %one = onnx.Constant dense<1> : tensor<1xi64>
  %two = onnx.Constant dense<2> : tensor<1xi64>
  %big = onnx.Constant dense<9223372036854775807> : tensor<1xi64>
  %ax = onnx.Constant dense<3> : tensor<1xi64>
  %last = onnx.Constant dense<-1> : tensor<1xi64>
  %rep = onnx.Constant dense<[1, 1, 1, 1, 2]> : tensor<5xi64>
  %tshape = onnx.Constant dense<[1, 1, -1, 8]> : tensor<4xi64>
  %shape = onnx.Constant dense<[1, 2, -1, 8]> : tensor<4xi64>
  %cu5 = onnx.Unsqueeze %ch, %last : (tensor<1x1x?x4xf32>, tensor<1xi64>) -> tensor<1x1x?x4x1xf32>
  %cx = onnx.Expand %cu5, %rep : (tensor<1x1x?x4x1xf32>, tensor<5xi64>) -> tensor<1x1x?x4x2xf32>
  %cu = onnx.Reshape %cx, %tshape {allowzero = 1 : i64} : (tensor<1x1x?x4x2xf32>, tensor<4xi64>) -> tensor<1x1x?x8xf32>
  %su5 = onnx.Unsqueeze %sh, %last : (tensor<1x1x?x4xf32>, tensor<1xi64>) -> tensor<1x1x?x4x1xf32>
  %sx = onnx.Expand %su5, %rep : (tensor<1x1x?x4x1xf32>, tensor<5xi64>) -> tensor<1x1x?x4x2xf32>
  %su = onnx.Reshape %sx, %tshape {allowzero = 1 : i64} : (tensor<1x1x?x4x2xf32>, tensor<4xi64>) -> tensor<1x1x?x8xf32>
  %qc = onnx.Mul %q, %cu : (tensor<1x2x?x8xf32>, tensor<1x1x?x8xf32>) -> tensor<1x2x?x8xf32>
  %e = onnx.Slice %q, %z, %big, %ax, %two : (tensor<1x2x?x8xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x2x?x4xf32>
  %o = onnx.Slice %q, %one, %big, %ax, %two : (tensor<1x2x?x8xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x2x?x4xf32>
  %neg = onnx.Neg %o : (tensor<1x2x?x4xf32>) -> tensor<1x2x?x4xf32>
  %nu = onnx.Unsqueeze %neg, %last : (tensor<1x2x?x4xf32>, tensor<1xi64>) -> tensor<1x2x?x4x1xf32>
  %eu = onnx.Unsqueeze %e, %last : (tensor<1x2x?x4xf32>, tensor<1xi64>) -> tensor<1x2x?x4x1xf32>
  %st = onnx.Concat %nu, %eu {axis = -1 : i64} : (tensor<1x2x?x4x1xf32>, tensor<1x2x?x4x1xf32>) -> tensor<1x2x?x4x2xf32>
  %rh = onnx.Reshape %st, %shape {allowzero = 1 : i64} : (tensor<1x2x?x4x2xf32>, tensor<4xi64>) -> tensor<1x2x?x8xf32>
  %rs = onnx.Mul %rh, %su : (tensor<1x2x?x8xf32>, tensor<1x1x?x8xf32>) -> tensor<1x2x?x8xf32>
  %y = onnx.Add %qc, %rs : (tensor<1x2x?x8xf32>, tensor<1x2x?x8xf32>) -> tensor<1x2x?x8xf32>
  return %y : tensor<1x2x?x8xf32>
}

// -----

// Near miss: the halves form with the second half's sign flipped (b * cos - a * sin is the inverse rotation's).
// CHECK-LABEL: func.func @halves_wrong_sign
// CHECK: onnx.Split
// CHECK-NOT: moe.rotary
func.func @halves_wrong_sign(%q: tensor<1x2x?x8xf32>, %cu: tensor<1x1x?x4xf32>, %su: tensor<1x1x?x4xf32>) -> tensor<1x2x?x8xf32> {
  %a, %b = onnx.Split %q {axis = 3 : i64, num_outputs = 2 : i64} : (tensor<1x2x?x8xf32>) -> (tensor<1x2x?x4xf32>, tensor<1x2x?x4xf32>)
  %ac = onnx.Mul %a, %cu : (tensor<1x2x?x4xf32>, tensor<1x1x?x4xf32>) -> tensor<1x2x?x4xf32>
  %bs = onnx.Mul %b, %su : (tensor<1x2x?x4xf32>, tensor<1x1x?x4xf32>) -> tensor<1x2x?x4xf32>
  %first = onnx.Sub %ac, %bs : (tensor<1x2x?x4xf32>, tensor<1x2x?x4xf32>) -> tensor<1x2x?x4xf32>
  %bc = onnx.Mul %b, %cu : (tensor<1x2x?x4xf32>, tensor<1x1x?x4xf32>) -> tensor<1x2x?x4xf32>
  %as = onnx.Mul %a, %su : (tensor<1x2x?x4xf32>, tensor<1x1x?x4xf32>) -> tensor<1x2x?x4xf32>
  %second = onnx.Sub %bc, %as : (tensor<1x2x?x4xf32>, tensor<1x2x?x4xf32>) -> tensor<1x2x?x4xf32>
  %y = onnx.Concat %first, %second {axis = -1 : i64} : (tensor<1x2x?x4xf32>, tensor<1x2x?x4xf32>) -> tensor<1x2x?x8xf32>
  return %y : tensor<1x2x?x8xf32>
}

// -----

// Near miss: the halves form over Slices [0, 4) and [4, 8) of a head of 10 dims: not its two halves (a
// partial rotary takes x[..., :R] apart, not x).
// CHECK-LABEL: func.func @halves_not_halves
// CHECK-NOT: moe.rotary
func.func @halves_not_halves(%q: tensor<1x2x?x10xf32>, %cu: tensor<1x1x?x4xf32>, %su: tensor<1x1x?x4xf32>) -> tensor<1x2x?x8xf32> {
  %z = onnx.Constant dense<0> : tensor<1xi64>
  %one = onnx.Constant dense<1> : tensor<1xi64>
  %four = onnx.Constant dense<4> : tensor<1xi64>
  %eight = onnx.Constant dense<8> : tensor<1xi64>
  %ax = onnx.Constant dense<3> : tensor<1xi64>
  %a = onnx.Slice %q, %z, %four, %ax, %one : (tensor<1x2x?x10xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x2x?x4xf32>
  %b = onnx.Slice %q, %four, %eight, %ax, %one : (tensor<1x2x?x10xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<1x2x?x4xf32>
  %ac = onnx.Mul %a, %cu : (tensor<1x2x?x4xf32>, tensor<1x1x?x4xf32>) -> tensor<1x2x?x4xf32>
  %bs = onnx.Mul %b, %su : (tensor<1x2x?x4xf32>, tensor<1x1x?x4xf32>) -> tensor<1x2x?x4xf32>
  %first = onnx.Sub %ac, %bs : (tensor<1x2x?x4xf32>, tensor<1x2x?x4xf32>) -> tensor<1x2x?x4xf32>
  %bc = onnx.Mul %b, %cu : (tensor<1x2x?x4xf32>, tensor<1x1x?x4xf32>) -> tensor<1x2x?x4xf32>
  %as = onnx.Mul %a, %su : (tensor<1x2x?x4xf32>, tensor<1x1x?x4xf32>) -> tensor<1x2x?x4xf32>
  %second = onnx.Add %bc, %as : (tensor<1x2x?x4xf32>, tensor<1x2x?x4xf32>) -> tensor<1x2x?x4xf32>
  // expected-remark @+1 {{rotary embedding not raised: not Concat(a * cos - b * sin, b * cos + a * sin) over the halves or the even / odd dims of one tensor}}
  %y = onnx.Concat %first, %second {axis = -1 : i64} : (tensor<1x2x?x4xf32>, tensor<1x2x?x4xf32>) -> tensor<1x2x?x8xf32>
  return %y : tensor<1x2x?x8xf32>
}
