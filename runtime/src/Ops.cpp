//===- Ops.cpp - libmoert's kernels for the graph ops around MoE dispatches --===//
//
// The glue a model keeps outside its fused MoE layers (a router MLP, a norm another op also reads, an
// activation) runs here: f32, shapes resolved at run time, NumPy broadcasting. These are plain loops, not
// tuned kernels: the time of a MoE model is in its dispatches.
//
//===----------------------------------------------------------------------===//
#include "Ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace moert {

namespace {

int64_t numel(const std::vector<int64_t> &d) {
  int64_t n = 1;
  for (int64_t x : d)
    n *= x;
  return n;
}

std::string dimsString(const std::vector<int64_t> &d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i)
    s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

float gelu(float a, bool tanhForm) {
  if (tanhForm)
    return 0.5f * a * (1.0f + std::tanh(0.79788456080286536f * (a + 0.044715f * a * a * a)));
  return 0.5f * a * (1.0f + std::erf(a * 0.70710678118654752f));
}

} // namespace

bool isSupportedOp(const std::string &op) {
  static const char *const kOps[] = {"Add",  "Sub", "Mul", "Div",  "Pow",      "Sqrt",       "Reciprocal",
                                     "Sigmoid", "Relu", "Tanh", "Exp", "Neg", "Erf", "Gelu", "Identity",
                                     "ReduceMean", "ReduceSum", "Softmax", "MatMul"};
  return std::find_if(std::begin(kOps), std::end(kOps), [&](const char *k) { return op == k; }) != std::end(kOps);
}

