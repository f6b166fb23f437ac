//===- Linalg.cpp - libmoert's op kernels: MatMul, Gemm, Conv, Einsum ===//
//
// Part of libmoert's op kernels (runtime/src/Ops.cpp maps op names to them; shared helpers in OpKernel.h).
//
//===----------------------------------------------------------------------===//
#include "OpKernel.h"

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

} // namespace moert::ops
