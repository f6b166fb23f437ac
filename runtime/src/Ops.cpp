//===- Ops.cpp - libmoert's kernels for the graph ops around MoE dispatches --===//
//
// Plain loops over run-time shapes: the time of a MoE model is in its dispatches, so these aim at being
// correct for every dtype and shape ONNX allows (NumPy broadcasting, negative axes and indices, empty
// tensors) and at failing with a message, never a crash, on bad indices or shapes. MatMul, the one op that
// can matter for time (attention, router MLPs), is cache-friendly and runs on the thread pool.
//
//===----------------------------------------------------------------------===//
#include "Ops.h"
#include "ThreadPool.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <type_traits>

namespace moert {

using proto::Attribute;
using proto::OpStep;

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
  void *p = nullptr;
  if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0)
    return false;
  owned = std::shared_ptr<char>(static_cast<char *>(p), [](char *q) { std::free(q); });
  data = owned.get();
  return true;
}

namespace {

using Dims = std::vector<int64_t>;

int64_t product(const Dims &d, size_t from = 0, size_t to = SIZE_MAX) {
  int64_t n = 1;
  for (size_t i = from; i < std::min(to, d.size()); ++i)
    n *= d[i];
  return n;
}

// ---- f16 / bf16 --------------------------------------------------------------------------------------------

float halfToFloat(uint16_t h) {
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

uint16_t floatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint16_t sign = uint16_t((x >> 16) & 0x8000);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) // inf or NaN
    return uint16_t(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
  if (ax >= 0x477ff000u) // rounds to >= 65520: inf
    return uint16_t(sign | 0x7c00);
  if (ax < 0x38800000u) { // subnormal half (or zero): round to nearest even at 2^-24
    float v;
    std::memcpy(&v, &ax, 4);
    float scaled = v * 16777216.0f; // exact: v / 2^-24
    float r = std::nearbyint(scaled);
    return uint16_t(sign | uint16_t(r));
  }
  uint32_t e = (ax >> 23) - 127 + 15, m = ax & 0x7fffff;
  uint32_t h = e << 10 | m >> 13, rest = m & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
    ++h;
  return uint16_t(sign | h);
}

float bf16ToFloat(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t floatToBf16(float f) {
  uint32_t w;
  std::memcpy(&w, &f, 4);
  if (std::isnan(f))
    return uint16_t((w >> 16) | 0x40);
  return uint16_t((w + 0x7fff + ((w >> 16) & 1)) >> 16);
}

bool isHalf(int dt) { return dt == proto::F16 || dt == proto::BF16; }

OpTensor widen(const OpTensor &t) {
  OpTensor w;
  if (!w.alloc(proto::F32, t.dims))
    return w;
  const uint16_t *src = t.as<uint16_t>();
  float *dst = w.mut<float>();
  for (int64_t i = 0, n = t.numel(); i < n; ++i)
    dst[i] = t.dtype == proto::F16 ? halfToFloat(src[i]) : bf16ToFloat(src[i]);
  return w;
}

bool narrow(const OpTensor &t, int dt, OpTensor &out) {
  if (!out.alloc(dt, t.dims))
    return false;
  const float *src = t.as<float>();
  uint16_t *dst = out.mut<uint16_t>();
  for (int64_t i = 0, n = t.numel(); i < n; ++i)
    dst[i] = dt == proto::F16 ? floatToHalf(src[i]) : floatToBf16(src[i]);
  return true;
}

// ---- dtype dispatch ----------------------------------------------------------------------------------------

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
double readDouble(const OpTensor &t, int64_t i) {
  double v = 0;
  if (isHalf(t.dtype))
    return t.dtype == proto::F16 ? halfToFloat(t.as<uint16_t>()[i]) : bf16ToFloat(t.as<uint16_t>()[i]);
  withAny(t.dtype, [&](auto tag) { v = static_cast<double>(t.as<decltype(tag)>()[i]); });
  return v;
}

int64_t readInt(const OpTensor &t, int64_t i) {
  int64_t v = 0;
  if (t.dtype == proto::I64)
    return t.as<int64_t>()[i];
  if (t.dtype == proto::I32)
    return t.as<int32_t>()[i];
  if (!withInt(t.dtype, [&](auto tag) { v = static_cast<int64_t>(t.as<decltype(tag)>()[i]); }))
    v = static_cast<int64_t>(readDouble(t, i));
  return v;
}

std::vector<int64_t> readInts(const OpTensor &t) {
  std::vector<int64_t> v(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i)
    v[i] = readInt(t, i);
  return v;
}

// ---- attributes --------------------------------------------------------------------------------------------

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
};

/// `axis` in [-rank, rank) normalised, or -1 when out of range.
int64_t normAxis(int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= rank)
    return -1;
  return axis < 0 ? axis + rank : axis;
}

// ---- broadcasting ------------------------------------------------------------------------------------------

struct Broadcast {
  Dims dims;                  // the output's
  std::vector<Dims> strides;  // per input, in elements, 0 along broadcast dims
};

bool broadcast(const std::vector<const Dims *> &shapes, Broadcast &b, std::string &error) {
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
Dims stridesOf(const Dims &d) {
  Dims s(d.size(), 1);
  for (size_t i = d.size(); i-- > 1;)
    s[i - 1] = s[i] * d[i];
  return s;
}

// ---- the ops -----------------------------------------------------------------------------------------------

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
      return fail("cannot allocate " + dimsString(out[i].dims) + " " + dtypeName(out[i].dtype) + " (out of memory)");
    return true;
  }
  bool badType(const OpTensor &t) { return fail(std::string("has no kernel for dtype ") + dtypeName(t.dtype)); }
  /// Output 0 aliases input 0's bytes under new dims.
  void alias(Dims d) {
    out[0].dims = std::move(d);
    out[0].data = in[0].data;
    out[0].owned = in[0].owned;
  }
};

enum class Unary { Abs, Neg, Relu, Ceil, Floor, Cos, Sin, Exp, Log, Sqrt, Tanh, Erf, Reciprocal, Sigmoid, GeluErf,
                   GeluTanh };

/// The op's kind, resolved once per step (not per element); false for an unknown name.
bool unaryKind(const std::string &op, const Attrs &a, Unary &k) {
  static const std::pair<const char *, Unary> kNames[] = {
      {"Abs", Unary::Abs},   {"Neg", Unary::Neg},   {"Relu", Unary::Relu},   {"Ceil", Unary::Ceil},
      {"Floor", Unary::Floor}, {"Cos", Unary::Cos}, {"Sin", Unary::Sin},     {"Exp", Unary::Exp},
      {"Log", Unary::Log},   {"Sqrt", Unary::Sqrt}, {"Tanh", Unary::Tanh},   {"Erf", Unary::Erf},
      {"Reciprocal", Unary::Reciprocal}, {"Sigmoid", Unary::Sigmoid}, {"Gelu", Unary::GeluErf}};
  for (const auto &[name, kind] : kNames)
    if (op == name) {
      k = kind == Unary::GeluErf && a.str("approximate", "none") == "tanh" ? Unary::GeluTanh : kind;
      return true;
    }
  return false;
}

/// o[i] = f(p[i]) with `f` the op's function, chosen once for the whole loop.
template <class T> void mapUnary(Unary k, const T *p, T *o, int64_t n) {
  auto map = [&](auto f) {
    for (int64_t i = 0; i < n; ++i)
      o[i] = f(p[i]);
  };
  if constexpr (std::is_floating_point_v<T>) {
    switch (k) {
    case Unary::Abs:
      return map([](T x) { return std::fabs(x); });
    case Unary::Neg:
      return map([](T x) { return -x; });
    case Unary::Relu:
      return map([](T x) { return x > 0 ? x : T(0); });
    case Unary::Ceil:
      return map([](T x) { return std::ceil(x); });
    case Unary::Floor:
      return map([](T x) { return std::floor(x); });
    case Unary::Cos:
      return map([](T x) { return std::cos(x); });
    case Unary::Sin:
      return map([](T x) { return std::sin(x); });
    case Unary::Exp:
      return map([](T x) { return std::exp(x); });
    case Unary::Log:
      return map([](T x) { return std::log(x); });
    case Unary::Sqrt:
      return map([](T x) { return std::sqrt(x); });
    case Unary::Tanh:
      return map([](T x) { return std::tanh(x); });
    case Unary::Erf:
      return map([](T x) { return std::erf(x); });
    case Unary::Reciprocal:
      return map([](T x) { return T(1) / x; });
    case Unary::Sigmoid:
      return map([](T x) { return x >= 0 ? T(1) / (T(1) + std::exp(-x)) : std::exp(x) / (T(1) + std::exp(x)); });
    case Unary::GeluTanh:
      return map([](T x) {
        return T(0.5) * x * (T(1) + std::tanh(T(0.7978845608028654) * (x + T(0.044715) * x * x * x)));
      });
    case Unary::GeluErf:
      return map([](T x) { return T(0.5) * x * (T(1) + std::erf(x * T(0.7071067811865476))); });
    }
  } else { // integers: Abs, Neg, Relu (the caller refuses the others)
    if constexpr (std::is_signed_v<T>) {
      if (k == Unary::Abs)
        return map([](T x) { return x < 0 ? T(-x) : x; });
      if (k == Unary::Neg)
        return map([](T x) { return T(-x); });
      if (k == Unary::Relu)
        return map([](T x) { return x > 0 ? x : T(0); });
    }
    map([](T x) { return x; }); // unsigned Abs and Relu
  }
}

