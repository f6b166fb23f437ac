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
    quantised weights). Zero experts are counted as real ones, so the numbers are upper bounds.

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

#endif // MOEC_PASSES_TD
