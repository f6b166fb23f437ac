//===- Ops.cpp - libmoert's kernels for the graph ops around MoE dispatches --===//
//
// Tensors (OpTensor), the op table (an ONNX op name -> its kernel, resolved once per step at load) and
// runOp, which widens f16/bf16 to f32 around the kernels that compute in f32. The kernels live by family in
// runtime/src/ops/ (Elementwise, Reduce, Linalg, Movement; shared helpers in ops/OpKernel.h): plain loops
// over run-time shapes that aim at being correct for every dtype and shape ONNX allows (NumPy broadcasting,
// negative axes and indices, empty tensors) and at failing with a message, never a crash, on bad indices or
// shapes. MatMul, the one op that can matter for time (attention, router MLPs), is cache-friendly and runs
// on the thread pool.
//
//===----------------------------------------------------------------------===//
#include "Ops.h"
#include "runtime/ArtifactFormat.h"

#include "ops/OpKernel.h"
#include <malloc.h>
#include <map>
#include <mutex>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace moert {

using proto::OpStep;
using namespace ops; // the op kernels and their helpers (ops/OpKernel.h)

size_t dtypeSize(int d) {
  switch (d) {
  case proto::F64:
  case proto::I64:
  case proto::U64:
    return 8;
  case proto::F32:
  case proto::I32:
  case proto::U32:
    return 4;
  case proto::F16:
  case proto::BF16:
  case proto::I16:
  case proto::U16:
    return 2;
  case proto::I8:
  case proto::U8:
  case proto::BOOL:
    return 1;
  default:
    return 0;
  }
}

const char *dtypeName(int d) {
  static const char *const names[] = {"?",   "f32", "f16", "bf16", "i64", "i32", "i8",
                                      "u8",  "bool", "f64", "i16", "u16", "u32", "u64"};
  return d >= 0 && d <= 13 ? names[d] : "?";
}

std::string dimsString(const std::vector<int64_t> &d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i)
    s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

int64_t OpTensor::numel() const {
  int64_t n = 1;
  for (int64_t x : dims)
    n *= x;
  return n;
}

bool OpTensor::alloc(int dt, std::vector<int64_t> d) {
  dtype = dt;
  dims = std::move(d);
  uint64_t n = 1;
  for (int64_t x : dims) {
    if (x < 0 || (x > 0 && n > (uint64_t(1) << 40) / uint64_t(x)))
      return false;
    n *= uint64_t(x);
  }
  size_t bytes = size_t(n) * std::max<size_t>(dtypeSize(dt), 1);
  if (capacity > 0 && owned && bytes <= capacity) {
    data = owned.get();
    return true;
  }
  capacity = 0;
  owned = allocBlock(bytes);
  data = owned.get();
  return owned != nullptr;
}

bool OpTensor::copyOf(const OpTensor &t) {
  *this = OpTensor{};
  if (!alloc(t.dtype, t.dims))
    return false;
  if (t.bytes())
    std::memcpy(owned.get(), t.data, t.bytes());
  return true;
}

namespace {

/// Freed large blocks by rounded size (never destroyed: blocks may be released during static destruction).
struct BlockCache {
  static constexpr size_t kMin = size_t(1) << 20, kGrain = size_t(64) << 10, kLimit = size_t(512) << 20;
  std::mutex mutex;
  std::multimap<size_t, char *> free;
  size_t cached = 0;
  static BlockCache &get() {
    static BlockCache *c = new BlockCache;
    return *c;
  }
};

/// MOERT_POISON=1 (tests): every new block starts as NaNs (all bytes 0xFF), so a read of bytes nothing wrote
/// shows in the results instead of depending on what the memory last held.
bool poisonBlocks() {
  static const bool on = [] {
    const char *e = std::getenv("MOERT_POISON");
    return e && *e && std::strcmp(e, "0") != 0;
  }();
  return on;
}

} // namespace

std::shared_ptr<char> allocBlock(size_t bytes) {
  if (bytes < BlockCache::kMin) {
    void *p = nullptr;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0)
      return nullptr;
    if (poisonBlocks())
      std::memset(p, 0xFF, bytes);
    return std::shared_ptr<char>(static_cast<char *>(p), [](char *q) { std::free(q); });
  }
  const size_t size = (bytes + BlockCache::kGrain - 1) / BlockCache::kGrain * BlockCache::kGrain;
  BlockCache &c = BlockCache::get();
  char *block = nullptr;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.free.find(size);
    if (it != c.free.end()) {
      block = it->second;
      c.free.erase(it);
      c.cached -= size;
    }
  }
  if (!block) {
    void *p = nullptr;
    if (posix_memalign(&p, 64, size) != 0)
      return nullptr;
    block = static_cast<char *>(p);
  }
  if (poisonBlocks())
    std::memset(block, 0xFF, size);
  return std::shared_ptr<char>(block, [size](char *q) {
    BlockCache &cache = BlockCache::get();
    std::lock_guard<std::mutex> lock(cache.mutex);
    if (cache.cached + size > BlockCache::kLimit) { // full: release the largest blocks first
      while (!cache.free.empty() && cache.cached + size > BlockCache::kLimit) {
        auto last = std::prev(cache.free.end());
        cache.cached -= last->first;
        std::free(last->second);
        cache.free.erase(last);
      }
      if (size > BlockCache::kLimit) {
        std::free(q);
        return;
      }
    }
    cache.free.emplace(size, q);
    cache.cached += size;
  });
}

