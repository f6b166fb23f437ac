//===- OpKernel.h - what libmoert's op kernels share (runtime/src/ops/*.cpp) ---===//
//
// Internal to libmoert: the run-time context of one op step (`Ctx`: inputs, outputs, attributes, errors),
// f16/bf16 conversions, dtype dispatch, attribute access and NumPy broadcasting, and the op functions of each
// family (ops/Elementwise.cpp, ops/Reduce.cpp, ops/Linalg.cpp, ops/Movement.cpp), which Ops.cpp's table maps
// op names to (resolved once per step at load).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SRC_OPS_OPKERNEL_H
#define MOERT_SRC_OPS_OPKERNEL_H

#include "../Ops.h"
#include "../ThreadPool.h"
#include "kernels/cpu/moert_kernel_abi.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

namespace moert::ops {

using proto::Attribute;
using proto::OpStep;

using Dims = std::vector<int64_t>;

inline int64_t product(const Dims &d, size_t from = 0, size_t to = SIZE_MAX) {
  int64_t n = 1;
  for (size_t i = from; i < std::min(to, d.size()); ++i)
    n *= d[i];
  return n;
}

// ---- f16 / bf16
// --------------------------------------------------------------------------------------------

inline float halfToFloat(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { // subnormal: normalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while (!(man & 0x400));
      bits = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | man << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t floatToHalf(float f) { return moert_f32_to_f16(f); }

inline float bf16ToFloat(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t floatToBf16(float f) { return moert_f32_to_bf16(f); }

inline bool isHalf(int dt) { return dt == proto::F16 || dt == proto::BF16; }

inline OpTensor widen(const OpTensor &t) {
  OpTensor w;
  if (!w.alloc(proto::F32, t.dims))
    return w;
  const uint16_t *src = t.as<uint16_t>();
  float *dst = w.mut<float>();
  for (int64_t i = 0, n = t.numel(); i < n; ++i)
    dst[i] = t.dtype == proto::F16 ? halfToFloat(src[i]) : bf16ToFloat(src[i]);
  return w;
}

/// n floats rounded to nearest even into f16 or bf16 (dt).
inline void narrowInto(const float *src, int64_t n, int dt, uint16_t *dst) {
  if (dt == proto::F16)
    for (int64_t i = 0; i < n; ++i)
      dst[i] = floatToHalf(src[i]);
  else
    for (int64_t i = 0; i < n; ++i)
      dst[i] = floatToBf16(src[i]);
}

inline bool narrow(const OpTensor &t, int dt, OpTensor &out) {
  if (!out.alloc(dt, t.dims))
    return false;
  narrowInto(t.as<float>(), t.numel(), dt, out.mut<uint16_t>());
  return true;
}

// ---- dtype dispatch
// ----------------------------------------------------------------------------------------

template <class F> bool withFloat(int dt, F &&f) {
  switch (dt) {
  case proto::F32:
    f(float{});
    return true;
  case proto::F64:
    f(double{});
    return true;
  default:
    return false;
  }
}

template <class F> bool withInt(int dt, F &&f) {
  switch (dt) {
  case proto::I64:
    f(int64_t{});
    return true;
  case proto::I32:
    f(int32_t{});
    return true;
  case proto::I16:
    f(int16_t{});
    return true;
  case proto::I8:
    f(int8_t{});
    return true;
  case proto::U64:
    f(uint64_t{});
    return true;
  case proto::U32:
    f(uint32_t{});
    return true;
  case proto::U16:
    f(uint16_t{});
    return true;
  case proto::U8:
    f(uint8_t{});
    return true;
  default:
    return false;
  }
}

template <class F> bool withNum(int dt, F &&f) { return withFloat(dt, f) || withInt(dt, f); }

template <class F> bool withAny(int dt, F &&f) {
  if (dt == proto::BOOL) {
    f(bool{});
    return true;
  }
  return withNum(dt, f);
}

/// Element `i` of a numeric tensor as double / int64 (index and scalar inputs of any integer or float type).
inline double readDouble(const OpTensor &t, int64_t i) {
  double v = 0;
  if (isHalf(t.dtype))
    return t.dtype == proto::F16 ? halfToFloat(t.as<uint16_t>()[i]) : bf16ToFloat(t.as<uint16_t>()[i]);
  withAny(t.dtype, [&](auto tag) { v = static_cast<double>(t.as<decltype(tag)>()[i]); });
  return v;
}

/// Stores `v` as element `i` of a numeric tensor (f16 / bf16 rounded to nearest even); false for another
/// dtype.
inline bool writeDouble(OpTensor &t, int64_t i, double v) {
  if (isHalf(t.dtype)) {
    float f = float(v);
    narrowInto(&f, 1, t.dtype, t.mut<uint16_t>() + i);
    return true;
  }
  return withNum(t.dtype, [&](auto tag) { t.mut<decltype(tag)>()[i] = static_cast<decltype(tag)>(v); });
}

inline int64_t readInt(const OpTensor &t, int64_t i) {
  int64_t v = 0;
  if (t.dtype == proto::I64)
    return t.as<int64_t>()[i];
  if (t.dtype == proto::I32)
    return t.as<int32_t>()[i];
  if (!withInt(t.dtype, [&](auto tag) { v = static_cast<int64_t>(t.as<decltype(tag)>()[i]); }))
    v = static_cast<int64_t>(readDouble(t, i));
  return v;
}

inline std::vector<int64_t> readInts(const OpTensor &t) {
  std::vector<int64_t> v(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i)
    v[i] = readInt(t, i);
  return v;
}

// ---- attributes
// --------------------------------------------------------------------------------------------

struct Attrs {
  const OpStep &s;
  const Attribute *find(const char *name) const {
    for (const auto &a : s.attributes())
      if (a.name() == name)
        return &a;
    return nullptr;
  }
  int64_t i(const char *name, int64_t def) const {
    const Attribute *a = find(name);
    return a && a->ints_size() ? a->ints(0) : def;
  }
  double f(const char *name, double def) const {
    const Attribute *a = find(name);
    return a && a->floats_size() ? a->floats(0) : def;
  }
  std::string str(const char *name, const char *def) const {
    const Attribute *a = find(name);
    return a ? a->s() : def;
  }
  Dims ints(const char *name) const {
    const Attribute *a = find(name);
    return a ? Dims(a->ints().begin(), a->ints().end()) : Dims{};
  }
  std::vector<double> floats(const char *name) const {
    const Attribute *a = find(name);
    return a ? std::vector<double>(a->floats().begin(), a->floats().end()) : std::vector<double>{};
  }
  std::vector<std::string> strings(const char *name) const {
    const Attribute *a = find(name);
    return a ? std::vector<std::string>(a->strings().begin(), a->strings().end())
             : std::vector<std::string>{};
  }
};

/// `axis` in [-rank, rank) normalised, or -1 when out of range.
inline int64_t normAxis(int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= rank)
    return -1;
  return axis < 0 ? axis + rank : axis;
}

// ---- broadcasting
// ------------------------------------------------------------------------------------------

struct Broadcast {
  Dims dims;                 // the output's
  std::vector<Dims> strides; // per input, in elements, 0 along broadcast dims
};

inline bool broadcast(const std::vector<const Dims *> &shapes, Broadcast &b, std::string &error) {
  size_t rank = 0;
  for (auto *s : shapes)
    rank = std::max(rank, s->size());
  b.dims.assign(rank, 1);
  for (size_t k = 0; k < rank; ++k) {
    int64_t d = 1;
    for (auto *s : shapes) {
      int64_t x = k < s->size() ? (*s)[s->size() - 1 - k] : 1;
      if (x == 1)
        continue;
      if (d != 1 && x != d) {
        error = "shapes";
        for (auto *t : shapes)
          error += " " + dimsString(*t);
        error += " do not broadcast";
        return false;
      }
      d = x;
    }
    b.dims[rank - 1 - k] = d;
  }
  b.strides.clear();
  for (auto *s : shapes) {
    Dims st(rank, 0);
    int64_t acc = 1;
    for (size_t k = 0; k < s->size(); ++k) {
      size_t i = s->size() - 1 - k;
      st[rank - 1 - k] = (*s)[i] == 1 ? 0 : acc;
      acc *= (*s)[i];
    }
    b.strides.push_back(std::move(st));
  }
  return true;
}

/// Calls f(o, p) for every output element o, with p[k] the offset of input k.
template <size_t N, class F> void forEach(const Broadcast &b, F &&f) {
  int64_t total = product(b.dims);
  if (total == 0)
    return;
  size_t rank = b.dims.size();
  int64_t p[N] = {};
  if (rank == 0) {
    f(int64_t(0), p);
    return;
  }
  int64_t inner = b.dims[rank - 1], step[N];
  for (size_t k = 0; k < N; ++k)
    step[k] = b.strides[k][rank - 1];
  Dims idx(rank, 0);
  int64_t base[N] = {};
  for (int64_t o = 0; o < total; o += inner) {
    for (size_t k = 0; k < N; ++k)
      p[k] = base[k];
    for (int64_t j = 0; j < inner; ++j) {
      f(o + j, p);
      for (size_t k = 0; k < N; ++k)
        p[k] += step[k];
    }
    for (size_t d = rank - 1; d-- > 0;) { // odometer over the outer dims
      for (size_t k = 0; k < N; ++k)
        base[k] += b.strides[k][d];
      if (++idx[d] < b.dims[d])
        break;
      for (size_t k = 0; k < N; ++k)
        base[k] -= b.strides[k][d] * b.dims[d];
      idx[d] = 0;
    }
  }
}

/// Row-major element strides of `d`.
inline Dims stridesOf(const Dims &d) {
  Dims s(d.size(), 1);
  for (size_t i = d.size(); i-- > 1;)
    s[i - 1] = s[i] * d[i];
  return s;
}

// ---- the ops
// -----------------------------------------------------------------------------------------------

struct Ctx {
  const OpStep &s;
  const std::vector<OpTensor> &in;
  std::vector<OpTensor> &out;
  ThreadPool *pool;
  Attrs a{s};
  std::string err;

  Ctx(const OpStep &step, const std::vector<OpTensor> &i, std::vector<OpTensor> &o, ThreadPool *p)
      : s(step), in(i), out(o), pool(p) {}

  const std::string &op() const { return s.op(); }
  bool fail(std::string m) {
    err = std::move(m);
    return false;
  }
  bool need(size_t n) {
    if (in.size() < n)
      return fail("needs " + std::to_string(n) + " inputs, has " + std::to_string(in.size()));
    for (size_t i = 0; i < n; ++i)
      if (!in[i].present())
        return fail("input " + std::to_string(i) + " is required");
    if (out.empty())
      return fail("has no output");
    return true;
  }
  bool alloc(size_t i, Dims d) {
    if (!out[i].alloc(out[i].dtype, std::move(d)))
      return fail("cannot allocate " + dimsString(out[i].dims) + " " + dtypeName(out[i].dtype) +
                  " (out of memory)");
    return true;
  }
  bool badType(const OpTensor &t) {
    return fail(std::string("has no kernel for dtype ") + dtypeName(t.dtype));
  }
  /// Output 0 aliases input 0's bytes under new dims.
  void alias(Dims d) {
    out[0].dims = std::move(d);
    out[0].data = in[0].data;
    out[0].owned = in[0].owned;
  }
};

// ---- the op functions, by family: true on success, else false with c.err set ---------------------------

// Elementwise.cpp
bool binary(Ctx &c);
bool cast(Ctx &c);
bool clip(Ctx &c);
bool isNaN(Ctx &c);
bool notOp(Ctx &c);
bool unary(Ctx &c);
bool variadicMinMax(Ctx &c);
bool where(Ctx &c);
bool quantizeLinear(Ctx &c);
// Reduce.cpp
bool argmax(Ctx &c);
bool cumsum(Ctx &c);
bool layerNorm(Ctx &c);
bool reduce(Ctx &c);
bool softmax(Ctx &c);
bool topk(Ctx &c);
bool hardmax(Ctx &c);
bool channelNorm(Ctx &c);
bool lrn(Ctx &c);
bool unique(Ctx &c);
// Fused.cpp
bool fusedNorm(Ctx &c);
bool fusedRotary(Ctx &c);
// Linalg.cpp
bool conv(Ctx &c);
bool einsum(Ctx &c);
bool gemm(Ctx &c);
bool matmul(Ctx &c);
bool matmulInteger(Ctx &c);
bool pool(Ctx &c);
bool convTranspose(Ctx &c);
bool det(Ctx &c);
bool maxUnpool(Ctx &c);
bool nonMaxSuppression(Ctx &c);
bool optimizer(Ctx &c); // Adagrad, Momentum, Adam
bool recurrent(Ctx &c); // RNN, GRU, LSTM
bool dft(Ctx &c);       // ops/Signal.cpp
bool stft(Ctx &c);
bool melWeightMatrix(Ctx &c);
bool gridSample(Ctx &c); // ops/Vision.cpp
bool roiAlign(Ctx &c);
bool tfIdfVectorizer(Ctx &c); // ops/Text.cpp
bool randomOp(Ctx &c);        // ops/Random.cpp: RandomUniform / RandomNormal (and *Like)
bool dropoutOp(Ctx &c);       // training-mode Dropout
// Movement.cpp
bool concat(Ctx &c);
bool constantOfShape(Ctx &c);
bool embedding(Ctx &c);
bool kvCacheUpdate(Ctx &c);
bool expand(Ctx &c);
bool gather(Ctx &c);
bool gatherElements(Ctx &c);
bool gatherND(Ctx &c);
bool oneHot(Ctx &c);
bool range(Ctx &c);
bool reshapeLike(Ctx &c);
bool scatter(Ctx &c);
bool shapeOp(Ctx &c);
bool slice(Ctx &c);
bool split(Ctx &c);
bool transpose(Ctx &c);
bool trilu(Ctx &c);
bool tile(Ctx &c);
bool depthToSpace(Ctx &c);
bool compress(Ctx &c);
bool nonZero(Ctx &c);
bool eyeLike(Ctx &c);
bool pad(Ctx &c);
bool reverseSequence(Ctx &c);
bool resize(Ctx &c);

// Sequence.cpp
bool identity(Ctx &c); // any value: a tensor as reshapeLike, a sequence or empty optional as it is
bool sequenceOp(Ctx &c);
bool optionalOp(Ctx &c);

} // namespace moert::ops

#endif // MOERT_SRC_OPS_OPKERNEL_H
