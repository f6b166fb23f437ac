// Every verifier error of moe.sparse_moe names the operand or attribute at fault.
// RUN: moec-opt %s --split-input-file --verify-diagnostics

func.func @input_rank(%x: tensor<2x4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<2x4x64xf32> {
  // expected-error @+1 {{operand 'input' must have rank 2 ([T, H]), got [2, 4, 64]}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<2x4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<2x4x64xf32>
  return %y : tensor<2x4x64xf32>
}

// -----

func.func @fc1_hidden(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x60xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'fc1' [8, 32, 60]: reduction dim holds 60 values but operand 'input' has H = 64}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x60xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @fc2_hidden(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x32x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'fc2' [8, 32, 32]: dim 1 must be H = 64, got 32}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x32x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @expert_count(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<7x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'fc2' [7, 64, 32]: dim 0 must be E = 8, got 7}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<7x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @gated_rows(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'fc1' [8, 32, 64] has 32 rows but operand 'fc2' [8, 64, 32] implies F = 32 (activation 'swiglu' needs 2F rows)}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<swiglu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @router_columns(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'router' [64, 8]: dim 1 must be E + zero_experts = 9, got 8}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, zero_experts = 1, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @logits_tokens(%x: tensor<4x64xf32>, %r: tensor<5x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'router' [5, 8]: dim 0 must be T = 4, got 5}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, router_kind = #moe.router<logits>, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<5x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @k_too_large(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{k = 9 exceeds the 8 router columns (E + zero_experts)}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 9, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @k_zero(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{attribute 'k' failed to satisfy constraint}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 0, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @bias_shape(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %b1: tensor<8x16xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'fc1_bias' [8, 16]: dim 1 must be fc1 rows = 32, got 16}}
  %y = moe.sparse_moe %x, %r, fc1 %w1 fc1_bias %b1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x16xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @mask_shape(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>, %m: tensor<8x31xi1>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'mask' [8, 31]: dim 1 must be F = 32, got 31}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 mask %m {k = 1, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>, tensor<8x31xi1>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @predictor_needs_keep(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>,
                                %pa: tensor<8x64x4xf32>, %pb: tensor<8x4x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{the predictor ('pred_a', 'pred_b') needs attribute 'keep'}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 predictor(%pa, %pb) {k = 1, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>, tensor<8x64x4xf32>, tensor<8x4x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @predictor_rank(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>,
                          %pa: tensor<8x64x4xf32>, %pb: tensor<8x5x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'pred_b' [8, 5, 32]: dim 1 must be R = 4, got 5}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 predictor(%pa, %pb) {k = 1, keep = 4, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>, tensor<8x64x4xf32>, tensor<8x5x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @keep_too_large(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>,
                          %pa: tensor<8x64x4xf32>, %pb: tensor<8x4x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{keep = 33 exceeds the expert hidden size F = 32}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 predictor(%pa, %pb) {k = 1, keep = 33, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>, tensor<8x64x4xf32>, tensor<8x4x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @keep_without_predictor(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{attribute 'keep' needs the predictor operands 'pred_a' and 'pred_b'}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, keep = 8, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @mask_and_predictor(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>,
                              %m: tensor<8x32xi1>, %pa: tensor<8x64x4xf32>, %pb: tensor<8x4x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'mask' and the predictor ('pred_a', 'pred_b') are mutually exclusive}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 mask %m predictor(%pa, %pb) {k = 1, keep = 4, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>, tensor<8x32xi1>, tensor<8x64x4xf32>, tensor<8x4x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @groups_need_topk(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{expert_groups = 4 needs 'group_topk'}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, expert_groups = 4, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @group_score_needs_groups(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{'group_score' needs expert_groups > 1}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, group_score = #moe.group_score<max>, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @sparsemixer_needs_eps(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{gate = sparsemixer needs 'jitter_eps'}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 2, gate = #moe.gate<sparsemixer>, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @sparsemixer_no_normalize(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{gate = sparsemixer takes no selection bias, expert groups, normalize or zero experts}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 2, gate = #moe.gate<sparsemixer>, jitter_eps = 0.01 : f32, normalize = true, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @eps_needs_sparsemixer(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{'jitter_eps' needs gate = sparsemixer}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 2, jitter_eps = 0.01 : f32, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @groups_divide(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{expert_groups = 3 does not divide the 8 router columns}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, expert_groups = 3, group_topk = 1, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @groups_k(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{k = 3 exceeds the 2 experts in the chosen groups}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 3, expert_groups = 4, group_topk = 1, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @int_weights_need_quant(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x32xui8>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'fc1' holds integers ('ui8') but the op has no 'fc1_quant' attribute}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x32xui8>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @scales_shape(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x32xui8>, %s1: tensor<8x32x4xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'fc1_scales' [8, 32, 4]: dim 2 must be blocks = 2, got 4}}
  %y = moe.sparse_moe %x, %r, fc1 %w1 fc1_scales %s1, fc2 %w2 {k = 1, activation = #moe.activation<relu>, fc1_quant = #moe.weight_quant<bits = 4, block_size = 32>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x32xui8>, tensor<8x32x4xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @packed_width(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xui8>, %s1: tensor<8x32xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'fc1' [8, 32, 64]: reduction dim holds 128 values but operand 'input' has H = 64}}
  %y = moe.sparse_moe %x, %r, fc1 %w1 fc1_scales %s1, fc2 %w2 {k = 1, activation = #moe.activation<relu>, fc1_quant = #moe.weight_quant<bits = 4>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xui8>, tensor<8x32xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @quant_bits(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x32xui8>, %s1: tensor<8x32xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{#moe.weight_quant: bits must be 4 or 8, got 3}}
  %y = moe.sparse_moe %x, %r, fc1 %w1 fc1_scales %s1, fc2 %w2 {k = 1, activation = #moe.activation<relu>, fc1_quant = #moe.weight_quant<bits = 3>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x32xui8>, tensor<8x32xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @result_type(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf16> {
  // expected-error @+1 {{result element type 'f16' must match operand 'input' element type 'f32'}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf16>
  return %y : tensor<4x64xf16>
}

// -----

func.func @layout_ungated(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{gated_layout only applies to gated activations (swiglu, geglu), not 'relu'}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>, gated_layout = #moe.gated_layout<interleaved>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @bad_activation(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+2 {{expected ::moec::moe::Activation to be one of: identity, relu, gelu, silu, swiglu, geglu, gelu_tanh}}
  // expected-error @+1 {{failed to parse MoE_ActivationAttr parameter 'value'}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<tanh>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @norm_without_weight(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{norm = rms needs operand 'norm_weight'}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>, norm = #moe.norm<rms>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @norm_bias_rms(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>, %n: tensor<64xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'norm_bias' only applies to norm = layer}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 norm_weight %n norm_bias %n {k = 1, activation = #moe.activation<relu>, norm = #moe.norm<rms>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>, tensor<64xf32>, tensor<64xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @norm_weight_shape(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>, %n: tensor<32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'norm_weight' [32]: dim 0 must be H = 64, got 32}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 norm_weight %n {k = 1, activation = #moe.activation<relu>, norm = #moe.norm<layer>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>, tensor<32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @shared_gated_rows(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x64x64xf32>, %w2: tensor<8x64x32xf32>, %s1: tensor<48x64xf32>, %s2: tensor<64x48xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'shared_fc1' [48, 64]: dim 0 must be 2Fs = 96, got 48}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 shared(%s1, %s2) {k = 1, activation = #moe.activation<swiglu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x64x64xf32>, tensor<8x64x32xf32>, tensor<48x64xf32>, tensor<64x48xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @residual_shape(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x32x64xf32>, %w2: tensor<8x64x32xf32>, %res: tensor<4x32xf32>) -> tensor<4x64xf32> {
  // expected-error @+1 {{operand 'residual' [4, 32]: dim 1 must be H = 64, got 32}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 residual %res {k = 1, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>, tensor<4x32xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}

// -----

func.func @embedding_table_rank(%t: tensor<4xf32>, %ids: tensor<3xi64>) -> tensor<3x4xf32> {
  // expected-error @+1 {{operand 'table' [4] must be [V, H]}}
  %y = moe.embedding %t, %ids : (tensor<4xf32>, tensor<3xi64>) -> tensor<3x4xf32>
  return %y : tensor<3x4xf32>
}

// -----

func.func @embedding_width(%t: tensor<8x4xf32>, %ids: tensor<3xi64>) -> tensor<3x5xf32> {
  // expected-error @+1 {{result [3, 5]: last dim must be the table's H = 4}}
  %y = moe.embedding %t, %ids : (tensor<8x4xf32>, tensor<3xi64>) -> tensor<3x5xf32>
  return %y : tensor<3x5xf32>
}

// -----

func.func @embedding_index_shape(%t: tensor<8x4xf32>, %ids: tensor<2x3xi64>) -> tensor<3x2x4xf32> {
  // expected-error @+1 {{result [3, 2, 4] must keep operand 'indices'' shape [2, 3]}}
  %y = moe.embedding %t, %ids : (tensor<8x4xf32>, tensor<2x3xi64>) -> tensor<3x2x4xf32>
  return %y : tensor<3x2x4xf32>
}

// -----

func.func @linear_norm_weight(%x: tensor<3x4xf32>, %w: tensor<4x2xf32>, %nw: tensor<5xf32>) -> tensor<3x2xf32> {
  // expected-error @+1 {{operand 'norm_weight' [5] must be [K] with K = 4}}
  %y = moe.linear %x, %w norm_weight %nw {norm = #moe.norm<rms>} : (tensor<3x4xf32>, tensor<4x2xf32>, tensor<5xf32>) -> tensor<3x2xf32>
  return %y : tensor<3x2xf32>
}

// -----

func.func @linear_norm_missing(%x: tensor<3x4xf32>, %w: tensor<4x2xf32>) -> tensor<3x2xf32> {
  // expected-error @+1 {{norm = layer needs operand 'norm_weight'}}
  %y = moe.linear %x, %w {norm = #moe.norm<layer>} : (tensor<3x4xf32>, tensor<4x2xf32>) -> tensor<3x2xf32>
  return %y : tensor<3x2xf32>
}

// -----

func.func @kv_cache_update_heads(%new: tensor<1x2x3x16xf32>, %lens: tensor<1xi64>, %len: tensor<1xi64>,
                                 %past: tensor<1x4x5x16xf32>) -> tensor<1x2x8x16xf32> {
  // expected-error @+1 {{operand 'past' [1, 4, 5, 16] must be [B, H, P, D] for 'fresh' [1, 2, 3, 16]}}
  %p = moe.kv_cache_update %new, %lens, %len past %past
     : (tensor<1x2x3x16xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1x4x5x16xf32>) -> tensor<1x2x8x16xf32>
  return %p : tensor<1x2x8x16xf32>
}

// -----

func.func @attention_sinks_per_head(%q: tensor<1x4x3x8xf32>, %k: tensor<1x2x5x8xf32>, %v: tensor<1x2x5x8xf32>,
                                    %s: tensor<2xf32>) -> tensor<1x4x3x8xf32> {
  // expected-error @+1 {{operand 'sinks' must be [4] (one per query head), got [2]}}
  %o = moe.attention %q, %k, %v sinks %s {scale = 1.0 : f32}
     : (tensor<1x4x3x8xf32>, tensor<1x2x5x8xf32>, tensor<1x2x5x8xf32>, tensor<2xf32>) -> tensor<1x4x3x8xf32>
  return %o : tensor<1x4x3x8xf32>
}

// -----

func.func @attention_softcap_negative(%q: tensor<1x4x3x8xf32>, %k: tensor<1x2x5x8xf32>, %v: tensor<1x2x5x8xf32>) -> tensor<1x4x3x8xf32> {
  // expected-error @+1 {{softcap must be >= 0 (0: none), got -1}}
  %o = moe.attention %q, %k, %v {scale = 1.0 : f32, softcap = -1.0 : f32}
     : (tensor<1x4x3x8xf32>, tensor<1x2x5x8xf32>, tensor<1x2x5x8xf32>) -> tensor<1x4x3x8xf32>
  return %o : tensor<1x4x3x8xf32>
}

// -----

func.func @attention_bf16_odd_dim(%q: tensor<1x4x3x5xf32>, %k: tensor<1x2x5x5xf32>, %v: tensor<1x2x5x8xf32>) -> tensor<1x4x3x8xf32> {
  // expected-error @+1 {{bf16_activations multiplies pairs of key dims: key head dim 5 is odd}}
  %o = moe.attention %q, %k, %v {scale = 1.0 : f32, bf16_activations}
     : (tensor<1x4x3x5xf32>, tensor<1x2x5x5xf32>, tensor<1x2x5x8xf32>) -> tensor<1x4x3x8xf32>
  return %o : tensor<1x4x3x8xf32>
}

// -----

func.func @rotary_dim_odd(%x: tensor<1x4x?x16xf32>, %c: tensor<1x?x7xf32>) -> tensor<1x4x?x16xf32> {
  // expected-error @+1 {{rotary_dim 7 must be even, positive and at most the head dim 16}}
  %y = moe.rotary %x, %c, %c {rotary_dim = 7 : i64} : (tensor<1x4x?x16xf32>, tensor<1x?x7xf32>, tensor<1x?x7xf32>) -> tensor<1x4x?x16xf32>
  return %y : tensor<1x4x?x16xf32>
}

// -----

func.func @rotary_deinterleave_half_split(%x: tensor<1x4x?x16xf32>, %c: tensor<1x?x8xf32>) -> tensor<1x4x?x16xf32> {
  // expected-error @+1 {{deinterleave needs interleaved pairs}}
  %y = moe.rotary %x, %c, %c {rotary_dim = 16 : i64, deinterleave} : (tensor<1x4x?x16xf32>, tensor<1x?x8xf32>, tensor<1x?x8xf32>) -> tensor<1x4x?x16xf32>
  return %y : tensor<1x4x?x16xf32>
}

// -----

func.func @rotary_table(%x: tensor<1x4x?x16xf32>, %c: tensor<1x?x6xf32>) -> tensor<1x4x?x16xf32> {
  // expected-error @+1 {{operand 'cos' [1, ?, 6] must be [1 or B, S, 16 or 8] for input [1, 4, ?, 16] (S on axis 2)}}
  %y = moe.rotary %x, %c, %c {rotary_dim = 16 : i64} : (tensor<1x4x?x16xf32>, tensor<1x?x6xf32>, tensor<1x?x6xf32>) -> tensor<1x4x?x16xf32>
  return %y : tensor<1x4x?x16xf32>
}

// -----

func.func @rotary_transpose(%x: tensor<1x3x4x16xf32>, %c: tensor<1x3x16xf32>) -> tensor<1x3x4x16xf32> {
  // expected-error @+1 {{result [1, 3, 4, 16] must be the input [1, 3, 4, 16] with axes 1 and 2 swapped}}
  %y = moe.rotary %x, %c, %c {rotary_dim = 16 : i64, seq_axis = 1 : i64, transpose} : (tensor<1x3x4x16xf32>, tensor<1x3x16xf32>, tensor<1x3x16xf32>) -> tensor<1x3x4x16xf32>
  return %y : tensor<1x3x4x16xf32>
}

// -----

func.func @norm_weight(%x: tensor<?x32xf32>, %w: tensor<16xf32>) -> tensor<?x32xf32> {
  // expected-error @+1 {{operand 'weight' must be [32], got [16]}}
  %y = moe.norm %x, %w {kind = #moe.norm<rms>, epsilon = 1.0e-6 : f32} : (tensor<?x32xf32>, tensor<16xf32>) -> tensor<?x32xf32>
  return %y : tensor<?x32xf32>
}

// -----

func.func @norm_bias_rms(%x: tensor<?x32xf32>, %w: tensor<32xf32>) -> tensor<?x32xf32> {
  // expected-error @+1 {{operand 'bias' needs kind layer}}
  %y = moe.norm %x, %w bias %w {kind = #moe.norm<rms>, epsilon = 1.0e-6 : f32} : (tensor<?x32xf32>, tensor<32xf32>, tensor<32xf32>) -> tensor<?x32xf32>
  return %y : tensor<?x32xf32>
}