size_t blockBytes(const char *block) { return malloc_usable_size(const_cast<char *>(block)); }

struct OpEntry {
  const char *name;
  bool (*fn)(Ctx &);
  bool widensHalf;          // f16/bf16 computed in f32
  bool takesValues = false; // reads or makes sequences / optionals (the others get tensors only)
};

namespace {

// clang-format off
const OpEntry kOps[] = {
    {"Abs", unary, true},          {"Ceil", unary, true},         {"Cos", unary, true},
    {"Erf", unary, true},          {"Exp", unary, true},          {"Floor", unary, true},
    {"Log", unary, true},          {"Neg", unary, true},          {"Reciprocal", unary, true},
    {"Relu", unary, true},         {"Sigmoid", unary, true},      {"Sin", unary, true},
    {"Sqrt", unary, true},         {"Tanh", unary, true},         {"Gelu", unary, true},
    {"IsNaN", isNaN, true},        {"Not", notOp, false},         {"Add", binary, true},
    {"Sub", binary, true},         {"Mul", binary, true},         {"Div", binary, true},
    {"Pow", binary, true},         {"Equal", binary, true},       {"Greater", binary, true},
    {"GreaterOrEqual", binary, true}, {"Less", binary, true},     {"LessOrEqual", binary, true},
    {"And", binary, false},        {"Or", binary, false},         {"Max", variadicMinMax, true},
    {"Min", variadicMinMax, true}, {"Clip", clip, true},          {"Where", where, false},
    {"Cast", cast, false},         {"ReduceMean", reduce, true},  {"ReduceSum", reduce, true},
    {"ReduceMax", reduce, true},   {"ReduceL2", reduce, true},    {"Softmax", softmax, true},
    {"LogSoftmax", softmax, true}, {"ArgMax", argmax, true},      {"TopK", topk, true},
    {"CumSum", cumsum, true},      {"LayerNormalization", layerNorm, true}, {"MatMul", matmul, true},
    {"Gemm", gemm, true},          {"Conv", conv, true},          {"Einsum", einsum, true},
    {"Identity", identity, false, true}, {"Reshape", reshapeLike, false}, {"Squeeze", reshapeLike, false},
    {"Unsqueeze", reshapeLike, false}, {"Transpose", transpose, false}, {"Expand", expand, false},
    {"Concat", concat, false},     {"Split", split, false},       {"Slice", slice, false},
    {"Gather", gather, false},     {"GatherElements", gatherElements, false}, {"GatherND", gatherND, false},
    {"ScatterElements", scatter, true}, {"ScatterND", scatter, true}, {"OneHot", oneHot, false},
    {"Shape", shapeOp, false},     {"ConstantOfShape", constantOfShape, false}, {"Range", range, true},
    {"Trilu", trilu, false},       {"Tan", unary, true},          {"Asin", unary, true},         {"Acos", unary, true},
    {"Atan", unary, true},         {"Sinh", unary, true},         {"Cosh", unary, true},
    {"Asinh", unary, true},        {"Acosh", unary, true},        {"Atanh", unary, true},
    {"Round", unary, true},        {"Sign", unary, true},         {"Softplus", unary, true},
    {"Softsign", unary, true},     {"Elu", unary, true},          {"Selu", unary, true},
    {"LeakyRelu", unary, true},    {"ThresholdedRelu", unary, true}, {"HardSigmoid", unary, true},
    {"Shrink", unary, true},       {"IsInf", isNaN, true},        {"Xor", binary, false},
    {"PRelu", binary, true},       {"Mod", binary, true},         {"BitShift", binary, false},
    {"Sum", variadicMinMax, true}, {"Mean", variadicMinMax, true}, {"ArgMin", argmax, true},
    {"ReduceMin", reduce, true},   {"ReduceProd", reduce, true},  {"ReduceL1", reduce, true},
    {"ReduceSumSquare", reduce, true}, {"ReduceLogSum", reduce, true}, {"ReduceLogSumExp", reduce, true},
    {"Flatten", reshapeLike, false}, {"Tile", tile, false},       {"DepthToSpace", depthToSpace, false},
    {"SpaceToDepth", depthToSpace, false}, {"Compress", compress, false}, {"NonZero", nonZero, false},
    {"EyeLike", eyeLike, false},   {"Pad", pad, false},           {"ReverseSequence", reverseSequence, false},
    {"Hardmax", hardmax, true},    {"BatchNormalization", channelNorm, true},
    {"InstanceNormalization", channelNorm, true}, {"QuantizeLinear", quantizeLinear, false},
    {"DequantizeLinear", quantizeLinear, false}, {"MatMulInteger", matmulInteger, false},
    {"MaxPool", pool, true},       {"AveragePool", pool, true},   {"ConvTranspose", convTranspose, true},
    {"Resize", resize, true},      {"LRN", lrn, true},            {"Unique", unique, false},
    {"Det", det, true},            {"MaxUnpool", maxUnpool, false},
    {"NonMaxSuppression", nonMaxSuppression, false},
    {"RNN", recurrent, false},      {"GRU", recurrent, false},      {"LSTM", recurrent, false},
    {"Adagrad", optimizer, false},  {"Momentum", optimizer, false}, {"Adam", optimizer, false},
    {"DFT", dft, false},            {"STFT", stft, false},          {"MelWeightMatrix", melWeightMatrix, false},
    {"GridSample", gridSample, true}, {"RoiAlign", roiAlign, true},  {"TfIdfVectorizer", tfIdfVectorizer, false},
    {"RandomUniform", randomOp, false}, {"RandomNormal", randomOp, false},
    {"RandomUniformLike", randomOp, false}, {"RandomNormalLike", randomOp, false},
    {"Dropout", dropoutOp, false},
    {"SequenceConstruct", sequenceOp, false, true}, {"SequenceEmpty", sequenceOp, false, true},
    {"SequenceInsert", sequenceOp, false, true}, {"SequenceAt", sequenceOp, false, true},
    {"SequenceErase", sequenceOp, false, true}, {"SequenceLength", sequenceOp, false, true},
    {"SplitToSequence", sequenceOp, false, true}, {"ConcatFromSequence", sequenceOp, false, true},
    {"Optional", optionalOp, false, true}, {"OptionalHasElement", optionalOp, false, true},
    {"OptionalGetElement", optionalOp, false, true},
    {"moec.Embedding", embedding, false}, // moe.embedding's table rows
    {"moec.KvCacheUpdate", kvCacheUpdate, false}, // moe.kv_cache_update (GroupQueryAttention's caches)
    {"moec.Norm", fusedNorm, false},       // moe.norm (RMSNorm / LayerNorm rows)
    {"moec.Rotary", fusedRotary, false},   // moe.rotary (q/k rotary embedding, RMSNorm, head transpose)
};
// clang-format on

const OpEntry *findOp(const std::string &op) {
  for (const auto &e : kOps)
    if (op == e.name)
      return &e;
  return nullptr;
}

} // namespace

