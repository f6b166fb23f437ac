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
  for (const OpTensor *t : {&x, &w, &b})
    if (t->present() && !isF32(*t))
      return c.fail(std::string(t == &x   ? "input "
                                : t == &w ? "weight "
                                          : "bias ") +
                    dimsString(t->dims) + " " + dtypeName(t->dtype) + ": expected f32");
  NormPlan plan;
  if (std::string why = planNorm(c.s, x.dims, w.dims, b.present() ? &b.dims : nullptr, plan); !why.empty())
    return c.fail(why);
  const int64_t kind = plan.kind, d = plan.d;
  const float eps = plan.eps;
  if (!c.alloc(0, x.dims))
    return false;
  const int64_t rows = plan.rows;
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
  for (const OpTensor *t : {&x, &cs, &sn, &nw})
    if (t->present() && !isF32(*t))
      return c.fail(std::string(t == &x    ? "input "
                                : t == &nw ? "norm weight "
                                           : "cos / sin ") +
                    dimsString(t->dims) + " " + dtypeName(t->dtype) + ": expected f32");
  RotaryPlan g;
  if (std::string why = planRotary(c.s, x.dims, cs.dims, sn.dims, nw.present() ? &nw.dims : nullptr, g);
      !why.empty())
    return c.fail(why);
  if (!c.alloc(0, g.outDims))
    return false;
  const int64_t B = g.B, A1 = g.A1, A2 = g.A2, D = g.D, R = g.R, S = g.S, W = g.W, h = R / 2,
                cosBatch = g.cosBatch ? 1 : 0, seqAxis = g.seqAxis;
  const bool interleaved = g.interleaved, transpose = g.transpose, deinterleave = g.deinterleave;
  const float eps = g.eps;
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

namespace moert {

std::string planNorm(const proto::OpStep &op, const std::vector<int64_t> &x,
                     const std::vector<int64_t> &weight, const std::vector<int64_t> *bias, NormPlan &p) {
  const ops::Attrs a{op};
  p.kind = int(a.i("kind", 0));
  p.eps = float(a.f("epsilon", 1e-5));
  if (p.kind != 1 && p.kind != 2)
    return "norm kind " + std::to_string(p.kind) + " (expected 1 rms or 2 layer)";
  if (x.empty())
    return "input " + dimsString(x) + ": expected [..., D]";
  p.d = x.back();
  for (const std::vector<int64_t> *t : {&weight, bias})
    if (t && (t->size() != 1 || (*t)[0] != p.d))
      return std::string(t == &weight ? "weight " : "bias ") + dimsString(*t) + ": expected [" +
             std::to_string(p.d) + "]";
  int64_t n = 1;
  for (int64_t v : x)
    n *= v;
  p.rows = p.d ? n / p.d : 0;
  return "";
}

std::string planRotary(const proto::OpStep &op, const std::vector<int64_t> &x,
                       const std::vector<int64_t> &cos, const std::vector<int64_t> &sin,
                       const std::vector<int64_t> *normWeight, RotaryPlan &p) {
  const ops::Attrs a{op};
  p.R = a.i("rotary_dim", 0), p.seqAxis = int(a.i("seq_axis", 2));
  p.interleaved = a.i("interleaved", 0) != 0, p.transpose = a.i("transpose", 0) != 0;
  p.deinterleave = a.i("deinterleave", 0) != 0, p.eps = float(a.f("norm_epsilon", 1e-6));
  if (x.size() != 4)
    return "input " + dimsString(x) + ": expected [B, A1, A2, D]";
  p.B = x[0], p.A1 = x[1], p.A2 = x[2], p.D = x[3];
  if (p.seqAxis != 1 && p.seqAxis != 2)
    return "seq_axis " + std::to_string(p.seqAxis) + " (expected 1 or 2)";
  if (p.R <= 0 || p.R % 2 || p.R > p.D)
    return "rotary_dim " + std::to_string(p.R) + " for a head dim of " + std::to_string(p.D);
  if (p.deinterleave && !p.interleaved)
    return "deinterleave without interleaved pairs";
  p.S = x[p.seqAxis];
  if (cos.size() != 3 || cos != sin || (cos[0] != 1 && cos[0] != p.B) || cos[1] != p.S ||
      (cos[2] != p.R && cos[2] != p.R / 2))
    return "cos " + dimsString(cos) + " / sin " + dimsString(sin) + " for input " + dimsString(x) +
           ": expected [1 or " + std::to_string(p.B) + ", " + std::to_string(p.S) + ", " +
           std::to_string(p.R) + " or " + std::to_string(p.R / 2) + "]";
  p.normed = normWeight != nullptr;
  if (normWeight && (normWeight->size() != 1 || (*normWeight)[0] != p.D))
    return "norm weight " + dimsString(*normWeight) + ": expected [" + std::to_string(p.D) + "]";
  p.W = cos[2], p.cosBatch = cos[0] != 1;
  p.outDims = p.transpose ? std::vector<int64_t>{p.B, p.A2, p.A1, p.D} : x;
  return "";
}

} // namespace moert
