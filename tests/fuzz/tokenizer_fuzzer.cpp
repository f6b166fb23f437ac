//===- tokenizer_fuzzer.cpp - libFuzzer target over moert's tokenizer.json reader ===//
//
// Each input is a tokenizer.json, a 0 byte, and a text: the harness parses the file
// (tools/moert/Tokenizer.cpp), encodes the text with and without special tokens and decodes the ids again
// (and the ids 0..63). Any crash, hang or sanitizer report is a bug: a file the reader cannot use must be an
// error, whatever it holds. Seeded with the tokenizers check_tokenizer.py trains (run-tokenizer-fuzzer.sh).
//
//===----------------------------------------------------------------------===//
#include "tools/moert/Tokenizer.h"

#include <cstdint>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const std::string all(reinterpret_cast<const char *>(data), size);
  const size_t cut = all.find('\0');
  const std::string spec = all.substr(0, cut), text = cut == std::string::npos ? "" : all.substr(cut + 1);
  std::string err;
  auto tok = moert::text::Tokenizer::parse(spec, "fuzz", err);
  if (!tok)
    return 0;
  for (bool special : {true, false}) {
    std::vector<int64_t> ids;
    std::string back;
    if (tok->encode(text, special, ids, err))
      tok->decode(ids, special, back, err);
  }
  std::vector<int64_t> some;
  for (int64_t i = 0; i < 64; ++i)
    some.push_back(i);
  std::string back;
  tok->decode(some, false, back, err);
  return 0;
}
