//===- Fused.cpp - libmoert's steps for moec's row-wise fused ops --------------===//
//
// `moec.Norm` (moe.norm: RMSNorm / LayerNorm over the last axis) and `moec.Rotary` (moe.rotary: rotary
// position embedding of query/key heads, with the q/k RMSNorm and the head transpose folded in). Both are one
// pass over their input, rows split across the thread pool; the contracts are the ops' ODS descriptions in
// ir/MoEOps.td, the step inputs' order moert_kernel_abi.h's MOERT_NORM_* / MOERT_ROTARY_*.
//
//===----------------------------------------------------------------------===//
#include "OpKernel.h"

#include "kernels/cpu/moert_kernel_abi.h"

namespace moert::ops {

namespace {

/// Rows per parallel item: enough work (about 16k values) to pay for handing it to a thread.
int64_t rowsPerItem(int64_t d) { return std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(d, 1)); }

/// Runs body(firstRow, endRow) over [0, rows) in items of rowsPerItem(d) rows, on the pool when there is more
/// than one item.
template <typename Body> void forRows(ThreadPool *pool, int64_t rows, int64_t d, const Body &body) {
  const int64_t per = rowsPerItem(d), items = (rows + per - 1) / per;
  struct Job {
    const Body *body;
    int64_t per, rows;
  } job{&body, per, rows};
  auto run = [](void *ctx, int64_t i, int) {
    auto *j = static_cast<Job *>(ctx);
    (*j->body)(i * j->per, std::min(j->rows, (i + 1) * j->per));
  };
  if (pool && items > 1)
    pool->parallelFor(items, &job, run);
  else if (rows > 0)
    body(0, rows);
}

/// Sum of x[i] * x[i] over n values, in eight partial sums (vectorisable without reassociating flags).
float sumSquares(const float *x, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k)
      acc[k] += x[i + k] * x[i + k];
  float s = 0;
  for (; i < n; ++i)
    s += x[i] * x[i];
  return s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

float sum(const float *x, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k)
      acc[k] += x[i + k];
  float s = 0;
  for (; i < n; ++i)
    s += x[i];
  return s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/// y = w * (x * (1 / sqrt(mean(x^2) + eps))): the order of transformers' exported RMSNorm.
void rmsRow(const float *x, const float *w, float eps, int64_t d, float *y) {
  const float r = 1.0f / std::sqrt(sumSquares(x, d) / float(d) + eps);
  for (int64_t i = 0; i < d; ++i)
    y[i] = w[i] * (x[i] * r);
}

bool isF32(const OpTensor &t) { return t.dtype == proto::F32; }

} // namespace

bool fusedNorm(Ctx &c) {
  if (c.in.size() != MOERT_NORM_INPUTS || !c.in[MOERT_NORM_INPUT].present() ||
      !c.in[MOERT_NORM_WEIGHT].present() || c.out.size() != 1)
    return c.fail("needs an input, a weight and an optional bias");
  const OpTensor &x = c.in[MOERT_NORM_INPUT], &w = c.in[MOERT_NORM_WEIGHT], &b = c.in[MOERT_NORM_BIAS];
  const int64_t kind = c.a.i("kind", 0);
  const float eps = float(c.a.f("epsilon", 1e-5));
  if (kind != 1 && kind != 2)
    return c.fail("norm kind " + std::to_string(kind) + " (expected 1 rms or 2 layer)");
  if (!isF32(x) || x.dims.empty())
    return c.fail("input " + dimsString(x.dims) + " " + dtypeName(x.dtype) + ": expected f32 [..., D]");
  const int64_t d = x.dims.back();
  for (const OpTensor *t : {&w, &b})
    if (t->present() && (!isF32(*t) || t->dims.size() != 1 || t->dims[0] != d))
      return c.fail(std::string(t == &w ? "weight " : "bias ") + dimsString(t->dims) + " " +
                    dtypeName(t->dtype) + ": expected f32 [" + std::to_string(d) + "]");
  if (!c.alloc(0, x.dims))
    return false;
  const int64_t rows = d ? x.numel() / d : 0;
  const float *px = x.as<float>(), *pw = w.as<float>(), *pb = b.present() ? b.as<float>() : nullptr;
  float *po = c.out[0].mut<float>();
  forRows(c.pool, rows, d, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *xr = px + r * d;
      float *yr = po + r * d;
      if (kind == 1) {
        rmsRow(xr, pw, eps, d, yr);
        continue;
      }
      const float mean = sum(xr, d) / float(d);
      for (int64_t i = 0; i < d; ++i)
        yr[i] = xr[i] - mean;
      const float r2 = 1.0f / std::sqrt(sumSquares(yr, d) / float(d) + eps);
      for (int64_t i = 0; i < d; ++i)
        yr[i] = yr[i] * r2 * pw[i] + (pb ? pb[i] : 0.0f);
    }
  });
  return true;
}