bool unary(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  Unary k;
  if (!unaryKind(c.op(), c.a, k))
    return c.fail("is not an elementwise op");
  bool intOk = k == Unary::Abs || k == Unary::Neg || k == Unary::Relu;
  if (x.dtype != proto::F32 && x.dtype != proto::F64 && !intOk)
    return c.badType(x);
  if (!c.alloc(0, x.dims))
    return false;
  return withNum(x.dtype, [&](auto tag) {
           using T = decltype(tag);
           mapUnary<T>(k, x.as<T>(), c.out[0].mut<T>(), x.numel());
         }) ||
         c.badType(x);
}

bool binary(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0], &y = c.in[1];
  const std::string &op = c.op();
  Broadcast b;
  if (!broadcast({&x.dims, &y.dims}, b, c.err))
    return false;
  if (!c.alloc(0, b.dims))
    return false;
  OpTensor &o = c.out[0];
  if (op == "And" || op == "Or") {
    if (x.dtype != proto::BOOL || y.dtype != proto::BOOL)
      return c.badType(x);
    const bool *pa = x.as<bool>(), *pb = y.as<bool>();
    bool *po = o.mut<bool>(), isAnd = op == "And";
    forEach<2>(b, [&](int64_t i, const int64_t *p) { po[i] = isAnd ? (pa[p[0]] && pb[p[1]]) : (pa[p[0]] || pb[p[1]]); });
    return true;
  }
  if (op == "Pow") { // exponent of any numeric type
    return withNum(x.dtype, [&](auto tag) {
             using T = decltype(tag);
             const T *pa = x.as<T>();
             T *po = o.mut<T>();
             forEach<2>(b, [&](int64_t i, const int64_t *p) {
               double e = readDouble(y, p[1]);
               if constexpr (std::is_same_v<T, float>)
                 po[i] = std::pow(pa[p[0]], static_cast<float>(e));
               else
                 po[i] = static_cast<T>(std::pow(static_cast<double>(pa[p[0]]), e));
             });
           }) ||
           c.badType(x);
  }
  if (x.dtype != y.dtype)
    return c.fail(std::string("inputs of dtypes ") + dtypeName(x.dtype) + " and " + dtypeName(y.dtype));
  bool cmp = op == "Equal" || op == "Greater" || op == "GreaterOrEqual" || op == "Less" || op == "LessOrEqual";
  if (cmp) {
    bool *po = o.mut<bool>();
    int kind = op == "Equal" ? 0 : op == "Greater" ? 1 : op == "GreaterOrEqual" ? 2 : op == "Less" ? 3 : 4;
    return withAny(x.dtype, [&](auto tag) {
             using T = decltype(tag);
             const T *pa = x.as<T>(), *pb = y.as<T>();
             forEach<2>(b, [&](int64_t i, const int64_t *p) {
               T u = pa[p[0]], v = pb[p[1]];
               po[i] = kind == 0 ? u == v : kind == 1 ? u > v : kind == 2 ? u >= v : kind == 3 ? u < v : u <= v;
             });
           }) ||
           c.badType(x);
  }
  int kind = op == "Add" ? 0 : op == "Sub" ? 1 : op == "Mul" ? 2 : op == "Div" ? 3 : op == "Max" ? 4 : 5;
  bool divByZero = false;
  bool ok = withNum(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T *pa = x.as<T>(), *pb = y.as<T>();
    T *po = o.mut<T>();
    // The operation chosen once, outside the element loop.
    auto each = [&](auto f) { forEach<2>(b, [&](int64_t i, const int64_t *p) { po[i] = f(pa[p[0]], pb[p[1]]); }); };
    switch (kind) {
    case 0:
      return each([](T u, T v) { return T(u + v); });
    case 1:
      return each([](T u, T v) { return T(u - v); });
    case 2:
      return each([](T u, T v) { return T(u * v); });
    case 3:
      if constexpr (std::is_integral_v<T>)
        return each([&](T u, T v) {
          if (v == 0 || (std::is_signed_v<T> && v == T(-1) && u == std::numeric_limits<T>::min())) {
            divByZero = true;
            return T(0);
          }
          return T(u / v);
        });
      else
        return each([](T u, T v) { return T(u / v); });
    case 4:
      return each([](T u, T v) { return (u != u || u > v) ? u : v; }); // NaN propagates
    default:
      return each([](T u, T v) { return (u != u || u < v) ? u : v; });
    }
  });
  if (!ok)
    return c.badType(x);
  if (divByZero)
    return c.fail("integer division by zero (or overflow)");
  return true;
}

/// Max / Min over any number of inputs, folded pairwise.
bool variadicMinMax(Ctx &c) {
  if (c.in.empty())
    return c.fail("needs at least one input");
  OpTensor acc = c.in[0];
  for (size_t i = 1; i < c.in.size(); ++i) {
    std::vector<OpTensor> two{acc, c.in[i]}, res{OpTensor{}};
    res[0].dtype = c.out[0].dtype;
    Ctx sub{c.s, two, res, c.pool};
    if (!binary(sub))
      return c.fail(sub.err);
    acc = res[0];
  }
  if (c.in.size() == 1) {
    if (!c.alloc(0, acc.dims))
      return false;
    std::memcpy(c.out[0].mut<char>(), acc.data, acc.bytes());
    return true;
  }
  c.out[0] = acc;
  return true;
}

bool isNaN(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  if (!c.alloc(0, x.dims))
    return false;
  bool *o = c.out[0].mut<bool>();
  return withFloat(x.dtype, [&](auto tag) {
           using T = decltype(tag);
           for (int64_t i = 0; i < x.numel(); ++i)
             o[i] = std::isnan(x.as<T>()[i]);
         }) ||
         c.badType(x);
}

bool notOp(Ctx &c) {
  if (!c.need(1))
    return false;
  if (c.in[0].dtype != proto::BOOL)
    return c.badType(c.in[0]);
  if (!c.alloc(0, c.in[0].dims))
    return false;
  for (int64_t i = 0; i < c.in[0].numel(); ++i)
    c.out[0].mut<bool>()[i] = !c.in[0].as<bool>()[i];
  return true;
}

bool clip(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  if (!c.alloc(0, x.dims))
    return false;
  bool hasLo = c.in.size() > 1 && c.in[1].present() && c.in[1].numel() > 0;
  bool hasHi = c.in.size() > 2 && c.in[2].present() && c.in[2].numel() > 0;
  return withNum(x.dtype, [&](auto tag) {
           using T = decltype(tag);
           T lo = hasLo ? c.in[1].as<T>()[0] : std::numeric_limits<T>::lowest();
           T hi = hasHi ? c.in[2].as<T>()[0] : std::numeric_limits<T>::max();
           const T *p = x.as<T>();
           T *o = c.out[0].mut<T>();
           for (int64_t i = 0; i < x.numel(); ++i)
             o[i] = p[i] < lo ? lo : p[i] > hi ? hi : p[i];
         }) ||
         c.badType(x);
}

bool where(Ctx &c) {
  if (!c.need(3))
    return false;
  const OpTensor &cond = c.in[0], &x = c.in[1], &y = c.in[2];
  if (cond.dtype != proto::BOOL)
    return c.fail("condition must be bool");
  Broadcast b;
  if (!broadcast({&cond.dims, &x.dims, &y.dims}, b, c.err) || !c.alloc(0, b.dims))
    return false;
  size_t w = dtypeSize(x.dtype);
  char *o = c.out[0].mut<char>();
  const bool *pc = cond.as<bool>();
  forEach<3>(b, [&](int64_t i, const int64_t *p) {
    std::memcpy(o + i * w, pc[p[0]] ? x.data + p[1] * w : y.data + p[2] * w, w);
  });
  return true;
}

