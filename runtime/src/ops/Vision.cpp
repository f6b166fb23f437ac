//===- Vision.cpp - libmoert's op kernels: GridSample, RoiAlign ===//
//
// Part of libmoert's op kernels (runtime/src/Ops.cpp maps op names to them; shared helpers in OpKernel.h).
// Sampling ops of vision towers, computed in double as ONNX's reference defines them.
//
//===----------------------------------------------------------------------===//
#include "OpKernel.h"

namespace moert::ops {

namespace {

/// Reflects x into [lo, hi] by its nearer border until it is inside.
double reflect(double x, double lo, double hi) {
  const double range = hi - lo;
  if (range <= 0)
    return lo;
  if (x < lo) {
    const double dx = lo - x;
    const int64_t n = int64_t(dx / range);
    const double r = dx - double(n) * range;
    return n % 2 == 0 ? lo + r : hi - r;
  }
  if (x > hi) {
    const double dx = x - hi;
    const int64_t n = int64_t(dx / range);
    const double r = dx - double(n) * range;
    return n % 2 == 0 ? hi - r : lo + r;
  }
  return x;
}

void cubicCoeffs(double t, double w[4]) {
  const double a = -0.75, x = std::abs(t);
  auto far = [&](double d) { return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a; };
  auto near = [&](double d) { return ((a + 2) * d - (a + 3)) * d * d + 1; };
  w[0] = far(x + 1), w[1] = near(x), w[2] = near(1 - x), w[3] = far(2 - x);
}

} // namespace

/// GridSample (opsets 16 and 20): X [N, C, D1..Dr], grid [N, H1..Hr, r] of normalised coordinates in
/// [-1, 1] (the last dim innermost first: x, then y, ...). mode bilinear / linear, nearest, bicubic / cubic;
/// padding_mode zeros, border, reflection; align_corners.
bool gridSample(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0], &grid = c.in[1];
  const int64_t r = int64_t(x.dims.size()) - 2;
  if (r < 1 || int64_t(grid.dims.size()) != r + 2 || grid.dims[0] != x.dims[0] || grid.dims.back() != r)
    return c.fail("X " + dimsString(x.dims) + " and grid " + dimsString(grid.dims) +
                  " are not [N, C, D1..Dr] and [N, H1..Hr, r]");
  // Modes and paddings resolved once, not per sample.
  enum class Mode { Linear, Nearest, Cubic };
  enum class Pad { Zeros, Border, Reflection };
  const std::string modeName = c.a.str("mode", "bilinear"), padName = c.a.str("padding_mode", "zeros");
  const bool align = c.a.i("align_corners", 0) != 0;
  Mode mode;
  if (modeName == "bilinear" || modeName == "linear")
    mode = Mode::Linear;
  else if (modeName == "nearest")
    mode = Mode::Nearest;
  else if (modeName == "bicubic" || modeName == "cubic")
    mode = Mode::Cubic;
  else
    return c.fail("mode \"" + modeName + "\" is not bilinear, nearest or bicubic");
  const Pad padding = padName == "border"       ? Pad::Border
                      : padName == "reflection" ? Pad::Reflection
                                                : Pad::Zeros;
  const int64_t N = x.dims[0], C = x.dims[1];
  Dims od{N, C};
  od.insert(od.end(), grid.dims.begin() + 1, grid.dims.end() - 1);
  if (!c.alloc(0, od))
    return false;
  const Dims size(x.dims.begin() + 2, x.dims.end());
  const int64_t plane = product(size), points = product(grid.dims, 1, grid.dims.size() - 1);
  std::vector<double> lo(static_cast<size_t>(r)), hi(static_cast<size_t>(r));
  for (int64_t d = 0; d < r; ++d) {
    lo[d] = align ? 0.0 : -0.5;
    hi[d] = align ? double(size[d] - 1) : double(size[d]) - 0.5;
  }
  // The value at integer index `idx` (per dim), after the padding mode; `ok` false for a zero.
  auto fetch = [&](const OpTensor &t, int64_t base, const std::vector<int64_t> &idx) {
    int64_t flat = 0;
    for (int64_t d = 0; d < r; ++d) {
      int64_t i = idx[d];
      if (padding == Pad::Zeros) {
        if (i < 0 || i >= size[d])
          return 0.0;
      } else if (padding == Pad::Border) {
        i = std::clamp<int64_t>(i, 0, size[d] - 1);
      } else {
        i = int64_t(reflect(double(i), lo[d], hi[d]));
        i = std::clamp<int64_t>(i, 0, size[d] - 1);
      }
      flat = flat * size[d] + i;
    }
    return readDouble(t, base + flat);
  };
  const int taps = mode == Mode::Linear ? 2 : mode == Mode::Cubic ? 4 : 1;
  int64_t combos = 1;
  for (int64_t d = 0; d < r; ++d)
    combos *= taps;
  std::vector<double> w(static_cast<size_t>(r * 4));
  std::vector<int64_t> first(static_cast<size_t>(r)), idx(static_cast<size_t>(r));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < points; ++p) {
      // Grid coordinates, innermost dim first, to pixel positions.
      for (int64_t d = 0; d < r; ++d) {
        const double g = readDouble(grid, (n * points + p) * r + (r - 1 - d));
        double v = align ? (g + 1) / 2 * double(size[d] - 1) : ((g + 1) * double(size[d]) - 1) / 2;
        v = double(float(v)); // ONNX's reference denormalises in f32
        if (mode == Mode::Nearest)
          v = std::nearbyint(v);
        if (v < lo[d] || v > hi[d]) {
          if (padding == Pad::Border)
            v = std::clamp(v, 0.0, double(size[d] - 1));
          else if (padding == Pad::Reflection)
            v = reflect(v, lo[d], hi[d]);
        }
        if (mode == Mode::Nearest) {
          first[d] = int64_t(v);
        } else {
          first[d] = int64_t(std::floor(v)) - (mode == Mode::Cubic ? 1 : 0);
          const double t = v - std::floor(v);
          if (mode == Mode::Linear)
            w[d * 4] = 1 - t, w[d * 4 + 1] = t;
          else
            cubicCoeffs(t, &w[d * 4]);
        }
      }
      for (int64_t ch = 0; ch < C; ++ch) {
        const int64_t base = (n * C + ch) * plane;
        double acc = 0;
        for (int64_t k = 0; k < combos; ++k) {
          double weight = 1;
          int64_t rest = k;
          for (int64_t d = r - 1; d >= 0; --d) {
            const int64_t tap = rest % taps;
            rest /= taps;
            idx[d] = first[d] + tap;
            if (mode != Mode::Nearest)
              weight *= w[d * 4 + tap];
          }
          if (weight != 0 || mode == Mode::Nearest)
            acc += weight * fetch(x, base, idx);
        }
        const int64_t at = (n * C + ch) * points + p;
        if (!withFloat(c.out[0].dtype,
                       [&](auto tag) { c.out[0].mut<decltype(tag)>()[at] = decltype(tag)(acc); }))
          return c.fail("X must be f32 or f64");
      }
    }
  return true;
}

