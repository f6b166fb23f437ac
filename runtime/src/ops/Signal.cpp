//===- Signal.cpp - libmoert's op kernels: DFT, STFT, MelWeightMatrix ===//
//
// Part of libmoert's op kernels (runtime/src/Ops.cpp maps op names to them; shared helpers in OpKernel.h).
// Kernels in double: a transform of length n is a radix-2 FFT when n is a power of two, Bluestein's chirp-z
// (a convolution through power-of-two FFTs) for other lengths past a few dozen, and the direct sum below
// that; every twiddle is computed from its own angle (reduced modulo n or 2n, never by repeated
// multiplication), so long transforms stay accurate.
//
//===----------------------------------------------------------------------===//
#include "OpKernel.h"

#include <complex>

namespace moert::ops {

namespace {

using Cx = std::complex<double>;

/// In place: a[k] = sum_j a[j] e^(sign 2 pi i j k / n), n = a.size() a power of two (iterative radix 2).
void fft(std::vector<Cx> &a, double sign) {
  const size_t n = a.size();
  for (size_t i = 1, j = 0; i < n; ++i) { // bit-reversed order
    size_t bit = n >> 1;
    for (; j & bit; bit >>= 1)
      j ^= bit;
    j ^= bit;
    if (i < j)
      std::swap(a[i], a[j]);
  }
  for (size_t len = 2; len <= n; len <<= 1) {
    const size_t half = len / 2;
    for (size_t k = 0; k < half; ++k) {
      const double angle = sign * 2 * M_PI * double(k) / double(len);
      const Cx w(std::cos(angle), std::sin(angle));
      for (size_t i = 0; i < n; i += len) {
        const Cx u = a[i + k], v = a[i + k + half] * w;
        a[i + k] = u + v;
        a[i + k + half] = u - v;
      }
    }
  }
}

/// X[k] = sum_j x[j] e^(-+2 pi i j k / n) for k < outLen, x zero-padded or truncated to n; inverse: the +
/// sign and a 1/n factor.
void transform(const std::vector<Cx> &x, int64_t n, bool inverse, int64_t outLen, Cx *out) {
  const double sign = inverse ? 1.0 : -1.0, tau = 2 * M_PI;
  const int64_t m = std::min<int64_t>(int64_t(x.size()), n);
  const double scale = inverse ? 1.0 / double(n) : 1.0;
  if (n < 64 && (n & (n - 1)) != 0) { // short: the direct sum
    for (int64_t k = 0; k < outLen; ++k) {
      Cx acc = 0;
      for (int64_t j = 0; j < m; ++j) {
        const double angle = sign * tau * double((j * k) % n) / double(n);
        acc += x[j] * Cx(std::cos(angle), std::sin(angle));
      }
      out[k] = acc * scale;
    }
    return;
  }
  if ((n & (n - 1)) == 0) { // a power of two
    std::vector<Cx> a(static_cast<size_t>(n), Cx(0));
    std::copy(x.begin(), x.begin() + m, a.begin());
    fft(a, sign);
    for (int64_t k = 0; k < outLen; ++k)
      out[k] = a[k] * scale;
    return;
  }
  // Bluestein: j k = (j^2 + k^2 - (k - j)^2) / 2, so X[k] = b[k] sum_j (x[j] b[j]) conj(b[k - j]) with the
  // chirp b[j] = e^(sign pi i j^2 / n): a convolution, done with FFTs of a power of two M >= 2n - 1.
  std::vector<Cx> chirp(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const double angle = sign * M_PI * double((j * j) % (2 * n)) / double(n);
    chirp[j] = Cx(std::cos(angle), std::sin(angle));
  }
  size_t size = 1;
  while (size < size_t(2 * n - 1))
    size <<= 1;
  std::vector<Cx> a(size, Cx(0)), b(size, Cx(0));
  for (int64_t j = 0; j < m; ++j)
    a[j] = x[j] * chirp[j];
  b[0] = std::conj(chirp[0]);
  for (int64_t j = 1; j < n; ++j)
    b[j] = b[size - j] = std::conj(chirp[j]);
  fft(a, -1.0);
  fft(b, -1.0);
  for (size_t i = 0; i < size; ++i)
    a[i] *= b[i];
  fft(a, 1.0);
  for (int64_t k = 0; k < outLen; ++k)
    out[k] = chirp[k] * a[k] / double(size) * scale;
}

/// Element (re, im) `i` of a [..., 1 | 2] signal (real when the last dim is 1).
Cx element(const OpTensor &t, int64_t i) {
  const int64_t parts = t.dims.back();
  return parts == 2 ? Cx(readDouble(t, 2 * i), readDouble(t, 2 * i + 1)) : Cx(readDouble(t, i), 0.0);
}

} // namespace

/// DFT (opset 17): input [batch, ..., n, ..., 1 | 2], optional dft_length; axis (default 1), inverse,
/// onesided. Forward onesided keeps bins 0 .. n/2 of a real signal; inverse onesided takes those bins of a
/// Hermitian spectrum and returns the real signal ([..., 1]), as numpy's irfft.
bool dft(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  const int64_t rank = int64_t(x.dims.size());
  if (rank < 2 || (x.dims.back() != 1 && x.dims.back() != 2))
    return c.fail("input " + dimsString(x.dims) +
                  " is not [batch, ..., 1 | 2] (real, or real and imaginary)");
  const int64_t axis = normAxis(c.a.i("axis", 1), rank);
  if (axis < 0 || axis == rank - 1)
    return c.fail("axis " + std::to_string(c.a.i("axis", 1)) + " is not a signal dim of " +
                  dimsString(x.dims));
  const bool inverse = c.a.i("inverse", 0) != 0, onesided = c.a.i("onesided", 0) != 0;
  if (onesided && !inverse && x.dims.back() == 2)
    return c.fail("onesided needs a real input ([..., 1])");
  int64_t n = x.dims[axis];
  if (inverse && onesided)
    n = 2 * (x.dims[axis] - 1);
  if (c.in.size() > 1 && c.in[1].present() && c.in[1].numel() > 0)
    n = readInt(c.in[1], 0);
  if (n <= 0)
    return c.fail("dft_length " + std::to_string(n) + " is not positive");
  const int64_t outLen = onesided && !inverse ? n / 2 + 1 : n;
  Dims od = x.dims;
  od[axis] = outLen;
  od.back() = inverse && onesided ? 1 : 2;
  if (!c.alloc(0, od))
    return false;
  const int64_t outer = product(x.dims, 0, axis), inner = product(x.dims, axis + 1, rank - 1);
  const int64_t len = x.dims[axis];
  std::vector<Cx> sig, res(size_t(std::max(outLen, n)));
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t in = 0; in < inner; ++in) {
      sig.assign(size_t(len), 0);
      for (int64_t j = 0; j < len; ++j)
        sig[j] = element(x, (o * len + j) * inner + in);
      if (inverse && onesided) { // the full Hermitian spectrum from its first n/2 + 1 bins
        std::vector<Cx> full(size_t(n), 0);
        for (int64_t k = 0; k <= n / 2; ++k)
          full[k] = k < len ? sig[k] : Cx(0);
        full[0] = full[0].real();
        if (n % 2 == 0)
          full[n / 2] = full[n / 2].real();
        for (int64_t k = n / 2 + 1; k < n; ++k)
          full[k] = std::conj(full[n - k]);
        sig = std::move(full);
      }
      transform(sig, n, inverse, outLen, res.data());
      for (int64_t k = 0; k < outLen; ++k) {
        const int64_t at = (o * outLen + k) * inner + in;
        if (inverse && onesided) {
          writeDouble(c.out[0], at, res[k].real());
        } else {
          writeDouble(c.out[0], 2 * at, res[k].real());
          writeDouble(c.out[0], 2 * at + 1, res[k].imag());
        }
      }
    }
  return true;
}

