//===- GpuPlan.cpp - which steps of a program run on a GPU, and what crosses -===//
//
// runtime/src/GpuPlan.h says what this is; built into libmoert and moec.
//
//===----------------------------------------------------------------------===//
#include "GpuPlan.h"

#include "kernels/hip/moert_gpu_abi.h"

#include <algorithm>
#include <unordered_map>

namespace moert {
namespace pb = proto;

std::vector<int64_t> stepReads(const pb::Step &s) {
  if (s.has_op()) {
    std::vector<int64_t> reads(s.op().inputs().begin(), s.op().inputs().end());
    for (const pb::Block &b : s.op().blocks()) {
      for (const pb::Step &inner : b.steps()) {
        std::vector<int64_t> more = stepReads(inner);
        reads.insert(reads.end(), more.begin(), more.end());
      }
      reads.insert(reads.end(), b.outputs().begin(), b.outputs().end());
    }
    return reads;
  }
  if (s.has_linear())
    return {int64_t(s.linear().input()), s.linear().residual()};
  if (s.has_attention()) {
    const auto &a = s.attention();
    return {int64_t(a.query()), int64_t(a.key()), int64_t(a.value()), a.mask(), a.sinks()};
  }
  if (s.has_moe())
    return {int64_t(s.moe().input()), s.moe().logits(), s.moe().residual()};
  return {};
}

std::vector<uint32_t> stepWrites(const pb::Step &s) {
  if (s.has_op())
    return {s.op().outputs().begin(), s.op().outputs().end()};
  if (s.has_linear())
    return {s.linear().outputs().begin(), s.linear().outputs().end()};
  if (s.has_attention())
    return {s.attention().output()};
  if (s.has_moe())
    return {s.moe().output()};
  return {};
}

namespace gpu {

int elementwiseKind(const std::string &op) {
  static const std::unordered_map<std::string, int> kKinds = {
      {"Add", MOERT_GPU_OP_ADD},
      {"Sub", MOERT_GPU_OP_SUB},
      {"Mul", MOERT_GPU_OP_MUL},
      {"Div", MOERT_GPU_OP_DIV},
      {"Pow", MOERT_GPU_OP_POW},
      {"Max", MOERT_GPU_OP_MAX},
      {"Min", MOERT_GPU_OP_MIN},
      {"PRelu", MOERT_GPU_OP_PRELU},
      {"Neg", MOERT_GPU_OP_NEG},
      {"Abs", MOERT_GPU_OP_ABS},
      {"Relu", MOERT_GPU_OP_RELU},
      {"Exp", MOERT_GPU_OP_EXP},
      {"Log", MOERT_GPU_OP_LOG},
      {"Sqrt", MOERT_GPU_OP_SQRT},
      {"Reciprocal", MOERT_GPU_OP_RECIPROCAL},
      {"Sigmoid", MOERT_GPU_OP_SIGMOID},
      {"Tanh", MOERT_GPU_OP_TANH},
      {"Erf", MOERT_GPU_OP_ERF},
      {"Gelu", MOERT_GPU_OP_GELU_ERF}, // approximate = "tanh": MOERT_GPU_OP_GELU_TANH (planOp)
      {"Softplus", MOERT_GPU_OP_SOFTPLUS},
      {"Softsign", MOERT_GPU_OP_SOFTSIGN},
      {"LeakyRelu", MOERT_GPU_OP_LEAKY_RELU},
      {"Elu", MOERT_GPU_OP_ELU},
      {"HardSigmoid", MOERT_GPU_OP_HARD_SIGMOID},
      {"Clip", MOERT_GPU_OP_CLIP}};
  auto it = kKinds.find(op); // asked for each graph op of each run: hashed, not compared name by name
  return it == kKinds.end() ? -1 : it->second;
}
int reduceKind(const std::string &op) {
  static const std::unordered_map<std::string, int> kKinds = {{"ReduceSum", MOERT_GPU_RED_SUM},
                                                              {"ReduceMean", MOERT_GPU_RED_MEAN},
                                                              {"ReduceMax", MOERT_GPU_RED_MAX},
                                                              {"ReduceMin", MOERT_GPU_RED_MIN},
                                                              {"ReduceL1", MOERT_GPU_RED_L1},
                                                              {"ReduceL2", MOERT_GPU_RED_L2},
                                                              {"ReduceSumSquare", MOERT_GPU_RED_SUM_SQUARE},
                                                              {"ReduceLogSumExp", MOERT_GPU_RED_LOG_SUM_EXP},
                                                              {"Softmax", MOERT_GPU_RED_SOFTMAX},
                                                              {"LogSoftmax", MOERT_GPU_RED_LOG_SOFTMAX}};
  auto it = kKinds.find(op);
  return it == kKinds.end() ? -1 : it->second;
}
namespace {
bool movementOp(const std::string &op) {
  return op == "Transpose" || op == "Concat" || op == "Slice" || op == "Split" || op == "Expand" ||
         op == "Gather";
}
} // namespace

bool graphOpCandidate(const OpKernels &d, const pb::Program &p, const pb::Step &s) {
  if (!s.has_op() || s.op().blocks_size() || s.op().outputs_size() < 1)
    return false;
  const std::string &op = s.op().op();
  if (op == "TopK") // values and indices
    return d.topk && s.op().outputs_size() == 2 && p.values(s.op().outputs(0)).type().dtype() == pb::F32 &&
           p.values(s.op().outputs(1)).type().dtype() == pb::I64;
  if (s.op().outputs_size() > 1 && op != "Split")
    return false;
  for (int64_t id : s.op().outputs())
    if (id < 0 || p.values(id).type().dtype() != pb::F32)
      return false;
  if (op == "moec.Rotary")
    return d.rotary;
  if (op == "moec.Norm")
    return d.norm;
  if (op == "moec.Embedding")
    return d.embedding;
  if (reduceKind(op) >= 0)
    return d.reduce;
  if (op == "Conv")
    return d.conv;
  return d.strided && (elementwiseKind(op) >= 0 || movementOp(op));
}

namespace {
/// Input k of a candidate that may be uploaded rather than be on the device already (opQualifies).
bool sideInput(const pb::OpStep &op, int k) {
  return (k > 0 && (op.op() == "moec.Rotary" || op.op() == "moec.Norm" || op.op() == "Conv")) ||
         op.op() == "moec.Embedding";
}
} // namespace

bool parameterInput(const pb::OpStep &op, int k) {
  const std::string &n = op.op();
  return k > 0 && (n == "Slice" || n == "Split" || n == "Expand" || n == "Gather" || n == "Clip" ||
                   n == "TopK" || n.rfind("Reduce", 0) == 0);
}

bool opQualifies(const pb::OpStep &op, const std::vector<OpInput> &in) {
  for (int k = 0; k < int(in.size()); ++k) {
    const OpInput &x = in[k];
    const bool side = sideInput(op, k);
    if (parameterInput(op, k)) { // integers are the host's; Clip's f32 bounds only as constants
      if (x.present && x.dtype != pb::I64 && x.dtype != pb::I32 && !(x.dtype == pb::F32 && x.constant))
        return false;
      continue;
    }
    if (!x.present
            ? !side
            : (x.dtype != pb::F32 && op.op() != "moec.Embedding") || !(side || x.constant || x.onDevice))
      return false;
  }
  return true;
}

Placement planPlacement(const pb::Program &p, const std::vector<PlanStep> &steps, const OpKernels &k) {
  enum : uint8_t { kHost = 1, kDevice = 2 };
  const size_t n = steps.size();
  Placement out;
  std::vector<uint32_t> root(p.values_size()); // a view's base value (they share bytes)
  std::vector<uint8_t> at(p.values_size(), kHost);
  auto stepName = [&](const pb::Step &s) {
    return s.has_op()          ? s.op().op()
           : s.has_attention() ? "attention"
           : s.has_linear()    ? "linear (CPU)"
                               : "MoE (CPU)";
  };
  auto valid = [&](int64_t id) { return id >= 0 && id < p.values_size(); };
  std::vector<char> candidate(n); // asked once: the run loop reads gpuOps, not graphOpCandidate
  for (size_t fi = 0; fi < n; ++fi)
    candidate[fi] = graphOpCandidate(k, p, *steps[fi].step);
  out.gpuOps = candidate;
  for (bool again = true; again;) {
    again = false;
    for (int i = 0; i < p.values_size(); ++i)
      root[i] = uint32_t(i);
    std::fill(at.begin(), at.end(), kHost);
    out.device.assign(n, 0);
    out.uploads = out.downloads = 0;
    out.readers.clear();
    std::vector<char> hostToo(n, 0);
    for (size_t fi = 0; fi < n; ++fi) {
      const pb::Step &s = *steps[fi].step;
      bool device = steps[fi].dispatch;
      if (candidate[fi]) { // there when its inputs are there already (and its shapes plan)
        std::vector<OpInput> where(s.op().inputs_size());
        hostToo[fi] = true; // every input it reads current on the host (or a constant)
        for (int j = 0; j < s.op().inputs_size(); ++j)
          if (const int64_t id = s.op().inputs(j); valid(id)) {
            const bool constant = p.values(id).has_constant_section();
            where[j] = {true, int(p.values(id).type().dtype()), constant, (at[root[id]] & kDevice) != 0};
            hostToo[fi] = hostToo[fi] && (constant || (at[root[id]] & kHost));
          }
        device = opQualifies(s.op(), where) && out.gpuOps[fi];
      }
      out.device[fi] = device;
      const std::vector<int64_t> reads = stepReads(s);
      for (size_t j = steps[fi].view ? 1 : 0; j < reads.size() && !steps[fi].dimsOnly; ++j) {
        if (!valid(reads[j]) || p.values(reads[j]).has_constant_section())
          continue; // a device copy of a constant is made once, not per call
        if (device && s.has_op() && parameterInput(s.op(), int(j)))
          continue; // read on the host where it is
        uint8_t &where = at[root[reads[j]]];
        if (device && !(where & kDevice))
          ++out.uploads, where |= kDevice;
        else if (!device && !(where & kHost))
          ++out.downloads, where |= kHost, ++out.readers[stepName(s)];
      }
      for (uint32_t id : stepWrites(s))
        if (valid(id)) {
          if (steps[fi].view && !reads.empty() && reads[0] >= 0)
            root[id] = root[reads[0]];
          else
            at[id] = device ? kDevice : kHost;
        }
    }
    // What the device's dispatches read, and what the device's graph ops read to make it: a value is needed
    // there when a dispatch reads it or a graph op on the device reads it to make a needed one.
    std::vector<char> needed(p.values_size(), 0);
    for (size_t fi = n; fi-- > 0;) {
      const pb::Step &s = *steps[fi].step;
      if (!out.device[fi])
        continue;
      bool feeds = !s.has_op();
      for (uint32_t id : stepWrites(s))
        feeds = feeds || (valid(id) && needed[root[id]]);
      if (!feeds) {
        if (hostToo[fi])
          out.gpuOps[fi] = 0, again = true;
        continue;
      }
      const std::vector<int64_t> reads = stepReads(s);
      for (size_t j = 0; j < reads.size(); ++j)
        if (valid(reads[j]) && !(s.has_op() && parameterInput(s.op(), int(j))))
          needed[root[reads[j]]] = 1;
    }
  }
  for (uint32_t id : p.outputs())
    if (valid(id) && !(at[root[id]] & kHost))
      ++out.downloads, at[root[id]] |= kHost, ++out.readers["the caller (outputs)"];
  return out;
}

} // namespace gpu
} // namespace moert