bool cast(Ctx &c) {
  if (!c.need(1))
    return false;
  OpTensor x = c.in[0];
  int to = c.out[0].dtype;
  if (isHalf(x.dtype))
    x = widen(x);
  OpTensor tmp;
  tmp.dtype = isHalf(to) ? int(proto::F32) : to;
  if (!tmp.alloc(tmp.dtype, x.dims))
    return c.fail("out of memory");
  int64_t n = x.numel();
  bool ok = withAny(x.dtype, [&](auto from) {
    using S = decltype(from);
    const S *p = x.as<S>();
    withAny(tmp.dtype, [&](auto into) {
      using D = decltype(into);
      D *o = tmp.mut<D>();
      for (int64_t i = 0; i < n; ++i) {
        if constexpr (std::is_same_v<D, bool>) {
          o[i] = p[i] != S(0);
        } else if constexpr (std::is_floating_point_v<S> && std::is_integral_v<D>) {
          S v = p[i]; // out-of-range / NaN: saturate instead of undefined behaviour
          o[i] = v != v ? D(0)
                 : v <= S(std::numeric_limits<D>::lowest()) ? std::numeric_limits<D>::lowest()
                 : v >= S(std::numeric_limits<D>::max())    ? std::numeric_limits<D>::max()
                                                            : static_cast<D>(v);
        } else {
          o[i] = static_cast<D>(p[i]);
        }
      }
    });
  });
  if (!ok)
    return c.badType(x);
  if (isHalf(to)) {
    if (!narrow(tmp, to, c.out[0]))
      return c.fail("out of memory");
  } else {
    c.out[0] = tmp;
  }
  return true;
}

// -- reductions and along-one-axis ops --

bool reduceAxes(Ctx &c, const OpTensor &x, std::vector<bool> &reduced) {
  size_t rank = x.dims.size();
  reduced.assign(rank, false);
  Dims axes;
  if (c.in.size() > 1 && c.in[1].present())
    axes = readInts(c.in[1]);
  if (axes.empty()) {
    if (c.a.i("noop_with_empty_axes", 0))
      return true;
    reduced.assign(rank, true);
    return true;
  }
  for (int64_t ax : axes) {
    int64_t n = normAxis(ax, int64_t(rank));
    if (n < 0)
      return c.fail("axis " + std::to_string(ax) + " out of range for rank " + std::to_string(rank));
    reduced[n] = true;
  }
  return true;
}

bool reduce(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  std::vector<bool> red;
  if (!reduceAxes(c, x, red))
    return false;
  bool keep = c.a.i("keepdims", 1) != 0;
  Dims outDims, keptDims;
  for (size_t i = 0; i < x.dims.size(); ++i) {
    keptDims.push_back(red[i] ? 1 : x.dims[i]);
    if (!red[i] || keep)
      outDims.push_back(red[i] ? 1 : x.dims[i]);
  }
  if (!c.alloc(0, outDims))
    return false;
  const std::string &op = c.op();
  int64_t outN = product(keptDims), count = outN ? x.numel() / std::max<int64_t>(outN, 1) : 0;
  if (op == "ReduceMax" && x.numel() == 0 && outN > 0)
    return c.fail("ReduceMax over an empty axis");
  // Offsets of each input element in the output: a broadcast of the kept dims against the input's.
  Broadcast b;
  b.dims = x.dims;
  Dims ks = stridesOf(keptDims);
  Dims st(x.dims.size());
  for (size_t i = 0; i < x.dims.size(); ++i)
    st[i] = red[i] ? 0 : ks[i];
  b.strides = {st};
  return withNum(x.dtype, [&](auto tag) {
           using T = decltype(tag);
           using Acc = std::conditional_t<std::is_floating_point_v<T>, double, T>;
           std::vector<Acc> acc(outN, op == "ReduceMax" ? std::numeric_limits<Acc>::lowest() : Acc(0));
           const T *p = x.as<T>();
           int kind = op == "ReduceSum" ? 0 : op == "ReduceMean" ? 1 : op == "ReduceMax" ? 2 : 3;
           forEach<1>(b, [&](int64_t i, const int64_t *o) {
             Acc v = Acc(p[i]);
             Acc &r = acc[o[0]];
             if (kind == 2)
               r = (v > r || v != v) ? v : r;
             else if (kind == 3)
               r += v * v;
             else
               r += v;
           });
           T *out = c.out[0].mut<T>();
           for (int64_t i = 0; i < outN; ++i) {
             Acc r = acc[i];
             if (kind == 1)
               r = count ? Acc(r / Acc(count)) : Acc(0);
             if (kind == 3)
               r = Acc(std::sqrt(double(r)));
             out[i] = T(r);
           }
         }) ||
         c.badType(x);
}

/// outer x n x inner view of `dims` around `axis`.
struct AxisView {
  int64_t outer, n, inner;
};
AxisView around(const Dims &d, int64_t axis) {
  return {product(d, 0, axis), d.empty() ? 1 : d[axis], product(d, axis + 1)};
}

bool softmax(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  int64_t axis = normAxis(c.a.i("axis", -1), int64_t(x.dims.size()));
  if (x.dims.empty())
    axis = 0;
  else if (axis < 0)
    return c.fail("axis out of range");
  if (!c.alloc(0, x.dims))
    return false;
  AxisView v = around(x.dims, axis);
  bool logForm = c.op() == "LogSoftmax";
  return withFloat(x.dtype, [&](auto tag) {
           using T = decltype(tag);
           const T *p = x.as<T>();
           T *o = c.out[0].mut<T>();
           for (int64_t a = 0; a < v.outer; ++a)
             for (int64_t b = 0; b < v.inner; ++b) {
               int64_t base = a * v.n * v.inner + b;
               T mx = -std::numeric_limits<T>::infinity();
               for (int64_t k = 0; k < v.n; ++k)
                 mx = std::max(mx, p[base + k * v.inner]);
               T sum = 0;
               for (int64_t k = 0; k < v.n; ++k)
                 sum += std::exp(p[base + k * v.inner] - mx);
               for (int64_t k = 0; k < v.n; ++k) {
                 T e = p[base + k * v.inner] - mx;
                 o[base + k * v.inner] = logForm ? e - std::log(sum) : std::exp(e) / sum;
               }
             }
         }) ||
         c.badType(x);
}

bool argmax(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  int64_t axis = normAxis(c.a.i("axis", 0), int64_t(x.dims.size()));
  if (axis < 0)
    return c.fail("axis out of range");
  bool keep = c.a.i("keepdims", 1) != 0, last = c.a.i("select_last_index", 0) != 0;
  Dims od = x.dims;
  if (keep)
    od[axis] = 1;
  else
    od.erase(od.begin() + axis);
  if (!c.alloc(0, od))
    return false;
  AxisView v = around(x.dims, axis);
  if (v.n == 0 && v.outer * v.inner > 0)
    return c.fail("ArgMax over an empty axis");
  int64_t *o = c.out[0].mut<int64_t>();
  return withNum(x.dtype, [&](auto tag) {
           using T = decltype(tag);
           const T *p = x.as<T>();
           for (int64_t a = 0; a < v.outer; ++a)
             for (int64_t b = 0; b < v.inner; ++b) {
               int64_t best = 0, base = a * v.n * v.inner + b;
               for (int64_t k = 1; k < v.n; ++k) {
                 T u = p[base + k * v.inner], w = p[base + best * v.inner];
                 if (u > w || (last && u == w))
                   best = k;
               }
               o[a * v.inner + b] = best;
             }
         }) ||
         c.badType(x);
}

bool topk(Ctx &c) {
  if (!c.need(2) || c.out.size() < 2)
    return c.err.empty() ? c.fail("needs 2 outputs") : false;
  const OpTensor &x = c.in[0];
  if (x.dims.empty())
    return c.fail("input must have rank >= 1");
  int64_t axis = normAxis(c.a.i("axis", -1), int64_t(x.dims.size()));
  if (axis < 0 || c.in[1].numel() != 1)
    return c.fail("axis out of range or K not one element");
  int64_t k = readInt(c.in[1], 0);
  if (k < 0 || k > x.dims[axis])
    return c.fail("K = " + std::to_string(k) + " out of range for an axis of " + std::to_string(x.dims[axis]));
  bool largest = c.a.i("largest", 1) != 0;
  Dims od = x.dims;
  od[axis] = k;
  if (!c.alloc(0, od) || !c.alloc(1, od))
    return false;
  AxisView v = around(x.dims, axis);
  int64_t *oi = c.out[1].mut<int64_t>();
  return withNum(x.dtype, [&](auto tag) {
           using T = decltype(tag);
           const T *p = x.as<T>();
           T *ov = c.out[0].mut<T>();
           std::vector<int64_t> idx(v.n);
           for (int64_t a = 0; a < v.outer; ++a)
             for (int64_t b = 0; b < v.inner; ++b) {
               int64_t base = a * v.n * v.inner + b;
               std::iota(idx.begin(), idx.end(), 0);
               auto better = [&](int64_t i, int64_t j) {
                 T u = p[base + i * v.inner], w = p[base + j * v.inner];
                 if (u == w)
                   return i < j;
                 return largest ? u > w : u < w;
               };
               std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), better);
               for (int64_t j = 0; j < k; ++j) {
                 int64_t ob = a * k * v.inner + j * v.inner + b;
                 ov[ob] = p[base + idx[j] * v.inner];
                 oi[ob] = idx[j];
               }
             }
         }) ||
         c.badType(x);
}