/// RoiAlign (opsets 10 and 16): X [N, C, H, W], rois [R, 4] (x1, y1, x2, y2), batch_indices [R]; output
/// [R, C, output_height, output_width], each bin the average (or max) of sampling_ratio^2 bilinear samples
/// (sampling_ratio 0: ceil(roi size / bins) per axis). coordinate_transformation_mode half_pixel (opset 16's
/// default) shifts by half a pixel and lets RoIs be smaller than a pixel; samples outside [-1, H] x [-1, W]
/// count as zeros. Max mode takes the largest weighted corner of each sample, as ONNX's reference does.
bool roiAlign(Ctx &c) {
  if (!c.need(3))
    return false;
  const OpTensor &x = c.in[0], &rois = c.in[1], &batch = c.in[2];
  if (x.dims.size() != 4 || rois.dims.size() != 2 || rois.dims[1] != 4 || batch.dims.size() != 1 ||
      batch.dims[0] != rois.dims[0])
    return c.fail("X " + dimsString(x.dims) + ", rois " + dimsString(rois.dims) + " and batch_indices " +
                  dimsString(batch.dims) + " are not [N, C, H, W], [R, 4] and [R]");
  const int64_t N = x.dims[0], C = x.dims[1], H = x.dims[2], W = x.dims[3], R = rois.dims[0];
  const int64_t ph = c.a.i("output_height", 1), pw = c.a.i("output_width", 1);
  const int64_t ratio = c.a.i("sampling_ratio", 0);
  const double scale = c.a.f("spatial_scale", 1.0);
  const bool halfPixel = c.a.str("coordinate_transformation_mode", "half_pixel") == "half_pixel";
  const bool avg = c.a.str("mode", "avg") == "avg";
  if (ph <= 0 || pw <= 0 || ratio < 0)
    return c.fail("output_height, output_width must be positive and sampling_ratio not negative");
  if (!c.alloc(0, {R, C, ph, pw}))
    return false;
  struct Sample {
    int64_t pos[4];
    double w[4];
  };
  std::vector<Sample> samples;
  for (int64_t roi = 0; roi < R; ++roi) {
    const int64_t b = readInt(batch, roi);
    if (b < 0 || b >= N)
      return c.fail("batch_indices[" + std::to_string(roi) + "] = " + std::to_string(b) + " is not in [0, " +
                    std::to_string(N) + ")");
    const double off = halfPixel ? 0.5 : 0.0;
    const double x1 = readDouble(rois, roi * 4) * scale - off,
                 y1 = readDouble(rois, roi * 4 + 1) * scale - off;
    const double x2 = readDouble(rois, roi * 4 + 2) * scale - off,
                 y2 = readDouble(rois, roi * 4 + 3) * scale - off;
    double rw = x2 - x1, rh = y2 - y1;
    if (!halfPixel)
      rw = std::max(rw, 1.0), rh = std::max(rh, 1.0);
    const double bh = rh / double(ph), bw = rw / double(pw);
    const int64_t gh = ratio > 0 ? ratio : int64_t(std::ceil(rh / double(ph)));
    const int64_t gw = ratio > 0 ? ratio : int64_t(std::ceil(rw / double(pw)));
    const double count = double(std::max<int64_t>(gh * gw, 1));
    samples.clear();
    for (int64_t i = 0; i < ph; ++i)
      for (int64_t j = 0; j < pw; ++j)
        for (int64_t iy = 0; iy < gh; ++iy) {
          const double yy = y1 + double(i) * bh + (double(iy) + 0.5) * bh / double(gh);
          for (int64_t ix = 0; ix < gw; ++ix) {
            double xx = x1 + double(j) * bw + (double(ix) + 0.5) * bw / double(gw), y = yy;
            Sample s{};
            if (!(y < -1.0 || y > double(H) || xx < -1.0 || xx > double(W))) {
              y = std::max(y, 0.0), xx = std::max(xx, 0.0);
              int64_t yl = int64_t(y), xl = int64_t(xx), yh, xh;
              if (yl >= H - 1)
                yh = yl = H - 1, y = double(yl);
              else
                yh = yl + 1;
              if (xl >= W - 1)
                xh = xl = W - 1, xx = double(xl);
              else
                xh = xl + 1;
              const double ly = y - double(yl), lx = xx - double(xl), hy = 1 - ly, hx = 1 - lx;
              s = Sample{{yl * W + xl, yl * W + xh, yh * W + xl, yh * W + xh},
                         {hy * hx, hy * lx, ly * hx, ly * lx}};
            }
            samples.push_back(s);
          }
        }
    for (int64_t ch = 0; ch < C; ++ch) {
      const int64_t base = (b * C + ch) * H * W;
      size_t k = 0;
      for (int64_t i = 0; i < ph; ++i)
        for (int64_t j = 0; j < pw; ++j) {
          double acc = 0;
          bool first = true;
          for (int64_t s = 0; s < gh * gw; ++s, ++k) {
            const Sample &p = samples[k];
            if (avg) {
              for (int q = 0; q < 4; ++q)
                acc += p.w[q] * readDouble(x, base + p.pos[q]);
            } else {
              double v = p.w[0] * readDouble(x, base + p.pos[0]);
              for (int q = 1; q < 4; ++q)
                v = std::max(v, p.w[q] * readDouble(x, base + p.pos[q]));
              acc = first ? v : std::max(acc, v);
              first = false;
            }
          }
          if (avg)
            acc /= count;
          const int64_t at = ((roi * C + ch) * ph + i) * pw + j;
          if (!withFloat(c.out[0].dtype,
                         [&](auto tag) { c.out[0].mut<decltype(tag)>()[at] = decltype(tag)(acc); }))
            return c.fail("X must be f32 or f64");
        }
    }
  }
  return true;
}

} // namespace moert::ops
