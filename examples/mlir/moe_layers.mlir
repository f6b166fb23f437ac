// Two MoE layers as the frontend will import them, used by `make demo`.
// Layer 1 is Mixtral-shaped (softmax top-2, renormalised, SwiGLU) at a tenth of the width, with an
// all-zero router bias and an all-ones mask that canonicalisation removes. Layer 2 is ZAYA1-shaped
// (16 experts + 1 skip expert, top-1) with a static dim mask keeping 4 of 16 hidden dims.
func.func @mixtral_like(%x: tensor<?x409xf32>, %router: tensor<409x8xf32>,
                        %fc1: tensor<8x2866x409xbf16>, %fc2: tensor<8x409x1433xbf16>) -> tensor<?x409xf32> {
  %zero_bias = arith.constant dense<0.0> : tensor<8xf32>
  %keep_all = arith.constant dense<true> : tensor<8x1433xi1>
  %y = moe.sparse_moe %x, %router router_bias %zero_bias, fc1 %fc1, fc2 %fc2 mask %keep_all
         {k = 2, normalize = true, activation = #moe.activation<swiglu>}
       : (tensor<?x409xf32>, tensor<409x8xf32>, tensor<8xf32>, tensor<8x2866x409xbf16>,
          tensor<8x409x1433xbf16>, tensor<8x1433xi1>) -> tensor<?x409xf32>
  return %y : tensor<?x409xf32>
}

func.func @zaya_like(%x: tensor<?x64xf32>, %logits: tensor<?x17xf32>,
                     %fc1: tensor<16x32x64xf32>, %fc2: tensor<16x64x16xf32>) -> tensor<?x64xf32> {
  // Expert e keeps hidden dims e..e+3 (mod 16): a static learned mask, 4 of 16 dims.
  %masks = arith.constant dense<[
    [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1],
    [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
    [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
    [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]]> : tensor<16x16xi8>
  %y = moe.sparse_moe %x, %logits, fc1 %fc1, fc2 %fc2 mask %masks
         {k = 1, zero_experts = 1, router_kind = #moe.router<logits>, activation = #moe.activation<swiglu>}
       : (tensor<?x64xf32>, tensor<?x17xf32>, tensor<16x32x64xf32>, tensor<16x64x16xf32>, tensor<16x16xi8>)
         -> tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}