bool cumsum(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0];
  if (c.in[1].numel() != 1)
    return c.fail("axis must be one element");
  int64_t axis = normAxis(readInt(c.in[1], 0), int64_t(x.dims.size()));
  if (axis < 0)
    return c.fail("axis out of range");
  bool excl = c.a.i("exclusive", 0) != 0, rev = c.a.i("reverse", 0) != 0;
  if (!c.alloc(0, x.dims))
    return false;
  AxisView v = around(x.dims, axis);
  return withNum(x.dtype, [&](auto tag) {
           using T = decltype(tag);
           const T *p = x.as<T>();
           T *o = c.out[0].mut<T>();
           for (int64_t a = 0; a < v.outer; ++a)
             for (int64_t b = 0; b < v.inner; ++b) {
               T acc = 0;
               for (int64_t j = 0; j < v.n; ++j) {
                 int64_t k = rev ? v.n - 1 - j : j, at = a * v.n * v.inner + k * v.inner + b;
                 if (excl) {
                   o[at] = acc;
                   acc += p[at];
                 } else {
                   acc += p[at];
                   o[at] = acc;
                 }
               }
             }
         }) ||
         c.badType(x);
}

bool layerNorm(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0];
  int64_t axis = normAxis(c.a.i("axis", -1), int64_t(x.dims.size()));
  if (axis < 0)
    return c.fail("axis out of range");
  double eps = c.a.f("epsilon", 1e-5);
  int64_t outer = product(x.dims, 0, axis), n = product(x.dims, axis);
  Dims normDims(x.dims.begin() + axis, x.dims.end());
  // Scale and bias broadcast to the normalised dims.
  auto expand = [&](const OpTensor &t, std::vector<double> &v) {
    Broadcast b;
    if (!broadcast({&normDims, &t.dims}, b, c.err) || b.dims != normDims)
      return c.fail("scale/bias " + dimsString(t.dims) + " does not broadcast to " + dimsString(normDims));
    v.resize(n);
    forEach<2>(b, [&](int64_t i, const int64_t *p) { v[i] = readDouble(t, p[1]); });
    return true;
  };
  std::vector<double> scale, bias(n, 0.0);
  if (!expand(c.in[1], scale) || (c.in.size() > 2 && c.in[2].present() && !expand(c.in[2], bias)))
    return false;
  if (!c.alloc(0, x.dims))
    return false;
  Dims statDims = x.dims;
  for (size_t i = axis; i < statDims.size(); ++i)
    statDims[i] = 1;
  for (size_t k = 1; k < c.out.size(); ++k)
    if (c.out[k].dtype && !c.alloc(k, statDims))
      return false;
  return withFloat(x.dtype, [&](auto tag) {
           using T = decltype(tag);
           const T *p = x.as<T>();
           T *o = c.out[0].mut<T>();
           for (int64_t r = 0; r < outer; ++r) {
             double mean = 0, var = 0;
             for (int64_t j = 0; j < n; ++j)
               mean += p[r * n + j];
             mean = n ? mean / n : 0;
             for (int64_t j = 0; j < n; ++j)
               var += (p[r * n + j] - mean) * (p[r * n + j] - mean);
             var = n ? var / n : 0;
             double inv = 1.0 / std::sqrt(var + eps);
             for (int64_t j = 0; j < n; ++j)
               o[r * n + j] = T((p[r * n + j] - mean) * inv * scale[j] + bias[j]);
             for (size_t k = 1; k < c.out.size(); ++k)
               withFloat(c.out[k].dtype, [&](auto t2) {
                 using S = decltype(t2);
                 c.out[k].mut<S>()[r] = S(k == 1 ? mean : inv);
               });
           }
         }) ||
         c.badType(x);
}

// -- linear algebra --

template <class T> struct MatMulJob {
  const T *a, *b;
  T *c;
  int64_t m, k, n;
  Dims aOff, bOff; // per batch, element offsets of A and B
};

template <class T> void matmulRow(void *ctx, int64_t row, int) {
  auto &j = *static_cast<MatMulJob<T> *>(ctx);
  int64_t batch = row / j.m, i = row % j.m;
  const T *a = j.a + j.aOff[batch] + i * j.k, *b = j.b + j.bOff[batch];
  T *c = j.c + (batch * j.m + i) * j.n;
  std::fill(c, c + j.n, T(0));
  for (int64_t kk = 0; kk < j.k; ++kk) {
    T av = a[kk];
    const T *br = b + kk * j.n;
    for (int64_t x = 0; x < j.n; ++x)
      c[x] += av * br[x];
  }
}

bool matmul(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0], &y = c.in[1];
  if (x.dims.empty() || y.dims.empty())
    return c.fail("inputs must have rank >= 1");
  if (x.dtype != y.dtype)
    return c.fail(std::string("inputs of dtypes ") + dtypeName(x.dtype) + " and " + dtypeName(y.dtype));
  Dims ad = x.dims, bd = y.dims;
  bool aVec = ad.size() == 1, bVec = bd.size() == 1;
  if (aVec)
    ad.insert(ad.begin(), 1);
  if (bVec)
    bd.push_back(1);
  int64_t m = ad[ad.size() - 2], k = ad.back(), n = bd.back();
  if (bd[bd.size() - 2] != k)
    return c.fail("shapes " + dimsString(x.dims) + " and " + dimsString(y.dims) + " do not multiply");
  Dims ab(ad.begin(), ad.end() - 2), bb(bd.begin(), bd.end() - 2);
  Broadcast b;
  if (!broadcast({&ab, &bb}, b, c.err))
    return false;
  Dims od = b.dims;
  if (!aVec)
    od.push_back(m);
  if (!bVec)
    od.push_back(n);
  if (!c.alloc(0, od))
    return false;
  int64_t batches = product(b.dims);
  return withNum(x.dtype, [&](auto tag) {
           using T = decltype(tag);
           MatMulJob<T> j{x.as<T>(), y.as<T>(), c.out[0].mut<T>(), m, k, n, Dims(batches), Dims(batches)};
           forEach<2>(b, [&](int64_t i, const int64_t *p) {
             j.aOff[i] = p[0] * m * k;
             j.bOff[i] = p[1] * k * n;
           });
           int64_t rows = batches * m;
           if (c.pool && rows > 1 && rows * k * n > (1 << 16))
             c.pool->parallelFor(rows, &j, &matmulRow<T>);
           else
             for (int64_t r = 0; r < rows; ++r)
               matmulRow<T>(&j, r, 0);
         }) ||
         c.badType(x);
}

bool gemm(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &A = c.in[0], &B = c.in[1];
  if (A.dims.size() != 2 || B.dims.size() != 2)
    return c.fail("A and B must be 2-D");
  bool ta = c.a.i("transA", 0) != 0, tb = c.a.i("transB", 0) != 0;
  double alpha = c.a.f("alpha", 1.0), beta = c.a.f("beta", 1.0);
  int64_t m = ta ? A.dims[1] : A.dims[0], k = ta ? A.dims[0] : A.dims[1];
  int64_t kb = tb ? B.dims[1] : B.dims[0], n = tb ? B.dims[0] : B.dims[1];
  if (k != kb)
    return c.fail("shapes " + dimsString(A.dims) + " and " + dimsString(B.dims) + " do not multiply");
  if (!c.alloc(0, {m, n}))
    return false;
  bool hasC = c.in.size() > 2 && c.in[2].present();
  Broadcast bc;
  Dims md{m, n};
  if (hasC && (!broadcast({&md, &c.in[2].dims}, bc, c.err) || bc.dims != md))
    return c.fail("C " + dimsString(c.in[2].dims) + " does not broadcast to " + dimsString(md));
  return withNum(A.dtype, [&](auto tag) {
           using T = decltype(tag);
           const T *pa = A.as<T>(), *pb = B.as<T>();
           T *o = c.out[0].mut<T>();
           for (int64_t i = 0; i < m; ++i)
             for (int64_t j = 0; j < n; ++j) {
               T acc = 0;
               for (int64_t x = 0; x < k; ++x)
                 acc += pa[ta ? x * m + i : i * k + x] * pb[tb ? j * k + x : x * n + j];
               o[i * n + j] = T(alpha * acc);
             }
           if (hasC)
             forEach<2>(bc, [&](int64_t i, const int64_t *p) { o[i] = T(o[i] + beta * c.in[2].as<T>()[p[1]]); });
         }) ||
         c.badType(A);
}

