//===- Linalg.cpp - libmoert's op kernels: MatMul, Gemm, Conv, Einsum ===//
//
// Part of libmoert's op kernels (runtime/src/Ops.cpp maps op names to them; shared helpers in OpKernel.h).
//
//===----------------------------------------------------------------------===//
#include "OpKernel.h"

#include <array>

namespace moert::ops {

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
  return withNum(x.dtype,
                 [&](auto tag) {
                   using T = decltype(tag);
                   MatMulJob<T> j{x.as<T>(), y.as<T>(), c.out[0].mut<T>(), m,
                                  k,         n,         Dims(batches),     Dims(batches)};
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
  return withNum(A.dtype,
                 [&](auto tag) {
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
                     forEach<2>(bc, [&](int64_t i, const int64_t *p) {
                       o[i] = T(o[i] + beta * c.in[2].as<T>()[p[1]]);
                     });
                 }) ||
         c.badType(A);
}

/// The sliding-window geometry Conv and the pooling ops share: strides, dilations and pads (defaults filled,
/// auto_pad resolved: SAME_UPPER puts the odd pad at the end, SAME_LOWER at the start) and the output's
/// spatial dims, rounded down or (ceil_mode) up.
struct Window {
  Dims kern, strides, dil, pads, out;
};
/// The attributes alone: defaults filled, sizes and signs checked (ConvTranspose computes its own output).
bool windowAttrs(Ctx &c, size_t sp, Dims kern, Window &w) {
  w.kern = std::move(kern);
  w.strides = c.a.ints("strides");
  w.dil = c.a.ints("dilations");
  w.pads = c.a.ints("pads");
  if (w.strides.empty())
    w.strides.assign(sp, 1);
  if (w.dil.empty())
    w.dil.assign(sp, 1);
  if (w.pads.empty())
    w.pads.assign(2 * sp, 0);
  if (w.kern.size() != sp || w.strides.size() != sp || w.dil.size() != sp || w.pads.size() != 2 * sp)
    return c.fail("kernel/strides/dilations/pads do not match " + std::to_string(sp) + " spatial dims");
  for (size_t i = 0; i < sp; ++i)
    if (w.strides[i] <= 0 || w.dil[i] <= 0 || w.kern[i] <= 0)
      return c.fail("kernel_shape, strides and dilations must be positive");
  return true;
}

bool window(Ctx &c, const Dims &xDims, Dims kern, bool ceilMode, Window &w) {
  size_t sp = xDims.size() - 2;
  if (!windowAttrs(c, sp, std::move(kern), w))
    return false;
  std::string autoPad = c.a.str("auto_pad", "NOTSET");
  w.out.clear();
  for (size_t i = 0; i < sp; ++i) {
    int64_t in = xDims[2 + i], eff = (w.kern[i] - 1) * w.dil[i] + 1, s = w.strides[i], o;
    if (autoPad == "SAME_UPPER" || autoPad == "SAME_LOWER") {
      o = (in + s - 1) / s;
      int64_t total = std::max<int64_t>(0, (o - 1) * s + eff - in);
      w.pads[i] = autoPad == "SAME_UPPER" ? total / 2 : total - total / 2;
      w.pads[sp + i] = total - w.pads[i];
    } else if (autoPad == "VALID") {
      w.pads[i] = w.pads[sp + i] = 0;
      o = in >= eff ? (in - eff) / s + 1 : 0;
    } else if (autoPad == "NOTSET") {
      int64_t span = in + w.pads[i] + w.pads[sp + i] - eff;
      o = span < 0 ? 0 : (ceilMode ? (span + s - 1) / s : span / s) + 1;
    } else {
      return c.fail("auto_pad '" + autoPad + "'");
    }
    w.out.push_back(std::max<int64_t>(o, 0));
  }
  return true;
}

bool conv(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &X = c.in[0], &W = c.in[1];
  ConvPlan g;
  if (std::string why = planConv(c.s, X.dims, W.dims, g); !why.empty())
    return c.fail(why);
  if (!c.alloc(0, g.outDims))
    return false;
  const int64_t N = g.N, C = g.C, M = g.M, group = g.group;
  const size_t sp = g.kern.size();
  const Dims &kern = g.kern, &strides = g.strides, &dil = g.dil, &pads = g.pads;
  bool hasB = c.in.size() > 2 && c.in[2].present();
  const Dims &outSp = g.outSp, &inSp = g.inSp;
  int64_t outPix = product(outSp), inPix = product(inSp), kPix = product(kern), cg = C / group,
          mg = M / group;
  return withFloat(X.dtype,
                   [&](auto tag) {
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
                               acc +=
                                   px[(b * C + g * cg + cc) * inPix + off] * pw[(mm * cg + cc) * kPix + kp];
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
        return c.fail(std::string("label '") + terms[t][i] + "' has sizes " + std::to_string(it->second) +
                      " and " + std::to_string(d));
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
  return withNum(c.out[0].dtype,
                 [&](auto tag) {
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

/// MatMulInteger of 2-D int8/uint8 matrices into int32: (A - a_zero_point) (B - b_zero_point), zero points
/// per tensor, per row of A or per column of B.
bool matmulInteger(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &a = c.in[0], &b = c.in[1];
  if (a.dims.size() != 2 || b.dims.size() != 2 || a.dims[1] != b.dims[0])
    return c.fail("needs 2-D inputs [M, K] and [K, N], got " + dimsString(a.dims) + " and " +
                  dimsString(b.dims));
  const OpTensor *az = c.in.size() > 2 && c.in[2].present() ? &c.in[2] : nullptr;
  const OpTensor *bz = c.in.size() > 3 && c.in[3].present() ? &c.in[3] : nullptr;
  int64_t m = a.dims[0], k = a.dims[1], n = b.dims[1];
  if ((az && az->numel() != 1 && az->numel() != m) || (bz && bz->numel() != 1 && bz->numel() != n))
    return c.fail("zero points must be scalars, one per row of A or one per column of B");
  if (c.out[0].dtype != proto::I32)
    return c.badType(c.out[0]);
  if (!c.alloc(0, {m, n}))
    return false;
  int32_t *o = c.out[0].mut<int32_t>();
  for (int64_t i = 0; i < m; ++i) {
    int64_t za = az ? readInt(*az, az->numel() == 1 ? 0 : i) : 0;
    for (int64_t j = 0; j < n; ++j) {
      int64_t zb = bz ? readInt(*bz, bz->numel() == 1 ? 0 : j) : 0, acc = 0;
      for (int64_t p = 0; p < k; ++p)
        acc += (readInt(a, i * k + p) - za) * (readInt(b, p * n + j) - zb);
      o[i * n + j] = int32_t(acc);
    }
  }
  return true;
}

/// MaxPool (with its optional flat indices, row- or column-major) and AveragePool (count_include_pad: divide
/// by the window's positions inside the padded input, else by those inside the input).
bool pool(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &X = c.in[0];
  if (X.dims.size() < 3)
    return c.fail("X " + dimsString(X.dims) + " is not N x C x spatial");
  size_t sp = X.dims.size() - 2;
  bool isMax = c.op() == "MaxPool";
  Window win;
  if (!window(c, X.dims, c.a.ints("kernel_shape"), c.a.i("ceil_mode", 0) != 0, win))
    return false;
  int64_t N = X.dims[0], C = X.dims[1];
  Dims od{N, C}, inSp(X.dims.begin() + 2, X.dims.end());
  od.insert(od.end(), win.out.begin(), win.out.end());
  if (!c.alloc(0, od))
    return false;
  bool wantIdx = isMax && c.out.size() > 1;
  if (wantIdx) {
    c.out[1].dtype = proto::I64;
    if (!c.alloc(1, od))
      return false;
  }
  bool colMajor = c.a.i("storage_order", 0) != 0, includePad = c.a.i("count_include_pad", 0) != 0;
  int64_t outPix = product(win.out), inPix = product(inSp), kPix = product(win.kern);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T *px = X.as<T>();
    T *o = c.out[0].mut<T>();
    Dims oi(sp), pos(sp);
    for (int64_t plane = 0; plane < N * C; ++plane)
      for (int64_t op = 0; op < outPix; ++op) {
        for (size_t d = sp, r = op; d-- > 0; r /= win.out[d])
          oi[d] = r % win.out[d];
        double acc = isMax ? -std::numeric_limits<double>::infinity() : 0.0;
        int64_t count = 0, best = -1;
        for (int64_t kp = 0; kp < kPix; ++kp) {
          bool inside = true, inPadded = true;
          for (size_t d = sp, r = kp; d-- > 0; r /= win.kern[d]) {
            pos[d] = oi[d] * win.strides[d] - win.pads[d] + int64_t(r % win.kern[d]) * win.dil[d];
            inside &= pos[d] >= 0 && pos[d] < inSp[d];
            inPadded &= pos[d] >= -win.pads[d] && pos[d] < inSp[d] + win.pads[sp + d];
          }
          if (!inside) {
            count += includePad && inPadded;
            continue;
          }
          int64_t off = 0;
          for (size_t d = 0; d < sp; ++d)
            off = off * inSp[d] + pos[d];
          double v = double(px[plane * inPix + off]);
          ++count;
          if (!isMax) {
            acc += v;
          } else if (v > acc || best < 0) {
            acc = v;
            best = off;
          }
        }
        o[plane * outPix + op] = isMax ? (best < 0 ? T(0) : T(acc)) : T(count ? acc / double(count) : 0.0);
        if (wantIdx) {
          int64_t flat = best;
          if (colMajor && best >= 0) { // the spatial coordinates column-major
            flat = 0;
            for (size_t d = sp, r = best; d-- > 0; r /= inSp[d])
              pos[d] = int64_t(r % inSp[d]);
            for (size_t d = sp; d-- > 0;)
              flat = flat * inSp[d] + pos[d];
          }
          c.out[1].mut<int64_t>()[plane * outPix + op] = plane * inPix + flat;
        }
      }
  };
  if (isMax)
    return withNum(X.dtype, run) || c.badType(X);
  return withFloat(X.dtype, run) || c.badType(X);
}

/// ConvTranspose: each input pixel scatters its kernel-weighted values into the output (W is
/// [C, M / group, kernel...]); output_shape, when given, sets the pads (SAME_UPPER: the odd one at the end).
bool convTranspose(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &X = c.in[0], &W = c.in[1];
  size_t sp = X.dims.size() < 3 ? 0 : X.dims.size() - 2;
  if (sp == 0 || W.dims.size() != X.dims.size())
    return c.fail("X " + dimsString(X.dims) + " and W " + dimsString(W.dims) + " are not N x C x spatial");
  int64_t N = X.dims[0], C = X.dims[1], group = c.a.i("group", 1);
  if (group <= 0 || C % group || W.dims[0] != C)
    return c.fail("channels " + std::to_string(C) + " / W " + dimsString(W.dims) + " / group " +
                  std::to_string(group) + " disagree");
  int64_t mg = W.dims[1], M = mg * group, cg = C / group;
  Window win;
  if (!windowAttrs(c, sp, Dims(W.dims.begin() + 2, W.dims.end()), win))
    return false;
  const Dims &kern = win.kern, &strides = win.strides, &dil = win.dil;
  Dims &pads = win.pads, outPad = c.a.ints("output_padding"), outShape = c.a.ints("output_shape");
  if (outPad.empty())
    outPad.assign(sp, 0);
  if (outShape.size() == sp + 2)
    outShape.erase(outShape.begin(), outShape.begin() + 2);
  if (outPad.size() != sp || (!outShape.empty() && outShape.size() != sp))
    return c.fail("output_padding/output_shape do not match " + std::to_string(sp) + " spatial dims");
  std::string autoPad = c.a.str("auto_pad", "NOTSET");
  Dims od{N, M}, inSp(X.dims.begin() + 2, X.dims.end()), outSp(sp);
  for (size_t i = 0; i < sp; ++i) {
    int64_t full = strides[i] * (inSp[i] - 1) + outPad[i] + (kern[i] - 1) * dil[i] + 1;
    bool same = autoPad == "SAME_UPPER" || autoPad == "SAME_LOWER";
    if (!outShape.empty() || same) {
      int64_t want = outShape.empty() ? inSp[i] * strides[i] : outShape[i], total = full - want;
      // Floor division: an output_shape larger than the full one pads the end with zeros (total < 0).
      int64_t half = total >= 0 ? total / 2 : -((1 - total) / 2);
      pads[i] = autoPad == "SAME_UPPER" ? half : total - half;
      pads[sp + i] = total - pads[i];
    } else if (autoPad == "VALID") {
      pads[i] = pads[sp + i] = 0;
    }
    outSp[i] = full - pads[i] - pads[sp + i];
    if (outSp[i] < 0)
      return c.fail("negative output size");
    od.push_back(outSp[i]);
  }
  if (!c.alloc(0, od))
    return false;
  bool hasB = c.in.size() > 2 && c.in[2].present();
  int64_t outPix = product(outSp), inPix = product(inSp), kPix = product(kern);
  return withFloat(X.dtype,
                   [&](auto tag) {
                     using T = decltype(tag);
                     const T *px = X.as<T>(), *pw = W.as<T>();
                     T *o = c.out[0].mut<T>();
                     for (int64_t b = 0; b < N; ++b)
                       for (int64_t m = 0; m < M; ++m)
                         for (int64_t q = 0; q < outPix; ++q)
                           o[(b * M + m) * outPix + q] = hasB ? c.in[2].as<T>()[m] : T(0);
                     Dims ii(sp);
                     for (int64_t b = 0; b < N; ++b)
                       for (int64_t ch = 0; ch < C; ++ch) {
                         int64_t g = ch / cg;
                         for (int64_t ip = 0; ip < inPix; ++ip) {
                           for (size_t d = sp, r = ip; d-- > 0; r /= inSp[d])
                             ii[d] = r % inSp[d];
                           T v = px[(b * C + ch) * inPix + ip];
                           for (int64_t kp = 0; kp < kPix; ++kp) {
                             int64_t off = 0;
                             bool inside = true;
                             for (size_t d = 0, r = kp, stride = kPix; d < sp; ++d) {
                               stride /= kern[d];
                               int64_t k = (r / stride) % kern[d];
                               int64_t pos = ii[d] * strides[d] - pads[d] + k * dil[d];
                               inside &= pos >= 0 && pos < outSp[d];
                               off = off * outSp[d] + pos;
                             }
                             if (!inside)
                               continue;
                             for (int64_t mm = 0; mm < mg; ++mm)
                               o[(b * M + g * mg + mm) * outPix + off] += v * pw[(ch * mg + mm) * kPix + kp];
                           }
                         }
                       }
                   }) ||
         c.badType(X);
}

/// Det of [..., M, M]: LU with partial pivoting, in double.
bool det(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  size_t r = x.dims.size();
  if (r < 2 || x.dims[r - 1] != x.dims[r - 2])
    return c.fail("input " + dimsString(x.dims) + " is not [..., M, M]");
  int64_t m = x.dims[r - 1], mats = product(x.dims, 0, r - 2);
  if (!c.alloc(0, Dims(x.dims.begin(), x.dims.end() - 2)))
    return false;
  std::vector<double> a(size_t(m * m));
  for (int64_t b = 0; b < mats; ++b) {
    for (int64_t i = 0; i < m * m; ++i)
      a[i] = readDouble(x, b * m * m + i);
    double d = 1;
    for (int64_t k = 0; k < m && d != 0; ++k) {
      int64_t piv = k;
      for (int64_t i = k + 1; i < m; ++i)
        if (std::fabs(a[i * m + k]) > std::fabs(a[piv * m + k]))
          piv = i;
      if (a[piv * m + k] == 0) {
        d = 0;
        break;
      }
      if (piv != k) {
        for (int64_t j = 0; j < m; ++j)
          std::swap(a[k * m + j], a[piv * m + j]);
        d = -d;
      }
      d *= a[k * m + k];
      for (int64_t i = k + 1; i < m; ++i) {
        double f = a[i * m + k] / a[k * m + k];
        for (int64_t j = k; j < m; ++j)
          a[i * m + j] -= f * a[k * m + j];
      }
    }
    if (!withFloat(c.out[0].dtype, [&](auto tag) { c.out[0].mut<decltype(tag)>()[b] = decltype(tag)(d); }))
      return c.badType(x);
  }
  return true;
}

/// MaxUnpool: zeros, then each input value at its flat index (from MaxPool's indices) in the output, whose
/// spatial dims are output_shape's or (in - 1) * stride + kernel - pads.
bool maxUnpool(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &X = c.in[0], &I = c.in[1];
  if (X.dims.size() < 3 || I.dims != X.dims)
    return c.fail("X " + dimsString(X.dims) + " and indices " + dimsString(I.dims) +
                  " must match, rank >= 3");
  size_t sp = X.dims.size() - 2;
  Window w;
  if (!windowAttrs(c, sp, c.a.ints("kernel_shape"), w))
    return false;
  // The indices are flat offsets into the unpooled shape (what MaxPool read); an output_shape (larger, for
  // a pool that dropped a border) places that shape's elements at the same coordinates.
  Dims natural(X.dims.begin(), X.dims.begin() + 2);
  for (size_t i = 0; i < sp; ++i)
    natural.push_back((X.dims[2 + i] - 1) * w.strides[i] + w.kern[i] - w.pads[i] - w.pads[sp + i]);
  Dims od = natural;
  if (c.in.size() > 2 && c.in[2].present()) {
    od = readInts(c.in[2]);
    if (od.size() != X.dims.size())
      return c.fail("output_shape has " + std::to_string(od.size()) + " dims for rank " +
                    std::to_string(X.dims.size()));
    for (size_t i = 0; i < od.size(); ++i)
      if (od[i] < natural[i])
        return c.fail("output_shape " + dimsString(od) + " is smaller than " + dimsString(natural));
  }
  if (!c.alloc(0, od))
    return false;
  OpTensor &o = c.out[0];
  std::memset(o.mut<char>(), 0, o.bytes());
  size_t width = dtypeSize(X.dtype);
  int64_t total = product(natural);
  for (int64_t i = 0; i < X.numel(); ++i) {
    int64_t at = readInt(I, i), to = 0;
    if (at < 0 || at >= total)
      return c.fail("index " + std::to_string(at) + " outside an unpooled tensor of " +
                    std::to_string(total));
    for (size_t d = 0, r = size_t(at), stride = size_t(total); d < od.size(); ++d) {
      stride /= size_t(natural[d]);
      to = to * od[d] + int64_t((r / stride) % size_t(natural[d]));
    }
    std::memcpy(o.mut<char>() + to * int64_t(width), X.data + i * int64_t(width), width);
  }
  return true;
}

/// NonMaxSuppression: per batch and class, boxes scoring above score_threshold, best first (ties by index),
/// each kept unless its IoU with a kept one exceeds iou_threshold, at most max_output_boxes_per_class;
/// selected_indices [n, 3] = (batch, class, box) in that order.
bool nonMaxSuppression(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &boxes = c.in[0], &scores = c.in[1];
  if (boxes.dims.size() != 3 || boxes.dims[2] != 4 || scores.dims.size() != 3 ||
      scores.dims[0] != boxes.dims[0] || scores.dims[2] != boxes.dims[1])
    return c.fail("boxes " + dimsString(boxes.dims) + " and scores " + dimsString(scores.dims) +
                  " are not [B, N, 4] and [B, C, N]");
  auto scalar = [&](size_t i, double dflt, bool &given) {
    given = c.in.size() > i && c.in[i].present() && c.in[i].numel() > 0;
    return given ? readDouble(c.in[i], 0) : dflt;
  };
  bool given, haveScore;
  const int64_t maxOut = int64_t(scalar(2, 0, given)); // 0 (the default): no output
  const double iouMax = scalar(3, 0, given);
  const double minScore = scalar(4, 0, haveScore);
  const bool center = c.a.i("center_point_box", 0) != 0;
  const int64_t B = boxes.dims[0], N = boxes.dims[1], C = scores.dims[1];
  // A box as (y1, x1, y2, x2) with y1 <= y2, x1 <= x2.
  auto corners = [&](int64_t b, int64_t i) {
    double v[4];
    for (int k = 0; k < 4; ++k)
      v[k] = readDouble(boxes, (b * N + i) * 4 + k);
    if (center) // [x_center, y_center, width, height]
      return std::array<double, 4>{v[1] - v[3] / 2, v[0] - v[2] / 2, v[1] + v[3] / 2, v[0] + v[2] / 2};
    return std::array<double, 4>{std::min(v[0], v[2]), std::min(v[1], v[3]), std::max(v[0], v[2]),
                                 std::max(v[1], v[3])};
  };
  auto overlaps = [&](const std::array<double, 4> &a, const std::array<double, 4> &b) {
    const double h = std::min(a[2], b[2]) - std::max(a[0], b[0]),
                 w = std::min(a[3], b[3]) - std::max(a[1], b[1]);
    if (h <= 0 || w <= 0)
      return false;
    const double areaA = (a[2] - a[0]) * (a[3] - a[1]), areaB = (b[2] - b[0]) * (b[3] - b[1]);
    const double inter = h * w, uni = areaA + areaB - inter;
    if (areaA <= 0 || areaB <= 0 || uni <= 0)
      return false;
    return inter / uni > iouMax;
  };
  std::vector<int64_t> selected;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < C && maxOut > 0; ++k) {
      std::vector<int64_t> order;
      for (int64_t i = 0; i < N; ++i)
        if (!haveScore || readDouble(scores, (b * C + k) * N + i) > minScore)
          order.push_back(i);
      std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
        const double sx = readDouble(scores, (b * C + k) * N + x),
                     sy = readDouble(scores, (b * C + k) * N + y);
        return sx > sy || (sx == sy && x < y);
      });
      std::vector<std::array<double, 4>> kept;
      for (int64_t i : order) {
        if (int64_t(kept.size()) >= maxOut)
          break;
        const auto box = corners(b, i);
        bool suppressed = false;
        for (const auto &other : kept)
          suppressed = suppressed || overlaps(box, other);
        if (suppressed)
          continue;
        kept.push_back(box);
        selected.insert(selected.end(), {b, k, i});
      }
    }
  if (!c.alloc(0, {int64_t(selected.size() / 3), 3}))
    return false;
  std::copy(selected.begin(), selected.end(), c.out[0].mut<int64_t>());
  return true;
}

namespace {
/// An activation of RNN / GRU / LSTM by its ONNX name, with its alpha / beta.
struct Activation {
  std::string name;
  double alpha = 0, beta = 0;
  double operator()(double x) const {
    if (name == "Sigmoid")
      return 1 / (1 + std::exp(-x));
    if (name == "Tanh")
      return std::tanh(x);
    if (name == "Relu")
      return std::max(x, 0.0);
    if (name == "Affine")
      return alpha * x + beta;
    if (name == "LeakyRelu")
      return x >= 0 ? x : alpha * x;
    if (name == "ThresholdedRelu")
      return x > alpha ? x : 0;
    if (name == "ScaledTanh")
      return alpha * std::tanh(beta * x);
    if (name == "HardSigmoid")
      return std::clamp(alpha * x + beta, 0.0, 1.0);
    if (name == "Elu")
      return x >= 0 ? x : alpha * (std::exp(x) - 1);
    if (name == "Softsign")
      return x / (1 + std::abs(x));
    return std::log1p(std::exp(x)); // Softplus
  }
};
} // namespace

/// RNN, GRU and LSTM (ONNX's equations, gates in ONNX's order: GRU z r h, LSTM i o f c), forward, reverse or
/// bidirectional, with sequence_lens (steps past a sequence's length give zeros in Y and leave its state),
/// initial states, LSTM's peepholes, clip, input_forget, GRU's linear_before_reset, layout 0 or 1. In double.
bool recurrent(Ctx &c) {
  if (!c.need(3))
    return false;
  const std::string &op = c.op();
  const bool lstm = op == "LSTM", gru = op == "GRU";
  const int G = lstm ? 4 : gru ? 3 : 1; // gates
  const OpTensor &X = c.in[0], &W = c.in[1], &R = c.in[2];
  auto opt = [&](size_t i) -> const OpTensor * {
    return c.in.size() > i && c.in[i].present() ? &c.in[i] : nullptr;
  };
  const OpTensor *B = opt(3), *lens = opt(4), *h0 = opt(5), *c0 = lstm ? opt(6) : nullptr,
                 *P = lstm ? opt(7) : nullptr;
  const bool batchFirst = c.a.i("layout", 0) != 0;
  const std::string dir = c.a.str("direction", "forward");
  const int D = dir == "bidirectional" ? 2 : 1;
  if (X.dims.size() != 3 || W.dims.size() != 3 || R.dims.size() != 3)
    return c.fail("X, W and R must be 3-D");
  const int64_t S = X.dims[batchFirst ? 1 : 0], N = X.dims[batchFirst ? 0 : 1], I = X.dims[2];
  const int64_t H = c.a.i("hidden_size", R.dims[2]);
  if (W.dims != Dims{D, G * H, I} || R.dims != Dims{D, G * H, H} || (B && B->dims != Dims{D, 2 * G * H}) ||
      (lens && lens->dims != Dims{N}) || (P && P->dims != Dims{D, 3 * H}))
    return c.fail("W " + dimsString(W.dims) + ", R " + dimsString(R.dims) +
                  (B ? ", B " + dimsString(B->dims) : "") + " do not fit " + std::to_string(D) +
                  " direction(s), hidden size " + std::to_string(H) + ", input size " + std::to_string(I));
  const Dims stateDims = batchFirst ? Dims{N, D, H} : Dims{D, N, H};
  for (const OpTensor *t : {h0, c0})
    if (t && t->dims != stateDims)
      return c.fail("initial state " + dimsString(t->dims) + ", expected " + dimsString(stateDims));
  // Activations: per direction f (and g, h); alpha / beta consumed in order by those that take them.
  const std::vector<std::string> defaults = lstm  ? std::vector<std::string>{"Sigmoid", "Tanh", "Tanh"}
                                            : gru ? std::vector<std::string>{"Sigmoid", "Tanh"}
                                                  : std::vector<std::string>{"Tanh"};
  std::vector<std::string> names = c.a.strings("activations");
  if (names.empty())
    for (int d = 0; d < D; ++d)
      names.insert(names.end(), defaults.begin(), defaults.end());
  if (names.size() != defaults.size() * size_t(D))
    return c.fail(std::to_string(names.size()) + " activations, expected " +
                  std::to_string(defaults.size() * D));
  std::vector<double> alphas = c.a.floats("activation_alpha"), betas = c.a.floats("activation_beta");
  std::vector<Activation> acts;
  size_t ai = 0, bi = 0;
  for (const std::string &n : names) {
    Activation a{n};
    const bool takesAlpha = n == "Affine" || n == "LeakyRelu" || n == "ThresholdedRelu" ||
                            n == "ScaledTanh" || n == "HardSigmoid" || n == "Elu";
    const bool takesBeta = n == "Affine" || n == "ScaledTanh" || n == "HardSigmoid";
    const double dfltAlpha = n == "LeakyRelu" ? 0.01 : n == "HardSigmoid" ? 0.2 : 1.0;
    const double dfltBeta = n == "HardSigmoid" ? 0.5 : n == "Affine" ? 0.0 : 1.0;
    a.alpha = takesAlpha ? (ai < alphas.size() ? alphas[ai++] : dfltAlpha) : 0;
    a.beta = takesBeta ? (bi < betas.size() ? betas[bi++] : dfltBeta) : 0;
    acts.push_back(a);
  }
  const bool hasClip = c.a.find("clip") != nullptr;
  const double clip = c.a.f("clip", 0);
  const bool inputForget = c.a.i("input_forget", 0) != 0,
             linearBeforeReset = c.a.i("linear_before_reset", 0) != 0;
  const Dims yDims = batchFirst ? Dims{N, S, D, H} : Dims{S, D, N, H};
  if (!c.alloc(0, yDims) || (c.out.size() > 1 && !c.alloc(1, stateDims)) ||
      (lstm && c.out.size() > 2 && !c.alloc(2, stateDims)))
    return false;
  for (size_t k = 0; k < c.out.size() && k < 3; ++k)
    if (c.out[k].dtype != proto::F32 && c.out[k].dtype != proto::F64)
      return c.badType(c.out[k]);
  auto store = [](OpTensor &o, int64_t i, double v) {
    if (o.dtype == proto::F64)
      o.mut<double>()[i] = v;
    else
      o.mut<float>()[i] = float(v);
  };
  std::memset(c.out[0].mut<char>(), 0, c.out[0].bytes());
  auto xAt = [&](int64_t t, int64_t n, int64_t i) {
    return readDouble(X, (batchFirst ? (n * S + t) : (t * N + n)) * I + i);
  };
  auto stateIdx = [&](int d, int64_t n, int64_t j) {
    return batchFirst ? (n * D + d) * H + j : (d * N + n) * H + j;
  };
  auto yIdx = [&](int64_t t, int d, int64_t n, int64_t j) {
    return batchFirst ? ((n * S + t) * D + d) * H + j : ((t * D + d) * N + n) * H + j;
  };
  auto clipped = [&](double v) { return hasClip ? std::clamp(v, -clip, clip) : v; };
  std::vector<double> h(H), cs(H), gates(G * H), hr(H), hn(H);
  for (int d = 0; d < D; ++d) {
    const bool reverse = dir == "reverse" || d == 1;
    const Activation &f = acts[d * defaults.size()];
    const Activation *g = defaults.size() > 1 ? &acts[d * defaults.size() + 1] : nullptr;
    const Activation *hAct = defaults.size() > 2 ? &acts[d * defaults.size() + 2] : nullptr;
    auto w = [&](const OpTensor &m, int64_t row, int64_t col, int64_t cols) {
      return readDouble(m, (d * G * H + row) * cols + col);
    };
    auto bias = [&](int64_t k) { return B ? readDouble(*B, d * 2 * G * H + k) : 0.0; };
    for (int64_t n = 0; n < N; ++n) {
      const int64_t len = lens ? std::clamp<int64_t>(readInt(*lens, n), 0, S) : S;
      for (int64_t j = 0; j < H; ++j) {
        h[j] = h0 ? readDouble(*h0, stateIdx(d, n, j)) : 0;
        cs[j] = c0 ? readDouble(*c0, stateIdx(d, n, j)) : 0;
      }
      for (int64_t step = 0; step < len; ++step) {
        const int64_t t = reverse ? len - 1 - step : step;
        // x W^T + Wb for every gate row, and h R^T + Rb (GRU's h gate keeps them apart).
        for (int64_t r = 0; r < G * H; ++r) {
          double xw = bias(r);
          for (int64_t i = 0; i < I; ++i)
            xw += xAt(t, n, i) * w(W, r, i, I);
          gates[r] = xw;
        }
        if (lstm) {
          for (int64_t r = 0; r < G * H; ++r) {
            double hr2 = bias(G * H + r);
            for (int64_t k = 0; k < H; ++k)
              hr2 += h[k] * w(R, r, k, H);
            gates[r] += hr2;
          }
          auto peep = [&](int which, int64_t j) {
            return P ? readDouble(*P, d * 3 * H + which * H + j) : 0.0;
          };
          for (int64_t j = 0; j < H; ++j) { // gate rows: i, o, f, c
            const double in = f(clipped(gates[j] + peep(0, j) * cs[j]));
            const double fg = inputForget ? 1 - in : f(clipped(gates[2 * H + j] + peep(2, j) * cs[j]));
            const double cand = (*g)(clipped(gates[3 * H + j]));
            cs[j] = fg * cs[j] + in * cand;
            const double out = f(clipped(gates[H + j] + peep(1, j) * cs[j]));
            hn[j] = out * (*hAct)(cs[j]);
          }
        } else if (gru) {
          for (int64_t j = 0; j < 2 * H; ++j) { // z, r: + h R^T + Rb
            double s = bias(G * H + j);
            for (int64_t k = 0; k < H; ++k)
              s += h[k] * w(R, j, k, H);
            gates[j] = f(clipped(gates[j] + s));
          }
          for (int64_t j = 0; j < H; ++j) {
            const double z = gates[j], rg = gates[H + j];
            double s = 0;
            for (int64_t k = 0; k < H; ++k)
              s += (linearBeforeReset ? h[k] : gates[H + k] * h[k]) * w(R, 2 * H + j, k, H); // (r * h) R^T
            const double rb = bias(G * H + 2 * H + j);
            const double cand =
                (*g)(clipped(gates[2 * H + j] + (linearBeforeReset ? rg * (s + rb) : s + rb)));
            hn[j] = (1 - z) * cand + z * h[j];
          }
        } else {
          for (int64_t j = 0; j < H; ++j) {
            double s = bias(H + j);
            for (int64_t k = 0; k < H; ++k)
              s += h[k] * w(R, j, k, H);
            hn[j] = f(clipped(gates[j] + s));
          }
        }
        h = hn;
        for (int64_t j = 0; j < H; ++j)
          store(c.out[0], yIdx(t, d, n, j), h[j]);
      }
      for (int64_t j = 0; j < H; ++j) {
        if (c.out.size() > 1)
          store(c.out[1], stateIdx(d, n, j), h[j]);
        if (lstm && c.out.size() > 2)
          store(c.out[2], stateIdx(d, n, j), cs[j]);
      }
    }
  }
  return true;
}

} // namespace moert::ops

namespace moert {

std::string planConv(const proto::OpStep &op, const std::vector<int64_t> &x, const std::vector<int64_t> &w,
                     ConvPlan &p) {
  const size_t sp = x.size() < 3 ? 0 : x.size() - 2;
  if (sp == 0 || w.size() != x.size())
    return "X " + dimsString(x) + " and W " + dimsString(w) + " are not N x C x spatial";
  std::vector<OpTensor> none;
  ops::Ctx c(op, none, none, nullptr);
  p.N = x[0], p.C = x[1], p.M = w[0], p.group = c.a.i("group", 1);
  if (p.group <= 0 || p.C % p.group || p.M % p.group || w[1] != p.C / p.group)
    return "channels " + std::to_string(p.C) + " / W " + dimsString(w) + " / group " +
           std::to_string(p.group) + " disagree";
  ops::Window win;
  if (!ops::window(c, x, ops::Dims(w.begin() + 2, w.end()), false, win))
    return c.err;
  p.kern = win.kern, p.strides = win.strides, p.dil = win.dil, p.pads = win.pads, p.outSp = win.out;
  p.inSp.assign(x.begin() + 2, x.end());
  p.outDims = {p.N, p.M};
  p.outDims.insert(p.outDims.end(), win.out.begin(), win.out.end());
  return "";
}

} // namespace moert
