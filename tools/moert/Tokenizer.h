//===- Tokenizer.h - text <-> token ids from a tokenizer.json -------------===//
//
// The `moert` CLI's text path (`moert generate --prompt`, `moert tokenize`): reads the tokenizer.json that
// Hugging Face's `tokenizers` writes and encodes / decodes as that library does (encode with the special
// tokens its post-processor adds, decode skipping special tokens). Models: BPE (merges, byte fallback,
// ignore_merges) and WordLevel; the normalizers, pre-tokenizers, post-processors and decoders byte-level BPE
// and SentencePiece-style BPE tokenizers use (listed in Tokenizer.cpp). Anything else is one error naming the
// component, at load. libmoert does not link this (the Python binding uses `tokenizers` itself).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_TOOLS_TOKENIZER_H
#define MOERT_TOOLS_TOKENIZER_H

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moert::text {

/// The file name moec and moert look for next to a model (the ONNX file, the artifact).
constexpr const char *kTokenizerFile = "tokenizer.json";

class Tokenizer {
public:
  /// Reads `path` (a tokenizer.json); null with `err` set ("<path>: <what>") when it cannot be used.
  static std::unique_ptr<Tokenizer> load(const std::string &path, std::string &err);
  /// The same from the file's text; `name` starts error messages. `isJson` (when given) says whether the text
  /// was a JSON object at all (what moec embeds: a file moert's reader cannot use may still be one the Python
  /// binding's `tokenizers` reads).
  static std::unique_ptr<Tokenizer> parse(const std::string &json, const std::string &name, std::string &err,
                                          bool *isJson = nullptr);
  ~Tokenizer();

  /// `text` (UTF-8) -> token ids; with `addSpecial`, the post-processor's special tokens (a BOS) too.
  bool encode(const std::string &text, bool addSpecial, std::vector<int64_t> &ids, std::string &err) const;
  /// Token ids -> UTF-8 text (invalid byte sequences become U+FFFD); ids the vocabulary lacks are skipped,
  /// special tokens too with `skipSpecial`.
  bool decode(const std::vector<int64_t> &ids, bool skipSpecial, std::string &text, std::string &err) const;

  /// `moert tokenize --jsonl`: each line of `in` a JSON string; writes one JSON object a line to `out`,
  /// {"ids": [...], "decoded": "..."} (the ids decoded again, special tokens skipped). False with `err`
  /// (naming the line) at the first line that is not a JSON string.
  bool encodeJsonLines(const std::string &in, bool addSpecial, std::string &out, std::string &err) const;

  struct Impl;

private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl;
};

} // namespace moert::text

#endif // MOERT_TOOLS_TOKENIZER_H