bool conv(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &X = c.in[0], &W = c.in[1];
  size_t sp = X.dims.size() < 3 ? 0 : X.dims.size() - 2;
  if (sp == 0 || W.dims.size() != X.dims.size())
    return c.fail("X " + dimsString(X.dims) + " and W " + dimsString(W.dims) + " are not N x C x spatial");
  int64_t N = X.dims[0], C = X.dims[1], M = W.dims[0], group = c.a.i("group", 1);
  if (group <= 0 || C % group || M % group || W.dims[1] != C / group)
    return c.fail("channels " + std::to_string(C) + " / W " + dimsString(W.dims) + " / group " +
                  std::to_string(group) + " disagree");
  Dims kern(W.dims.begin() + 2, W.dims.end()), strides = c.a.ints("strides"), dil = c.a.ints("dilations"),
      pads = c.a.ints("pads");
  if (strides.empty())
    strides.assign(sp, 1);
  if (dil.empty())
    dil.assign(sp, 1);
  if (pads.empty())
    pads.assign(2 * sp, 0);
  if (strides.size() != sp || dil.size() != sp || pads.size() != 2 * sp)
    return c.fail("strides/dilations/pads do not match " + std::to_string(sp) + " spatial dims");
  for (size_t i = 0; i < sp; ++i)
    if (strides[i] <= 0 || dil[i] <= 0)
      return c.fail("strides and dilations must be positive");
  std::string autoPad = c.a.str("auto_pad", "NOTSET");
  Dims od{N, M};
  for (size_t i = 0; i < sp; ++i) {
    int64_t in = X.dims[2 + i], eff = (kern[i] - 1) * dil[i] + 1, o;
    if (autoPad == "SAME_UPPER" || autoPad == "SAME_LOWER") {
      o = (in + strides[i] - 1) / strides[i];
      int64_t total = std::max<int64_t>(0, (o - 1) * strides[i] + eff - in);
      pads[i] = autoPad == "SAME_UPPER" ? total / 2 : total - total / 2;
      pads[sp + i] = total - pads[i];
    } else if (autoPad == "VALID") {
      pads[i] = pads[sp + i] = 0;
      o = (in - eff) / strides[i] + 1;
    } else {
      o = (in + pads[i] + pads[sp + i] - eff) / strides[i] + 1;
    }
    if (o < 0)
      o = 0;
    od.push_back(o);
  }
  if (!c.alloc(0, od))
    return false;
  bool hasB = c.in.size() > 2 && c.in[2].present();
  Dims outSp(od.begin() + 2, od.end()), inSp(X.dims.begin() + 2, X.dims.end());
  int64_t outPix = product(outSp), inPix = product(inSp), kPix = product(kern), cg = C / group, mg = M / group;
  return withFloat(X.dtype, [&](auto tag) {
           using T = decltype(tag);
           const T *px = X.as<T>(), *pw = W.as<T>();
           T *o = c.out[0].mut<T>();
           Dims oi(sp), ki(sp);
           for (int64_t b = 0; b < N; ++b)
             for (int64_t mm = 0; mm < M; ++mm) {
               int64_t g = mm / mg;
               for (int64_t op = 0; op < outPix; ++op) {
                 for (size_t d = sp, r = op; d-- > 0; r /= outSp[d])
                   oi[d] = r % outSp[d];
                 T acc = hasB ? c.in[2].as<T>()[mm] : T(0);
                 for (int64_t kp = 0; kp < kPix; ++kp) {
                   int64_t off = 0;
                   bool inside = true;
                   for (size_t d = sp, r = kp; d-- > 0; r /= kern[d]) {
                     ki[d] = r % kern[d];
                     int64_t pos = oi[d] * strides[d] - pads[d] + ki[d] * dil[d];
                     inside &= pos >= 0 && pos < inSp[d];
                   }
                   if (!inside)
                     continue;
                   for (size_t d = 0; d < sp; ++d)
                     off = off * inSp[d] + (oi[d] * strides[d] - pads[d] + ki[d] * dil[d]);
                   for (int64_t cc = 0; cc < cg; ++cc)
                     acc += px[(b * C + g * cg + cc) * inPix + off] * pw[(mm * cg + cc) * kPix + kp];
                 }
                 o[(b * M + mm) * outPix + op] = acc;
               }
             }
         }) ||
         c.badType(X);
}

