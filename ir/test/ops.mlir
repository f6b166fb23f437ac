// Round trip of moe.sparse_moe in every operand/attribute combination the frontend produces: custom form
// parses and prints back, and the generic form parses back to the same op.
// RUN: moec-opt %s --split-input-file | moec-opt --split-input-file | FileCheck %s
// RUN: moec-opt %s --split-input-file --mlir-print-op-generic | moec-opt --split-input-file | FileCheck %s

// CHECK-LABEL: func.func @mixtral
// CHECK: moe.sparse_moe %{{.*}}, %{{.*}}, fc1 %{{.*}}, fc2 %{{.*}} {activation = #moe.activation<swiglu>, k = 2 : i64, normalize = true}
// CHECK-SAME: (tensor<?x64xf32>, tensor<64x8xf32>, tensor<8x256x64xbf16>, tensor<8x64x128xbf16>) -> tensor<?x64xf32>
func.func @mixtral(%x: tensor<?x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x256x64xbf16>, %w2: tensor<8x64x128xbf16>) -> tensor<?x64xf32> {
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 2, normalize = true, activation = #moe.activation<swiglu>}
     : (tensor<?x64xf32>, tensor<64x8xf32>, tensor<8x256x64xbf16>, tensor<8x64x128xbf16>) -> tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

// ONNX Runtime com.microsoft.MoE: precomputed logits, biases, interleaved SwiGLU rows, custom alpha/beta/limit.
// CHECK-LABEL: func.func @ort_moe
// CHECK: moe.sparse_moe %{{.*}}, %{{.*}}, fc1 %{{.*}} fc1_bias %{{.*}}, fc2 %{{.*}} fc2_bias %{{.*}} {
// CHECK-SAME: activation = #moe.activation<swiglu>
// CHECK-SAME: activation_alpha = 1.702000e+00 : f32
// CHECK-SAME: activation_beta = 1.000000e+00 : f32
// CHECK-SAME: activation_limit = 7.000000e+00 : f32
// CHECK-SAME: gated_layout = #moe.gated_layout<interleaved>
// CHECK-SAME: k = 4 : i64
// CHECK-SAME: router_kind = #moe.router<logits>
func.func @ort_moe(%x: tensor<?x32xf16>, %logits: tensor<?x16xf16>, %w1: tensor<16x96x32xf16>, %b1: tensor<16x96xf16>,
                   %w2: tensor<16x32x48xf16>, %b2: tensor<16x32xf16>) -> tensor<?x32xf16> {
  %y = moe.sparse_moe %x, %logits, fc1 %w1 fc1_bias %b1, fc2 %w2 fc2_bias %b2
       {k = 4, router_kind = #moe.router<logits>, activation = #moe.activation<swiglu>,
        gated_layout = #moe.gated_layout<interleaved>, activation_alpha = 1.702 : f32, activation_beta = 1.0 : f32,
        activation_limit = 7.0 : f32}
     : (tensor<?x32xf16>, tensor<?x16xf16>, tensor<16x96x32xf16>, tensor<16x96xf16>, tensor<16x32x48xf16>,
        tensor<16x32xf16>) -> tensor<?x32xf16>
  return %y : tensor<?x32xf16>
}

// -----

// ONNX Runtime QMoE: 4-bit weights packed two per byte along the reduction dim, block-wise scales.
// CHECK-LABEL: func.func @qmoe_int4
// CHECK: fc1 %{{.*}} fc1_scales %{{.*}}, fc2 %{{.*}} fc2_scales %{{.*}} {
// CHECK-SAME: fc1_quant = #moe.weight_quant<bits = 4, block_size = 32>
// CHECK-SAME: fc2_quant = #moe.weight_quant<bits = 4>
func.func @qmoe_int4(%x: tensor<?x64xbf16>, %logits: tensor<?x4xbf16>, %w1: tensor<4x128x32xui8>, %s1: tensor<4x128x2xbf16>,
                     %w2: tensor<4x64x64xui8>, %s2: tensor<4x64xbf16>) -> tensor<?x64xbf16> {
  %y = moe.sparse_moe %x, %logits, fc1 %w1 fc1_scales %s1, fc2 %w2 fc2_scales %s2
       {k = 1, router_kind = #moe.router<logits>, activation = #moe.activation<silu>,
        fc1_quant = #moe.weight_quant<bits = 4, block_size = 32>, fc2_quant = #moe.weight_quant<bits = 4>}
     : (tensor<?x64xbf16>, tensor<?x4xbf16>, tensor<4x128x32xui8>, tensor<4x128x2xbf16>, tensor<4x64x64xui8>,
        tensor<4x64xbf16>) -> tensor<?x64xbf16>
  return %y : tensor<?x64xbf16>
}

// -----

// The seeds' MoE++ layer: top-1 over 128 experts + 1 zero expert, a low-rank predictor keeping 51 of 512 dims.
// CHECK-LABEL: func.func @moepp_predictor
// CHECK: moe.sparse_moe %{{.*}}, %{{.*}}, fc1 %{{.*}}, fc2 %{{.*}} predictor(%{{.*}}, %{{.*}}) {
// CHECK-SAME: keep = 51 : i64
// CHECK-SAME: zero_experts = 1 : i64
func.func @moepp_predictor(%x: tensor<?x256xf32>, %r: tensor<256x129xf32>, %w1: tensor<128x1024x256xf32>,
                           %w2: tensor<128x256x512xf32>, %pa: tensor<128x256x64xf32>, %pb: tensor<128x64x512xf32>) -> tensor<?x256xf32> {
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 predictor(%pa, %pb)
       {k = 1, zero_experts = 1, keep = 51, activation = #moe.activation<swiglu>}
     : (tensor<?x256xf32>, tensor<256x129xf32>, tensor<128x1024x256xf32>, tensor<128x256x512xf32>,
        tensor<128x256x64xf32>, tensor<128x64x512xf32>) -> tensor<?x256xf32>
  return %y : tensor<?x256xf32>
}

// -----

// DeepSeek-V3 style routing: sigmoid scores, selection-only correction bias, grouped top-k, routed scaling.
// CHECK-LABEL: func.func @deepseek_v3
// CHECK: moe.sparse_moe %{{.*}}, %{{.*}} selection_bias %{{.*}}, fc1 %{{.*}}, fc2 %{{.*}} {
// CHECK-SAME: expert_groups = 8 : i64
// CHECK-SAME: gate = #moe.gate<sigmoid>
// CHECK-SAME: group_topk = 4 : i64
// CHECK-SAME: k = 8 : i64
// CHECK-SAME: scale = 2.500000e+00 : f32
func.func @deepseek_v3(%x: tensor<?x64xf32>, %r: tensor<64x64xf32>, %sb: tensor<64xf32>, %w1: tensor<64x64x64xf32>,
                       %w2: tensor<64x64x32xf32>) -> tensor<?x64xf32> {
  %y = moe.sparse_moe %x, %r selection_bias %sb, fc1 %w1, fc2 %w2
       {k = 8, gate = #moe.gate<sigmoid>, normalize = true, scale = 2.5 : f32, expert_groups = 8, group_topk = 4,
        activation = #moe.activation<swiglu>}
     : (tensor<?x64xf32>, tensor<64x64xf32>, tensor<64xf32>, tensor<64x64x64xf32>, tensor<64x64x32xf32>) -> tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

// DeepSeek-V2's group_limited_greedy: groups scored by their best expert.
// CHECK-LABEL: func.func @deepseek_v2
// CHECK: moe.sparse_moe {{.*}}group_score = #moe.group_score<max>
func.func @deepseek_v2(%x: tensor<?x64xf32>, %r: tensor<64x64xf32>, %w1: tensor<64x64x64xf32>,
                       %w2: tensor<64x64x32xf32>) -> tensor<?x64xf32> {
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2
       {k = 6, scale = 16.0 : f32, expert_groups = 8, group_topk = 3, group_score = #moe.group_score<max>,
        activation = #moe.activation<swiglu>}
     : (tensor<?x64xf32>, tensor<64x64xf32>, tensor<64x64x64xf32>, tensor<64x64x32xf32>) -> tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

// PhiMoE's sparsemixer routing.
// CHECK-LABEL: func.func @phimoe
// CHECK: moe.sparse_moe {{.*}}gate = #moe.gate<sparsemixer>{{.*}}jitter_eps = 0.00999999977 : f32
func.func @phimoe(%x: tensor<?x64xf32>, %r: tensor<64x16xf32>, %w1: tensor<16x64x64xf32>,
                  %w2: tensor<16x64x32xf32>) -> tensor<?x64xf32> {
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2
       {k = 2, gate = #moe.gate<sparsemixer>, jitter_eps = 0.01 : f32, activation = #moe.activation<swiglu>}
     : (tensor<?x64xf32>, tensor<64x16xf32>, tensor<16x64x64xf32>, tensor<16x64x32xf32>) -> tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

// A static learned mask and a linear router with bias; every dim unknown is fine until run time.
// CHECK-LABEL: func.func @masked_dynamic
// CHECK: moe.sparse_moe %{{.*}}, %{{.*}} router_bias %{{.*}}, fc1 %{{.*}}, fc2 %{{.*}} mask %{{.*}} {activation = #moe.activation<gelu>, k = 2 : i64}
func.func @masked_dynamic(%x: tensor<?x?xf32>, %r: tensor<?x?xf32>, %rb: tensor<?xf32>, %w1: tensor<?x?x?xf32>,
                          %w2: tensor<?x?x?xf32>, %m: tensor<?x?xi1>) -> tensor<?x?xf32> {
  %y = moe.sparse_moe %x, %r router_bias %rb, fc1 %w1, fc2 %w2 mask %m {k = 2, activation = #moe.activation<gelu>}
     : (tensor<?x?xf32>, tensor<?x?xf32>, tensor<?xf32>, tensor<?x?x?xf32>, tensor<?x?x?xf32>, tensor<?x?xi1>) -> tensor<?x?xf32>
  return %y : tensor<?x?xf32>
}

// -----

// The whole MoE sub-block of a Qwen2-MoE layer: RMSNorm in front, a gated shared expert and the residual.
// CHECK-LABEL: func.func @fused_block
// CHECK: moe.sparse_moe %{{.*}}, %{{.*}}, fc1 %{{.*}}, fc2 %{{.*}} norm_weight %{{.*}} shared(%{{.*}}, %{{.*}}) shared_gate %{{.*}} residual %arg0 {
// CHECK-SAME: norm = #moe.norm<rms>
// CHECK-SAME: norm_epsilon = 9.99999997E-7 : f32
func.func @fused_block(%x: tensor<?x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x64x64xf32>, %w2: tensor<8x64x32xf32>,
                       %nw: tensor<64xf32>, %s1: tensor<96x64xf32>, %s2: tensor<64x48xf32>, %sg: tensor<64xf32>) -> tensor<?x64xf32> {
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 norm_weight %nw shared(%s1, %s2) shared_gate %sg residual %x
       {k = 2, activation = #moe.activation<swiglu>, norm = #moe.norm<rms>, norm_epsilon = 1.0e-6 : f32}
     : (tensor<?x64xf32>, tensor<64x8xf32>, tensor<8x64x64xf32>, tensor<8x64x32xf32>, tensor<64xf32>,
        tensor<96x64xf32>, tensor<64x48xf32>, tensor<64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

// moe.kv_cache_update with and without a past.
// CHECK-LABEL: func.func @kv_cache_update
// CHECK: moe.kv_cache_update %arg0, %arg1, %arg2 past %arg3 : (tensor<?x2x?x16xf32>, tensor<?xi64>, tensor<1xi64>, tensor<?x2x?x16xf32>) -> tensor<?x2x?x16xf32>
// CHECK: moe.kv_cache_update %arg0, %arg1, %arg2 : (tensor<?x2x?x16xf32>, tensor<?xi64>, tensor<1xi64>) -> tensor<?x2x?x16xf32>
func.func @kv_cache_update(%new: tensor<?x2x?x16xf32>, %lens: tensor<?xi64>, %len: tensor<1xi64>,
                           %past: tensor<?x2x?x16xf32>) -> (tensor<?x2x?x16xf32>, tensor<?x2x?x16xf32>) {
  %a = moe.kv_cache_update %new, %lens, %len past %past
     : (tensor<?x2x?x16xf32>, tensor<?xi64>, tensor<1xi64>, tensor<?x2x?x16xf32>) -> tensor<?x2x?x16xf32>
  %b = moe.kv_cache_update %new, %lens, %len : (tensor<?x2x?x16xf32>, tensor<?xi64>, tensor<1xi64>) -> tensor<?x2x?x16xf32>
  return %a, %b : tensor<?x2x?x16xf32>, tensor<?x2x?x16xf32>
}

// -----

// moe.rotary (with and without the norm, transposed and not) and moe.norm (rms; layer with a bias).
// CHECK-LABEL: func.func @rotary_norm
// CHECK: moe.rotary %arg0, %arg1, %arg2 norm %arg3 {interleaved, norm_epsilon = 9.99999974E-6 : f32, rotary_dim = 8 : i64, seq_axis = 1 : i64, transpose} : (tensor<?x?x4x16xf32>, tensor<1x?x4xf32>, tensor<1x?x4xf32>, tensor<16xf32>) -> tensor<?x4x?x16xf32>
// CHECK: moe.rotary %{{.*}}, %arg1, %arg2 {rotary_dim = 8 : i64} : (tensor<?x4x?x16xf32>, tensor<1x?x4xf32>, tensor<1x?x4xf32>) -> tensor<?x4x?x16xf32>
// CHECK: moe.norm %arg4, %arg5 {epsilon = 9.99999997E-7 : f32, kind = #moe.norm<rms>} : (tensor<?x32xf32>, tensor<32xf32>) -> tensor<?x32xf32>
// CHECK: moe.norm %arg4, %arg5 bias %arg5 {epsilon = 9.99999974E-6 : f32, kind = #moe.norm<layer>} : (tensor<?x32xf32>, tensor<32xf32>, tensor<32xf32>) -> tensor<?x32xf32>
func.func @rotary_norm(%x: tensor<?x?x4x16xf32>, %c: tensor<1x?x4xf32>, %s: tensor<1x?x4xf32>, %w: tensor<16xf32>,
                       %h: tensor<?x32xf32>, %g: tensor<32xf32>)
    -> (tensor<?x4x?x16xf32>, tensor<?x32xf32>, tensor<?x32xf32>) {
  %a = moe.rotary %x, %c, %s norm %w {rotary_dim = 8 : i64, interleaved, seq_axis = 1 : i64, transpose, norm_epsilon = 1.0e-5 : f32}
     : (tensor<?x?x4x16xf32>, tensor<1x?x4xf32>, tensor<1x?x4xf32>, tensor<16xf32>) -> tensor<?x4x?x16xf32>
  %b = moe.rotary %a, %c, %s {rotary_dim = 8 : i64}
     : (tensor<?x4x?x16xf32>, tensor<1x?x4xf32>, tensor<1x?x4xf32>) -> tensor<?x4x?x16xf32>
  %n = moe.norm %h, %g {kind = #moe.norm<rms>, epsilon = 1.0e-6 : f32} : (tensor<?x32xf32>, tensor<32xf32>) -> tensor<?x32xf32>
  %l = moe.norm %h, %g bias %g {kind = #moe.norm<layer>, epsilon = 1.0e-5 : f32}
     : (tensor<?x32xf32>, tensor<32xf32>, tensor<32xf32>) -> tensor<?x32xf32>
  return %b, %n, %l : tensor<?x4x?x16xf32>, tensor<?x32xf32>, tensor<?x32xf32>
}
