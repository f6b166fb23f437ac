//===- Elementwise.cpp - libmoert's op kernels: elementwise and logical ops, Cast ===//
//
// Part of libmoert's op kernels (runtime/src/Ops.cpp maps op names to them; shared helpers in OpKernel.h).
//
//===----------------------------------------------------------------------===//
#include "OpKernel.h"

namespace moert::ops {

enum class Unary {
  Abs,
  Neg,
  Relu,
  Ceil,
  Floor,
  Cos,
  Sin,
  Exp,
  Log,
  Sqrt,
  Tanh,
  Erf,
  Reciprocal,
  Sigmoid,
  GeluErf,
  GeluTanh,
  Tan,
  Asin,
  Acos,
  Atan,
  Sinh,
  Cosh,
  Asinh,
  Acosh,
  Atanh,
  Round,
  Sign,
  Softplus,
  Softsign,
  Elu,
  Selu,
  LeakyRelu,
  ThresholdedRelu,
  HardSigmoid,
  Shrink
};

/// The parameters of the activations that have them (alpha, beta / gamma / lambd), with ONNX's defaults.
struct UnaryParams {
  double alpha = 0, beta = 0;
};

/// The op's kind, resolved once per step (not per element); false for an unknown name.
bool unaryKind(const std::string &op, const Attrs &a, Unary &k, UnaryParams &prm) {
  static const std::pair<const char *, Unary> kNames[] = {{"Abs", Unary::Abs},
                                                          {"Neg", Unary::Neg},
                                                          {"Relu", Unary::Relu},
                                                          {"Ceil", Unary::Ceil},
                                                          {"Floor", Unary::Floor},
                                                          {"Cos", Unary::Cos},
                                                          {"Sin", Unary::Sin},
                                                          {"Exp", Unary::Exp},
                                                          {"Log", Unary::Log},
                                                          {"Sqrt", Unary::Sqrt},
                                                          {"Tanh", Unary::Tanh},
                                                          {"Erf", Unary::Erf},
                                                          {"Reciprocal", Unary::Reciprocal},
                                                          {"Sigmoid", Unary::Sigmoid},
                                                          {"Gelu", Unary::GeluErf},
                                                          {"Tan", Unary::Tan},
                                                          {"Asin", Unary::Asin},
                                                          {"Acos", Unary::Acos},
                                                          {"Atan", Unary::Atan},
                                                          {"Sinh", Unary::Sinh},
                                                          {"Cosh", Unary::Cosh},
                                                          {"Asinh", Unary::Asinh},
                                                          {"Acosh", Unary::Acosh},
                                                          {"Atanh", Unary::Atanh},
                                                          {"Round", Unary::Round},
                                                          {"Sign", Unary::Sign},
                                                          {"Softplus", Unary::Softplus},
                                                          {"Softsign", Unary::Softsign},
                                                          {"Elu", Unary::Elu},
                                                          {"Selu", Unary::Selu},
                                                          {"LeakyRelu", Unary::LeakyRelu},
                                                          {"ThresholdedRelu", Unary::ThresholdedRelu},
                                                          {"HardSigmoid", Unary::HardSigmoid},
                                                          {"Shrink", Unary::Shrink}};
  for (const auto &[name, kind] : kNames)
    if (op == name) {
      k = kind == Unary::GeluErf && a.str("approximate", "none") == "tanh" ? Unary::GeluTanh : kind;
      switch (k) { // the defaults are ONNX's (codegen writes every attribute, these cover older artifacts)
      case Unary::Elu:
      case Unary::ThresholdedRelu:
        prm.alpha = a.f("alpha", 1.0);
        break;
      case Unary::LeakyRelu:
        prm.alpha = a.f("alpha", 0.01);
        break;
      case Unary::Selu:
        prm.alpha = a.f("alpha", 1.67326319217681884765625);
        prm.beta = a.f("gamma", 1.05070102214813232421875);
        break;
      case Unary::HardSigmoid:
        prm.alpha = a.f("alpha", 0.2);
        prm.beta = a.f("beta", 0.5);
        break;
      case Unary::Shrink:
        prm.alpha = a.f("lambd", 0.5);
        prm.beta = a.f("bias", 0.0);
        break;
      default:
        break;
      }
      return true;
    }
  return false;
}

/// Kinds defined for integer tensors too.
bool unaryOnIntegers(Unary k) {
  return k == Unary::Abs || k == Unary::Neg || k == Unary::Relu || k == Unary::Sign || k == Unary::Shrink;
}

/// o[i] = f(p[i]) with `f` the op's function, chosen once for the whole loop.
template <class T> void mapUnary(Unary k, const UnaryParams &prm, const T *p, T *o, int64_t n) {
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
      return map(
          [](T x) { return x >= 0 ? T(1) / (T(1) + std::exp(-x)) : std::exp(x) / (T(1) + std::exp(x)); });
    case Unary::GeluTanh:
      return map([](T x) {
        return T(0.5) * x * (T(1) + std::tanh(T(0.7978845608028654) * (x + T(0.044715) * x * x * x)));
      });
    case Unary::GeluErf:
      return map([](T x) { return T(0.5) * x * (T(1) + std::erf(x * T(0.7071067811865476))); });
    case Unary::Tan:
      return map([](T x) { return std::tan(x); });
    case Unary::Asin:
      return map([](T x) { return std::asin(x); });
    case Unary::Acos:
      return map([](T x) { return std::acos(x); });
    case Unary::Atan:
      return map([](T x) { return std::atan(x); });
    case Unary::Sinh:
      return map([](T x) { return std::sinh(x); });
    case Unary::Cosh:
      return map([](T x) { return std::cosh(x); });
    case Unary::Asinh:
      return map([](T x) { return std::asinh(x); });
    case Unary::Acosh:
      return map([](T x) { return std::acosh(x); });
    case Unary::Atanh:
      return map([](T x) { return std::atanh(x); });
    case Unary::Round: // halves to even (the default rounding mode)
      return map([](T x) { return std::nearbyint(x); });
    case Unary::Sign:
      return map([](T x) { return x > 0 ? T(1) : x < 0 ? T(-1) : x; }); // NaN and +-0 stay
    case Unary::Softplus: // log(1 + e^x) without overflow for large x
      return map([](T x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); });
    case Unary::Softsign:
      return map([](T x) { return x / (T(1) + std::fabs(x)); });
    case Unary::Elu: {
      T alpha = T(prm.alpha);
      return map([=](T x) { return x < 0 ? alpha * std::expm1(x) : x; });
    }
    case Unary::Selu: {
      T alpha = T(prm.alpha), gamma = T(prm.beta);
      return map([=](T x) { return x > 0 ? gamma * x : gamma * alpha * std::expm1(x); });
    }
    case Unary::LeakyRelu: {
      T alpha = T(prm.alpha);
      return map([=](T x) { return x < 0 ? alpha * x : x; });
    }
    case Unary::ThresholdedRelu: {
      T alpha = T(prm.alpha);
      return map([=](T x) { return x > alpha ? x : T(0); });
    }
    case Unary::HardSigmoid: {
      T alpha = T(prm.alpha), beta = T(prm.beta);
      return map([=](T x) { return std::max(T(0), std::min(T(1), alpha * x + beta)); });
    }
    case Unary::Shrink: {
      T lambd = T(prm.alpha), bias = T(prm.beta);
      return map([=](T x) { return x < -lambd ? x + bias : x > lambd ? x - bias : T(0); });
    }
    }
  } else {                    // integers: unaryOnIntegers (the caller refuses the others)
    if (k == Unary::Shrink) { // computed in double, as the float attributes are
      double lambd = prm.alpha, bias = prm.beta;
      return map([=](T x) {
        double v = double(x);
        return T(v < -lambd ? v + bias : v > lambd ? v - bias : 0.0);
      });
    }
    if constexpr (std::is_signed_v<T>) {
      if (k == Unary::Abs)
        return map([](T x) { return x < 0 ? T(-x) : x; });
      if (k == Unary::Neg)
        return map([](T x) { return T(-x); });
      if (k == Unary::Relu)
        return map([](T x) { return x > 0 ? x : T(0); });
      if (k == Unary::Sign)
        return map([](T x) { return T(x > 0 ? 1 : x < 0 ? -1 : 0); });
    } else if (k == Unary::Sign) {
      return map([](T x) { return T(x > 0 ? 1 : 0); });
    }
    map([](T x) { return x; }); // unsigned Abs and Relu
  }
}

