//===- GpuPlan.h - which steps of a program run on a GPU, and what crosses ---===//
//
// The rules that decide where a step runs when a model is loaded for a GPU, written over the artifact's
// program alone (no driver, no device): libmoert's run loop and its load-time plan (`moert inspect`) ask
// them, and moec reports at compile time, for a GPU target, the steps that would bring values back to the
// host each call. Built into libmoert and into moec (runtime/CMakeLists.txt: MoertGpuPlan).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SRC_GPU_PLAN_H
#define MOERT_SRC_GPU_PLAN_H

#include "runtime/artifact.pb.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moert {

/// The values a step reads (an op's inputs, those of the steps in its blocks and the blocks' results; a
/// dispatch's input, logits, residual, ...), -1 for an absent optional one; and the values it writes.
std::vector<int64_t> stepReads(const proto::Step &s);
std::vector<uint32_t> stepWrites(const proto::Step &s);

namespace gpu {

/// Which graph-op kernels (kernels/hip/ops_gpu.h) a GPU code object has.
struct OpKernels {
  bool strided = false, reduce = false, conv = false, topk = false, rotary = false, norm = false,
       embedding = false;
};

/// The strided kernel's kind for an elementwise op name (MOERT_GPU_OP_*), or -1.
int elementwiseKind(const std::string &op);
/// The reduce kernel's kind for a reduction or softmax op name (MOERT_GPU_RED_*), or -1.
int reduceKind(const std::string &op);

/// An op step the graph-op kernels may run, in artifacts whose GPU code has them: the f32 elementwise ops
/// (Add, Sub, Mul, Div, Pow, Max, Min, PRelu with broadcasting; the unary ops and activations of
/// elementwiseKind), Transpose, Concat, Slice, Split, Expand, Gather, the reductions (ReduceSum, ReduceMean,
/// ReduceMax, ReduceMin, ReduceL1, ReduceL2, ReduceSumSquare, ReduceLogSumExp), Softmax and LogSoftmax, Conv
/// (1 to 3 spatial dims), with f32 outputs; TopK (f32 values, int64 indices); moec.Rotary, moec.Norm and
/// moec.Embedding. It runs there when every input qualifies (opQualifies), the load-time plan keeps it there
/// (planPlacement) and planOp plans its shapes.
bool graphOpCandidate(const OpKernels &k, const proto::Program &p, const proto::Step &s);
/// Where a candidate's input is (absent: present false; dtype a proto::DType).
struct OpInput {
  bool present = false;
  int dtype = -1;
  bool constant = false, onDevice = false;
};
/// Whether a candidate may run on the device, given its inputs: each present, of a dtype the kernel takes
/// (f32, but moec.Embedding's table in its storage and its int64 / int32 indices: planOp checks those) and a
/// side input, a parameter, a constant or already on the device; absent only where it is a side input or a
/// parameter. Side inputs may be uploaded rather than be there already: moec.Rotary's cos / sin tables and
/// norm weight, moec.Norm's weight and bias (small; the row input decides), every input of moec.Embedding
/// (its table a constant, uploaded once; its indices from the host, a few bytes for a row of H floats).
/// Parameters are read on the host by planOp: Slice's starts / ends / axes / steps, Split's sizes, Expand's
/// shape, Gather's indices, a reduction's axes, TopK's k (integers: never on the device), Clip's bounds
/// (constants).
bool opQualifies(const proto::OpStep &op, const std::vector<OpInput> &in);
/// Whether input k of a candidate is a parameter (above): read on the host, never copied to the device.
bool parameterInput(const proto::OpStep &op, int k);

/// A step as the plan sees it: a dispatch the device has kernels for, a view (its output shares its first
/// input's bytes: neither read nor written), or an op that reads only its inputs' dims (Shape).
struct PlanStep {
  const proto::Step *step = nullptr;
  bool dispatch = false, view = false, dimsOnly = false;
};
/// Where each step runs and what one call copies, as the run's Residency will make them when every shape
/// plans (the steps in program order, a control-flow block's after its op). `gpuOps[i]`: whether step i is a
/// graph op (graphOpCandidate) that may run on the device: not when its inputs are all current on the host
/// (constants, host values, values copied up for another step) and its result feeds no dispatch on the device
/// (through graph ops there), e.g. a Gather of constant expert weights for a MatMul the host runs; the plan
/// is made again without such steps until every one left does. `readers`: the host steps (by op, or "the
/// caller (outputs)") that bring a device value back.
struct Placement {
  std::vector<char> device, gpuOps;
  int uploads = 0, downloads = 0;
  std::map<std::string, int> readers;
};
Placement planPlacement(const proto::Program &p, const std::vector<PlanStep> &steps, const OpKernels &k);

} // namespace gpu
} // namespace moert

#endif // MOERT_SRC_GPU_PLAN_H
