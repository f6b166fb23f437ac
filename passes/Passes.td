//===- Passes.td - moec passes -----------------------------*- tablegen -*-===//
//
// Every moec pass is declared here; flags are `moe-<stage>-<what>`. docs/ARCHITECTURE.md says where each
// runs in the compile pipeline.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PASSES_TD
#define MOEC_PASSES_TD

include "mlir/Pass/PassBase.td"

def MoEPrintCostPass : Pass<"moe-print-cost"> {
  let summary = "Report each MoE layer's shape, active hidden dims and per-token cost as remarks";
  let description = [{
    Emits one remark per `moe.sparse_moe` op with its expert count, top-k, sizes and the work one token
    causes: FLOPs (router, predictor, the chosen experts' FFNs) and bytes of expert weights read, counting
    only the hidden dims a token computes (`keep` with a predictor, the largest masked-in count with a
    constant mask, all F otherwise). Bytes count the stored element width (packed bits plus scales for
    quantised weights, the `storage` attribute's width plus its block scales for float ones). Zero experts
    are counted as real ones, so the numbers are upper bounds. Each `moe.linear` gets a remark too: FLOPs per
    row and its weight bytes as stored.

    This is the cost model the compile report and the benchmarks use to compute roofline fractions.
  }];
}

def MoEPruneStaticMaskPass : Pass<"moe-prune-static-mask"> {
  let summary = "Drop the hidden dims a constant mask removes from the expert weights, at compile time";
  let description = [{
    For a `moe.sparse_moe` whose `mask` and expert weights (`fc1`, `fc2`, optional `fc1_bias`) are constants,
    gathers each expert's kept rows of `fc1` (gate and up rows for gated activations, in the op's layout)
    and kept columns of `fc2` into new constants of hidden size F' = the largest kept count over experts,
    pads experts that keep fewer dims with zero rows and columns, and drops the mask. The masked work and
    weight bytes disappear; the result is unchanged, since a padded dim meets a zero column of `fc2`.
    Leaves the op alone when F' = F (nothing to gain), when any of those operands is not a constant, and
    for quantised weights.
  }];
  let dependentDialects = ["::mlir::arith::ArithDialect"];
}

def MoERaiseDecomposedPass : Pass<"moe-raise-decomposed"> {
  let summary = "Raise MoE blocks written out as ONNX ops (exported from PyTorch or hand-written) to moe.sparse_moe";
  let description = [{
    Recognises a MoE block by what it computes (docs/pytorch-export.md lists the forms): the experts half
    (transformers' `batched_mm` experts, gathered weights either way round with per-expert biases; or every
    expert's own linear layers, or all experts by batched matmuls, on every token, weighted by a routing matrix
    zero outside the top k; Llama-4's experts over every token's input scaled by its top-1 routing weight;
    SwiGLU /
    GeGLU in block or interleaved layout with alpha, `up + beta` and clamps, SiLU / GELU / ReLU) and the
    routing half (softmax or sigmoid scores, top-k before or after them, a selection bias, DeepSeek's grouped
    top-k by top-2 sum or max, renormalisation, scaling, ZAYA's skip class, PhiMoE's sparsemixer) each reduce
    to a normal form, and
    each match becomes one `moe.sparse_moe` with `router_kind = logits`; `moe-fold-router` then folds a linear
    router. The patterns run under the greedy rewrite driver.

    Near misses are left alone: softmax or top-k over the wrong axis, a different k in router and experts,
    mismatched expert counts, different ids for the two projections, a clamp on one half of a gated
    activation, a renormalisation clamp that can bite, a routing matrix not known to be zero outside the top
    k, and any intermediate of the pattern that something outside it also reads. With `remarks=true` each one
    gets a remark saying why.
  }];
  let options = [Option<"remarks", "remarks", "bool", "false", "Emit a remark for every near miss">];
  let dependentDialects = ["::moec::moe::MoEDialect"];
}

def MoEFoldRouterPass : Pass<"moe-fold-router"> {
  let summary = "Fold a linear router subgraph (x @ W + b) into its moe.sparse_moe";
  let description = [{
    For a `moe.sparse_moe` with `router_kind = logits` whose logits are a linear layer (`MatMul` with an
    optional bias `Add`, or `Gemm`) of the layer's own input with constant weights, and are read by nothing
    else, makes the weights the op's router (`[H, N]`, transposed when stored `[N, H]`), the bias its
    `router_bias`, and sets `router_kind = linear`. This is how `com.microsoft.MoE` with its router MatMul
    in front, and raised PyTorch blocks, get their gating inside the fused dispatch. Runs as a rewrite
    pattern on each layer under the greedy driver.
  }];
  let options = [Option<"remarks", "remarks", "bool", "false", "Emit a remark for every near miss">];
  let dependentDialects = ["::mlir::arith::ArithDialect"];
}

def MoEFuseSharedExpertPass : Pass<"moe-fuse-shared-expert"> {
  let summary = "Fold an always-active shared expert MLP added to a MoE layer's output into the op";
  let description = [{
    Matches `Add(moe.sparse_moe(x), mlp(x))` and `Add(moe.sparse_moe(x), sigmoid(x @ g) * mlp(x))`
    (through reshapes), where `mlp` is a bias-free `down(act(gate(x)) * up(x))` or `down(act(up(x)))` with
    the routed experts' activation and constant weights (Qwen2-MoE's gated shared expert, DeepSeek-V3's
    shared experts). The MLP becomes the op's `shared_fc1`/`shared_fc2` (and `shared_gate`) and the Add
    disappears. Left alone when the activation differs, the MLP reads another tensor, or an intermediate is
    read elsewhere. Runs as a rewrite pattern on each layer under the greedy driver.
  }];
  let options = [Option<"remarks", "remarks", "bool", "false", "Emit a remark for every near miss">];
  let dependentDialects = ["::mlir::arith::ArithDialect"];
}

