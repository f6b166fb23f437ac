//===- Ops.h - libmoert's kernels for the graph ops around MoE dispatches ---===//
//
// Every standard ONNX op moec imports runs here when it is not part of a fused dispatch: router MLPs, norms,
// attention, shape arithmetic. Shapes are resolved at run time; dtypes are the program's (f16/bf16 compute
// in f32). Data movement works on bytes, so it serves every dtype.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SRC_OPS_H
#define MOERT_SRC_OPS_H

#include "runtime/artifact.pb.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moert {

class ThreadPool;

size_t dtypeSize(int dtype);
const char *dtypeName(int dtype);
std::string dimsString(const std::vector<int64_t> &d);

/// A value during a run: dtype (proto::DType; 0 = absent optional input), shape, and its bytes, owned or
/// borrowed (an input, a constant section, or an aliased op input).
/// ONNX sequences and optionals are OpTensors too: a sequence holds its tensors in `elements` (each owning
/// its bytes or borrowing a run's input; shared, as a sequence never changes once made) and has no dims or
/// data of its own; an optional is its content, or None when it holds nothing. `dtype` is the tensors' for
/// both.
struct OpTensor {
  enum class Kind : uint8_t { Tensor, Sequence, None };
  int dtype = 0;
  std::vector<int64_t> dims;
  const char *data = nullptr;
  std::shared_ptr<char> owned;
  size_t capacity = 0; // > 0: `owned` is a planned buffer of this many bytes that alloc() fills if it fits
  Kind kind = Kind::Tensor;
  std::shared_ptr<const std::vector<OpTensor>> elements = nullptr; // a sequence's tensors

  bool present() const { return dtype != 0; }
  bool isTensor() const { return kind == Kind::Tensor; }
  /// Set by the step that makes it (an empty tensor has data too; sequences and None have none).
  bool computed() const { return data != nullptr || kind != Kind::Tensor; }
  int64_t numel() const;
  size_t bytes() const { return size_t(numel()) * dtypeSize(dtype); }
  /// Allocates (64-byte aligned) for `d`, in the planned buffer when it is large enough; false when the size
  /// overflows or memory runs out.
  bool alloc(int dt, std::vector<int64_t> d);
  /// `t`'s dtype, dims and bytes in a block of its own (not a planned buffer); false when memory runs out.
  bool copyOf(const OpTensor &t);
  template <class T> const T *as() const { return reinterpret_cast<const T *>(data); }
  template <class T> T *mut() { return reinterpret_cast<T *>(owned.get()); }
};

/// `bytes` (64-byte aligned) for a tensor or scratch. Blocks of 1 MiB and more come from, and go back to, a
/// bounded process-wide cache of freed blocks of the same rounded size: a decode step's KV caches, logits and
/// scratch then reuse the pages of the step before instead of faulting in fresh ones (measured: ~13,700 page
/// faults per call at a 4096-token context). Null when memory runs out.
std::shared_ptr<char> allocBlock(size_t bytes);
/// Whether a spare arena of `spare` bytes, kept from an earlier run, serves a run that needs `need`: large
/// enough and at most twice that (a larger one is let go rather than held for shapes no longer run). The
/// host's arenas (runProgram) and the device's (gpu::Residency) keep their spares by it.
inline bool spareArenaServes(size_t spare, size_t need) { return spare >= need && spare <= 2 * need; }
/// The bytes usable from the start of a block allocBlock returned (at least those asked for).
size_t blockBytes(const char *block);

/// moec.Rotary's geometry (ir/MoEOps.td's contract) from the step's attributes and its inputs' dims: x [B,
/// A1, A2, D], cos and sin [1 or B, S, R or R / 2], the folded norm's weight [D] (null: none). What the CPU
/// op (ops/Fused.cpp) and the GPU kernel (gpu::planOp) both check: "" or what does not fit.
struct RotaryPlan {
  int64_t B = 0, A1 = 0, A2 = 0, D = 0, R = 0, S = 0, W = 0; // W: the tables' width (R or R / 2)
  int seqAxis = 2;
  bool interleaved = false, deinterleave = false, transpose = false, cosBatch = false, normed = false;
  float eps = 1e-6f;
  std::vector<int64_t> outDims;
};
std::string planRotary(const proto::OpStep &op, const std::vector<int64_t> &x,
                       const std::vector<int64_t> &cos, const std::vector<int64_t> &sin,
                       const std::vector<int64_t> *normWeight, RotaryPlan &p);
/// moec.Norm's: x [..., d], weight [d], bias [d] (null: none); kind 1 RMSNorm, 2 LayerNorm.
struct NormPlan {
  int64_t rows = 0, d = 0;
  int kind = 0;
  float eps = 1e-5f;
};
std::string planNorm(const proto::OpStep &op, const std::vector<int64_t> &x,
                     const std::vector<int64_t> &weight, const std::vector<int64_t> *bias, NormPlan &p);