const OpEntry *findOpKernel(const std::string &op) { return findOp(op); }

bool isView(const OpEntry *e) {
  // The kernels that alias their input are the views the memory plan knows of (format::viewOp): checked once
  // over the whole table, so a kernel and the list cannot part unnoticed (every test that runs an op aborts).
  static const bool agree = [] {
    for (const auto &k : kOps)
      if (format::viewOp(k.name) != (k.fn == reshapeLike || k.fn == identity)) {
        std::fprintf(stderr, "moert: internal: op %s: its kernel and moert::format::viewOp disagree\n",
                     k.name);
        std::abort();
      }
    return true;
  }();
  return agree && e && (e->fn == reshapeLike || e->fn == identity);
}

bool readsDimsOnly(const OpEntry *e) { return e && e->fn == shapeOp; }

std::string runOp(const OpEntry *e, const OpStep &s, const std::vector<OpTensor> &in, std::vector<OpTensor> &out,
                  ThreadPool *pool) {
  if (!e)
    return "op " + s.op() + " has no kernel in this moert";
  if (e->takesValues) {
    Ctx c{s, in, out, pool};
    if (!e->fn(c))
      return c.err.empty() ? "failed" : c.err;
    return "";
  }
  for (size_t i = 0; i < in.size(); ++i)
    if (!in[i].isTensor())
      return "input " + std::to_string(i) + " is a sequence or optional; the op takes tensors";
  bool anyHalf = false;
  for (const auto &t : in)
    anyHalf |= isHalf(t.dtype);
  for (const auto &t : out)
    anyHalf |= isHalf(t.dtype);
  if (!e->widensHalf || !anyHalf) {
    Ctx c{s, in, out, pool};
    if (!e->fn(c))
      return c.err.empty() ? "failed" : c.err;
    return "";
  }
  // f16 / bf16: compute in f32, round the results back.
  std::vector<OpTensor> win(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    win[i] = isHalf(in[i].dtype) ? widen(in[i]) : in[i];
    if (isHalf(in[i].dtype) && !win[i].data)
      return "out of memory";
  }
  std::vector<OpTensor> wout(out.size());
  for (size_t i = 0; i < out.size(); ++i)
    wout[i].dtype = isHalf(out[i].dtype) ? int(proto::F32) : out[i].dtype;
  Ctx c{s, win, wout, pool};
  if (!e->fn(c))
    return c.err.empty() ? "failed" : c.err;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!isHalf(out[i].dtype)) {
      out[i] = wout[i];
    } else if (!narrow(wout[i], out[i].dtype, out[i])) {
      return "out of memory";
    }
  }
  return "";
}

} // namespace moert