def MoEFuseNormResidualPass : Pass<"moe-fuse-norm-residual"> {
  let summary = "Fold the RMSNorm/LayerNorm in front of a MoE layer and the residual Add after it into the op";
  let description = [{
    When a `moe.sparse_moe`'s input is (through reshapes) an RMSNorm (`w * x / sqrt(mean(x^2) + eps)` in the
    forms PyTorch exports), an `onnx.LayerNormalization` over the last axis or a `moe.norm` (ONNX Runtime's
    `SimplifiedLayerNormalization` and `Skip*` norms as imported), and nothing else reads the norm's output, the op takes the un-normalised tensor as input with `norm`, `norm_weight`
    (`norm_bias`) and `norm_epsilon`. When the op's result (through reshapes) feeds exactly one `Add` of a
    same-shaped tensor, that tensor becomes the op's `residual` and the Add disappears. Both run as rewrite
    patterns on each layer under the greedy driver.
  }];
  let options = [Option<"remarks", "remarks", "bool", "false", "Emit a remark for every near miss">];
}

def MoEApplyPatternsPass : Pass<"moe-apply-patterns"> {
  let summary = "Apply the PDL rewrite patterns of a file (compiled from PDLL) with MLIR's PDL interpreter";
  let description = [{
    Loads `file`, an MLIR module of `pdl.pattern` ops (write the patterns in PDLL and compile them with
    `mlir-pdll-19 patterns.pdll -x=mlir -o patterns.mlir`), and applies them greedily to the whole module
    until nothing matches. Patterns can match and create any op of the `onnx`, `moe` and upstream dialects;
    native (C++) constraints and rewrites are not available. This is what `moec compile --patterns=FILE`
    runs; see docs/writing-fusion-passes.md.
  }];
  let options = [Option<"file", "file", "std::string", "", "MLIR file holding the pdl.pattern ops">];
  let dependentDialects = ["::mlir::pdl::PDLDialect", "::mlir::pdl_interp::PDLInterpDialect"];
}