bool einsum(Ctx &c) {
  std::string eq;
  for (char ch : c.a.str("equation", ""))
    if (ch != ' ')
      eq += ch;
  size_t arrow = eq.find("->");
  std::string lhs = eq.substr(0, arrow), rhs;
  std::vector<std::string> terms;
  for (size_t at = 0;;) {
    size_t comma = lhs.find(',', at);
    terms.push_back(lhs.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (comma == std::string::npos)
      break;
    at = comma + 1;
  }
  if (terms.size() != c.in.size())
    return c.fail("equation '" + eq + "' has " + std::to_string(terms.size()) + " operands, the op " +
                  std::to_string(c.in.size()));
  // Ellipses become letters of their own ('0'..), aligned from the right across operands.
  size_t ellRank = 0;
  for (size_t t = 0; t < terms.size(); ++t) {
    size_t e = terms[t].find("...");
    if (e != std::string::npos)
      ellRank = std::max(ellRank, c.in[t].dims.size() - (terms[t].size() - 3));
  }
  auto expandEll = [&](std::string term, size_t rank) {
    size_t e = term.find("...");
    if (e == std::string::npos)
      return term;
    std::string ell;
    for (size_t i = ellRank - rank; i < ellRank; ++i)
      ell += char('0' + i);
    return term.substr(0, e) + ell + term.substr(e + 3);
  };
  std::map<char, int64_t> size;
  for (size_t t = 0; t < terms.size(); ++t) {
    size_t named = terms[t].size() - (terms[t].find("...") != std::string::npos ? 3 : 0);
    if (c.in[t].dims.size() < named)
      return c.fail("operand " + std::to_string(t) + " has rank " + std::to_string(c.in[t].dims.size()) +
                    " for '" + terms[t] + "'");
    terms[t] = expandEll(terms[t], c.in[t].dims.size() - named);
    if (terms[t].size() != c.in[t].dims.size())
      return c.fail("operand " + std::to_string(t) + " has rank " + std::to_string(c.in[t].dims.size()) +
                    " for '" + terms[t] + "'");
    for (size_t i = 0; i < terms[t].size(); ++i) {
      int64_t d = c.in[t].dims[i];
      auto [it, fresh] = size.emplace(terms[t][i], d);
      if (!fresh && it->second != d && d != 1 && it->second != 1)
        return c.fail(std::string("label '") + terms[t][i] + "' has sizes " + std::to_string(it->second) + " and " +
                      std::to_string(d));
      it->second = std::max(it->second, d);
    }
  }
  if (arrow != std::string::npos) {
    rhs = eq.substr(arrow + 2);
    size_t e = rhs.find("...");
    if (e != std::string::npos) {
      std::string ell;
      for (size_t i = 0; i < ellRank; ++i)
        ell += char('0' + i);
      rhs = rhs.substr(0, e) + ell + rhs.substr(e + 3);
    }
  } else { // implicit: ellipsis dims, then letters seen once, alphabetically
    std::map<char, int> seen;
    for (auto &t : terms)
      for (char ch : t)
        ++seen[ch];
    for (size_t i = 0; i < ellRank; ++i)
      rhs += char('0' + i);
    for (auto [ch, n] : seen)
      if (n == 1 && !(ch >= '0' && ch <= '9'))
        rhs += ch;
  }
  std::string labels;
  for (auto [ch, n] : size)
    labels += ch;
  Dims od;
  for (char ch : rhs) {
    if (!size.count(ch))
      return c.fail(std::string("output label '") + ch + "' is not in any operand");
    od.push_back(size[ch]);
  }
  if (!c.alloc(0, od))
    return false;
  size_t L = labels.size();
  std::vector<Dims> st(terms.size(), Dims(L, 0));
  for (size_t t = 0; t < terms.size(); ++t) {
    Dims s = stridesOf(c.in[t].dims);
    for (size_t i = 0; i < terms[t].size(); ++i)
      if (c.in[t].dims[i] != 1)
        st[t][labels.find(terms[t][i])] += s[i];
  }
  Dims ost(L, 0), os = stridesOf(od);
  for (size_t i = 0; i < rhs.size(); ++i)
    ost[labels.find(rhs[i])] += os[i];
  Dims lim(L);
  for (size_t i = 0; i < L; ++i)
    lim[i] = size[labels[i]];
  int64_t total = product(lim);
  return withNum(c.out[0].dtype, [&](auto tag) {
           using T = decltype(tag);
           T *o = c.out[0].mut<T>();
           std::fill(o, o + c.out[0].numel(), T(0));
           Dims idx(L, 0);
           for (int64_t it = 0; it < total; ++it) {
             T prod = 1;
             int64_t oo = 0;
             for (size_t t = 0; t < terms.size(); ++t) {
               int64_t off = 0;
               for (size_t i = 0; i < L; ++i)
                 off += idx[i] * st[t][i];
               prod *= c.in[t].as<T>()[off];
             }
             for (size_t i = 0; i < L; ++i)
               oo += idx[i] * ost[i];
             o[oo] += prod;
             for (size_t i = L; i-- > 0;) {
               if (++idx[i] < lim[i])
                 break;
               idx[i] = 0;
             }
           }
         }) ||
         c.badType(c.out[0]);
}

// -- data movement (bytes, any dtype) --

bool reshapeLike(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  const std::string &op = c.op();
  Dims d;
  if (op == "Identity") {
    d = x.dims;
  } else if (op == "Reshape") {
    if (!c.need(2))
      return false;
    Dims shape = readInts(c.in[1]);
    bool allowZero = c.a.i("allowzero", 0) != 0;
    int64_t known = 1, infer = -1;
    for (size_t i = 0; i < shape.size(); ++i) {
      int64_t v = shape[i];
      if (v == 0 && !allowZero) {
        if (i >= x.dims.size())
          return c.fail("shape " + dimsString(shape) + ": 0 copies dim " + std::to_string(i) + " of a rank-" +
                        std::to_string(x.dims.size()) + " tensor");
        v = x.dims[i];
      }
      if (v == -1) {
        if (infer >= 0)
          return c.fail("shape " + dimsString(shape) + " has two -1 dims");
        infer = int64_t(i);
        d.push_back(1);
        continue;
      }
      if (v < 0)
        return c.fail("shape " + dimsString(shape) + " has a negative dim");
      known *= v;
      d.push_back(v);
    }
    if (infer >= 0) {
      if (known == 0 || x.numel() % known)
        return c.fail("cannot reshape " + dimsString(x.dims) + " to " + dimsString(shape));
      d[infer] = x.numel() / known;
    }
  } else if (op == "Squeeze") {
    std::vector<bool> drop(x.dims.size(), false);
    if (c.in.size() > 1 && c.in[1].present()) {
      for (int64_t ax : readInts(c.in[1])) {
        int64_t n = normAxis(ax, int64_t(x.dims.size()));
        if (n < 0 || x.dims[n] != 1)
          return c.fail("cannot squeeze axis " + std::to_string(ax) + " of " + dimsString(x.dims));
        drop[n] = true;
      }
    } else {
      for (size_t i = 0; i < x.dims.size(); ++i)
        drop[i] = x.dims[i] == 1;
    }
    for (size_t i = 0; i < x.dims.size(); ++i)
      if (!drop[i])
        d.push_back(x.dims[i]);
  } else { // Unsqueeze
    if (!c.need(2))
      return false;
    Dims axes = readInts(c.in[1]);
    int64_t rank = int64_t(x.dims.size() + axes.size());
    std::vector<bool> ins(rank, false);
    for (int64_t ax : axes) {
      int64_t n = normAxis(ax, rank);
      if (n < 0 || ins[n])
        return c.fail("bad or repeated axis " + std::to_string(ax));
      ins[n] = true;
    }
    for (int64_t i = 0, j = 0; i < rank; ++i)
      d.push_back(ins[i] ? 1 : x.dims[j++]);
  }
  if (product(d) != x.numel())
    return c.fail("cannot reshape " + dimsString(x.dims) + " to " + dimsString(d));
  c.alias(std::move(d));
  return true;
}

/// Copies elements of `x` into `out` (dims `od`): out[i] = x[offset(i)], offsets by a strided odometer.
void gatherStrided(const OpTensor &x, OpTensor &out, const Dims &od, const Dims &xStrides, int64_t start) {
  size_t w = dtypeSize(x.dtype);
  Broadcast b;
  b.dims = od;
  b.strides = {xStrides};
  char *o = out.mut<char>();
  const char *p = x.data + start * int64_t(w);
  if (od.size() >= 1 && xStrides.back() == 1 && od.back() > 1) {
    // Contiguous innermost runs (Expand over outer dims, Transpose keeping the last axis, Slice): one copy a run.
    const int64_t run = od.back();
    Broadcast outer;
    outer.dims.assign(od.begin(), od.end() - 1);
    outer.strides = {Dims(xStrides.begin(), xStrides.end() - 1)};
    forEach<1>(outer, [&](int64_t i, const int64_t *q) { std::memcpy(o + i * run * w, p + q[0] * w, run * w); });
    return;
  }
  if (w == 4)
    forEach<1>(b, [&](int64_t i, const int64_t *q) { std::memcpy(o + i * 4, p + q[0] * 4, 4); });
  else
    forEach<1>(b, [&](int64_t i, const int64_t *q) { std::memcpy(o + i * w, p + q[0] * w, w); });
}

bool transpose(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  size_t r = x.dims.size();
  Dims perm = c.a.ints("perm");
  if (perm.empty())
    for (size_t i = 0; i < r; ++i)
      perm.push_back(int64_t(r - 1 - i));
  if (perm.size() != r)
    return c.fail("perm has " + std::to_string(perm.size()) + " entries for rank " + std::to_string(r));
  Dims od(r), xs = stridesOf(x.dims), st(r);
  std::vector<bool> used(r, false);
  for (size_t i = 0; i < r; ++i) {
    int64_t p = normAxis(perm[i], int64_t(r));
    if (p < 0 || used[p])
      return c.fail("perm " + dimsString(perm) + " is not a permutation");
    used[p] = true;
    od[i] = x.dims[p];
    st[i] = xs[p];
  }
  if (!c.alloc(0, od))
    return false;
  gatherStrided(x, c.out[0], od, st, 0);
  return true;
}

bool expand(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0];
  Dims shape = readInts(c.in[1]);
  Broadcast b;
  if (!broadcast({&x.dims, &shape}, b, c.err) || !c.alloc(0, b.dims))
    return false;
  gatherStrided(x, c.out[0], b.dims, b.strides[0], 0);
  return true;
}

bool concat(Ctx &c) {
  if (c.in.empty())
    return c.fail("needs at least one input");
  const Dims &d0 = c.in[0].dims;
  int64_t axis = normAxis(c.a.i("axis", 0), int64_t(d0.size()));
  if (axis < 0)
    return c.fail("axis out of range");
  Dims od = d0;
  od[axis] = 0;
  for (const auto &t : c.in) {
    if (t.dims.size() != d0.size())
      return c.fail("inputs of ranks " + std::to_string(d0.size()) + " and " + std::to_string(t.dims.size()));
    for (size_t i = 0; i < d0.size(); ++i)
      if (int64_t(i) != axis && t.dims[i] != d0[i])
        return c.fail("inputs " + dimsString(d0) + " and " + dimsString(t.dims) + " differ off the axis");
    od[axis] += t.dims[axis];
  }
  if (!c.alloc(0, od))
    return false;
  size_t w = dtypeSize(c.out[0].dtype);
  int64_t outer = product(od, 0, axis), inner = product(od, axis + 1), at = 0;
  char *o = c.out[0].mut<char>();
  for (const auto &t : c.in) {
    int64_t block = t.dims[axis] * inner * int64_t(w);
    for (int64_t r = 0; r < outer; ++r)
      std::memcpy(o + (r * od[axis] * inner) * int64_t(w) + at, t.data + r * block, size_t(block));
    at += block;
  }
  return true;
}

