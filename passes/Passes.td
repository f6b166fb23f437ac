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

#endif // MOEC_PASSES_TD