/// STFT (opset 17): signal [batch, length, 1 | 2], frame_step, optional window [frame length] and
/// frame_length; onesided (default 1). Output [batch, frames, bins, 2], frames = 1 + (length - frame_length)
/// / frame_step, each frame's samples times the window (zeros past the signal's end), transformed over
/// frame_length points.
bool stft(Ctx &c) {
  if (!c.need(2))
    return false;
  const OpTensor &x = c.in[0];
  if (x.dims.size() != 3 || (x.dims[2] != 1 && x.dims[2] != 2))
    return c.fail("signal " + dimsString(x.dims) + " is not [batch, length, 1 | 2]");
  const bool onesided = c.a.i("onesided", 1) != 0;
  if (onesided && x.dims[2] == 2)
    return c.fail("onesided needs a real signal ([batch, length, 1])");
  const int64_t step = readInt(c.in[1], 0);
  const OpTensor *window = c.in.size() > 2 && c.in[2].present() ? &c.in[2] : nullptr;
  int64_t frameLen = window ? window->numel() : x.dims[1];
  if (c.in.size() > 3 && c.in[3].present() && c.in[3].numel() > 0)
    frameLen = readInt(c.in[3], 0);
  const int64_t winLen = window ? window->numel() : frameLen;
  if (step <= 0 || frameLen <= 0 || frameLen > x.dims[1])
    return c.fail("frame_step " + std::to_string(step) + " and frame_length " + std::to_string(frameLen) +
                  " do not fit a signal of " + std::to_string(x.dims[1]));
  const int64_t B = x.dims[0], L = x.dims[1], frames = 1 + (L - frameLen) / step;
  const int64_t bins = onesided ? frameLen / 2 + 1 : frameLen;
  if (!c.alloc(0, {B, frames, bins, 2}))
    return false;
  std::vector<Cx> frame(static_cast<size_t>(winLen)), res(static_cast<size_t>(frameLen));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t f = 0; f < frames; ++f) {
      for (int64_t j = 0; j < winLen; ++j) {
        const int64_t t = f * step + j;
        const double w = window ? readDouble(*window, j) : 1.0;
        frame[j] = t < L ? element(x, b * L + t) * w : Cx(0);
      }
      transform(frame, frameLen, false, bins, res.data());
      for (int64_t k = 0; k < bins; ++k) {
        const int64_t at = ((b * frames + f) * bins + k) * 2;
        writeDouble(c.out[0], at, res[k].real());
        writeDouble(c.out[0], at + 1, res[k].imag());
      }
    }
  return true;
}

