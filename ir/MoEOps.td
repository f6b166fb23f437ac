//===- MoEOps.td - moe dialect ops -------------------------*- tablegen -*-===//

#ifndef MOEC_IR_MOEOPS_TD
#define MOEC_IR_MOEOPS_TD

include "ir/MoEBase.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "mlir/IR/OpBase.td"

class MoE_Op<string mnemonic, list<Trait> traits = []> : Op<MoE_Dialect, mnemonic, traits>;

def MoE_FloatTensor : RankedTensorOf<[F32, F16, BF16]>;
def MoE_WeightTensor : RankedTensorOf<[F32, F16, BF16, I8, UI8]>;
def MoE_MaskTensor : RankedTensorOf<[I1, I8, UI8]>;

def MoE_SparseMoEOp : MoE_Op<"sparse_moe", [Pure, AttrSizedOperandSegments]> {
  let summary = "a whole sparse Mixture-of-Experts layer: routing, dim mask, expert FFN and combine";
  let description = [{
    Computes, for every token `t` of `input` (`[T, H]`):

    ```
    logits[t]  = router_kind == linear ? input[t] x router (+ router_bias) : router[t]         // [N]
    scores[t]  = gate(logits[t])                     // softmax over all N, elementwise sigmoid, or the
                                                     // logits as they are (identity: weights given)
    chosen(t)  = the k indices with the largest scores[t] + selection_bias (ties: lower index); with
                 `expert_groups` > 1 the N columns form equal consecutive groups, each scored by the sum of
                 its two largest biased scores (`group_score = top2_sum`) or by its largest one (`max`), and
                 only the best `group_topk` groups compete (ties: lower group)
    w[t, e]    = scores[t, e] for e in chosen(t); divided by their sum when `normalize`; times `scale`
    routed[t]  = sum over e in chosen(t), e < E of
                 w[t, e] * (fc2[e][:, D_e(t)] x act(fc1[e][D_e(t), :] x input[t] + fc1_bias[e]) + fc2_bias[e])
    ```

    With `gate = sparsemixer` (PhiMoE's inference routing) the slots are filled one at a time from the
    logits `s = logits[t]`: slot j takes `c_j`, the lowest index of the largest `s` among the experts no earlier
    slot took (`m = s[c_j]`), with the weight of a softmax over the experts still free whose logit is close
    enough to `m`: `w[t, c_j] = 1 / sum over free n with not((m - s[n]) / max(|s[n]|, m) > 2 jitter_eps) of
    exp(s[n] - m)`, times `scale` (no selection bias, groups, renormalisation or zero experts).

    where `N = E + zero_experts`: the last `zero_experts` router columns are experts whose output is zero
    (ZAYA1's skip class, MoE++'s zero experts). They take a routing slot and a share of the weight, but read no
    weights. `D_e(t)` is the set of hidden dims of expert `e` that are computed: all `F` dims; or, with a
    static `mask` (`[E, F]`, nonzero = keep), the masked-in dims; or, with a low-rank predictor
    (`pred_a [E, H, R]`, `pred_b [E, R, F]`), the `keep` dims with the largest `(input[t] x pred_a[e]) x
    pred_b[e]` (ties: lower index).

    Gated activations (`swiglu`, `geglu`) read `2F` rows of `fc1` per expert, a gate `g` and an up
    projection `u` per hidden dim, laid out by `gated_layout` (`block`: gate rows first; `interleaved`:
    even rows gate, odd rows up). With `activation_limit` set, `g = min(g, limit)` and
    `u = clamp(u, -limit, limit)` first. Then `swiglu: g * sigmoid(alpha * g) * (u + beta)` and
    `geglu: gelu(g) * (u + beta)`, with `alpha = activation_alpha`, `beta = activation_beta`.
    Ungated activations: `identity`, `relu`, `gelu` (erf form: `0.5 a (1 + erf(a / sqrt 2))`), `gelu_tanh`
    (`0.5 a (1 + tanh(sqrt(2 / pi) (a + 0.044715 a^3)))`, which ONNX Runtime's MoE computes for "gelu"),
    `silu`.

    Three optional parts around the routed experts let one op be the whole MoE sub-block of a transformer
    layer, which codegen turns into one dispatch:

    ```
    x          = norm == none ? input : norm(input)      // applied before everything above; `input[t]`
                                                         // above means x[t]
    rms:         x[t] = input[t] / sqrt(mean(input[t]^2) + norm_epsilon) * norm_weight
    layer:       x[t] = (input[t] - mean) / sqrt(var(input[t]) + norm_epsilon) * norm_weight (+ norm_bias)
    shared[t]  = shared_fc2 x act(shared_fc1 x x[t])     // an always-active expert with weight 1, same
                                                         // activation and gated layout as the routed ones
                 times sigmoid(x[t] . shared_gate) when `shared_gate` (`[H]`) is given (Qwen2-MoE)
    output[t]  = routed[t] + shared[t] + residual[t]    // the op's result
    ```

    `shared_fc1` is `[Fs, H]` (`[2Fs, H]` gated) and `shared_fc2` `[H, Fs]`; several shared experts are one
    with their hidden dims concatenated. `residual` (`[T, H]`) is usually the layer's pre-norm input.

    Weights may be weight-only quantised (`fc1_quant`/`fc2_quant`, see `#moe.weight_quant`); then `fc1`/`fc2`
    hold packed integers and `fc1_scales`/`fc2_scales` their scales. Accumulation is in f32.
    Float expert weights (routed and shared) are stored in the artifact as `storage` says (set by
    `moe-set-weight-storage`): `fp32`, `bf16` / `fp16` rounded to nearest even, or `int8` / `int4`
    quantised symmetrically with one scale per block of 32 along each row of `fc1` and each column
    of `fc2`, stored as f16 (`MOERT_QSCALE_BYTES`: the scale `max|w| / qmax` rounded to f16, the codes
    rounded against it). `storage` is `fp32` on layers whose weights arrive quantised (their scales stay f32).
    With `int8_activations` (set by `moe-set-weight-storage`, `moec --activations=int8`), when the int8/int4
    `fc1` has blocks of a multiple of 32 columns and `H` is a multiple of 64, an expert's tokens are first
    rounded to int8 per block of 32 columns (`q = round-half-even(x * 127 / max|x|)`) and its `fc1` rows are
    integer dot products with them, as ggml multiplies Q8_0 activations by Q4_0 / Q8_0 weights; where `fc2`
    can be stored as linear-layer panels on a CPU-only target (`H` a multiple of 16, `F` and the shared
    expert's dims multiples of 32), its input (routing weight x activation) is rounded the same way per 32 dims
    and `fc2` multiplies integers too, in every expert whatever its token count; otherwise only experts
    computing fewer than 16 tokens in a call round their tokens. Outputs move by about 1e-2 relative; without
    it every product takes the input as it is. With `bf16_activations` (`moec --activations=bf16`) and `bf16`
    storage, where the experts are stored as linear-layer panels (a CPU-only target), experts computing 16
    tokens or more in a call round their tokens and `fc2`'s inputs (routing weight x activation) to bf16
    (round to nearest even) and multiply bf16 pairs with f32 accumulation, as AVX512-BF16's `vdpbf16ps`
    does (each input moves by at most 2^-9 relative); smaller tiles take the inputs as they are.

    Example, a Mixtral-style layer (8 experts, top-2, renormalised, SwiGLU) with a dynamic token count:

    ```mlir
    %y = moe.sparse_moe %x, %router_w, fc1 %w1, fc2 %w2 {
           k = 2, router_kind = #moe.router<linear>, gate = #moe.gate<softmax>, normalize = true,
           activation = #moe.activation<swiglu>}
         : (tensor<?x4096xf32>, tensor<4096x8xf32>, tensor<8x28672x4096xf32>, tensor<8x4096x14336xf32>)
           -> tensor<?x4096xf32>
    ```
  }];

  let arguments = (ins
    MoE_FloatTensor:$input,
    MoE_FloatTensor:$router,
    Optional<MoE_FloatTensor>:$router_bias,
    Optional<MoE_FloatTensor>:$selection_bias,
    MoE_WeightTensor:$fc1,
    Optional<MoE_FloatTensor>:$fc1_bias,
    Optional<MoE_FloatTensor>:$fc1_scales,
    MoE_WeightTensor:$fc2,
    Optional<MoE_FloatTensor>:$fc2_bias,
    Optional<MoE_FloatTensor>:$fc2_scales,
    Optional<MoE_MaskTensor>:$mask,
    Optional<MoE_FloatTensor>:$pred_a,
    Optional<MoE_FloatTensor>:$pred_b,
    Optional<MoE_FloatTensor>:$norm_weight,
    Optional<MoE_FloatTensor>:$norm_bias,
    Optional<MoE_FloatTensor>:$shared_fc1,
    Optional<MoE_FloatTensor>:$shared_fc2,
    Optional<MoE_FloatTensor>:$shared_gate,
    Optional<MoE_FloatTensor>:$residual,

    ConfinedAttr<I64Attr, [IntMinValue<1>]>:$k,
    DefaultValuedAttr<MoE_RouterKindAttr, "RouterKind::linear">:$router_kind,
    DefaultValuedAttr<MoE_GateFuncAttr, "GateFunc::softmax">:$gate,
    DefaultValuedAttr<BoolAttr, "false">:$normalize,
    DefaultValuedAttr<F32Attr, "1.0f">:$scale,
    DefaultValuedAttr<ConfinedAttr<I64Attr, [IntNonNegative]>, "0">:$zero_experts,
    DefaultValuedAttr<ConfinedAttr<I64Attr, [IntMinValue<1>]>, "1">:$expert_groups,
    OptionalAttr<ConfinedAttr<I64Attr, [IntMinValue<1>]>>:$group_topk,
    DefaultValuedAttr<MoE_GroupScoreAttr, "GroupScore::top2_sum">:$group_score,
    MoE_ActivationAttr:$activation,
    DefaultValuedAttr<MoE_GatedLayoutAttr, "GatedLayout::block">:$gated_layout,
    DefaultValuedAttr<F32Attr, "1.0f">:$activation_alpha,
    DefaultValuedAttr<F32Attr, "0.0f">:$activation_beta,
    OptionalAttr<F32Attr>:$activation_limit,
    OptionalAttr<F32Attr>:$jitter_eps,
    OptionalAttr<ConfinedAttr<I64Attr, [IntMinValue<1>]>>:$keep,
    OptionalAttr<MoE_WeightQuantAttr>:$fc1_quant,
    OptionalAttr<MoE_WeightQuantAttr>:$fc2_quant,
    DefaultValuedAttr<MoE_NormAttr, "NormKind::none">:$norm,
    DefaultValuedAttr<F32Attr, "1.0e-5f">:$norm_epsilon,
    DefaultValuedAttr<MoE_StorageAttr, "Storage::fp32">:$storage,
    UnitAttr:$int8_activations,
    UnitAttr:$bf16_activations
  );
  let results = (outs MoE_FloatTensor:$output);

  let assemblyFormat = [{
    $input `,` $router
    (`router_bias` $router_bias^)? (`selection_bias` $selection_bias^)?
    `,` `fc1` $fc1 (`fc1_bias` $fc1_bias^)? (`fc1_scales` $fc1_scales^)?
    `,` `fc2` $fc2 (`fc2_bias` $fc2_bias^)? (`fc2_scales` $fc2_scales^)?
    (`mask` $mask^)? (`predictor` `(` $pred_a^ `,` $pred_b `)`)?
    (`norm_weight` $norm_weight^)? (`norm_bias` $norm_bias^)?
    (`shared` `(` $shared_fc1^ `,` $shared_fc2 `)`)? (`shared_gate` $shared_gate^)?
    (`residual` $residual^)?
    attr-dict `:` functional-type(operands, results)
  }];

  let hasVerifier = 1;
  let hasCanonicalizer = 1;

  let extraClassDeclaration = [{
    /// True for activations that read a gate and an up row per hidden dim (fc1 has 2F rows).
    bool isGated() { return getActivation() == Activation::swiglu || getActivation() == Activation::geglu; }
    /// Number of real (weight-carrying) experts E.
    int64_t getNumExperts() { return getFc1().getType().getDimSize(0); }
    /// Number of router columns N = E + zero_experts.
    int64_t getNumRouterColumns() { return getNumExperts() + getZeroExperts(); }
    /// Expert hidden size F (dynamic if unknown).
    int64_t getHiddenDim();
    /// Hidden dims each token computes per chosen expert: keep (predictor), F, or the largest masked-in
    /// count when the mask is a constant.
    int64_t getActiveHiddenDim();
  }];
}

def MoE_LinearOp : MoE_Op<"linear", [Pure, AttrSizedOperandSegments]> {
  let summary = "a linear layer with a constant weight: one dispatch (GEMV in decode, GEMM in prefill)";
  let description = [{
    For every row `x` of `input` (`[..., K]`, leading dims flattened into M rows):

    ```
    output[m] = norm(input[m]) x W (+ bias) (+ residual[m])    // output: [..., N]
    ```

    `norm` is the identity unless `norm` says (the norm in front of the layer, folded in by
    `moe-raise-linear` when its output feeds only linear layers; `norm_weight`, `norm_bias` are `[K]`):

    ```
    rms:    x / sqrt(mean(x^2) + norm_epsilon) * norm_weight
    layer:  (x - mean(x)) / sqrt(var(x) + norm_epsilon) * norm_weight (+ norm_bias)
    ```

    `W` is the `weight` operand. Without `weight_quant` it is a constant float `[K, N]` matrix (the ONNX
    `MatMul` operand order), stored in the artifact as `storage` says: `fp32`; `bf16` / `fp16` rounded to
    nearest even; `int8` / `int4` quantised symmetrically per output column and block of `block_size` input
    features (`scale = max |w| / 127` or `/ 7`, codes rounded half to even). With `weight_quant` the weight
    arrives already quantised, as ONNX Runtime's `MatMulNBits` stores it, and is kept as is: `weight` holds
    `[N, ceil(K / block), block * bits / 8]` unsigned codes (low nibble first for 4 bits), `scales`
    `N * ceil(K / block)` f32 values, `zero_points` the same count of f32 values or, as `ui8`, packed codes
    (`bits` wide, low first, each column's row padded to whole bytes); without zero points the zero point is
    `2^(bits - 1)`. Then `w = (code - zero_point) * scale` and `storage` must be `int8`/`int4` matching `bits`.

    Accumulation is f32 whatever the storage. `bias` is `[N]`; `residual` has the output's shape and is added
    last (a residual connection folded into the layer). Raised from `MatMul` / `Gemm` with a constant weight by
    `moe-raise-linear`; `storage` is set by `moe-set-weight-storage`.

    With `int8_activations` (`moec --activations=int8`) and `int8` / `int4` storage, each input row is first
    rounded to int8 per block of 32 features (or of `block_size` when that is not a multiple of 32):
    `q = round-half-even(x * 127 / max|x|)`, and the layer multiplies integers, as ggml's Q8_0 x Q4_0 dot
    products do (outputs move by about 1e-2 relative). With `bf16_activations` (`moec --activations=bf16`)
    and `bf16` storage, calls of more than 6 rows (prefill) round each input to bf16 (round to nearest even:
    at most 2^-9 relative) and multiply bf16 pairs with f32 accumulation, as AVX512-BF16's `vdpbf16ps` does;
    calls of up to 6 rows (decode) take the inputs as they are. Without either, inputs are multiplied as they
    are.

    Several results (at most 4, `MOERT_LIN_MAX_OUTPUTS`) split the `[..., N]` result along its last dim, in
    order: result `j` holds columns `[N_0 + ... + N_{j-1}, ... + N_j)` (`[..., N_j]`). `moe-raise-linear`
    merges the layers that read one input with one norm (Q, K and V projections; gate and up) into one op
    this way, their weights concatenated along N, so the input is read and normalised once. A `residual`
    needs a single result.
  }];

  let arguments = (ins
    MoE_FloatTensor:$input,
    MoE_WeightTensor:$weight,
    Optional<MoE_FloatTensor>:$scales,
    Optional<RankedTensorOf<[F32, UI8, I8]>>:$zero_points,
    Optional<MoE_FloatTensor>:$bias,
    Optional<MoE_FloatTensor>:$residual,
    Optional<MoE_FloatTensor>:$norm_weight,
    Optional<MoE_FloatTensor>:$norm_bias,
    DefaultValuedAttr<MoE_StorageAttr, "Storage::fp32">:$storage,
    DefaultValuedAttr<ConfinedAttr<I64Attr, [IntMinValue<1>]>, "32">:$block_size,
    OptionalAttr<MoE_WeightQuantAttr>:$weight_quant,
    UnitAttr:$int8_activations,
    DefaultValuedAttr<MoE_NormAttr, "NormKind::none">:$norm,
    DefaultValuedAttr<F32Attr, "1.0e-5f">:$norm_epsilon,
    UnitAttr:$bf16_activations
  );
  let results = (outs Variadic<MoE_FloatTensor>:$outputs);

  let assemblyFormat = [{
    $input `,` $weight (`scales` $scales^)? (`zero_points` $zero_points^)? (`bias` $bias^)?
    (`residual` $residual^)? (`norm_weight` $norm_weight^)? (`norm_bias` $norm_bias^)?
    attr-dict `:` functional-type(operands, results)
  }];

  let hasVerifier = 1;

  let extraClassDeclaration = [{
    /// Input features K (the input's last dim).
    int64_t getInFeatures();
    /// Output features N (every result's together).
    int64_t getOutFeatures();
    /// The first (or only) result.
    mlir::TypedValue<mlir::RankedTensorType> getOutput() {
      return llvm::cast<mlir::TypedValue<mlir::RankedTensorType>>(getOutputs().front());
    }
  }];
}

def MoE_KvCacheUpdateOp : MoE_Op<"kv_cache_update", [Pure]> {
  let summary = "a KV cache with each sequence's new positions written after its past";
  let description = [{
    With `fresh` `[B, H, S, D]` (the new keys or values), `past_lengths` `[B]` (i64: how many positions of
    sequence `b`'s past are filled), `length` (an i64 `[1]`: T) and an optional `past` `[B, H, P, D]`
    (absent: P = 0):

    ```
    present[b, h, j, :] = past[b, h, j, :]                  j < past_lengths[b]
                        = fresh[b, h, j - past_lengths[b], :] j < past_lengths[b] + S
                        = 0                                  otherwise              // [B, H, T, D]
    ```

    It is an error at run time for `past_lengths[b]` to be negative or above P, or for `past_lengths[b] + S`
    to exceed T. This is the cache ONNX Runtime's `GroupQueryAttention` keeps (a past of the filled length or
    a fixed-size buffer), imported from it; a session runs it in place when every past length is P and T is
    P + S (the caches appended where they are).
  }];

  let arguments = (ins
    F32Tensor:$fresh,
    RankedTensorOf<[I64]>:$past_lengths,
    RankedTensorOf<[I64]>:$length,
    Optional<F32Tensor>:$past
  );
  let results = (outs F32Tensor:$present);

  let assemblyFormat = [{
    $fresh `,` $past_lengths `,` $length (`past` $past^)? attr-dict `:` functional-type(operands, results)
  }];

  let hasVerifier = 1;
}

def MoE_NormOp : MoE_Op<"norm", [Pure]> {
  let summary = "RMSNorm or LayerNorm over the last axis: one pass, all threads";
  let description = [{
    With `input` `[..., D]`, `weight` `[D]` and an optional `bias` `[D]` (LayerNorm only), each row `x` of
    `D` values becomes

    ```
    rms:    x / sqrt(mean(x^2) + epsilon) * weight
    layer:  (x - mean(x)) / sqrt(mean((x - mean(x))^2) + epsilon) * weight (+ bias)
    ```

    Raised by `moe-raise-norm` from the norms `moe-fuse-norm-residual` did not move into a MoE layer
    (transformers' RMSNorm as exported, `w * (x * Reciprocal(Sqrt(ReduceMean(x^2) + eps)))`, and ONNX
    `LayerNormalization` over the last axis); libmoert runs it as its `moec.Norm` step (inputs in
    `MOERT_NORM_*` order, `kernels/cpu/moert_kernel_abi.h`), rows split across the threads.
  }];

  let arguments = (ins
    F32Tensor:$input,
    F32Tensor:$weight,
    Optional<F32Tensor>:$bias,
    MoE_NormAttr:$kind,
    F32Attr:$epsilon
  );
  let results = (outs F32Tensor:$output);

  let assemblyFormat = [{
    $input `,` $weight (`bias` $bias^)? attr-dict `:` functional-type(operands, results)
  }];

  let hasVerifier = 1;
}

def MoE_RotaryOp : MoE_Op<"rotary", [Pure]> {
  let summary = "rotary position embedding of query or key heads, with an optional RMSNorm before it";
  let description = [{
    With `input` `[B, A1, A2, D]` whose axis `seq_axis` (1 or 2) holds the S positions and the other axis the
    heads, `cos` and `sin` `[Bc, S, W]` (`Bc` 1 or B; `W` = R = `rotary_dim` values per position, or R / 2,
    one per rotated pair) and R even and at most D: each head's row `x` at batch `b` and position `s` becomes

    ```
    x   = x / sqrt(mean(x^2) + norm_epsilon) * norm_weight     (only with norm_weight [D]: q/k RMSNorm)
    c_i = cos[b, s, i] (W == R), cos[b, s, i mod R/2] (W == R/2, half-split), cos[b, s, i / 2] (W == R/2,
          interleaved); s_i likewise from sin
    half-split (h = R / 2):  y_i = x_i c_i - x_{i+h} s_i  (i < h)       y_i = x_i c_i + x_{i-h} s_i  (h <= i < R)
    interleaved:             y_2j = x_2j c_2j - x_2j+1 s_2j            y_2j+1 = x_2j+1 c_2j+1 + x_2j s_2j+1
    deinterleave (with interleaved): the interleaved result's even dims first, then its odd dims:
                             y'_j = y_2j, y'_h+j = y_2j+1                (j < h)
    y_i = x_i                (R <= i < D: partial rotary)
    ```

    The output has the input's layout, or with `transpose` its axes 1 and 2 swapped (`[B, S, H, D]` in,
    `[B, H, S, D]` out: the `Transpose` exporters write before the rotation, folded in). Raised by
    `moe-raise-rotary` from transformers' `apply_rotary_pos_emb` as exported
    (`q * cos + Concat(-q[..., h:R], q[..., :h]) * sin`, partial rotary concatenating the untouched dims),
    folding the `Transpose` and the q/k RMSNorm before it, and from the forms that rotate two halves taken
    apart (`Concat(a * cos - b * sin, b * cos + a * sin)`: GPT-OSS's first / second halves, DeepSeek's MLA even /
    odd dims, which `deinterleave` writes as halves) and Ernie-4.5's interleaved pairs
    (`x * cos + Reshape(Concat(-x[..., 1::2, None], x[..., 0::2, None])) * sin`); imported from ONNX Runtime's `GroupQueryAttention`
    and `RotaryEmbedding`. It is an error at run time for `cos`/`sin` not to have S positions or a batch of
    1 or B. libmoert runs it as its `moec.Rotary` step (inputs in `MOERT_ROTARY_*` order,
    `kernels/cpu/moert_kernel_abi.h`), one pass over the input on all threads.
  }];

  let arguments = (ins
    F32Tensor:$input,
    F32Tensor:$cos,
    F32Tensor:$sin,
    Optional<F32Tensor>:$norm_weight,
    I64Attr:$rotary_dim,
    UnitAttr:$interleaved,
    DefaultValuedAttr<I64Attr, "2">:$seq_axis,
    UnitAttr:$transpose,
    DefaultValuedAttr<F32Attr, "1.0e-6f">:$norm_epsilon,
    UnitAttr:$deinterleave
  );
  let results = (outs F32Tensor:$output);

  let assemblyFormat = [{
    $input `,` $cos `,` $sin (`norm` $norm_weight^)? attr-dict `:` functional-type(operands, results)
  }];

  let hasVerifier = 1;
}

def MoE_AttentionOp : MoE_Op<"attention", [Pure, AttrSizedOperandSegments]> {
  let summary = "scaled dot-product attention over grouped key/value heads: one dispatch";
  let description = [{
    With `query` `[B, Hq, S, Dk]`, `key` `[B, Hkv, T, Dk]`, `value` `[B, Hkv, T, Dv]` (`Hq` a multiple of
    `Hkv`: query head `h` reads key/value head `h / (Hq / Hkv)`, as transformers' `repeat_kv` lays them out)
    and an optional additive `mask` broadcastable to `[B, Hq, S, T]` (each dim 1 or full):

    ```
    score[b, h, s, t]  = scale * (query[b, h, s] . key[b, h / G, t]) + mask[b, h, s, t]
    output[b, h, s, :] = sum_t softmax_t(score[b, h, s, :]) * value[b, h / G, t, :]   // [B, Hq, S, Dv]
    ```

    `Hq`, `Hkv`, `Dk` and `Dv` are static; `B`, `S` and `T` may be dynamic. A row whose scores are all
    `-inf` has no softmax (ONNX `Softmax` gives NaN): with `nan_to_zero` its output is 0 (the
    `Where(IsNaN(p), 0, p)` transformers' SDPA export writes after the softmax), else NaN. With `sinks`
    `[Hq]` (attention sinks, GPT-OSS) each query head's softmax has one more term in its denominator,
    `exp(sinks[h])`, that weighs no value: `softmax_t` above becomes
    `exp(score[t]) / (exp(sinks[h]) + sum_t' exp(score[t']))` (a row with every score `-inf` then gives 0).
    With `softcap` c > 0 (logit softcapping: Grok-1, Gemma 2, ONNX Runtime's `softcap`) the scaled dot product
    becomes `c * tanh(scale * q . k / c)` before the mask is added.
    The kernel runs
    the softmax online over blocks of keys (no `S x T` score matrix in memory) and skips a block of keys for
    a block of query rows when the mask puts every score of it at or below -1e30 and every row has some key
    above that (those terms are exactly 0 after the exponential). Raised by `moe-raise-attention` from the
    `MatMul -> (Mul | Div scale) -> (Add mask) -> Softmax -> (Where IsNaN) -> MatMul` chain exporters write,
    with sinks from GPT-OSS's `Concat(scores, sinks) -> (Sub max) -> Softmax -> Slice(all but the last)` and
    softcap from eager attention's `Div c -> Tanh -> Mul c` before the mask.

    With `transpose_output` the output is `[B, S, Hq, Dv]` (`output[b, s, h, :]`): the
    `Transpose(perm [0, 2, 1, 3])` exporters write after attention (before the `Reshape` to `[B, S, Hq Dv]`
    that feeds the output projection), folded in by `moe-raise-attention`; the kernels write each row there.

    With `bf16_activations` (`moec --activations=bf16`), a CPU run over bf16 key/value caches (a session's
    `cache_dtype=bf16`) rounds each query to bf16 (nearest even, `moert_f32_to_bf16`) for the scores and each
    softmax term `exp(score - running max)` to bf16 for the sum of values, and sums bf16 x bf16 products in f32
    (AVX512-BF16's `vdpbf16ps`); the softmax's denominator keeps the terms unrounded. An output then moves by
    at most 2^-9 of the largest value magnitude beyond what the rounded queries give. Other caches, and the
    GPU kernels, compute as without it. Needs an even `Dk`.
  }];

  let arguments = (ins
    F32Tensor:$query,
    F32Tensor:$key,
    F32Tensor:$value,
    Optional<F32Tensor>:$mask,
    Optional<F32Tensor>:$sinks,
    F32Attr:$scale,
    UnitAttr:$nan_to_zero,
    DefaultValuedAttr<F32Attr, "0.0f">:$softcap,
    UnitAttr:$bf16_activations,
    UnitAttr:$transpose_output
  );
  let results = (outs F32Tensor:$output);

  let assemblyFormat = [{
    $query `,` $key `,` $value (`mask` $mask^)? (`sinks` $sinks^)? attr-dict `:` functional-type(operands, results)
  }];

  let hasVerifier = 1;
}

def MoE_EmbeddingOp : MoE_Op<"embedding", [Pure]> {
  let summary = "rows of a constant table picked by index (a token embedding), read in the table's storage";
  let description = [{
    For every index `i` of `indices` (any shape, integers; negative ones count from the end, as ONNX
    `Gather` does; out of `[-V, V)` is a run-time error):

    ```
    output[..., :] = table[i]          // table: [V, H] constant, output: indices' shape ++ [H]
    ```

    The table is stored in the artifact as `storage` says (`fp32`; `bf16` / `fp16` rounded to nearest even;
    `int8` / `int4` quantised symmetrically per row and block of `block_size` columns, as expert `fc1` rows
    are: `kernels/cpu/moert_kernel_abi.h`, `MOERT_EMBED_*`) and only the rows asked for are read and widened
    to f32. Raised from `Gather(table, indices, axis = 0)` with a constant 2-D f32 table by
    `moe-raise-linear`; `storage` is set by `moe-set-weight-storage` (`--embedding-weights`).
  }];

  let arguments = (ins
    RankedTensorOf<[F32]>:$table,
    RankedTensorOf<[I64, I32]>:$indices,
    DefaultValuedAttr<MoE_StorageAttr, "Storage::fp32">:$storage,
    DefaultValuedAttr<ConfinedAttr<I64Attr, [IntMinValue<1>]>, "32">:$block_size
  );
  let results = (outs RankedTensorOf<[F32]>:$output);

  let assemblyFormat = [{
    $table `,` $indices attr-dict `:` functional-type(operands, results)
  }];

  let hasVerifier = 1;
}

#endif // MOEC_IR_MOEOPS_TD
