//===- SetWeightStorage.cpp - record each dispatch's weight storage on the op --===//
//
// One decision, in the IR: how every MoE layer and linear layer stores its weights in the artifact. Codegen,
// the cost model and --emit=mlir read the `storage` attribute; nothing downstream re-parses an option.
//
//===----------------------------------------------------------------------===//
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"
#include "passes/MatchUtils.h"
#include "passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"

namespace moec {
#define GEN_PASS_DEF_MOESETWEIGHTSTORAGEPASS
#include "passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;
namespace ox = moec::onnxir;
namespace moe = moec::moe;

namespace {

struct MoESetWeightStoragePass final : moec::impl::MoESetWeightStoragePassBase<MoESetWeightStoragePass> {
  using Base::Base;
  void runOnOperation() override {
    auto parse = [&](StringRef what, StringRef name, moe::Storage &out) {
      auto s = moe::symbolizeStorage(name);
      if (!s) {
        getOperation()->emitError() << "moe-set-weight-storage: " << what << "='" << name
                                    << "' is not a storage (fp32, bf16, fp16, int8, int4)";
        return false;
      }
      out = *s;
      return true;
    };
    moe::Storage experts, dense, head, embeddings;
    if (!parse("experts", this->experts, experts) || !parse("dense", this->dense, dense) ||
        !parse("lm-head", this->lmHead.empty() ? this->dense : this->lmHead, head) ||
        !parse("embeddings", this->embeddings.empty() ? this->dense : this->embeddings, embeddings))
      return signalPassFailure();
    if (blockSize < 16 || blockSize % 8) {
      getOperation()->emitError() << "moe-set-weight-storage: block-size=" << blockSize
                                  << " (input features per scale: a multiple of 8, >= 16)";
      return signalPassFailure();
    }
    MLIRContext *ctx = &getContext();
    getOperation()->walk([&](Operation *op) {
      auto quantised = [](moe::Storage s) { return s == moe::Storage::int8 || s == moe::Storage::int4; };
      if (auto m = dyn_cast<moe::SparseMoEOp>(op)) {
        if (!m.getFc1QuantAttr()) // QMoE layers keep their own integers
          m.setStorageAttr(moe::StorageAttr::get(ctx, experts));
        m.setInt8Activations(int8Activations && (m.getFc1QuantAttr() || quantised(m.getStorage())));
        m.setBf16Activations(bf16Activations && !m.getFc1QuantAttr() && m.getStorage() == moe::Storage::bf16);
      } else if (auto l = dyn_cast<moe::LinearOp>(op)) {
        if (!l.getWeightQuantAttr()) { // MatMulNBits: kept as imported
          l.setStorageAttr(moe::StorageAttr::get(ctx, isGraphOutput(l.getOutput()) ? head : dense));
          l.setBlockSize(blockSize);
        }
        l.setInt8Activations(int8Activations && quantised(l.getStorage()));
        l.setBf16Activations(bf16Activations && !l.getWeightQuantAttr() &&
                             l.getStorage() == moe::Storage::bf16);
      } else if (auto a = dyn_cast<moe::AttentionOp>(op)) { // over bf16 caches (a session's choice)
        auto keyT = cast<ShapedType>(a.getKey().getType());
        a.setBf16Activations(bf16Activations && keyT.getDimSize(3) % 2 == 0);
      } else if (auto e = dyn_cast<moe::EmbeddingOp>(op)) {
        e.setStorageAttr(moe::StorageAttr::get(ctx, embeddings));
        e.setBlockSize(blockSize);
      }
    });
  }
};

} // namespace