/// moec.Embedding's table and indices (moert_kernel_abi.h's MOERT_EMBED_* row formats) from the step's
/// attributes (storage, block, width) and its inputs: rows [V, row bytes] in the storage's dtype, scales
/// [V, ceil(H / block)] f32 for int8 / int4 (null: absent), indices int64 or int32. What the CPU op
/// (ops/Movement.cpp) and the GPU kernel (gpu::planOp) both check: "" or what does not fit. The indices'
/// values are checked where they are read (embeddingRow).
struct EmbeddingPlan {
  int storage = -1, bits = 0;
  int64_t rows = 0, h = 0, block = 0, nb = 0, n = 0;
  int64_t rowBytes = 0; // bytes from one stored row to the next
  bool quantised = false, idx64 = true;
  std::vector<int64_t> outDims; // the indices' dims, then H
};
std::string planEmbedding(const proto::OpStep &op, const std::vector<int64_t> &table, int tableDtype,
                          const std::vector<int64_t> *scales, int scalesDtype,
                          const std::vector<int64_t> &idx, int idxDtype, EmbeddingPlan &p);
/// Index r of `p`'s table as a row number (negative indices count from the end), or the error for one out of
/// range.
std::string embeddingRow(const EmbeddingPlan &p, int64_t r, int64_t &row);

/// Slice's geometry from x's dims and its starts, ends, axes and steps (axes, steps empty: 0, 1, ... and
/// ones): the output's dims, the input's element strides along them and the first element's offset. What
/// the CPU op (ops/Movement.cpp) and the GPU kernel (gpu::planOp) both use: "" or what does not fit.
struct SlicePlan {
  std::vector<int64_t> outDims, strides;
  int64_t start = 0;
};
std::string planSlice(const std::vector<int64_t> &x, const std::vector<int64_t> &starts,
                      const std::vector<int64_t> &ends, std::vector<int64_t> axes, std::vector<int64_t> steps,
                      SlicePlan &p);
/// Split's output sizes along an axis of `len` into `n` outputs: `given` (its split input), or when empty
/// equal parts, the last smaller. "" or what does not fit.
std::string splitSizes(int64_t len, int64_t n, std::vector<int64_t> given, std::vector<int64_t> &sizes);
/// Which of a reduction's `rank` axes it reduces (`axes`: its axes input, maybe negative; empty: all, or none
/// with noop_with_empty_axes). "" or the axis out of range.
std::string reducedAxes(size_t rank, const std::vector<int64_t> &axes, bool noopWithEmpty,
                        std::vector<bool> &reduced);

/// Conv's geometry from its attributes and X [N, C, spatial...], W [M, C / group, kernel...]: strides,
/// dilations, pads (auto_pad resolved; the starts first, then the ends), the spatial dims in and out and
/// the output's dims. What the CPU op (ops/Linalg.cpp) and the GPU kernel (gpu::planOp) both use: "" or what
/// does not fit.
struct ConvPlan {
  int64_t N = 0, C = 0, M = 0, group = 1;
  std::vector<int64_t> kern, strides, dil, pads, inSp, outSp, outDims;
};
std::string planConv(const proto::OpStep &op, const std::vector<int64_t> &x, const std::vector<int64_t> &w,
                     ConvPlan &p);

/// An op's kernel, found by name once (at load); null when this moert has none.
struct OpEntry;
const OpEntry *findOpKernel(const std::string &op);
/// Whether the op's tensor output is a view of its first input's bytes (Identity, Reshape, Flatten, Squeeze,
/// Unsqueeze): it neither reads nor writes them.
bool isView(const OpEntry *kernel);
/// Whether the op reads only its inputs' dims, never their bytes (Shape): a GPU value it reads stays there.
bool readsDimsOnly(const OpEntry *kernel);

/// Runs one op: `out` arrives with each output's dtype set (from the program) and leaves computed. Returns
/// an error message, empty on success.
std::string runOp(const OpEntry *kernel, const proto::OpStep &s, const std::vector<OpTensor> &in,
                  std::vector<OpTensor> &out, ThreadPool *pool);

/// Blocks a control-flow op step has (If: 2, Loop and Scan: 1), or 0 for ops that run on a kernel.
int controlFlowBlocks(const std::string &op);

/// Runs control-flow op step `s` (If, Loop, Scan; runtime/src/ControlFlow.cpp): `in` are its inputs,
/// `runBlock(b, bound)` binds block b's inputs to `bound`, runs its steps and returns its outputs (or an
/// error, already complete). `out` leaves with the op's outputs. Returns an error message, empty on
/// success; `blockError` is set when the message comes from a block's step (then not to be prefixed).
std::string runControlFlow(
    const proto::OpStep &s, const std::vector<OpTensor> &in, std::vector<OpTensor> &out,
    const std::function<std::string(int, const std::vector<OpTensor> &, std::vector<OpTensor> &)> &runBlock,
    bool &blockError);

} // namespace moert

#endif // MOERT_SRC_OPS_H
