//===- Movement.cpp - libmoert's op kernels: data movement and shapes ===//
//
// Part of libmoert's op kernels (runtime/src/Ops.cpp maps op names to them; shared helpers in OpKernel.h).
//
//===----------------------------------------------------------------------===//
#include "OpKernel.h"

#include "kernels/cpu/moert_kernel_abi.h"

namespace moert::ops {

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
  } else if (op == "Flatten") {
    int64_t r = int64_t(x.dims.size()), axis = c.a.i("axis", 1);
    if (axis < -r || axis > r)
      return c.fail("axis " + std::to_string(axis) + " out of range for rank " + std::to_string(r));
    if (axis < 0)
      axis += r;
    d = {product(x.dims, 0, size_t(axis)), product(x.dims, size_t(axis))};
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
    // Contiguous innermost runs (Expand over outer dims, Transpose keeping the last axis, Slice): one copy a
    // run.
    const int64_t run = od.back();
    Broadcast outer;
    outer.dims.assign(od.begin(), od.end() - 1);
    outer.strides = {Dims(xStrides.begin(), xStrides.end() - 1)};
    forEach<1>(outer,
               [&](int64_t i, const int64_t *q) { std::memcpy(o + i * run * w, p + q[0] * w, run * w); });
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
  if (std::string why =
          splitSizes(len, n, c.in.size() > 1 && c.in[1].present() ? readInts(c.in[1]) : Dims{}, sizes);
      !why.empty())
    return c.fail(why);
  size_t w = dtypeSize(x.dtype);
  int64_t outer = product(x.dims, 0, axis), inner = product(x.dims, axis + 1), at = 0;
  for (int64_t k = 0; k < n; ++k) {
    Dims od = x.dims;
    od[axis] = sizes[k];
    if (!c.alloc(k, od))
      return false;
    int64_t block = sizes[k] * inner * int64_t(w);
    for (int64_t r = 0; r < outer; ++r)
      std::memcpy(c.out[k].mut<char>() + r * block, x.data + (r * len * inner) * int64_t(w) + at,
                  size_t(block));
    at += block;
  }
  return true;
}

