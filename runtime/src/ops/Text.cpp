//===- Text.cpp - libmoert's op kernels: TfIdfVectorizer ===//
//
// Part of libmoert's op kernels (runtime/src/Ops.cpp maps op names to them; shared helpers in OpKernel.h).
//
//===----------------------------------------------------------------------===//
#include "OpKernel.h"

#include <set>

namespace moert::ops {

/// TfIdfVectorizer over integer tokens (pool_int64s; string pools are out of scope): X [C] or [N, C] ->
/// [out] or [N, out], out = max(ngram_indexes) + 1. The pool lists the n-grams of each length n (1, 2, ...)
/// from ngram_counts[n - 1]; the i-th n-gram of the pool (in order, counting lengths outside
/// [min_gram_length, max_gram_length] too) counts into column ngram_indexes[i]. In each row, n-grams whose
/// items are `skip + 1` apart (skip 0 .. max_skip_count) are counted; unigrams once, at skip 0. mode TF: the
/// counts; IDF: weights[i] (or 1) where the count is > 0; TFIDF: weights[i] (or 1) times the count.
bool tfIdfVectorizer(Ctx &c) {
  if (!c.need(1))
    return false;
  const OpTensor &x = c.in[0];
  if (x.dims.empty() || x.dims.size() > 2)
    return c.fail("input " + dimsString(x.dims) + " is not [C] or [N, C]");
  const Dims pool = c.a.ints("pool_int64s"), counts = c.a.ints("ngram_counts"),
             index = c.a.ints("ngram_indexes");
  const std::vector<double> weights = c.a.floats("weights");
  const int64_t minN = c.a.i("min_gram_length", 1), maxN = c.a.i("max_gram_length", 1);
  const int64_t maxSkip = c.a.i("max_skip_count", 0);
  const std::string mode = c.a.str("mode", "TF");
  if (pool.empty() || index.empty() || minN < 1 || maxN < minN || maxSkip < 0)
    return c.fail("needs pool_int64s, ngram_indexes and 1 <= min_gram_length <= max_gram_length");
  // Every n-gram in range -> its pool position; every prefix of one (to stop a scan early, as ONNX's
  // reference walks a trie).
  std::map<std::vector<int64_t>, int64_t> id;
  std::set<std::vector<int64_t>> prefixes;
  int64_t next = 0;
  for (size_t g = 0; g < counts.size(); ++g) {
    const int64_t n = int64_t(g) + 1, begin = counts[g];
    const int64_t end = g + 1 < counts.size() ? counts[g + 1] : int64_t(pool.size());
    if (begin < 0 || end > int64_t(pool.size()) || end < begin)
      return c.fail("ngram_counts do not index into pool_int64s");
    for (int64_t at = begin; at + n <= end; at += n, ++next) {
      if (n < minN || n > maxN)
        continue;
      std::vector<int64_t> gram(pool.begin() + at, pool.begin() + at + n);
      for (int64_t k = 1; k <= n; ++k)
        prefixes.insert(std::vector<int64_t>(gram.begin(), gram.begin() + k));
      id.emplace(std::move(gram), next);
    }
  }
  for (const auto &[gram, i] : id)
    if (i >= int64_t(index.size()) || index[i] < 0)
      return c.fail("ngram_indexes has no valid entry for pool n-gram " + std::to_string(i));
  const int64_t out = *std::max_element(index.begin(), index.end()) + 1;
  const int64_t rows = x.dims.size() == 2 ? x.dims[0] : 1, len = x.dims.back();
  if (!c.alloc(0, x.dims.size() == 2 ? Dims{rows, out} : Dims{out}))
    return false;
  std::vector<double> freq(size_t(rows * out), 0.0);
  std::vector<int64_t> gram;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t startN = minN;
    for (int64_t skip = 1; skip <= maxSkip + 1; ++skip) {
      for (int64_t s = 0; s < len; ++s) {
        if (s + skip * (startN - 1) >= len)
          break;
        gram.clear();
        for (int64_t n = 1, at = s; n <= maxN && at < len; ++n, at += skip) {
          gram.push_back(readInt(x, r * len + at));
          if (!prefixes.count(gram))
            break;
          auto hit = id.find(gram);
          if (n >= startN && hit != id.end())
            freq[r * out + index[hit->second]] += 1;
        }
      }
      if (startN == 1 && ++startN > maxN)
        break;
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < out; ++i) {
      const double f = freq[r * out + i], w = i < int64_t(weights.size()) ? weights[i] : 1.0;
      double v = f;
      if (mode == "IDF")
        v = f > 0 ? w : 0;
      else if (mode == "TFIDF")
        v = w * f;
      c.out[0].mut<float>()[r * out + i] = float(v);
    }
  return true;
}

} // namespace moert::ops