bool unary(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  Unary k;
  UnaryParams prm;
  if (!unaryKind(c.op(), c.a, k, prm))
    return c.fail("is not an elementwise op");
  if (x.dtype != proto::F32 && x.dtype != proto::F64 && !unaryOnIntegers(k))
    return c.badType(x);
  if (!c.alloc(0, x.dims))
    return false;
  return withNum(x.dtype,
                 [&](auto tag) {
                   using T = decltype(tag);
                   mapUnary<T>(k, prm, x.as<T>(), c.out[0].mut<T>(), x.numel());
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
  if (op == "And" || op == "Or" || op == "Xor") {
    if (x.dtype != proto::BOOL || y.dtype != proto::BOOL)
      return c.badType(x);
    const bool *pa = x.as<bool>(), *pb = y.as<bool>();
    bool *po = o.mut<bool>();
    int kind = op == "And" ? 0 : op == "Or" ? 1 : 2;
    forEach<2>(b, [&](int64_t i, const int64_t *p) {
      bool u = pa[p[0]], v = pb[p[1]];
      po[i] = kind == 0 ? (u && v) : kind == 1 ? (u || v) : (u != v);
    });
    return true;
  }
  if (op == "Pow") { // exponent of any numeric type
    return withNum(x.dtype,
                   [&](auto tag) {
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
  bool cmp =
      op == "Equal" || op == "Greater" || op == "GreaterOrEqual" || op == "Less" || op == "LessOrEqual";
  if (cmp) {
    bool *po = o.mut<bool>();
    int kind = op == "Equal" ? 0 : op == "Greater" ? 1 : op == "GreaterOrEqual" ? 2 : op == "Less" ? 3 : 4;
    return withAny(x.dtype,
                   [&](auto tag) {
                     using T = decltype(tag);
                     const T *pa = x.as<T>(), *pb = y.as<T>();
                     forEach<2>(b, [&](int64_t i, const int64_t *p) {
                       T u = pa[p[0]], v = pb[p[1]];
                       po[i] = kind == 0   ? u == v
                               : kind == 1 ? u > v
                               : kind == 2 ? u >= v
                               : kind == 3 ? u < v
                                           : u <= v;
                     });
                   }) ||
           c.badType(x);
  }
  if (op == "BitShift") {
    bool left = c.a.str("direction", "") == "LEFT";
    if (!left && c.a.str("direction", "") != "RIGHT")
      return c.fail("attribute 'direction' must be LEFT or RIGHT");
    if (x.dtype != proto::U8 && x.dtype != proto::U16 && x.dtype != proto::U32 && x.dtype != proto::U64)
      return c.badType(x);
    return withInt(x.dtype, [&](auto tag) {
      using T = decltype(tag);
      const T *pa = x.as<T>(), *pb = y.as<T>();
      T *po = o.mut<T>();
      constexpr uint64_t bits = sizeof(T) * 8;
      forEach<2>(b, [&](int64_t i, const int64_t *p) {
        uint64_t s = uint64_t(pb[p[1]]);
        po[i] = s >= bits ? T(0) : left ? T(pa[p[0]] << s) : T(pa[p[0]] >> s);
      });
    });
  }
  if (op == "Mod") {
    bool fmodForm = c.a.i("fmod", 0) != 0;
    if (!fmodForm && (x.dtype == proto::F32 || x.dtype == proto::F64))
      return c.fail("attribute 'fmod' must be 1 for floating-point inputs");
    bool byZero = false;
    bool ok = withNum(x.dtype, [&](auto tag) {
      using T = decltype(tag);
      const T *pa = x.as<T>(), *pb = y.as<T>();
      T *po = o.mut<T>();
      forEach<2>(b, [&](int64_t i, const int64_t *p) {
        T u = pa[p[0]], v = pb[p[1]];
        if constexpr (std::is_floating_point_v<T>) {
          T r = std::fmod(u, v);
          if (!fmodForm && r != 0 && ((r < 0) != (v < 0)))
            r += v; // the sign of the divisor, as Python's %
          po[i] = r;
        } else {
          if (v == 0) {
            byZero = true;
            po[i] = 0;
            return;
          }
          if constexpr (std::is_signed_v<T>) {
            if (v == T(-1)) { // also INT_MIN % -1, which overflows in C
              po[i] = 0;
              return;
            }
          }
          T r = T(u % v);
          if constexpr (std::is_signed_v<T>)
            if (!fmodForm && r != 0 && ((r < 0) != (v < 0)))
              r = T(r + v);
          po[i] = r;
        }
      });
    });
    if (!ok)
      return c.badType(x);
    if (byZero)
      return c.fail("integer modulo by zero");
    return true;
  }
  if (op == "PRelu") {
    return withNum(x.dtype,
                   [&](auto tag) {
                     using T = decltype(tag);
                     const T *pa = x.as<T>(), *pb = y.as<T>();
                     T *po = o.mut<T>();
                     forEach<2>(b, [&](int64_t i, const int64_t *p) {
                       T u = pa[p[0]];
                       po[i] = u < 0 ? T(u * pb[p[1]]) : u;
                     });
                   }) ||
           c.badType(x);
  }
  int kind = op == "Add" || op == "Sum" || op == "Mean" ? 0
             : op == "Sub"                              ? 1
             : op == "Mul"                              ? 2
             : op == "Div"                              ? 3
             : op == "Max"                              ? 4
                                                        : 5;
  bool divByZero = false;
  bool ok = withNum(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T *pa = x.as<T>(), *pb = y.as<T>();
    T *po = o.mut<T>();
    // The operation chosen once, outside the element loop.
    auto each = [&](auto f) {
      forEach<2>(b, [&](int64_t i, const int64_t *p) { po[i] = f(pa[p[0]], pb[p[1]]); });
    };
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

/// Max / Min / Sum / Mean over any number of inputs, folded pairwise (Mean divides the sum at the end).
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
  } else {
    c.out[0] = acc;
  }
  if (c.op() == "Mean" && c.in.size() > 1) {
    OpTensor &o = c.out[0];
    double n = double(c.in.size());
    return withNum(o.dtype,
                   [&](auto tag) {
                     using T = decltype(tag);
                     T *p = o.mut<T>();
                     for (int64_t i = 0; i < o.numel(); ++i)
                       p[i] = T(double(p[i]) / n);
                   }) ||
           c.badType(o);
  }
  return true;
}

/// IsNaN, and IsInf with its detect_negative / detect_positive.
bool isNaN(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  if (!c.alloc(0, x.dims))
    return false;
  bool *o = c.out[0].mut<bool>();
  bool inf = c.op() == "IsInf", neg = c.a.i("detect_negative", 1) != 0,
       pos = c.a.i("detect_positive", 1) != 0;
  return withFloat(x.dtype,
                   [&](auto tag) {
                     using T = decltype(tag);
                     const T *p = x.as<T>();
                     for (int64_t i = 0; i < x.numel(); ++i)
                       o[i] = inf ? std::isinf(p[i]) && (p[i] < 0 ? neg : pos) : std::isnan(p[i]);
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
  return withNum(x.dtype,
                 [&](auto tag) {
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
          o[i] = v != v                                     ? D(0)
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

/// QuantizeLinear / DequantizeLinear: a per-tensor scale (and zero point), or one per slice along `axis`.
bool quantizeLinear(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0], &scale = c.in[1];
  const OpTensor *zp = c.in.size() > 2 && c.in[2].present() ? &c.in[2] : nullptr;
  int64_t axis = 0, per = 1, inner = 1;
  if (scale.numel() != 1) {
    axis = normAxis(c.a.i("axis", 1), int64_t(x.dims.size()));
    if (axis < 0 || scale.dims.size() != 1 || scale.numel() != x.dims[axis])
      return c.fail("scale " + dimsString(scale.dims) + " matches neither the tensor nor axis " +
                    std::to_string(c.a.i("axis", 1)) + " of " + dimsString(x.dims));
    per = x.dims[axis];
    inner = product(x.dims, axis + 1);
  }
  if (zp && zp->numel() != scale.numel())
    return c.fail("zero point and scale differ in size");
  if (!c.alloc(0, x.dims))
    return false;
  OpTensor &o = c.out[0];
  int64_t total = x.numel();
  auto slice = [&](int64_t i) { return per == 1 ? 0 : (i / inner) % per; };
  if (c.op() == "QuantizeLinear") {
    if (o.dtype != proto::U8 && o.dtype != proto::I8)
      return c.badType(o);
    double lo = o.dtype == proto::U8 ? 0 : -128, hi = o.dtype == proto::U8 ? 255 : 127;
    for (int64_t i = 0; i < total; ++i) {
      int64_t k = slice(i);
      // x / scale in f32, as ONNX's reference and ONNX Runtime divide (a double quotient rounds some halves
      // the other way), then to nearest even.
      double q = std::nearbyint(float(readDouble(x, i)) / float(readDouble(scale, k))) +
                 (zp ? readDouble(*zp, k) : 0);
      q = std::min(hi, std::max(lo, q));
      if (o.dtype == proto::U8)
        o.mut<uint8_t>()[i] = uint8_t(q);
      else
        o.mut<int8_t>()[i] = int8_t(q);
    }
    return true;
  }
  if (o.dtype != proto::F32)
    return c.badType(o);
  for (int64_t i = 0; i < total; ++i) {
    int64_t k = slice(i);
    o.mut<float>()[i] = float((readDouble(x, i) - (zp ? readDouble(*zp, k) : 0)) * readDouble(scale, k));
  }
  return true;
}

/// ai.onnx.preview.training's optimizers, one update of N tensors as ONNX defines them (in double): inputs R
/// (learning rate), T (update count), then X..., G... and the states (Adagrad: H; Momentum: V; Adam: V, H);
/// outputs the new X..., then the new states in the same order.
bool optimizer(Ctx &c) {
  const std::string &op = c.op();
  const size_t states = op == "Adam" ? 2 : 1, groups = 2 + states;
  if (c.in.size() < 2 + groups || (c.in.size() - 2) % groups)
    return c.fail("takes R, T and " + std::to_string(groups) + " groups of tensors; has " +
                  std::to_string(c.in.size()) + " inputs");
  const size_t n = (c.in.size() - 2) / groups;
  if (c.out.size() != n * (1 + states))
    return c.fail("has " + std::to_string(c.out.size()) + " outputs for " + std::to_string(n) + " tensors");
  if (!c.need(c.in.size()) || c.in[0].numel() != 1 || c.in[1].numel() != 1)
    return c.fail("R and T must hold one element each");
  const double R = readDouble(c.in[0], 0);
  const int64_t T = readInt(c.in[1], 0);
  const Attrs &a = c.a;
  const double norm = a.f("norm_coefficient", 0);
  auto store = [](OpTensor &o, int64_t i, double v) {
    if (o.dtype == proto::F64)
      o.mut<double>()[i] = v;
    else
      o.mut<float>()[i] = float(v);
  };
  for (size_t t = 0; t < n; ++t) {
    const OpTensor &x = c.in[2 + t], &g = c.in[2 + n + t];
    for (size_t k = 0; k < groups; ++k) {
      const OpTensor &other = c.in[2 + k * n + t];
      if (other.dims != x.dims)
        return c.fail("tensor " + std::to_string(t) + ": shapes " + dimsString(x.dims) + " and " +
                      dimsString(other.dims) + " differ");
    }
    for (size_t k = 0; k <= states; ++k) {
      if (c.out[k * n + t].dtype != proto::F32 && c.out[k * n + t].dtype != proto::F64)
        return c.badType(c.out[k * n + t]);
      if (!c.alloc(k * n + t, x.dims))
        return false;
    }
    OpTensor &xo = c.out[t], &s1 = c.out[n + t];
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double xv = readDouble(x, i), gr = norm * xv + readDouble(g, i),
                   v1 = readDouble(c.in[2 + 2 * n + t], i);
      if (op == "Adagrad") {
        const double r = R / (1 + double(T) * a.f("decay_factor", 0)), h = v1 + gr * gr;
        store(s1, i, h);
        store(xo, i, xv - r * gr / (std::sqrt(h) + a.f("epsilon", 0)));
      } else if (op == "Momentum") {
        const double alpha = a.f("alpha", 0), beta = T > 0 ? a.f("beta", 0) : 1.0;
        const double v = alpha * v1 + beta * gr;
        store(s1, i, v);
        store(xo, i, xv - R * (a.str("mode", "standard") == "nesterov" ? gr + alpha * v : v));
      } else { // Adam
        const double alpha = a.f("alpha", 0.9), beta = a.f("beta", 0.999);
        const double v = alpha * v1 + (1 - alpha) * gr;
        const double h = beta * readDouble(c.in[2 + 3 * n + t], i) + (1 - beta) * gr * gr;
        const double r =
            T > 0 ? R * std::sqrt(1 - std::pow(beta, double(T))) / (1 - std::pow(alpha, double(T))) : R;
        const double xn = xv - r * v / (std::sqrt(h) + a.f("epsilon", 1e-6));
        store(s1, i, v);
        store(c.out[2 * n + t], i, h);
        store(xo, i, (1 - a.f("norm_coefficient_post", 0)) * xn);
      }
    }
  }
  return true;
}

} // namespace moert::ops