bool fusedRotary(Ctx &c) {
  if (c.in.size() != MOERT_ROTARY_INPUTS || !c.in[MOERT_ROTARY_INPUT].present() ||
      !c.in[MOERT_ROTARY_COS].present() || !c.in[MOERT_ROTARY_SIN].present() || c.out.size() != 1)
    return c.fail("needs an input, cos, sin and an optional norm weight");
  const OpTensor &x = c.in[MOERT_ROTARY_INPUT], &cs = c.in[MOERT_ROTARY_COS], &sn = c.in[MOERT_ROTARY_SIN],
                 &nw = c.in[MOERT_ROTARY_NORM_WEIGHT];
  const int64_t R = c.a.i("rotary_dim", 0), seqAxis = c.a.i("seq_axis", 2);
  const bool interleaved = c.a.i("interleaved", 0) != 0, transpose = c.a.i("transpose", 0) != 0,
             deinterleave = c.a.i("deinterleave", 0) != 0;
  const float eps = float(c.a.f("norm_epsilon", 1e-6));
  if (!isF32(x) || x.dims.size() != 4)
    return c.fail("input " + dimsString(x.dims) + " " + dtypeName(x.dtype) + ": expected f32 [B, A1, A2, D]");
  const int64_t B = x.dims[0], A1 = x.dims[1], A2 = x.dims[2], D = x.dims[3];
  if (seqAxis != 1 && seqAxis != 2)
    return c.fail("seq_axis " + std::to_string(seqAxis) + " (expected 1 or 2)");
  if (R <= 0 || R % 2 || R > D)
    return c.fail("rotary_dim " + std::to_string(R) + " for a head dim of " + std::to_string(D));
  if (deinterleave && !interleaved)
    return c.fail("deinterleave without interleaved pairs");
  const int64_t S = x.dims[seqAxis];
  if (!isF32(cs) || !isF32(sn) || cs.dims.size() != 3 || cs.dims != sn.dims ||
      (cs.dims[0] != 1 && cs.dims[0] != B) || cs.dims[1] != S || (cs.dims[2] != R && cs.dims[2] != R / 2))
    return c.fail("cos " + dimsString(cs.dims) + " / sin " + dimsString(sn.dims) + " for input " +
                  dimsString(x.dims) + ": expected f32 [1 or " + std::to_string(B) + ", " +
                  std::to_string(S) + ", " + std::to_string(R) + " or " + std::to_string(R / 2) + "]");
  if (nw.present() && (!isF32(nw) || nw.dims.size() != 1 || nw.dims[0] != D))
    return c.fail("norm weight " + dimsString(nw.dims) + ": expected f32 [" + std::to_string(D) + "]");
  if (!c.alloc(0, transpose ? Dims{B, A2, A1, D} : x.dims))
    return false;
  const int64_t W = cs.dims[2], h = R / 2, cosBatch = cs.dims[0] == 1 ? 0 : 1;
  const float *px = x.as<float>(), *pc = cs.as<float>(), *ps = sn.as<float>(),
              *pw = nw.present() ? nw.as<float>() : nullptr;
  float *po = c.out[0].mut<float>();
  forRows(c.pool, B * A1 * A2, D, [&](int64_t r0, int64_t r1) {
    std::vector<float> normed(pw ? D : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i2 = r % A2, i1 = (r / A2) % A1, b = r / (A1 * A2), s = seqAxis == 1 ? i1 : i2;
      const float *xr = px + r * D;
      float *y = po + (transpose ? ((b * A2 + i2) * A1 + i1) * D : r * D);
      if (pw) {
        rmsRow(xr, pw, eps, D, normed.data());
        xr = normed.data();
      }
      const float *cr = pc + (b * cosBatch * S + s) * W, *sr = ps + (b * cosBatch * S + s) * W;
      if (!interleaved && W == R) {
        for (int64_t i = 0; i < h; ++i)
          y[i] = xr[i] * cr[i] - xr[i + h] * sr[i];
        for (int64_t i = h; i < R; ++i)
          y[i] = xr[i] * cr[i] + xr[i - h] * sr[i];
      } else if (!interleaved) {
        for (int64_t i = 0; i < h; ++i)
          y[i] = xr[i] * cr[i] - xr[i + h] * sr[i];
        for (int64_t i = 0; i < h; ++i)
          y[i + h] = xr[i + h] * cr[i] + xr[i] * sr[i];
      } else if (!deinterleave && W == R) {
        for (int64_t j = 0; j < h; ++j) {
          y[2 * j] = xr[2 * j] * cr[2 * j] - xr[2 * j + 1] * sr[2 * j];
          y[2 * j + 1] = xr[2 * j + 1] * cr[2 * j + 1] + xr[2 * j] * sr[2 * j + 1];
        }
      } else if (!deinterleave) {
        for (int64_t j = 0; j < h; ++j) {
          y[2 * j] = xr[2 * j] * cr[j] - xr[2 * j + 1] * sr[j];
          y[2 * j + 1] = xr[2 * j + 1] * cr[j] + xr[2 * j] * sr[j];
        }
      } else {
        // Interleaved pairs written as halves: pair j's even result to j, its odd result to h + j.
        const int64_t wide = W == R ? 1 : 0;
        for (int64_t j = 0; j < h; ++j) {
          const int64_t ce = wide ? 2 * j : j, co = wide ? 2 * j + 1 : j;
          y[j] = xr[2 * j] * cr[ce] - xr[2 * j + 1] * sr[ce];
          y[h + j] = xr[2 * j + 1] * cr[co] + xr[2 * j] * sr[co];
        }
      }
      for (int64_t i = R; i < D; ++i)
        y[i] = xr[i];
    }
  });
  return true;
}

} // namespace moert::ops