bool slice(Ctx &c) {
  if (!c.need(3))
    return false;
  const OpTensor &x = c.in[0];
  Dims starts = readInts(c.in[1]), ends = readInts(c.in[2]), axes, steps;
  if (c.in.size() > 3 && c.in[3].present())
    axes = readInts(c.in[3]);
  if (c.in.size() > 4 && c.in[4].present())
    steps = readInts(c.in[4]);
  SlicePlan g;
  if (std::string why = planSlice(x.dims, starts, ends, axes, steps, g); !why.empty())
    return c.fail(why);
  if (!c.alloc(0, g.outDims))
    return false;
  gatherStrided(x, c.out[0], g.outDims, g.strides, g.start);
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

/// moec's `moec.KvCacheUpdate` (moe.kv_cache_update): inputs fresh [B, H, S, D], past lengths [B] (i64),
/// length [1] (i64), past [B, H, P, D] or left out; the present [B, H, T, D]: each sequence's filled past,
/// its new positions after it, zeros beyond.
bool kvCacheUpdate(Ctx &c) {
  if (c.in.size() != MOERT_KV_UPDATE_INPUTS || !c.in[MOERT_KV_UPDATE_FRESH].present() ||
      !c.in[MOERT_KV_UPDATE_PAST_LENGTHS].present() || !c.in[MOERT_KV_UPDATE_LENGTH].present() ||
      c.out.size() != 1)
    return c.fail("needs the new keys/values, past lengths, a length and an optional past");
  const OpTensor &fresh = c.in[MOERT_KV_UPDATE_FRESH], &lens = c.in[MOERT_KV_UPDATE_PAST_LENGTHS],
                 &len = c.in[MOERT_KV_UPDATE_LENGTH], &past = c.in[MOERT_KV_UPDATE_PAST];
  if (fresh.dtype != proto::F32 || fresh.dims.size() != 4 || lens.dtype != proto::I64 ||
      lens.dims.size() != 1 || len.dtype != proto::I64 || len.numel() != 1)
    return c.fail("new keys/values " + dimsString(fresh.dims) + " " + dtypeName(fresh.dtype) +
                  ", past lengths " + dimsString(lens.dims) + " " + dtypeName(lens.dtype) +
                  ": expected f32 [B, H, S, D] and i64 [B]");
  const int64_t B = fresh.dims[0], H = fresh.dims[1], S = fresh.dims[2], D = fresh.dims[3];
  const int64_t P = past.present() ? past.dims.size() == 4 ? past.dims[2] : -1 : 0, T = readInt(len, 0);
  if (past.present() && (past.dtype != proto::F32 || past.dims.size() != 4 || past.dims[0] != B ||
                         past.dims[1] != H || past.dims[3] != D))
    return c.fail("past " + dimsString(past.dims) + " does not match the new keys/values " +
                  dimsString(fresh.dims));
  if (lens.dims[0] != B)
    return c.fail(std::to_string(lens.dims[0]) + " past lengths for a batch of " + std::to_string(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t p = lens.as<int64_t>()[b];
    if (p < 0 || p > P || p + S > T)
      return c.fail("sequence " + std::to_string(b) + ": a past of " + std::to_string(p) + " positions and " +
                    std::to_string(S) + " new ones do not fit a past cache of " + std::to_string(P) +
                    " and a present of " + std::to_string(T) + " positions");
  }
  if (!c.alloc(0, {B, H, T, D}))
    return false;
  float *o = c.out[0].mut<float>();
  const size_t row = sizeof(float) * D;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t p = lens.as<int64_t>()[b];
    for (int64_t h = 0; h < H; ++h) {
      float *dst = o + (b * H + h) * T * D;
      if (p)
        std::memcpy(dst, past.as<float>() + (b * H + h) * P * D, p * row);
      std::memcpy(dst + p * D, fresh.as<float>() + (b * H + h) * S * D, S * row);
      std::memset(dst + (p + S) * D, 0, (T - p - S) * row);
    }
  }
  return true;
}

/// moec's `moec.Embedding` (moe.embedding): rows of a table stored as moert_kernel_abi.h's MOERT_EMBED_* say,
/// widened to f32. Inputs: rows, scales (quantised storage; else left out), indices. Attributes: storage
/// (moert_storage), block (values per scale), width (H).
bool embedding(Ctx &c) {
  if (c.in.size() != 3 || !c.in[0].present() || !c.in[2].present() || c.out.size() != 1)
    return c.fail("needs a table, optional scales and indices");
  const OpTensor &t = c.in[0], &sc = c.in[1], &idx = c.in[2];
  if (c.out[0].dtype != proto::F32)
    return c.fail("writes f32 rows");
  EmbeddingPlan g;
  if (std::string why = planEmbedding(c.s, t.dims, t.dtype, sc.present() ? &sc.dims : nullptr, sc.dtype,
                                      idx.dims, idx.dtype, g);
      !why.empty())
    return c.fail(why);
  if (!c.alloc(0, g.outDims))
    return false;
  float *o = c.out[0].mut<float>();
  const int64_t h = g.h, block = g.block;
  for (int64_t j = 0; j < g.n; ++j) {
    int64_t r = 0;
    if (std::string why = embeddingRow(g, readInt(idx, j), r); !why.empty())
      return c.fail(why);
    const uint8_t *row = reinterpret_cast<const uint8_t *>(t.data) + size_t(r) * size_t(g.rowBytes);
    float *y = o + j * h;
    if (g.storage == MOERT_STORAGE_F32) {
      std::memcpy(y, row, size_t(h) * 4);
    } else if (!g.quantised) {
      for (int64_t k = 0; k < h; ++k) {
        uint16_t b;
        std::memcpy(&b, row + 2 * k, 2);
        y[k] = g.storage == MOERT_STORAGE_BF16 ? bf16ToFloat(b) : halfToFloat(b);
      }
    } else {
      const float *s = sc.as<float>() + r * g.nb;
      for (int64_t k = 0; k < h; ++k) {
        int code = g.bits == 8 ? int(int8_t(row[k])) : int((row[k >> 1] >> ((k & 1) * 4)) & 15) - 8;
        y[k] = float(code) * s[k / block];
      }
    }
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
    std::memcpy(c.out[0].mut<char>() + t * slice * int64_t(w), x.data + offs[t] * int64_t(w),
                size_t(slice) * w);
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
  int kind = red == "none"  ? 0
             : red == "add" ? 1
             : red == "mul" ? 2
             : red == "max" ? 3
             : red == "min" ? 4
                            : -1;
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
  return withNum(x.dtype,
                 [&](auto tag) {
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
      return c.fail("value of " + std::to_string(a->s().size()) + " bytes for a " +
                    dtypeName(c.out[0].dtype) + " output");
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
  return withNum(c.in[0].dtype,
                 [&](auto tag) {
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
                 })
             ? c.err.empty()
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

// -- added for the whole ONNX node-test suite --

bool tile(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0];
  Dims reps = readInts(c.in[1]);
  if (reps.size() != x.dims.size())
    return c.fail("repeats has " + std::to_string(reps.size()) + " entries for rank " +
                  std::to_string(x.dims.size()));
  // Output dims (r0, d0, r1, d1, ...) row-major are the tiled tensor: read with stride 0 along each r.
  Dims od, view, st, xs = stridesOf(x.dims);
  for (size_t i = 0; i < reps.size(); ++i) {
    if (reps[i] < 0)
      return c.fail("negative repeat " + std::to_string(reps[i]));
    od.push_back(x.dims[i] * reps[i]);
    view.insert(view.end(), {reps[i], x.dims[i]});
    st.insert(st.end(), {0, xs[i]});
  }
  if (!c.alloc(0, od))
    return false;
  if (c.out[0].numel())
    gatherStrided(x, c.out[0], view, st, 0);
  return true;
}

/// DepthToSpace (DCR or CRD) and SpaceToDepth: one strided copy of a 6-D view of the NCHW input.
bool depthToSpace(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  int64_t b = c.a.i("blocksize", 0);
  if (x.dims.size() != 4 || b <= 0)
    return c.fail("needs a 4-D input and a positive blocksize");
  int64_t n = x.dims[0], ch = x.dims[1], h = x.dims[2], w = x.dims[3];
  Dims view, st, od;
  if (c.op() == "DepthToSpace") {
    if (ch % (b * b))
      return c.fail("channels " + std::to_string(ch) + " not a multiple of blocksize^2");
    int64_t cc = ch / (b * b);
    bool crd = c.a.str("mode", "DCR") == "CRD";
    if (!crd && c.a.str("mode", "DCR") != "DCR")
      return c.fail("mode must be DCR or CRD");
    // input viewed as [n, b1, b2, cc, h, w] (DCR) or [n, cc, b1, b2, h, w] (CRD); out [n, cc, h, b1, w, b2]
    int64_t sN = ch * h * w, sC = crd ? b * b * h * w : h * w, sB1 = crd ? b * h * w : b * cc * h * w,
            sB2 = crd ? h * w : cc * h * w;
    view = {n, cc, h, b, w, b};
    st = {sN, sC, w, sB1, 1, sB2};
    od = {n, cc, h * b, w * b};
  } else {
    if (h % b || w % b)
      return c.fail("height and width must be multiples of blocksize");
    // input viewed as [n, ch, h/b, b1, w/b, b2]; out [n, b1, b2, ch, h/b, w/b]
    view = {n, b, b, ch, h / b, w / b};
    st = {ch * h * w, w, 1, h * w, b * w, b};
    od = {n, ch * b * b, h / b, w / b};
  }
  if (!c.alloc(0, od))
    return false;
  if (c.out[0].numel())
    gatherStrided(x, c.out[0], view, st, 0);
  return true;
}

bool compress(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0], &cond = c.in[1];
  if (cond.dims.size() != 1)
    return c.fail("condition must be 1-D");
  const Attribute *ax = c.a.find("axis");
  Dims xd = ax ? x.dims : Dims{x.numel()};
  int64_t axis = ax ? normAxis(ax->ints(0), int64_t(x.dims.size())) : 0;
  if (axis < 0)
    return c.fail("axis out of range");
  int64_t n = xd[axis];
  if (cond.numel() > n)
    return c.fail("condition longer than the axis (" + std::to_string(n) + ")");
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < cond.numel(); ++i)
    if (readDouble(cond, i) != 0)
      keep.push_back(i);
  Dims od = xd;
  od[axis] = int64_t(keep.size());
  if (!c.alloc(0, od))
    return false;
  int64_t outer = product(xd, 0, axis), inner = product(xd, axis + 1);
  size_t w = dtypeSize(x.dtype) * size_t(inner);
  char *o = c.out[0].mut<char>();
  for (int64_t a = 0; a < outer; ++a)
    for (size_t k = 0; k < keep.size(); ++k)
      std::memcpy(o + (a * int64_t(keep.size()) + int64_t(k)) * int64_t(w),
                  x.data + (a * n + keep[k]) * int64_t(w), w);
  return true;
}

bool nonZero(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  std::vector<int64_t> hits;
  for (int64_t i = 0; i < x.numel(); ++i)
    if (readDouble(x, i) != 0)
      hits.push_back(i);
  int64_t r = int64_t(x.dims.size()), nz = int64_t(hits.size());
  if (!c.alloc(0, {r, nz}))
    return false;
  Dims xs = stridesOf(x.dims);
  int64_t *o = c.out[0].mut<int64_t>();
  for (int64_t k = 0; k < nz; ++k)
    for (int64_t d = 0; d < r; ++d)
      o[d * nz + k] = (hits[k] / xs[d]) % x.dims[d];
  return true;
}

bool eyeLike(Ctx &c) {
  if (!c.need(1))
    return false;
  const Dims &d = c.in[0].dims;
  if (d.size() != 2)
    return c.fail("input must be 2-D");
  if (!c.alloc(0, d))
    return false;
  OpTensor &o = c.out[0];
  std::memset(o.mut<char>(), 0, o.bytes());
  int64_t k = c.a.i("k", 0);
  return withAny(o.dtype,
                 [&](auto tag) {
                   using T = decltype(tag);
                   for (int64_t i = 0; i < d[0]; ++i)
                     if (i + k >= 0 && i + k < d[1])
                       o.mut<T>()[i * d[1] + i + k] = T(1);
                 }) ||
         (isHalf(o.dtype) &&
          [&] {
            for (int64_t i = 0; i < d[0]; ++i)
              if (i + k >= 0 && i + k < d[1])
                o.mut<uint16_t>()[i * d[1] + i + k] = o.dtype == proto::F16 ? 0x3c00 : 0x3f80;
            return true;
          }()) ||
         c.badType(o);
}

/// Pad: constant, reflect or edge, pads [begin..., end...] over every axis or over `axes`.
bool pad(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0];
  int64_t r = int64_t(x.dims.size());
  Dims pads = readInts(c.in[1]);
  Dims axes;
  if (c.in.size() > 3 && c.in[3].present())
    axes = readInts(c.in[3]);
  else
    for (int64_t i = 0; i < r; ++i)
      axes.push_back(i);
  if (pads.size() != 2 * axes.size())
    return c.fail("pads has " + std::to_string(pads.size()) + " entries for " + std::to_string(axes.size()) +
                  " axes");
  Dims lo(r, 0), hi(r, 0);
  for (size_t i = 0; i < axes.size(); ++i) {
    int64_t a = normAxis(axes[i], r);
    if (a < 0)
      return c.fail("axis " + std::to_string(axes[i]) + " out of range");
    lo[a] = pads[i];
    hi[a] = pads[i + axes.size()];
  }
  std::string mode = c.a.str("mode", "constant");
  int m = mode == "constant" ? 0 : mode == "reflect" ? 1 : mode == "edge" ? 2 : -1;
  if (m < 0)
    return c.fail("mode '" + mode + "' (constant, reflect or edge)");
  Dims od(r);
  for (int64_t i = 0; i < r; ++i) {
    od[i] = x.dims[i] + lo[i] + hi[i];
    if (od[i] < 0)
      return c.fail("pads remove more than dim " + std::to_string(i) + " has");
    if (m != 0 && od[i] > 0 && x.dims[i] == 0)
      return c.fail(mode + " padding of an empty dim");
    if (m == 1 && (lo[i] >= x.dims[i] || hi[i] >= x.dims[i]) && (lo[i] > 0 || hi[i] > 0))
      return c.fail("reflect pads must be shorter than the dim");
  }
  if (!c.alloc(0, od))
    return false;
  size_t w = dtypeSize(x.dtype);
  std::string fill(w, '\0');
  if (c.in.size() > 2 && c.in[2].present() && c.in[2].numel() == 1) {
    if (c.in[2].dtype != x.dtype)
      return c.fail("constant_value's dtype differs from the data's");
    fill.assign(c.in[2].data, w);
  }
  Dims xs = stridesOf(x.dims);
  char *o = c.out[0].mut<char>();
  int64_t total = c.out[0].numel();
  Dims idx(r, 0);
  for (int64_t i = 0; i < total; ++i) {
    int64_t off = 0;
    bool outside = false;
    for (int64_t d = 0; d < r; ++d) {
      int64_t k = idx[d] - lo[d], n = x.dims[d];
      if (k < 0 || k >= n) {
        if (m == 0) {
          outside = true;
        } else if (m == 2) {
          k = k < 0 ? 0 : n - 1;
        } else {
          k = k < 0 ? -k : 2 * (n - 1) - k;
        }
      }
      off += k * xs[d];
    }
    std::memcpy(o + i * int64_t(w), outside ? fill.data() : x.data + off * int64_t(w), w);
    for (int64_t d = r - 1; d >= 0; --d) {
      if (++idx[d] < od[d])
        break;
      idx[d] = 0;
    }
  }
  return true;
}

bool reverseSequence(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0], &lens = c.in[1];
  int64_t ba = c.a.i("batch_axis", 1), ta = c.a.i("time_axis", 0);
  if (x.dims.size() < 2 || (ba != 0 && ba != 1) || (ta != 0 && ta != 1) || ba == ta)
    return c.fail("needs rank >= 2 and batch_axis / time_axis 0 and 1");
  int64_t batch = x.dims[ba], steps = x.dims[ta];
  if (lens.numel() != batch)
    return c.fail("sequence_lens has " + std::to_string(lens.numel()) + " entries for a batch of " +
                  std::to_string(batch));
  if (!c.alloc(0, x.dims))
    return false;
  std::memcpy(c.out[0].mut<char>(), x.data, x.bytes());
  int64_t inner = product(x.dims, 2) * int64_t(dtypeSize(x.dtype));
  auto at = [&](int64_t b, int64_t t) { return ((ba == 0 ? b * steps + t : t * batch + b)) * inner; };
  for (int64_t b = 0; b < batch; ++b) {
    int64_t len = readInt(lens, b);
    if (len < 0 || len > steps)
      return c.fail("sequence length " + std::to_string(len) + " out of range");
    for (int64_t t = 0; t < len; ++t)
      std::memcpy(c.out[0].mut<char>() + at(b, t), x.data + at(b, len - 1 - t), size_t(inner));
  }
  return true;
}

