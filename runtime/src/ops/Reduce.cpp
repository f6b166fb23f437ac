//===- Reduce.cpp - libmoert's op kernels: reductions, Softmax, ArgMax, TopK, CumSum, norms ===//
//
// Part of libmoert's op kernels (runtime/src/Ops.cpp maps op names to them; shared helpers in OpKernel.h).
//
//===----------------------------------------------------------------------===//
#include "OpKernel.h"

namespace moert::ops {

// -- reductions and along-one-axis ops --

bool reduceAxes(Ctx &c, const OpTensor &x, std::vector<bool> &reduced) {
  Dims axes;
  if (c.in.size() > 1 && c.in[1].present())
    axes = readInts(c.in[1]);
  if (std::string why = reducedAxes(x.dims.size(), axes, c.a.i("noop_with_empty_axes", 0) != 0, reduced);
      !why.empty())
    return c.fail(why);
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
  enum Kind { Sum, Mean, Max, Min, L2, L1, SumSquare, Prod, LogSum, LogSumExp };
  static const std::pair<const char *, Kind> kKinds[] = {{"ReduceSum", Sum},
                                                         {"ReduceMean", Mean},
                                                         {"ReduceMax", Max},
                                                         {"ReduceMin", Min},
                                                         {"ReduceL2", L2},
                                                         {"ReduceL1", L1},
                                                         {"ReduceSumSquare", SumSquare},
                                                         {"ReduceProd", Prod},
                                                         {"ReduceLogSum", LogSum},
                                                         {"ReduceLogSumExp", LogSumExp}};
  Kind kind = Sum;
  for (const auto &[name, k] : kKinds)
    if (op == name)
      kind = k;
  int64_t outN = product(keptDims), count = outN ? x.numel() / std::max<int64_t>(outN, 1) : 0;
  if ((kind == Max || kind == Min) && x.numel() == 0 && outN > 0)
    return c.fail(op + " over an empty axis");
  // Offsets of each input element in the output: a broadcast of the kept dims against the input's.
  Broadcast b;
  b.dims = x.dims;
  Dims ks = stridesOf(keptDims);
  Dims st(x.dims.size());
  for (size_t i = 0; i < x.dims.size(); ++i)
    st[i] = red[i] ? 0 : ks[i];
  b.strides = {st};
  return withNum(x.dtype,
                 [&](auto tag) {
                   using T = decltype(tag);
                   // Logs and exponentials in double whatever T is; the rest in T's own arithmetic.
                   using A = std::conditional_t<std::is_floating_point_v<T>, double, T>;
                   bool viaDouble = kind == LogSum || kind == LogSumExp;
                   std::vector<A> acc(outN, kind == Max    ? std::numeric_limits<A>::lowest()
                                            : kind == Min  ? std::numeric_limits<A>::max()
                                            : kind == Prod ? A(1)
                                                           : A(0));
                   std::vector<double> dacc(viaDouble ? outN : 0, 0.0);
                   const T *p = x.as<T>();
                   forEach<1>(b, [&](int64_t i, const int64_t *o) {
                     A v = A(p[i]);
                     A &r = acc[o[0]];
                     switch (kind) {
                     case Max:
                       r = (v > r || v != v) ? v : r;
                       break;
                     case Min:
                       r = (v < r || v != v) ? v : r;
                       break;
                     case L2:
                     case SumSquare:
                       r += v * v;
                       break;
                     case L1:
                       r += v < 0 ? A(-v) : v;
                       break;
                     case Prod:
                       r *= v;
                       break;
                     case LogSum:
                       dacc[o[0]] += double(p[i]);
                       break;
                     case LogSumExp:
                       dacc[o[0]] += std::exp(double(p[i]));
                       break;
                     default:
                       r += v;
                     }
                   });
                   T *out = c.out[0].mut<T>();
                   for (int64_t i = 0; i < outN; ++i) {
                     A r = acc[i];
                     if (kind == Mean)
                       r = count ? A(r / A(count)) : A(0);
                     else if (kind == L2)
                       r = A(std::sqrt(double(r)));
                     else if (viaDouble)
                       r = A(std::log(dacc[i]));
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
  return withFloat(x.dtype,
                   [&](auto tag) {
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
    return c.fail(c.op() + " over an empty axis");
  bool isMin = c.op() == "ArgMin";
  int64_t *o = c.out[0].mut<int64_t>();
  return withNum(x.dtype,
                 [&](auto tag) {
                   using T = decltype(tag);
                   const T *p = x.as<T>();
                   for (int64_t a = 0; a < v.outer; ++a)
                     for (int64_t b = 0; b < v.inner; ++b) {
                       int64_t best = 0, base = a * v.n * v.inner + b;
                       for (int64_t k = 1; k < v.n; ++k) {
                         T u = p[base + k * v.inner], w = p[base + best * v.inner];
                         if ((isMin ? u < w : u > w) || (last && u == w))
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
    return c.fail("K = " + std::to_string(k) + " out of range for an axis of " +
                  std::to_string(x.dims[axis]));
  bool largest = c.a.i("largest", 1) != 0;
  Dims od = x.dims;
  od[axis] = k;
  if (!c.alloc(0, od) || !c.alloc(1, od))
    return false;
  AxisView v = around(x.dims, axis);
  int64_t *oi = c.out[1].mut<int64_t>();
  return withNum(x.dtype,
                 [&](auto tag) {
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
  return withNum(x.dtype,
                 [&](auto tag) {
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
  return withFloat(x.dtype,
                   [&](auto tag) {
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

bool hardmax(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  int64_t axis = normAxis(c.a.i("axis", -1), int64_t(x.dims.size()));
  if (axis < 0)
    return c.fail("axis out of range");
  if (!c.alloc(0, x.dims))
    return false;
  AxisView v = around(x.dims, axis);
  return withFloat(x.dtype,
                   [&](auto tag) {
                     using T = decltype(tag);
                     const T *p = x.as<T>();
                     T *o = c.out[0].mut<T>();
                     for (int64_t a = 0; a < v.outer; ++a)
                       for (int64_t b = 0; b < v.inner; ++b) {
                         int64_t base = a * v.n * v.inner + b, best = 0;
                         for (int64_t k = 0; k < v.n; ++k) {
                           o[base + k * v.inner] = T(0);
                           if (p[base + k * v.inner] > p[base + best * v.inner])
                             best = k; // the first of equal maxima
                         }
                         if (v.n)
                           o[base + best * v.inner] = T(1);
                       }
                   }) ||
         c.badType(x);
}

/// BatchNormalization (running statistics) and InstanceNormalization (each sample's own, over the spatial
/// dims): y = (x - mean) / sqrt(var + epsilon) * scale + B per channel (dim 1).
bool channelNorm(Ctx &c) {
  bool batch = c.op() == "BatchNormalization";
  if (!c.need(batch ? 5 : 3))
    return false;
  const OpTensor &x = c.in[0];
  if (x.dims.size() < 2)
    return c.fail("input must have rank >= 2");
  int64_t n = x.dims[0], ch = x.dims[1], sp = product(x.dims, 2);
  for (size_t i = 1; i < (batch ? 5u : 3u); ++i)
    if (c.in[i].numel() != ch)
      return c.fail("input " + std::to_string(i) + " has " + std::to_string(c.in[i].numel()) +
                    " values for " + std::to_string(ch) + " channels");
  if (!c.alloc(0, x.dims))
    return false;
  double eps = c.a.f("epsilon", 1e-5);
  return withFloat(x.dtype,
                   [&](auto tag) {
                     using T = decltype(tag);
                     const T *p = x.as<T>();
                     T *o = c.out[0].mut<T>();
                     for (int64_t b = 0; b < n; ++b)
                       for (int64_t k = 0; k < ch; ++k) {
                         const T *xi = p + (b * ch + k) * sp;
                         T *yi = o + (b * ch + k) * sp;
                         double mean, var;
                         if (batch) {
                           mean = readDouble(c.in[3], k);
                           var = readDouble(c.in[4], k);
                         } else {
                           double s = 0, s2 = 0;
                           for (int64_t i = 0; i < sp; ++i)
                             s += double(xi[i]);
                           mean = sp ? s / double(sp) : 0;
                           for (int64_t i = 0; i < sp; ++i)
                             s2 += (double(xi[i]) - mean) * (double(xi[i]) - mean);
                           var = sp ? s2 / double(sp) : 0;
                         }
                         double scale = readDouble(c.in[1], k) / std::sqrt(var + eps),
                                bias = readDouble(c.in[2], k);
                         for (int64_t i = 0; i < sp; ++i)
                           yi[i] = T((double(xi[i]) - mean) * scale + bias);
                       }
                   }) ||
         c.badType(x);
}

/// LRN: x / (bias + alpha / size * sum of x^2 over the `size` channels around)^beta (NC...).
bool lrn(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  int64_t size = c.a.i("size", 0);
  if (x.dims.size() < 2 || size <= 0)
    return c.fail("needs an input of rank >= 2 and a positive size");
  if (!c.alloc(0, x.dims))
    return false;
  double alpha = c.a.f("alpha", 1e-4), beta = c.a.f("beta", 0.75), bias = c.a.f("bias", 1.0);
  int64_t n = x.dims[0], ch = x.dims[1], sp = product(x.dims, 2), lo = (size - 1) / 2, hi = size - 1 - lo;
  return withFloat(x.dtype,
                   [&](auto tag) {
                     using T = decltype(tag);
                     const T *p = x.as<T>();
                     T *o = c.out[0].mut<T>();
                     for (int64_t b = 0; b < n; ++b)
                       for (int64_t k = 0; k < ch; ++k)
                         for (int64_t i = 0; i < sp; ++i) {
                           double sq = 0;
                           for (int64_t j = std::max<int64_t>(0, k - lo); j <= std::min(ch - 1, k + hi);
                                ++j) {
                             double v = double(p[(b * ch + j) * sp + i]);
                             sq += v * v;
                           }
                           int64_t at = (b * ch + k) * sp + i;
                           o[at] = T(double(p[at]) / std::pow(bias + alpha / double(size) * sq, beta));
                         }
                   }) ||
         c.badType(x);
}

/// Unique: the distinct elements (no axis: of the flattened input) or slices along `axis`, sorted ascending
/// (lexicographically for slices) or in order of first occurrence; outputs Y, the first occurrence of each,
/// each input slice's index in Y, and the counts.
bool unique(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  const Attribute *ax = c.a.find("axis");
  Dims xd = ax ? x.dims : Dims{x.numel()};
  int64_t axis = ax ? normAxis(ax->ints(0), int64_t(x.dims.size())) : 0;
  if (axis < 0)
    return c.fail("axis out of range");
  int64_t n = xd[axis], outer = product(xd, 0, axis), inner = product(xd, axis + 1);
  // Slice k: the values x[a, k, b] for every a, b, as doubles (exact for the integer ranges ONNX tests use).
  auto value = [&](int64_t k, int64_t e) { return readDouble(x, ((e / inner) * n + k) * inner + e % inner); };
  int64_t elems = outer * inner;
  auto less = [&](int64_t p, int64_t q) {
    for (int64_t e = 0; e < elems; ++e) {
      double u = value(p, e), v = value(q, e);
      if (u != v)
        return u < v;
    }
    return false;
  };
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int64_t p, int64_t q) { return less(p, q) || (!less(q, p) && p < q); });
  std::vector<int64_t> group(n), first, counts; // group of each slice; first slice and size of each group
  for (size_t i = 0; i < order.size(); ++i) {
    if (i == 0 || less(order[i - 1], order[i])) {
      first.push_back(order[i]);
      counts.push_back(0);
    }
    group[order[i]] = int64_t(first.size()) - 1;
    ++counts.back();
  }
  int64_t u = int64_t(first.size());
  std::vector<int64_t> rank(u); // output position of each group
  std::iota(rank.begin(), rank.end(), 0);
  if (c.a.i("sorted", 1) == 0) { // by first occurrence
    std::vector<int64_t> byFirst(u);
    std::iota(byFirst.begin(), byFirst.end(), 0);
    std::sort(byFirst.begin(), byFirst.end(), [&](int64_t a, int64_t b) { return first[a] < first[b]; });
    for (int64_t i = 0; i < u; ++i)
      rank[byFirst[i]] = i;
  }
  Dims yd = xd;
  yd[axis] = u;
  if (!c.alloc(0, yd))
    return false;
  size_t w = dtypeSize(x.dtype);
  for (int64_t g = 0; g < u; ++g)
    for (int64_t a = 0; a < outer; ++a)
      std::memcpy(c.out[0].mut<char>() + ((a * u + rank[g]) * inner) * int64_t(w),
                  x.data + ((a * n + first[g]) * inner) * int64_t(w), size_t(inner) * w);
  auto put = [&](size_t k, Dims dims, auto &&at) {
    if (c.out.size() <= k || c.out[k].dtype != proto::I64)
      return true;
    if (!c.alloc(k, dims))
      return false;
    for (int64_t i = 0; i < dims[0]; ++i)
      c.out[k].mut<int64_t>()[i] = at(i);
    return true;
  };
  std::vector<int64_t> byRank(u);
  for (int64_t g = 0; g < u; ++g)
    byRank[rank[g]] = g;
  return put(1, {u}, [&](int64_t i) { return first[byRank[i]]; }) &&
         put(2, {n}, [&](int64_t i) { return rank[group[i]]; }) &&
         put(3, {u}, [&](int64_t i) { return counts[byRank[i]]; });
}

} // namespace moert::ops

namespace moert {

std::string reducedAxes(size_t rank, const std::vector<int64_t> &axes, bool noopWithEmpty,
                        std::vector<bool> &reduced) {
  reduced.assign(rank, axes.empty() && !noopWithEmpty);
  for (int64_t ax : axes) {
    int64_t n = ops::normAxis(ax, int64_t(rank));
    if (n < 0)
      return "axis " + std::to_string(ax) + " out of range for rank " + std::to_string(rank);
    reduced[n] = true;
  }
  return "";
}

} // namespace moert