std::string runOp(const proto::OpStep &s, const std::vector<OpTensor> &in, OpTensor &out) {
  const std::string &op = s.op();
  auto f = [&](size_t i) { return reinterpret_cast<const float *>(in[i].data); };
  if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div" || op == "Pow") {
    if (in.size() != 2)
      return op + ": needs 2 inputs";
    const auto &a = in[0].dims, &b = in[1].dims;
    size_t rank = std::max(a.size(), b.size());
    std::vector<int64_t> dims(rank), sa(rank, 0), sb(rank, 0);
    int64_t stA = 1, stB = 1;
    for (size_t k = 0; k < rank; ++k) {
      size_t i = rank - 1 - k;
      int64_t da = k < a.size() ? a[a.size() - 1 - k] : 1, db = k < b.size() ? b[b.size() - 1 - k] : 1;
      if (da != db && da != 1 && db != 1)
        return op + ": shapes " + dimsString(a) + " and " + dimsString(b) + " do not broadcast";
      dims[i] = std::max(da, db);
      if (da == 0 || db == 0)
        dims[i] = 0;
      sa[i] = da == 1 ? 0 : stA;
      sb[i] = db == 1 ? 0 : stB;
      stA *= da;
      stB *= db;
    }
    out.alloc(dims);
    float *o = out.f32();
    const float *pa = f(0), *pb = f(1);
    int64_t n = numel(dims);
    std::vector<int64_t> idx(rank, 0);
    int64_t ia = 0, ib = 0;
    for (int64_t e = 0; e < n; ++e) {
      float x = pa[ia], y = pb[ib];
      o[e] = op == "Add" ? x + y : op == "Sub" ? x - y : op == "Mul" ? x * y : op == "Div" ? x / y : std::pow(x, y);
      for (size_t k = rank; k-- > 0;) { // odometer over the output index
        ia += sa[k];
        ib += sb[k];
        if (++idx[k] < dims[k])
          break;
        ia -= sa[k] * dims[k];
        ib -= sb[k] * dims[k];
        idx[k] = 0;
      }
    }
    return "";
  }
  if (op == "Sqrt" || op == "Reciprocal" || op == "Sigmoid" || op == "Relu" || op == "Tanh" || op == "Exp" ||
      op == "Neg" || op == "Erf" || op == "Gelu" || op == "Identity") {
    if (in.size() != 1)
      return op + ": needs 1 input";
    out.alloc(in[0].dims);
    const float *x = f(0);
    float *o = out.f32();
    int64_t n = numel(in[0].dims);
    bool tanhForm = s.approximate() == "tanh";
    for (int64_t i = 0; i < n; ++i) {
      float v = x[i];
      o[i] = op == "Sqrt"         ? std::sqrt(v)
             : op == "Reciprocal" ? 1.0f / v
             : op == "Sigmoid"    ? 1.0f / (1.0f + std::exp(-v))
             : op == "Relu"       ? std::max(v, 0.0f)
             : op == "Tanh"       ? std::tanh(v)
             : op == "Exp"        ? std::exp(v)
             : op == "Neg"        ? -v
             : op == "Erf"        ? std::erf(v)
             : op == "Gelu"       ? gelu(v, tanhForm)
                                  : v;
    }
    return "";
  }
  if (op == "ReduceMean" || op == "ReduceSum") {
    const auto &d = in[0].dims;
    int64_t rank = d.size();
    std::vector<bool> reduce(rank, s.axes_size() == 0);
    for (int64_t a : s.axes()) {
      int64_t k = a < 0 ? a + rank : a;
      if (k < 0 || k >= rank)
        return op + ": axis " + std::to_string(a) + " out of range for " + dimsString(d);
      reduce[k] = true;
    }
    std::vector<int64_t> outDims, keptDims(rank);
    for (int64_t k = 0; k < rank; ++k) {
      keptDims[k] = reduce[k] ? 1 : d[k];
      if (!reduce[k] || s.keepdims())
        outDims.push_back(keptDims[k]);
    }
    out.alloc(outDims);
    float *o = out.f32();
    int64_t n = numel(d), m = numel(keptDims);
    std::fill(o, o + m, 0.0f);
    std::vector<int64_t> idx(rank, 0);
    const float *x = f(0);
    for (int64_t e = 0; e < n; ++e) {
      int64_t j = 0;
      for (int64_t k = 0; k < rank; ++k)
        j = j * keptDims[k] + (reduce[k] ? 0 : idx[k]);
      o[j] += x[e];
      for (int64_t k = rank; k-- > 0;) {
        if (++idx[k] < d[k])
          break;
        idx[k] = 0;
      }
    }
    if (op == "ReduceMean" && m > 0) {
      float count = float(n / std::max<int64_t>(m, 1));
      for (int64_t j = 0; j < m; ++j)
        o[j] /= count;
    }
    return "";
  }
  if (op == "Softmax") {
    const auto &d = in[0].dims;
    int64_t rank = d.size(), axis = s.axis() < 0 ? s.axis() + rank : s.axis();
    if (axis != rank - 1)
      return "Softmax over a dim other than the last is not supported";
    out.alloc(d);
    int64_t inner = d.empty() ? 1 : d.back(), outer = numel(d) / std::max<int64_t>(inner, 1);
    for (int64_t r = 0; r < outer; ++r) {
      const float *x = f(0) + r * inner;
      float *o = out.f32() + r * inner;
      float mx = -INFINITY, sum = 0.0f;
      for (int64_t i = 0; i < inner; ++i)
        mx = std::max(mx, x[i]);
      for (int64_t i = 0; i < inner; ++i)
        sum += o[i] = std::exp(x[i] - mx);
      for (int64_t i = 0; i < inner; ++i)
        o[i] /= sum;
    }
    return "";
  }
  if (op == "MatMul") {
    const auto &a = in[0].dims, &b = in[1].dims;
    if (a.size() < 2 || b.size() != 2 || a.back() != b[0])
      return "MatMul of " + dimsString(a) + " and " + dimsString(b) + " is not supported ([..., M, K] x [K, N])";
    std::vector<int64_t> dims(a.begin(), a.end() - 1);
    dims.push_back(b[1]);
    out.alloc(dims);
    int64_t K = b[0], N = b[1], rows = numel(a) / std::max<int64_t>(K, 1);
    const float *x = f(0), *w = f(1);
    float *o = out.f32();
    for (int64_t r = 0; r < rows; ++r) {
      float *orow = o + r * N;
      std::fill(orow, orow + N, 0.0f);
      for (int64_t k = 0; k < K; ++k) {
        float xv = x[r * K + k];
        const float *wr = w + k * N;
        for (int64_t j = 0; j < N; ++j)
          orow[j] += xv * wr[j];
      }
    }
    return "";
  }
  return "op '" + op + "' is not supported by this moert";
}

} // namespace moert