/// Resize (opsets 11-13; Upsample and Resize-10 import as it): per output element and axis, the source
/// coordinate by coordinate_transformation_mode, then nearest (nearest_mode), linear (2 taps) or cubic (4
/// taps, cubic_coeff_a, exclude_outside) weights over edge-clamped indices; the element is the sum over the
/// axes' taps of the weights' product. tf_crop_and_resize takes the roi and puts extrapolation_value outside
/// it.
bool resize(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  size_t r = x.dims.size();
  auto given = [&](size_t i) { return c.in.size() > i && c.in[i].present() && c.in[i].numel() > 0; };
  std::string ctm = c.a.str("coordinate_transformation_mode", "half_pixel");
  std::string mode = c.a.str("mode", "nearest"), nearest = c.a.str("nearest_mode", "round_prefer_floor");
  int m = mode == "nearest" ? 0 : mode == "linear" ? 1 : mode == "cubic" ? 2 : -1;
  if (m < 0)
    return c.fail("mode '" + mode + "' (nearest, linear or cubic)");
  std::vector<double> scales(r, 1.0), roiStart(r, 0.0), roiEnd(r, 1.0);
  Dims od(r);
  bool crop = ctm == "tf_crop_and_resize";
  if (crop) {
    if (!given(1) || c.in[1].numel() != int64_t(2 * r))
      return c.fail("tf_crop_and_resize needs a roi of " + std::to_string(2 * r) + " values");
    for (size_t i = 0; i < r; ++i) {
      roiStart[i] = readDouble(c.in[1], int64_t(i));
      roiEnd[i] = readDouble(c.in[1], int64_t(r + i));
    }
  }
  if (given(3)) {
    if (c.in[3].numel() != int64_t(r))
      return c.fail("sizes has " + std::to_string(c.in[3].numel()) + " values for rank " + std::to_string(r));
    for (size_t i = 0; i < r; ++i) {
      od[i] = readInt(c.in[3], int64_t(i));
      if (od[i] < 0)
        return c.fail("negative size");
      scales[i] = x.dims[i] ? double(od[i]) / double(x.dims[i]) : 1.0;
    }
  } else if (given(2)) {
    if (c.in[2].numel() != int64_t(r))
      return c.fail("scales has " + std::to_string(c.in[2].numel()) + " values for rank " +
                    std::to_string(r));
    for (size_t i = 0; i < r; ++i) {
      scales[i] = readDouble(c.in[2], int64_t(i));
      if (!(scales[i] > 0))
        return c.fail("scales must be positive");
      od[i] = int64_t(std::floor(double(x.dims[i]) * (roiEnd[i] - roiStart[i]) * scales[i]));
    }
  } else {
    return c.fail("needs scales or sizes");
  }
  if (!c.alloc(0, od))
    return false;
  const double A = c.a.f("cubic_coeff_a", -0.75), extrapolation = c.a.f("extrapolation_value", 0.0);
  const bool excludeOutside = c.a.i("exclude_outside", 0) != 0;
  // Per axis and output index: the taps (input index, weight), or none when outside a crop's roi.
  struct Tap {
    int64_t index;
    double weight;
  };
  std::vector<std::vector<std::vector<Tap>>> taps(r);
  std::vector<std::vector<bool>> outside(r);
  for (size_t d = 0; d < r; ++d) {
    int64_t in = x.dims[d], out = od[d];
    // The resized length in the coordinate transforms is in * scale, unrounded (as ONNX's reference: with
    // scales 0.6 on 4, align_corners divides by 1.4, not by the 2 - 1 of the floored size).
    double sc = scales[d], len = double(in) * sc;
    taps[d].resize(out);
    outside[d].assign(out, false);
    for (int64_t o = 0; o < out; ++o) {
      double xo;
      if (in == out && !crop && sc == 1.0) {
        taps[d][o] = {{o, 1.0}};
        continue;
      }
      if (ctm == "half_pixel")
        xo = (o + 0.5) / sc - 0.5;
      else if (ctm == "pytorch_half_pixel")
        xo = len > 1 ? (o + 0.5) / sc - 0.5 : 0.0;
      else if (ctm == "align_corners")
        xo = len == 1 ? 0.0 : double(o) * double(in - 1) / (len - 1);
      else if (ctm == "asymmetric")
        xo = double(o) / sc;
      else if (ctm == "tf_half_pixel_for_nn")
        xo = (o + 0.5) / sc;
      else if (crop)
        xo = out > 1 ? roiStart[d] * double(in - 1) +
                           double(o) * (roiEnd[d] - roiStart[d]) * double(in - 1) / double(out - 1)
                     : 0.5 * (roiStart[d] + roiEnd[d]) * double(in - 1);
      else
        return c.fail("coordinate_transformation_mode '" + ctm + "'");
      if (crop && (xo < 0 || xo > double(in - 1))) {
        outside[d][o] = true;
        continue;
      }
      auto clampIdx = [&](int64_t k) { return std::clamp<int64_t>(k, 0, in - 1); };
      std::vector<Tap> &t = taps[d][o];
      if (m == 0) {
        int64_t k = nearest == "floor"               ? int64_t(std::floor(xo))
                    : nearest == "ceil"              ? int64_t(std::ceil(xo))
                    : nearest == "round_prefer_ceil" ? int64_t(std::floor(xo + 0.5))
                                                     : int64_t(std::ceil(xo - 0.5)); // round_prefer_floor
        if (nearest != "floor" && nearest != "ceil" && nearest != "round_prefer_ceil" &&
            nearest != "round_prefer_floor")
          return c.fail("nearest_mode '" + nearest + "'");
        t = {{clampIdx(k), 1.0}};
      } else if (m == 1) {
        int64_t k = int64_t(std::floor(xo));
        double f = xo - double(k);
        t = {{clampIdx(k), 1.0 - f}, {clampIdx(k + 1), f}};
      } else {
        int64_t k = int64_t(std::floor(xo));
        double f = xo - double(k), sum = 0;
        auto cubic = [&](double v) {
          v = std::fabs(v);
          return v <= 1  ? ((A + 2) * v - (A + 3)) * v * v + 1
                 : v < 2 ? ((A * v - 5 * A) * v + 8 * A) * v - 4 * A
                         : 0.0;
        };
        for (int64_t j = -1; j <= 2; ++j) {
          double w = cubic(f - double(j));
          if (excludeOutside && (k + j < 0 || k + j >= in))
            w = 0;
          t.push_back({clampIdx(k + j), w});
          sum += w;
        }
        if (excludeOutside && sum != 0)
          for (Tap &tp : t)
            tp.weight /= sum;
      }
    }
  }
  Dims xs = stridesOf(x.dims);
  return withFloat(x.dtype,
                   [&](auto tag) {
                     using T = decltype(tag);
                     const T *p = x.as<T>();
                     T *o = c.out[0].mut<T>();
                     int64_t total = c.out[0].numel();
                     Dims idx(r, 0);
                     std::vector<size_t> pick(r);
                     for (int64_t i = 0; i < total; ++i) {
                       bool out = false;
                       for (size_t d = 0; d < r; ++d)
                         out |= outside[d][idx[d]];
                       double acc = 0;
                       if (!out) {
                         // Sum over every combination of the axes' taps (an odometer over tap choices).
                         std::fill(pick.begin(), pick.end(), 0);
                         while (true) {
                           double w = 1;
                           int64_t off = 0;
                           for (size_t d = 0; d < r; ++d) {
                             const Tap &tp = taps[d][idx[d]][pick[d]];
                             w *= tp.weight;
                             off += tp.index * xs[d];
                           }
                           acc += w * double(p[off]);
                           size_t d = r;
                           while (d-- > 0 && ++pick[d] == taps[d][idx[d]].size())
                             pick[d] = 0;
                           if (d == size_t(-1))
                             break;
                         }
                       }
                       o[i] = T(out ? extrapolation : acc);
                       for (size_t d = r; d-- > 0;) {
                         if (++idx[d] < od[d])
                           break;
                         idx[d] = 0;
                       }
                     }
                   }) ||
         c.badType(x);
}

} // namespace moert::ops

