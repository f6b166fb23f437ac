//===- Sequence.cpp - ONNX sequences and optionals -----------------------===//
//
// Sequences are OpTensors of Kind::Sequence whose `elements` (shared, never changed once made) are tensors
// that own their bytes or borrow a run's inputs: a tensor that goes into a sequence is copied, as its buffer
// (in the run's arena, or the step's) is reused once its own value is dead. Optionals are their content, or
// Kind::None.
//
//===----------------------------------------------------------------------===//
#include "OpKernel.h"

namespace moert::ops {

namespace {

using Elements = std::vector<OpTensor>;

/// `t` in a block of its own (a tensor going into a sequence).
bool ownedCopy(Ctx &c, const OpTensor &t, OpTensor &out) {
  return out.copyOf(t) ||
         c.fail("cannot allocate " + dimsString(t.dims) + " " + dtypeName(t.dtype) + " (out of memory)");
}

void setSequence(OpTensor &out, Elements elements) {
  out.kind = OpTensor::Kind::Sequence;
  out.dims.clear();
  out.data = nullptr;
  out.owned.reset();
  out.capacity = 0;
  out.elements = std::make_shared<const Elements>(std::move(elements));
}

bool needSequence(Ctx &c, size_t i) {
  if (c.in.size() <= i || c.in[i].kind != OpTensor::Kind::Sequence || !c.in[i].elements)
    return c.fail("input " + std::to_string(i) + " must be a sequence");
  return true;
}

bool needTensor(Ctx &c, size_t i) {
  if (c.in.size() <= i || !c.in[i].present() || !c.in[i].isTensor())
    return c.fail("input " + std::to_string(i) + " must be a tensor");
  return true;
}

/// A position input (one int32 / int64 element) in [-n, n) (`n + 1` for an insert), made non-negative.
bool position(Ctx &c, size_t i, int64_t n, bool insert, int64_t &at) {
  const OpTensor &p = c.in[i];
  if (!p.isTensor() || (p.dtype != proto::I64 && p.dtype != proto::I32) || p.numel() != 1)
    return c.fail("position must hold one int32 or int64 element, it is " + dimsString(p.dims) + " " +
                  dtypeName(p.dtype));
  at = readInt(p, 0);
  const int64_t hi = insert ? n : n - 1;
  if (at < -n || at > hi)
    return c.fail("position " + std::to_string(at) + " is out of range for a sequence of " +
                  std::to_string(n) + " tensors");
  if (at < 0)
    at += n;
  return true;
}

} // namespace

bool identity(Ctx &c) {
  if (c.in.empty() || c.out.empty())
    return c.fail("needs one input and one output");
  if (!c.in[0].isTensor()) { // a sequence or an empty optional: the same value
    c.out[0] = c.in[0];
    return true;
  }
  return reshapeLike(c);
}

bool sequenceOp(Ctx &c) {
  const std::string &op = c.op();
  OpTensor &out = c.out[0];
  if (op == "SequenceEmpty") {
    setSequence(out, {});
    return true;
  }
  if (op == "SequenceConstruct") {
    Elements e(c.in.size());
    for (size_t i = 0; i < c.in.size(); ++i) {
      if (!needTensor(c, i))
        return false;
      if (c.in[i].dtype != out.dtype)
        return c.fail("input " + std::to_string(i) + " is " + dtypeName(c.in[i].dtype) + ", the sequence's " +
                      "tensors are " + dtypeName(out.dtype));
      if (!ownedCopy(c, c.in[i], e[i]))
        return false;
    }
    setSequence(out, std::move(e));
    return true;
  }
  if (op == "SplitToSequence") {
    if (!needTensor(c, 0))
      return false;
    const OpTensor &x = c.in[0];
    const int64_t rank = int64_t(x.dims.size());
    const int64_t axis = normAxis(c.a.i("axis", 0), rank);
    if (axis < 0)
      return c.fail("axis " + std::to_string(c.a.i("axis", 0)) + " is out of range for rank " +
                    std::to_string(rank));
    const int64_t len = x.dims[axis];
    Dims sizes;
    bool squeeze = false;
    if (c.in.size() > 1 && c.in[1].present()) {
      const OpTensor &s = c.in[1];
      if (s.dims.size() > 1 || (s.dtype != proto::I64 && s.dtype != proto::I32))
        return c.fail("split must be an int32 or int64 scalar or 1-D tensor");
      if (s.dims.empty()) { // chunks of that size, the last one smaller
        const int64_t each = readInt(s, 0);
        if (each <= 0)
          return c.fail("split " + std::to_string(each) + " must be positive");
        for (int64_t at = 0; at < len; at += each)
          sizes.push_back(std::min(each, len - at));
      } else {
        sizes = readInts(s);
        int64_t total = 0;
        for (int64_t v : sizes) {
          if (v < 0)
            return c.fail("split sizes " + dimsString(sizes) + " has a negative size");
          total += v;
        }
        if (total != len)
          return c.fail("split sizes " + dimsString(sizes) + " do not add up to the axis' " +
                        std::to_string(len));
      }
    } else { // one tensor per index, the axis dropped unless keepdims
      sizes.assign(size_t(len), 1);
      squeeze = c.a.i("keepdims", 1) == 0;
    }
    const size_t w = dtypeSize(x.dtype);
    const int64_t outer = product(x.dims, 0, axis), inner = product(x.dims, axis + 1);
    Elements e(sizes.size());
    int64_t at = 0;
    for (size_t k = 0; k < sizes.size(); ++k) {
      Dims d = x.dims;
      d[axis] = sizes[k];
      if (!e[k].alloc(x.dtype, d))
        return c.fail("out of memory");
      const int64_t block = sizes[k] * inner * int64_t(w);
      for (int64_t r = 0; r < outer; ++r)
        std::memcpy(e[k].mut<char>() + r * block, x.data + (r * len * inner + at) * int64_t(w),
                    size_t(block));
      if (squeeze)
        e[k].dims.erase(e[k].dims.begin() + axis);
      at += sizes[k] * inner;
    }
    setSequence(out, std::move(e));
    return true;
  }

  if (!needSequence(c, 0))
    return false;
  const Elements &seq = *c.in[0].elements;
  const int64_t n = int64_t(seq.size());
  if (op == "SequenceLength") {
    if (!c.alloc(0, {}))
      return false;
    *out.mut<int64_t>() = n;
    return true;
  }
  if (op == "SequenceAt") {
    int64_t at = 0;
    if (c.in.size() < 2 || !c.in[1].present())
      return c.fail("input 'position' is required");
    if (!position(c, 1, n, false, at))
      return false;
    const OpTensor &t = seq[size_t(at)];
    if (!c.alloc(0, t.dims))
      return false;
    if (t.bytes())
      std::memcpy(out.mut<char>(), t.data, t.bytes());
    return true;
  }
  if (op == "SequenceErase") {
    if (n == 0)
      return c.fail("cannot erase from an empty sequence");
    int64_t at = n - 1;
    if (c.in.size() > 1 && c.in[1].present() && !position(c, 1, n, false, at))
      return false;
    Elements e = seq;
    e.erase(e.begin() + at);
    setSequence(out, std::move(e));
    return true;
  }
  if (op == "SequenceInsert") {
    if (!needTensor(c, 1))
      return false;
    if (c.in[1].dtype != c.in[0].dtype)
      return c.fail("cannot insert a " + std::string(dtypeName(c.in[1].dtype)) +
                    " tensor into a sequence of " + dtypeName(c.in[0].dtype));
    int64_t at = n;
    if (c.in.size() > 2 && c.in[2].present() && !position(c, 2, n, true, at))
      return false;
    OpTensor t;
    if (!ownedCopy(c, c.in[1], t))
      return false;
    Elements e = seq;
    e.insert(e.begin() + at, std::move(t));
    setSequence(out, std::move(e));
    return true;
  }
  if (op == "ConcatFromSequence") {
    if (n == 0)
      return c.fail("cannot concatenate an empty sequence");
    const bool newAxis = c.a.i("new_axis", 0) != 0;
    const int64_t rank = int64_t(seq[0].dims.size()) + (newAxis ? 1 : 0);
    const int64_t axis = normAxis(c.a.i("axis", 0), rank);
    if (axis < 0)
      return c.fail("axis " + std::to_string(c.a.i("axis", 0)) + " is out of range for rank " +
                    std::to_string(rank));
    Elements parts = seq;
    for (OpTensor &t : parts) {
      if (t.dtype != out.dtype)
        return c.fail("the sequence holds " + std::string(dtypeName(t.dtype)) + " tensors, the result is " +
                      dtypeName(out.dtype));
      if (newAxis) {
        if (int64_t(t.dims.size()) + 1 != rank)
          return c.fail("tensors of ranks " + std::to_string(rank - 1) + " and " +
                        std::to_string(t.dims.size()));
        t.dims.insert(t.dims.begin() + axis, 1);
      }
    }
    std::vector<OpTensor> outs{out};
    Ctx inner{c.s, parts, outs, c.pool}; // Concat along `axis` (the step's own attribute)
    if (!concat(inner))
      return c.fail(inner.err);
    out = std::move(outs[0]);
    return true;
  }
  return c.fail("op " + op + " is not a sequence op");
}

bool optionalOp(Ctx &c) {
  const std::string &op = c.op();
  OpTensor &out = c.out[0];
  const bool given = !c.in.empty() && c.in[0].present();
  if (op == "Optional") {
    if (!given) {
      out.kind = OpTensor::Kind::None;
      return true;
    }
    out = c.in[0];
    return true;
  }
  if (op == "OptionalHasElement") {
    if (!c.alloc(0, {}))
      return false;
    *out.mut<uint8_t>() = given && c.in[0].kind != OpTensor::Kind::None;
    return true;
  }
  // OptionalGetElement
  if (!given)
    return c.fail("input 0 is required");
  if (c.in[0].kind == OpTensor::Kind::None)
    return c.fail("the optional holds no value");
  out = c.in[0];
  return true;
}

} // namespace moert::ops