bool split(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  int64_t axis = normAxis(c.a.i("axis", 0), int64_t(x.dims.size()));
  if (axis < 0)
    return c.fail("axis out of range");
  Dims sizes;
  int64_t n = int64_t(c.out.size()), len = x.dims[axis];
  if (c.in.size() > 1 && c.in[1].present()) {
    sizes = readInts(c.in[1]);
  } else {
    int64_t each = (len + n - 1) / std::max<int64_t>(n, 1);
    for (int64_t i = 0; i < n; ++i)
      sizes.push_back(std::max<int64_t>(0, std::min(each, len - i * each)));
  }
  if (int64_t(sizes.size()) != n || std::accumulate(sizes.begin(), sizes.end(), int64_t(0)) != len)
    return c.fail("split sizes " + dimsString(sizes) + " do not cover an axis of " + std::to_string(len) + " in " +
                  std::to_string(n) + " outputs");
  size_t w = dtypeSize(x.dtype);
  int64_t outer = product(x.dims, 0, axis), inner = product(x.dims, axis + 1), at = 0;
  for (int64_t k = 0; k < n; ++k) {
    Dims od = x.dims;
    od[axis] = sizes[k];
    if (sizes[k] < 0 || !c.alloc(k, od))
      return c.err.empty() ? c.fail("negative split size") : false;
    int64_t block = sizes[k] * inner * int64_t(w);
    for (int64_t r = 0; r < outer; ++r)
      std::memcpy(c.out[k].mut<char>() + r * block, x.data + (r * len * inner) * int64_t(w) + at, size_t(block));
    at += block;
  }
  return true;
}

bool slice(Ctx &c) {
  if (!c.need(3))
    return false;
  const OpTensor &x = c.in[0];
  size_t r = x.dims.size();
  Dims starts = readInts(c.in[1]), ends = readInts(c.in[2]), axes, steps;
  if (c.in.size() > 3 && c.in[3].present())
    axes = readInts(c.in[3]);
  else
    for (size_t i = 0; i < starts.size(); ++i)
      axes.push_back(int64_t(i));
  if (c.in.size() > 4 && c.in[4].present())
    steps = readInts(c.in[4]);
  else
    steps.assign(starts.size(), 1);
  if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size())
    return c.fail("starts, ends, axes and steps differ in length");
  Dims st(r, 0), step(r, 1), od = x.dims;
  for (size_t i = 0; i < r; ++i)
    st[i] = 0;
  for (size_t i = 0; i < starts.size(); ++i) {
    int64_t ax = normAxis(axes[i], int64_t(r));
    if (ax < 0)
      return c.fail("axis " + std::to_string(axes[i]) + " out of range");
    int64_t dim = x.dims[ax], s = starts[i], e = ends[i], k = steps[i];
    if (k == 0)
      return c.fail("step 0");
    if (s < 0)
      s += dim;
    if (e < 0)
      e += dim;
    if (k > 0) {
      s = std::clamp<int64_t>(s, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
      od[ax] = e > s ? (e - s + k - 1) / k : 0;
    } else {
      s = std::clamp<int64_t>(s, -1, dim - 1);
      e = std::clamp<int64_t>(e, -1, dim - 1);
      od[ax] = s > e ? (s - e + (-k) - 1) / (-k) : 0;
    }
    st[ax] = s;
    step[ax] = k;
  }
  if (!c.alloc(0, od))
    return false;
  Dims xs = stridesOf(x.dims), ss(r);
  int64_t start = 0;
  for (size_t i = 0; i < r; ++i) {
    ss[i] = xs[i] * step[i];
    if (od[i] > 0)
      start += st[i] * xs[i];
  }
  gatherStrided(x, c.out[0], od, ss, start);
  return true;
}

bool gather(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0], &idx = c.in[1];
  int64_t axis = normAxis(c.a.i("axis", 0), int64_t(x.dims.size()));
  if (axis < 0)
    return c.fail("axis out of range");
  Dims od(x.dims.begin(), x.dims.begin() + axis);
  od.insert(od.end(), idx.dims.begin(), idx.dims.end());
  od.insert(od.end(), x.dims.begin() + axis + 1, x.dims.end());
  if (!c.alloc(0, od))
    return false;
  size_t w = dtypeSize(x.dtype);
  int64_t outer = product(x.dims, 0, axis), n = x.dims[axis], inner = product(x.dims, axis + 1) * int64_t(w);
  int64_t ni = idx.numel();
  char *o = c.out[0].mut<char>();
  for (int64_t j = 0; j < ni; ++j) {
    int64_t k = readInt(idx, j);
    if (k < -n || k >= n)
      return c.fail("index " + std::to_string(k) + " out of range for an axis of " + std::to_string(n));
    if (k < 0)
      k += n;
    for (int64_t r = 0; r < outer; ++r)
      std::memcpy(o + (r * ni + j) * inner, x.data + (r * n + k) * inner, size_t(inner));
  }
  return true;
}

bool gatherElements(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0], &idx = c.in[1];
  int64_t axis = normAxis(c.a.i("axis", 0), int64_t(x.dims.size()));
  if (axis < 0 || idx.dims.size() != x.dims.size())
    return c.fail("axis out of range or indices of another rank");
  if (!c.alloc(0, idx.dims))
    return false;
  size_t w = dtypeSize(x.dtype);
  Dims xs = stridesOf(x.dims), is = stridesOf(idx.dims);
  int64_t n = x.dims[axis];
  for (int64_t i = 0; i < idx.numel(); ++i) {
    int64_t k = readInt(idx, i), off = 0;
    if (k < -n || k >= n)
      return c.fail("index " + std::to_string(k) + " out of range for an axis of " + std::to_string(n));
    if (k < 0)
      k += n;
    for (size_t d = 0; d < x.dims.size(); ++d) {
      int64_t coord = (i / is[d]) % idx.dims[d];
      if (int64_t(d) != axis && coord >= x.dims[d])
        return c.fail("indices " + dimsString(idx.dims) + " exceed data " + dimsString(x.dims));
      off += (int64_t(d) == axis ? k : coord) * xs[d];
    }
    std::memcpy(c.out[0].mut<char>() + i * int64_t(w), x.data + off * int64_t(w), w);
  }
  return true;
}

/// ONNX's GatherND / ScatterND index tuples: for each of `count` tuples, the element offset of the slice it
/// names in `data` (checked against the bounds).
bool ndOffsets(Ctx &c, const OpTensor &data, const OpTensor &idx, int64_t batchDims, Dims &offsets,
               int64_t &sliceElems, int64_t &tuples) {
  if (idx.dims.empty())
    return c.fail("indices must have rank >= 1");
  int64_t q = idx.dims.back();
  if (batchDims < 0 || q < 1 || batchDims + q > int64_t(data.dims.size()))
    return c.fail("index tuples of " + std::to_string(q) + " do not fit data " + dimsString(data.dims));
  Dims ds = stridesOf(data.dims);
  sliceElems = product(data.dims, size_t(batchDims + q));
  tuples = idx.numel() / q;
  int64_t perBatch = tuples / std::max<int64_t>(1, product(idx.dims, 0, batchDims));
  int64_t batchStride = product(data.dims, batchDims);
  offsets.resize(tuples);
  for (int64_t t = 0; t < tuples; ++t) {
    int64_t off = (perBatch ? t / perBatch : 0) * batchStride;
    for (int64_t j = 0; j < q; ++j) {
      int64_t k = readInt(idx, t * q + j), dim = data.dims[batchDims + j];
      if (k < -dim || k >= dim)
        return c.fail("index " + std::to_string(k) + " out of range for a dim of " + std::to_string(dim));
      off += (k < 0 ? k + dim : k) * ds[batchDims + j];
    }
    offsets[t] = off;
  }
  return true;
}

bool gatherND(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0], &idx = c.in[1];
  int64_t b = c.a.i("batch_dims", 0), slice, tuples;
  Dims offs;
  if (!ndOffsets(c, x, idx, b, offs, slice, tuples))
    return false;
  Dims od(idx.dims.begin(), idx.dims.end() - 1);
  od.insert(od.end(), x.dims.begin() + b + idx.dims.back(), x.dims.end());
  if (!c.alloc(0, od))
    return false;
  size_t w = dtypeSize(x.dtype);
  for (int64_t t = 0; t < tuples; ++t)
    std::memcpy(c.out[0].mut<char>() + t * slice * int64_t(w), x.data + offs[t] * int64_t(w), size_t(slice) * w);
  return true;
}

template <class T> void reduceInto(T &dst, T v, int kind) {
  switch (kind) {
  case 0:
    dst = v;
    break;
  case 1:
    dst = T(dst + v);
    break;
  case 2:
    dst = T(dst * v);
    break;
  case 3:
    dst = std::max(dst, v);
    break;
  default:
    dst = std::min(dst, v);
  }
}