/// MelWeightMatrix (opset 17): [dft_length / 2 + 1, num_mel_bins] triangular filters, their edges
/// num_mel_bins + 2 points evenly spaced on the mel scale (2595 log10(1 + f / 700)) between the lower and
/// upper edge frequencies, each mapped to the spectrogram bin floor((dft_length + 1) f / sample_rate); a
/// filter rises from its left edge to 1 at its centre and falls to its right edge (ONNX's reference).
bool melWeightMatrix(Ctx &c) {
  if (!c.need(5))
    return false;
  const int64_t mels = readInt(c.in[0], 0), dftLen = readInt(c.in[1], 0), rate = readInt(c.in[2], 0);
  const double lo = readDouble(c.in[3], 0), hi = readDouble(c.in[4], 0);
  if (mels <= 0 || dftLen <= 0 || rate <= 0 || !(lo >= 0) || !(hi > lo))
    return c.fail("num_mel_bins " + std::to_string(mels) + ", dft_length " + std::to_string(dftLen) +
                  ", sample_rate " + std::to_string(rate) +
                  " must be positive and the edges 0 <= lower < upper");
  const int64_t bins = dftLen / 2 + 1;
  auto mel = [](double f) { return 2595 * std::log1p(f / 700) / std::log(10.0); };
  const double loMel = mel(lo), stepMel = (mel(hi) - loMel) / double(mels + 2);
  std::vector<int64_t> edge(size_t(mels + 2));
  for (int64_t i = 0; i < mels + 2; ++i) {
    const double f = 700 * std::expm1((double(i) * stepMel + loMel) / 2595 * std::log(10.0));
    edge[i] = int64_t(std::floor(double(dftLen + 1) * f / double(rate)));
    if (edge[i] < 0 || edge[i] >= bins)
      return c.fail("mel filter edge at bin " + std::to_string(edge[i]) + " is outside the " +
                    std::to_string(bins) + " spectrogram bins (upper_edge_hertz above sample_rate / 2?)");
  }
  if (!c.alloc(0, {bins, mels}))
    return false;
  std::vector<double> w(size_t(bins * mels), 0.0);
  for (int64_t i = 0; i < mels; ++i) {
    const int64_t left = edge[i], centre = edge[i + 1], right = edge[i + 2];
    if (centre == left)
      w[centre * mels + i] = 1;
    else
      for (int64_t j = left; j <= centre; ++j)
        w[j * mels + i] = double(j - left) / double(centre - left);
    for (int64_t j = centre; j < right; ++j)
      w[j * mels + i] = double(right - j) / double(right - centre);
  }
  for (int64_t i = 0; i < bins * mels; ++i)
    if (!writeDouble(c.out[0], i, w[i]))
      return c.fail("output dtype " + std::string(dtypeName(c.out[0].dtype)) + " is not numeric");
  return true;
}

} // namespace moert::ops
