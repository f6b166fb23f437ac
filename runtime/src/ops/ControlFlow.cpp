//===- ControlFlow.cpp - ONNX If, Loop and Scan ------------------------------===//
//
// A control-flow op step carries its subgraphs as blocks of steps (artifact.proto `Block`); the run loop
// (Runtime.cpp) runs a block when asked (`runBlock`). Here: which block runs, how often, what it is given
// (Loop's iteration number and condition, Scan's slices) and how its outputs become the op's (the last
// iteration's carried values; scan outputs stacked along an axis).
//
//===----------------------------------------------------------------------===//
#include "OpKernel.h"

namespace moert {

int controlFlowBlocks(const std::string &op) {
  if (op == "If")
    return 2;
  if (op == "Loop" || op == "Scan" || op == "SequenceMap")
    return 1;
  return 0;
}

namespace {

using ops::Dims;

/// One element of a bool / integer / float tensor as a truth value.
bool truth(const OpTensor &t) { return ops::readDouble(t, 0) != 0; }

OpTensor scalar(int dtype, int64_t value) {
  OpTensor t;
  t.alloc(dtype, {});
  if (dtype == proto::I64)
    *t.mut<int64_t>() = value;
  else
    *t.mut<uint8_t>() = uint8_t(value != 0);
  return t;
}

/// Slice `index` of `t` along `axis` (the axis dropped), copied.
bool sliceAlong(const OpTensor &t, int64_t axis, int64_t index, OpTensor &out) {
  Dims d = t.dims;
  const int64_t outer = ops::product(d, 0, axis), n = d[axis];
  const size_t inner = size_t(ops::product(d, axis + 1)) * dtypeSize(t.dtype);
  d.erase(d.begin() + axis);
  if (!out.alloc(t.dtype, d))
    return false;
  for (int64_t o = 0; o < outer; ++o)
    std::memcpy(out.mut<char>() + o * inner, t.data + (o * n + index) * inner, inner);
  return true;
}

/// `slices` (equal shapes) stacked along a new axis `axis`; `reverse` stacks them last first.
std::string stack(const std::vector<OpTensor> &slices, int64_t axis, bool reverse, int dtype,
                  const Dims &empty, OpTensor &out) {
  if (slices.empty()) { // no iteration ran: an empty tensor of the type's other dims
    Dims d = empty;
    d.insert(d.begin() + std::min<int64_t>(axis, int64_t(d.size())), 0);
    return out.alloc(dtype, d) ? "" : "out of memory";
  }
  for (const OpTensor &t : slices)
    if (!t.isTensor())
      return "a scan output slice is a sequence or optional; scan outputs stack tensors";
  const Dims &s = slices[0].dims;
  for (const OpTensor &t : slices)
    if (t.dims != s || t.dtype != dtype)
      return "scan output slices differ in shape or dtype between iterations (" + dimsString(s) + " and " +
             dimsString(t.dims) + ")";
  if (axis < 0 || axis > int64_t(s.size()))
    return "scan output axis " + std::to_string(axis) + " is out of range for slices of rank " +
           std::to_string(s.size());
  Dims d = s;
  const int64_t n = int64_t(slices.size());
  d.insert(d.begin() + axis, n);
  if (!out.alloc(dtype, d))
    return "out of memory";
  const int64_t outer = ops::product(s, 0, axis);
  const size_t inner = size_t(ops::product(s, axis)) * dtypeSize(dtype);
  for (int64_t k = 0; k < n; ++k) {
    const OpTensor &t = slices[reverse ? n - 1 - k : k];
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(out.mut<char>() + (o * n + k) * inner, t.data + o * inner, inner);
  }
  return "";
}

} // namespace

std::string runControlFlow(
    const proto::OpStep &s, const std::vector<OpTensor> &in, std::vector<OpTensor> &out,
    const std::function<std::string(int, const std::vector<OpTensor> &, std::vector<OpTensor> &)> &runBlock,
    bool &blockError) {
  blockError = false;
  auto block = [&](int b, const std::vector<OpTensor> &bound, std::vector<OpTensor> &yielded) {
    std::string why = runBlock(b, bound, yielded);
    blockError = !why.empty();
    return why;
  };
  auto takeOutputs = [&](std::vector<OpTensor> &from, size_t first) -> std::string {
    for (size_t k = 0; k < out.size(); ++k) {
      if (first + k >= from.size())
        return "the block yields too few values";
      if (from[first + k].dtype != out[k].dtype)
        return "output " + std::to_string(k) + " is " + dtypeName(from[first + k].dtype) + ", expected " +
               dtypeName(out[k].dtype);
      out[k] = std::move(from[first + k]);
    }
    return "";
  };
  const ops::Attrs attrs{s};

  if (s.op() == "If") {
    if (in.empty() || !in[0].present() || !in[0].isTensor() || in[0].numel() != 1)
      return "the condition must hold one element, it has shape " +
             dimsString(in.empty() ? Dims{} : in[0].dims);
    std::vector<OpTensor> yielded;
    if (std::string why = block(truth(in[0]) ? 0 : 1, {}, yielded); !why.empty())
      return why;
    return takeOutputs(yielded, 0);
  }

  if (s.op() == "Loop") {
    // inputs: M (or absent), cond (or absent), the carried values; the body yields cond, carried, scans.
    const bool hasTrip = in.size() > 0 && in[0].present(), hasCond = in.size() > 1 && in[1].present();
    for (int k : {0, 1})
      if (int(in.size()) > k && in[k].present() && (!in[k].isTensor() || in[k].numel() != 1))
        return std::string(k ? "the condition" : "the trip count M") +
               " must hold one element, it has shape " + dimsString(in[k].dims);
    const int64_t trip = hasTrip ? ops::readInt(in[0], 0) : INT64_MAX;
    bool cond = hasCond ? truth(in[1]) : true;
    const size_t carried = in.size() > 2 ? in.size() - 2 : 0;
    if (out.size() < carried)
      return "has fewer outputs than carried values";
    const size_t scans = out.size() - carried;
    std::vector<OpTensor> state(in.begin() + std::min<size_t>(2, in.size()), in.end());
    std::vector<std::vector<OpTensor>> slices(scans);
    for (int64_t i = 0; i < trip && cond; ++i) {
      std::vector<OpTensor> bound{scalar(proto::I64, i), scalar(proto::BOOL, cond)};
      bound.insert(bound.end(), state.begin(), state.end());
      std::vector<OpTensor> yielded;
      if (std::string why = block(0, bound, yielded); !why.empty())
        return why;
      if (yielded.size() != 1 + carried + scans)
        return "the body yields " + std::to_string(yielded.size()) + " values, expected " +
               std::to_string(1 + carried + scans);
      if (!yielded[0].isTensor() || yielded[0].numel() != 1)
        return "the body's condition must hold one element, it has shape " + dimsString(yielded[0].dims);
      cond = truth(yielded[0]);
      for (size_t k = 0; k < carried; ++k)
        state[k] = std::move(yielded[1 + k]);
      for (size_t k = 0; k < scans; ++k)
        slices[k].push_back(std::move(yielded[1 + carried + k]));
    }
    for (size_t k = 0; k < carried; ++k) {
      if (state[k].dtype != out[k].dtype)
        return "carried value " + std::to_string(k) + " is " + dtypeName(state[k].dtype) + ", expected " +
               dtypeName(out[k].dtype);
      out[k] = std::move(state[k]);
    }
    for (size_t k = 0; k < scans; ++k)
      if (std::string why = stack(slices[k], 0, false, out[carried + k].dtype, {}, out[carried + k]);
          !why.empty())
        return "scan output " + std::to_string(k) + ": " + why;
    return "";
  }

  if (s.op() == "SequenceMap") {
    // The body once per position of input 0; sequence inputs give their element there, tensors themselves.
    if (in.empty() || in[0].kind != OpTensor::Kind::Sequence || !in[0].elements)
      return "input 0 must be a sequence";
    const size_t n = in[0].elements->size();
    for (size_t j = 0; j < in.size(); ++j) {
      if (in[j].kind == OpTensor::Kind::None || !in[j].present())
        return "input " + std::to_string(j) + " holds no value";
      if (in[j].kind == OpTensor::Kind::Sequence && in[j].elements->size() != n)
        return "input " + std::to_string(j) + " holds " + std::to_string(in[j].elements->size()) +
               " tensors, input 0 " + std::to_string(n);
    }
    std::vector<std::vector<OpTensor>> results(out.size());
    for (size_t i = 0; i < n; ++i) {
      std::vector<OpTensor> bound;
      for (const OpTensor &t : in)
        bound.push_back(t.kind == OpTensor::Kind::Sequence ? (*t.elements)[i] : t);
      std::vector<OpTensor> yielded;
      if (std::string why = block(0, bound, yielded); !why.empty())
        return why;
      if (yielded.size() != out.size())
        return "the body yields " + std::to_string(yielded.size()) + " values, expected " +
               std::to_string(out.size());
      for (size_t k = 0; k < out.size(); ++k) {
        const OpTensor &y = yielded[k];
        if (!y.isTensor() || y.dtype != out[k].dtype)
          return "the body's output " + std::to_string(k) + " is not a " + dtypeName(out[k].dtype) +
                 " tensor";
        OpTensor copy; // the body's values are gone after it (and may be in the run's arena)
        if (!copy.copyOf(y))
          return "out of memory";
        results[k].push_back(std::move(copy));
      }
    }
    for (size_t k = 0; k < out.size(); ++k) {
      const int dtype = out[k].dtype;
      out[k] = OpTensor{};
      out[k].dtype = dtype;
      out[k].kind = OpTensor::Kind::Sequence;
      out[k].elements = std::make_shared<const std::vector<OpTensor>>(std::move(results[k]));
    }
    return "";
  }

  if (s.op() == "Scan") {
    for (size_t j = 0; j < in.size(); ++j)
      if (!in[j].isTensor())
        return "input " + std::to_string(j) + " is a sequence or optional; Scan takes tensors";
    const int64_t numScans = attrs.i("num_scan_inputs", 0);
    const int64_t states = int64_t(in.size()) - numScans;
    if (numScans < 1 || states < 0)
      return "num_scan_inputs = " + std::to_string(numScans) + " with " + std::to_string(in.size()) +
             " inputs";
    const int64_t scanOuts = int64_t(out.size()) - states;
    if (scanOuts < 0)
      return "has fewer outputs than states";
    auto listOr = [&](const char *name, int64_t n) {
      Dims v = attrs.ints(name);
      v.resize(size_t(n), 0);
      return v;
    };
    const Dims inDirs = listOr("scan_input_directions", numScans);
    const bool batched = attrs.i("batched", 0) != 0;
    // One scan over `ins` (states, then scan inputs) into `outs` (final states, then scan outputs).
    auto scan = [&](const std::vector<OpTensor> &ins, std::vector<OpTensor> &outs) -> std::string {
      Dims inAxes = batched ? Dims(size_t(numScans), 0) : listOr("scan_input_axes", numScans),
           outAxes = batched ? Dims(size_t(scanOuts), 0) : listOr("scan_output_axes", scanOuts),
           outDirs = batched ? Dims(size_t(scanOuts), 0) : listOr("scan_output_directions", scanOuts);
      int64_t length = -1;
      for (int64_t j = 0; j < numScans; ++j) {
        const OpTensor &t = ins[states + j];
        const int64_t rank = int64_t(t.dims.size());
        if (inAxes[j] < 0)
          inAxes[j] += rank;
        if (inAxes[j] < 0 || inAxes[j] >= rank)
          return "scan input " + std::to_string(j) + ": axis out of range for shape " + dimsString(t.dims);
        const int64_t n = t.dims[inAxes[j]];
        if (length >= 0 && n != length)
          return "scan inputs have different lengths (" + std::to_string(length) + " and " +
                 std::to_string(n) + ")";
        length = n;
      }
      std::vector<OpTensor> state(ins.begin(), ins.begin() + states);
      std::vector<std::vector<OpTensor>> slices(scanOuts);
      for (int64_t i = 0; i < length; ++i) {
        std::vector<OpTensor> bound = state;
        for (int64_t j = 0; j < numScans; ++j) {
          const OpTensor &t = ins[states + j];
          OpTensor slice;
          if (!sliceAlong(t, inAxes[j], inDirs[j] ? length - 1 - i : i, slice))
            return "out of memory";
          bound.push_back(std::move(slice));
        }
        std::vector<OpTensor> yielded;
        if (std::string why = block(0, bound, yielded); !why.empty())
          return why;
        if (int64_t(yielded.size()) != states + scanOuts)
          return "the body yields " + std::to_string(yielded.size()) + " values, expected " +
                 std::to_string(states + scanOuts);
        for (int64_t k = 0; k < states; ++k)
          state[k] = std::move(yielded[k]);
        for (int64_t k = 0; k < scanOuts; ++k)
          slices[k].push_back(std::move(yielded[states + k]));
      }
      for (int64_t k = 0; k < states; ++k) {
        if (state[k].dtype != outs[k].dtype)
          return "state " + std::to_string(k) + " is " + dtypeName(state[k].dtype) + ", expected " +
                 dtypeName(outs[k].dtype);
        outs[k] = std::move(state[k]);
      }
      for (int64_t k = 0; k < scanOuts; ++k) {
        OpTensor &o = outs[states + k];
        int64_t axis = outAxes[k];
        const int64_t rank = slices[k].empty() ? 0 : int64_t(slices[k][0].dims.size()) + 1;
        if (axis < 0)
          axis += rank;
        if (std::string why = stack(slices[k], axis, outDirs[k] != 0, o.dtype, {}, o); !why.empty())
          return "scan output " + std::to_string(k) + ": " + why;
      }
      return "";
    };
    if (!batched)
      return scan(in, out);
    // Scan-8: one scan per batch entry, results stacked along a new batch dim.
    int64_t batch = -1;
    for (const OpTensor &t : in) {
      if (t.dims.empty())
        return "Scan-8's inputs need a batch dim first";
      if (batch >= 0 && t.dims[0] != batch)
        return "Scan-8's inputs have different batch sizes (" + std::to_string(batch) + " and " +
               std::to_string(t.dims[0]) + ")";
      batch = t.dims[0];
    }
    std::vector<std::vector<OpTensor>> perEntry(out.size());
    for (int64_t b = 0; b < batch; ++b) {
      std::vector<OpTensor> ins(in.size()), outs(out.size());
      for (size_t j = 0; j < in.size(); ++j)
        if (!sliceAlong(in[j], 0, b, ins[j]))
          return "out of memory";
      for (size_t k = 0; k < out.size(); ++k)
        outs[k].dtype = out[k].dtype;
      if (std::string why = scan(ins, outs); !why.empty())
        return why;
      for (size_t k = 0; k < out.size(); ++k)
        perEntry[k].push_back(std::move(outs[k]));
    }
    for (size_t k = 0; k < out.size(); ++k)
      if (std::string why = stack(perEntry[k], 0, false, out[k].dtype, {}, out[k]); !why.empty())
        return "output " + std::to_string(k) + ": " + why;
    return "";
  }
  return "is not a control-flow op";
}

} // namespace moert