namespace moert {

std::string planEmbedding(const proto::OpStep &op, const std::vector<int64_t> &table, int tableDtype,
                          const std::vector<int64_t> *scales, int scalesDtype,
                          const std::vector<int64_t> &idx, int idxDtype, EmbeddingPlan &p) {
  const ops::Attrs a{op};
  p.storage = int(a.i("storage", -1)), p.block = a.i("block", 0), p.h = a.i("width", 0);
  p.quantised = p.storage == MOERT_STORAGE_INT8 || p.storage == MOERT_STORAGE_INT4;
  p.bits = p.storage == MOERT_STORAGE_INT4 ? 4 : 8;
  const int want = p.storage == MOERT_STORAGE_F32    ? int(proto::F32)
                   : p.storage == MOERT_STORAGE_BF16 ? int(proto::BF16)
                   : p.storage == MOERT_STORAGE_F16  ? int(proto::F16)
                   : p.quantised                     ? int(proto::U8)
                                                     : -1;
  if (want < 0 || tableDtype != want || table.size() != 2 || p.h <= 0 || p.block <= 0)
    return "has an inconsistent table (storage " + std::to_string(p.storage) + ", " + dimsString(table) +
           " " + dtypeName(tableDtype) + ", width " + std::to_string(p.h) + ")";
  p.rows = table[0], p.nb = (p.h + p.block - 1) / p.block;
  const int64_t rowElems = p.quantised ? (p.bits == 4 ? (p.h + 1) / 2 : p.h) : p.h;
  p.rowBytes = rowElems * int64_t(dtypeSize(tableDtype));
  if (table[1] != rowElems || (p.quantised && (!scales || scalesDtype != int(proto::F32) ||
                                               *scales != std::vector<int64_t>{p.rows, p.nb})))
    return "has a table " + dimsString(table) + " or scales that do not hold " + std::to_string(p.rows) +
           " rows of " + std::to_string(p.h) + " values";
  if (idxDtype != proto::I64 && idxDtype != proto::I32)
    return "indices must be int64 or int32";
  p.idx64 = idxDtype == proto::I64;
  p.n = 1;
  for (int64_t d : idx)
    p.n *= d;
  p.outDims = idx;
  p.outDims.push_back(p.h);
  return "";
}

std::string embeddingRow(const EmbeddingPlan &p, int64_t r, int64_t &row) {
  if (r < -p.rows || r >= p.rows)
    return "index " + std::to_string(r) + " out of range for a table of " + std::to_string(p.rows) + " rows";
  row = r < 0 ? r + p.rows : r;
  return "";
}

std::string splitSizes(int64_t len, int64_t n, std::vector<int64_t> given, std::vector<int64_t> &sizes) {
  sizes = std::move(given);
  if (sizes.empty()) {
    int64_t each = (len + n - 1) / std::max<int64_t>(n, 1);
    for (int64_t i = 0; i < n; ++i)
      sizes.push_back(std::max<int64_t>(0, std::min(each, len - i * each)));
  }
  int64_t sum = 0;
  for (int64_t k : sizes) {
    if (k < 0)
      return "negative split size";
    sum += k;
  }
  if (int64_t(sizes.size()) != n || sum != len)
    return "split sizes " + dimsString(sizes) + " do not cover an axis of " + std::to_string(len) + " in " +
           std::to_string(n) + " outputs";
  return "";
}

std::string planSlice(const std::vector<int64_t> &x, const std::vector<int64_t> &starts,
                      const std::vector<int64_t> &ends, std::vector<int64_t> axes, std::vector<int64_t> steps,
                      SlicePlan &p) {
  if (axes.empty())
    for (size_t i = 0; i < starts.size(); ++i)
      axes.push_back(int64_t(i));
  if (steps.empty())
    steps.assign(starts.size(), 1);
  if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size())
    return "starts, ends, axes and steps differ in length";
  const size_t r = x.size();
  std::vector<int64_t> st(r, 0), step(r, 1);
  p.outDims = x;
  for (size_t i = 0; i < starts.size(); ++i) {
    int64_t ax = ops::normAxis(axes[i], int64_t(r));
    if (ax < 0)
      return "axis " + std::to_string(axes[i]) + " out of range";
    int64_t dim = x[ax], s = starts[i], e = ends[i], k = steps[i];
    if (k == 0)
      return "step 0";
    if (s < 0)
      s += dim;
    if (e < 0)
      e += dim;
    if (k > 0) {
      s = std::clamp<int64_t>(s, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
      p.outDims[ax] = e > s ? (e - s + k - 1) / k : 0;
    } else {
      s = std::clamp<int64_t>(s, -1, dim - 1);
      e = std::clamp<int64_t>(e, -1, dim - 1);
      p.outDims[ax] = s > e ? (s - e + (-k) - 1) / (-k) : 0;
    }
    st[ax] = s;
    step[ax] = k;
  }
  const std::vector<int64_t> xs = ops::stridesOf(x);
  p.strides.assign(r, 0);
  p.start = 0;
  for (size_t i = 0; i < r; ++i) {
    p.strides[i] = xs[i] * step[i];
    if (p.outDims[i] > 0)
      p.start += st[i] * xs[i];
  }
  return "";
}

} // namespace moert