bool scatter(Ctx &c) {
  if (!c.need(3))
    return false;
  const OpTensor &x = c.in[0], &idx = c.in[1], &upd = c.in[2];
  std::string red = c.a.str("reduction", "none");
  int kind = red == "none" ? 0 : red == "add" ? 1 : red == "mul" ? 2 : red == "max" ? 3 : red == "min" ? 4 : -1;
  if (kind < 0)
    return c.fail("reduction '" + red + "'");
  if (!c.alloc(0, x.dims))
    return false;
  std::memcpy(c.out[0].mut<char>(), x.data, x.bytes());
  Dims target; // element offset in data of each update element
  if (c.op() == "ScatterND") {
    int64_t slice, tuples;
    Dims offs;
    if (!ndOffsets(c, x, idx, 0, offs, slice, tuples))
      return false;
    if (upd.numel() != tuples * slice)
      return c.fail("updates " + dimsString(upd.dims) + " do not match the indices");
    for (int64_t t = 0; t < tuples; ++t)
      for (int64_t e = 0; e < slice; ++e)
        target.push_back(offs[t] + e);
  } else {
    int64_t axis = normAxis(c.a.i("axis", 0), int64_t(x.dims.size()));
    if (axis < 0 || idx.dims != upd.dims || idx.dims.size() != x.dims.size())
      return c.fail("axis out of range or indices/updates shapes disagree");
    Dims xs = stridesOf(x.dims), is = stridesOf(idx.dims);
    int64_t n = x.dims[axis];
    for (int64_t i = 0; i < idx.numel(); ++i) {
      int64_t k = readInt(idx, i), off = 0;
      if (k < -n || k >= n)
        return c.fail("index " + std::to_string(k) + " out of range for an axis of " + std::to_string(n));
      for (size_t d = 0; d < x.dims.size(); ++d) {
        int64_t coord = (i / is[d]) % idx.dims[d];
        if (int64_t(d) != axis && coord >= x.dims[d])
          return c.fail("indices exceed data");
        off += (int64_t(d) == axis ? (k < 0 ? k + n : k) : coord) * xs[d];
      }
      target.push_back(off);
    }
  }
  if (kind == 0) {
    size_t w = dtypeSize(x.dtype);
    for (size_t i = 0; i < target.size(); ++i)
      std::memcpy(c.out[0].mut<char>() + target[i] * int64_t(w), upd.data + i * w, w);
    return true;
  }
  return withNum(x.dtype, [&](auto tag) {
           using T = decltype(tag);
           T *o = c.out[0].mut<T>();
           for (size_t i = 0; i < target.size(); ++i)
             reduceInto(o[target[i]], upd.as<T>()[i], kind);
         }) ||
         c.badType(x);
}

bool oneHot(Ctx &c) {
  if (!c.need(3))
    return false;
  const OpTensor &idx = c.in[0], &vals = c.in[2];
  if (c.in[1].numel() != 1 || vals.numel() != 2)
    return c.fail("depth must be one element and values two");
  int64_t depth = int64_t(readDouble(c.in[1], 0));
  if (depth < 0)
    return c.fail("negative depth");
  int64_t rank = int64_t(idx.dims.size()) + 1, axis = normAxis(c.a.i("axis", -1), rank);
  if (axis < 0)
    return c.fail("axis out of range");
  Dims od = idx.dims;
  od.insert(od.begin() + axis, depth);
  if (!c.alloc(0, od))
    return false;
  size_t w = dtypeSize(vals.dtype);
  char *o = c.out[0].mut<char>();
  int64_t total = c.out[0].numel();
  for (int64_t i = 0; i < total; ++i)
    std::memcpy(o + i * int64_t(w), vals.data, w);
  int64_t outer = product(idx.dims, 0, axis), inner = product(idx.dims, axis);
  for (int64_t a = 0; a < outer; ++a)
    for (int64_t b = 0; b < inner; ++b) {
      int64_t k = int64_t(readDouble(idx, a * inner + b));
      if (k < 0)
        k += depth;
      if (k < 0 || k >= depth)
        continue;
      std::memcpy(o + ((a * depth + k) * inner + b) * int64_t(w), vals.data + w, w);
    }
  return true;
}

bool shapeOp(Ctx &c) {
  if (!c.need(1))
    return false;
  int64_t r = int64_t(c.in[0].dims.size()), s = c.a.i("start", 0), e = c.a.i("end", r);
  if (s < 0)
    s += r;
  if (e < 0)
    e += r;
  s = std::clamp<int64_t>(s, 0, r);
  e = std::clamp<int64_t>(e, 0, r);
  if (!c.alloc(0, {std::max<int64_t>(0, e - s)}))
    return false;
  for (int64_t i = s; i < e; ++i)
    c.out[0].mut<int64_t>()[i - s] = c.in[0].dims[i];
  return true;
}

bool constantOfShape(Ctx &c) {
  if (!c.need(1))
    return false;
  Dims shape = readInts(c.in[0]);
  for (int64_t d : shape)
    if (d < 0)
      return c.fail("negative dim in " + dimsString(shape));
  if (!c.alloc(0, shape))
    return false;
  size_t w = dtypeSize(c.out[0].dtype);
  std::string v(w, '\0');
  if (const Attribute *a = c.a.find("value")) {
    if (a->s().size() != w)
      return c.fail("value of " + std::to_string(a->s().size()) + " bytes for a " + dtypeName(c.out[0].dtype) +
                    " output");
    v = a->s();
  }
  for (int64_t i = 0; i < c.out[0].numel(); ++i)
    std::memcpy(c.out[0].mut<char>() + i * int64_t(w), v.data(), w);
  return true;
}

bool range(Ctx &c) {
  if (!c.need(3))
    return false;
  for (int i = 0; i < 3; ++i)
    if (c.in[i].numel() != 1)
      return c.fail("start, limit and delta must be scalars");
  return withNum(c.in[0].dtype, [&](auto tag) {
           using T = decltype(tag);
           T s = c.in[0].as<T>()[0], l = c.in[1].as<T>()[0], d = c.in[2].as<T>()[0];
           if (d == T(0)) {
             c.fail("delta 0");
             return;
           }
           double n = std::ceil((double(l) - double(s)) / double(d));
           int64_t count = n > 0 ? int64_t(n) : 0;
           if (!c.alloc(0, {count}))
             return;
           for (int64_t i = 0; i < count; ++i)
             c.out[0].mut<T>()[i] = T(s + T(i) * d);
         }) ? c.err.empty()
            : c.badType(c.in[0]);
}

bool trilu(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  if (x.dims.size() < 2)
    return c.fail("input must have rank >= 2");
  int64_t k = c.in.size() > 1 && c.in[1].present() && c.in[1].numel() ? readInt(c.in[1], 0) : 0;
  bool upper = c.a.i("upper", 1) != 0;
  if (!c.alloc(0, x.dims))
    return false;
  int64_t n = x.dims[x.dims.size() - 2], m = x.dims.back(), mats = product(x.dims, 0, x.dims.size() - 2);
  size_t w = dtypeSize(x.dtype);
  char *o = c.out[0].mut<char>();
  for (int64_t b = 0; b < mats; ++b)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        int64_t at = ((b * n + i) * m + j) * int64_t(w);
        bool keep = upper ? j - i >= k : j - i <= k;
        if (keep)
          std::memcpy(o + at, x.data + at, w);
        else
          std::memset(o + at, 0, w);
      }
  return true;
}

using OpFn = bool (*)(Ctx &);
} // namespace

struct OpEntry {
  const char *name;
  OpFn fn;
  bool widensHalf; // f16/bf16 computed in f32
};

namespace {

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
    {"Identity", reshapeLike, false}, {"Reshape", reshapeLike, false}, {"Squeeze", reshapeLike, false},
    {"Unsqueeze", reshapeLike, false}, {"Transpose", transpose, false}, {"Expand", expand, false},
    {"Concat", concat, false},     {"Split", split, false},       {"Slice", slice, false},
    {"Gather", gather, false},     {"GatherElements", gatherElements, false}, {"GatherND", gatherND, false},
    {"ScatterElements", scatter, true}, {"ScatterND", scatter, true}, {"OneHot", oneHot, false},
    {"Shape", shapeOp, false},     {"ConstantOfShape", constantOfShape, false}, {"Range", range, true},
    {"Trilu", trilu, false},
};

const OpEntry *findOp(const std::string &op) {
  for (const auto &e : kOps)
    if (op == e.name)
      return &e;
  return nullptr;
}

} // namespace

const OpEntry *findOpKernel(const std::string &op) { return findOp(op); }

std::string runOp(const OpEntry *e, const OpStep &s, const std::vector<OpTensor> &in, std::vector<OpTensor> &out,
                  ThreadPool *pool) {
  if (!e)
    return "op " + s.op() + " has no kernel in this moert";
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
