//===- Random.cpp - libmoert's op kernels: random generators and training-mode Dropout ===//
//
// Part of libmoert's op kernels (runtime/src/Ops.cpp maps op names to them; shared helpers in OpKernel.h).
// RandomUniform / RandomNormal (and their *Like forms, and Bernoulli through its ONNX function body) draw
// from a Mersenne Twister: seeded by the node's `seed` attribute (the same values on every run), else from
// std::random_device. No implementation reproduces another's random values; what is fixed is the
// distribution.
//
//===----------------------------------------------------------------------===//
#include "OpKernel.h"

#include <random>

namespace moert::ops {

namespace {

std::mt19937_64 generator(const Attrs &a) {
  if (a.find("seed"))
    return std::mt19937_64(uint64_t(int64_t(a.f("seed", 0))));
  std::random_device device;
  return std::mt19937_64((uint64_t(device()) << 32) ^ device());
}

} // namespace

/// RandomUniform / RandomNormal (shape from the `shape` attribute) and RandomUniformLike / RandomNormalLike
/// (the input's shape): uniform in [low, high), or normal with `mean` and `scale`.
bool randomOp(Ctx &c) {
  const bool like = c.op() == "RandomUniformLike" || c.op() == "RandomNormalLike";
  Dims shape;
  if (like) {
    if (!c.need(1))
      return false;
    shape = c.in[0].dims;
  } else {
    if (c.out.empty())
      return c.fail("has no output");
    shape = c.a.ints("shape");
    for (int64_t d : shape)
      if (d < 0)
        return c.fail("shape " + dimsString(shape) + " has a negative dim");
  }
  if (!c.alloc(0, shape))
    return false;
  auto gen = generator(c.a);
  const bool normal = c.op() == "RandomNormal" || c.op() == "RandomNormalLike";
  std::uniform_real_distribution<double> uniform(c.a.f("low", 0.0), c.a.f("high", 1.0));
  std::normal_distribution<double> gauss(c.a.f("mean", 0.0), c.a.f("scale", 1.0));
  for (int64_t i = 0, n = c.out[0].numel(); i < n; ++i)
    if (!writeDouble(c.out[0], i, normal ? gauss(gen) : uniform(gen)))
      return c.fail("output dtype " + std::string(dtypeName(c.out[0].dtype)) + " is not a float type");
  return true;
}

/// Dropout in training mode (a run-time `training_mode` input): with probability `ratio` an element is
/// zeroed, the others scaled by 1 / (1 - ratio); mask (bool) says which were kept. Not training, or ratio 0:
/// the input unchanged and a mask of all true.
bool dropoutOp(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  const double ratio = c.in.size() > 1 && c.in[1].present() ? readDouble(c.in[1], 0) : 0.5;
  const bool training = c.in.size() > 2 && c.in[2].present() && readDouble(c.in[2], 0) != 0;
  if (training && !(ratio >= 0 && ratio < 1))
    return c.fail("ratio " + std::to_string(ratio) + " is not in [0, 1)");
  if (!c.alloc(0, x.dims))
    return false;
  const bool wantMask = c.out.size() > 1 && c.out[1].present();
  if (wantMask && !c.alloc(1, x.dims))
    return false;
  auto gen = generator(c.a);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const bool drop = training && ratio > 0;
  const double keepScale = drop ? 1 / (1 - ratio) : 1.0;
  for (int64_t i = 0, n = x.numel(); i < n; ++i) {
    const bool keep = !drop || uniform(gen) >= ratio;
    if (!writeDouble(c.out[0], i, keep ? readDouble(x, i) * keepScale : 0.0))
      return c.fail("data must be a float tensor");
    if (wantMask)
      c.out[1].mut<bool>()[i] = keep;
  }
  return true;
}

} // namespace moert::ops