def MoERaiseLinearPass : Pass<"moe-raise-linear"> {
  let summary = "Turn every MatMul / Gemm with a constant weight into a moe.linear dispatch (and embedding Gathers into moe.embedding)";
  let description = [{
    Runs after the MoE fusion passes, so routers and shared experts are already inside their
    `moe.sparse_moe`. Every remaining `MatMul(x, W)` / `Gemm(x, W, C)` whose `W` is a constant 2-D f32
    matrix (directly, or through a 2-D `Transpose`, or stored `[N, K]` with `transB = 1`) becomes a
    `moe.linear` with `W` as `[K, N]`; a constant bias (`Gemm`'s `C` with `beta = 1`, or an `Add` of a
    constant `[N]` right after a `MatMul`) becomes its `bias`; and an `Add` of another computed value of the
    same type, when it is the only reader of the result, becomes its `residual`. Products of two computed
    values (attention's Q K^T and P V) are left alone. `x` may have any rank: leading dims are rows.
    The norm in front (RMSNorm, `LayerNormalization`: the MoE norm fusion's matcher) moves into every
    linear layer reading it when nothing else reads its output; then the layers reading one input through
    one norm (Q, K and V projections; gate and up) merge into one `moe.linear` with a result per layer (at
    most 4), their weights and biases concatenated along N (not those with a residual, MatMulNBits weights
    or a graph output as result). `Gather(table, indices, axis = 0)` with a constant 2-D f32 table as wide as the model's hidden size
    (a token embedding) becomes `moe.embedding`, whose table is then stored like a weight.
  }];
  let options = [Option<"remarks", "remarks", "bool", "false", "Emit a remark for every near miss">];
  let dependentDialects = ["::mlir::arith::ArithDialect", "::moec::moe::MoEDialect"];
}

def MoERaiseAttentionPass : Pass<"moe-raise-attention"> {
  let summary = "Turn the scaled dot-product attention chain exporters write into one moe.attention dispatch";
  let description = [{
    Matches, from every `Softmax` over the last axis of rank-4 scores,
    `MatMul(Where(IsNaN(p), 0, p) | p, V)` with `p = Softmax(MatMul(Q, K^T) (* | / constant)* (+ mask))`:
    constant scalar factors on Q, on K^T and on the scores fold into `scale`; K^T is a `Transpose` of the
    keys' last two dims or PyTorch's `Reshape -> Transpose -> Reshape` over `Shape` slices of the keys (checked
    entry by entry); K and V repeated for grouped-query heads (`Unsqueeze(2) -> Expand -> Reshape`, the
    `repeat_kv` export) are read unrepeated; the other operand of the `Add` is the mask (f32, rank 4,
    broadcastable); eager logit softcapping `c * Tanh(scores / c)` becomes `softcap`. Then, on every
    `moe.attention` (raised or imported) whose only reader is a `Transpose(perm [0, 2, 1, 3])`, the transpose
    becomes the op's `transpose_output` (the kernels write `[B, S, Hq, Dv]`). Rotary embedding is
    `moe-raise-rotary`'s; the past-cache `Concat` and the mask's construction stay op steps.
    With `remarks`, every softmax not raised says why.
  }];
  let options = [Option<"remarks", "remarks", "bool", "false", "Emit a remark for every near miss">];
  let dependentDialects = ["::moec::moe::MoEDialect"];
}

def MoERaiseRotaryPass : Pass<"moe-raise-rotary"> {
  let summary = "Turn rotary position embedding as exporters write it into moe.rotary, folding the head transpose and q/k RMSNorm";
  let description = [{
    Matches transformers' `apply_rotary_pos_emb` as PyTorch exports it, `x * cos + Concat(-x[..., h:],
    x[..., :h]) * sin` on a rank-4 x (and, for partial rotary, `Concat(that over q[..., :R], q[..., R:])`),
    with cos / sin broadcast over the heads, and replaces it by one `moe.rotary` (cos / sin read as
    `[B | 1, S, R]`); likewise the layouts other exports write: `Concat(a * cos - b * sin, b * cos + a * sin)`
    over x's halves (GPT-OSS; cos / sin of R / 2 values) or its even / odd dims (DeepSeek's MLA:
    `interleaved` + `deinterleave`), and `x * cos + Reshape(stack(-x[..., 1::2], x[..., 0::2])) * sin`
    (Ernie-4.5: `interleaved`). Then folds into each `moe.rotary` the `Transpose(perm [0, 2, 1, 3])` that feeds it and
    nothing else (the op reads `[B, S, H, D]` and writes `[B, H, S, D]`) and an RMSNorm over the head dim in
    front of that (Qwen3's q_norm / k_norm). With `remarks`, every near miss says why.
  }];
  let options = [Option<"remarks", "remarks", "bool", "false", "Emit a remark for every near miss">];
  let dependentDialects = ["::moec::moe::MoEDialect"];
}

def MoERaiseNormPass : Pass<"moe-raise-norm"> {
  let summary = "Turn the RMSNorms and LayerNorms no dispatch absorbed into moe.norm";
  let description = [{
    Every RMSNorm over the last axis (`w * (x * Reciprocal(Sqrt(ReduceMean(x^2, -1) + eps)))` and the variants
    `matchNorm` accepts) and every `LayerNormalization` over the last axis still in the graph after the MoE
    layers and rotary embeddings took theirs becomes one `moe.norm` (libmoert's `moec.Norm` step: one pass,
    rows across the threads). With `remarks`, a norm whose intermediates are read elsewhere says so.
  }];
  let options = [Option<"remarks", "remarks", "bool", "false", "Emit a remark for every near miss">];
  let dependentDialects = ["::moec::moe::MoEDialect"];
}

def MoESetWeightStoragePass : Pass<"moe-set-weight-storage"> {
  let summary = "Record how each dispatch stores its weights (fp32, bf16, fp16, int8, int4) on the op";
  let description = [{
    Sets the `storage` attribute of every `moe.sparse_moe` (its expert and shared-expert weights) and every
    `moe.linear`, so `--emit=mlir`, the cost model and codegen all read one decision from the IR:
    `experts` for MoE layers, `dense` for linear layers, and `lm-head` (default: `dense`) for linear layers
    whose result is a graph output (through reshapes) - the LM head, which llama.cpp-style quantisation keeps
    wider. `moe.embedding` tables get `embeddings` (default: `dense`). Layers whose weights arrive quantised
    (`fc1_quant`, `weight_quant`: QMoE, MatMulNBits) keep them. `block-size` is the quantisation block of
    int8/int4 linear layers and embedding rows (features per scale, a multiple of 8). `int8-activations` marks every dispatch with int8/int4 weights `int8_activations`: decode rounds its
    inputs to int8 per block of 32 and multiplies integers; `bf16-activations` marks every dispatch with
    bf16 weights `bf16_activations`: prefill rounds its inputs to bf16 and multiplies bf16 pairs (see the
    ops' descriptions), and every attention dispatch (with an even key head dim): over bf16 caches it rounds
    queries and softmax terms to bf16 and multiplies bf16 pairs.
  }];
  let options = [
    Option<"experts", "experts", "std::string", "\"fp32\"", "Storage of MoE expert weights">,
    Option<"dense", "dense", "std::string", "\"fp32\"", "Storage of linear-layer weights">,
    Option<"lmHead", "lm-head", "std::string", "\"\"", "Storage of linear layers producing a graph output (default: dense)">,
    Option<"embeddings", "embeddings", "std::string", "\"\"", "Storage of moe.embedding tables (default: dense)">,
    Option<"blockSize", "block-size", "int64_t", "32", "Input features per scale for int8/int4 linear layers">,
    Option<"int8Activations", "int8-activations", "bool", "false",
           "Decode of int8/int4 dispatches multiplies inputs rounded to int8 (integer dot products)">,
    Option<"bf16Activations", "bf16-activations", "bool", "false",
           "Prefill of bf16 dispatches, and attention over bf16 caches, multiply inputs rounded to bf16 (bf16 pair products)">
  ];
}

#endif // MOEC_PASSES_TD
