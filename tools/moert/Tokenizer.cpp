//===- Tokenizer.cpp - a tokenizer.json reader: BPE / WordLevel encode and decode ===//
//
// Follows the pipeline of Hugging Face's `tokenizers` (the Python binding's own tokenizer, which the tests
// use as the reference):
//
//   text -> added tokens split out (leftmost longest; lstrip / rstrip / single_word) -> normalizer on the
//   rest
//        -> pre-tokenizer (pieces) -> model per piece (ids) -> post-processor (special tokens)
//   ids  -> tokens (special ones dropped when asked) -> decoder -> text
//
// Supported components (anything else is an error naming it, at load):
//   normalizers     NFC, NFD, NFKC, NFKD (ICU), Lowercase, Strip, Prepend, Replace, Sequence
//   pre-tokenizers  ByteLevel, Split, Metaspace, WhitespaceSplit, Whitespace, Digits, Punctuation, Sequence
//   models          BPE (merges, byte_fallback, ignore_merges, unk_token, fuse_unk), WordLevel
//   post-processors TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence
//   decoders        ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, WordPiece, Sequence
// Regular expressions (Split, Replace) are PCRE2 in UTF + Unicode-property mode, which reads the patterns
// tokenizer.json files carry (`\p{L}`, `(?i:...)`, `(?!\S)`, possessive quantifiers).
//
//===----------------------------------------------------------------------===//
#include "Tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <queue>
#include <sstream>
#include <stdexcept>
#include <tuple>
#include <unordered_map>

namespace moert::text {
namespace {

using json = nlohmann::json;

/// A tokenizer.json the reader cannot use: the message names the component.
struct Unsupported : std::runtime_error {
  using std::runtime_error::runtime_error;
};

//===-- UTF-8 -------------------------------------------------------------===//

size_t charLen(unsigned char c) {
  return c < 0x80 ? 1 : c >> 5 == 6 ? 2 : c >> 4 == 14 ? 3 : c >> 3 == 30 ? 4 : 1;
}

/// The code point at s[i] (valid UTF-8) and its length.
char32_t codePoint(const std::string &s, size_t i, size_t &len) {
  const auto c = static_cast<unsigned char>(s[i]);
  len = std::min(charLen(c), s.size() - i);
  if (len == 1)
    return c;
  char32_t cp = c & (0x7f >> len);
  for (size_t k = 1; k < len; ++k)
    cp = cp << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  return cp;
}

void appendUtf8(std::string &out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xc0 | cp >> 6);
    out += char(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += char(0xe0 | cp >> 12);
    out += char(0x80 | (cp >> 6 & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  } else {
    out += char(0xf0 | cp >> 18);
    out += char(0x80 | (cp >> 12 & 0x3f));
    out += char(0x80 | (cp >> 6 & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  }
}

/// The offset of the first byte that is not valid UTF-8, or npos.
size_t invalidUtf8(const std::string &s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80                 ? 1
               : c >= 0xc2 && c <= 0xdf ? 2
               : c >= 0xe0 && c <= 0xef ? 3
               : c >= 0xf0 && c <= 0xf4 ? 4
                                        : 0;
    if (!n || i + n > s.size())
      return i;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80)
        return i;
    size_t len;
    const char32_t cp = codePoint(s, i, len);
    if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
      return i;
    i += n;
  }
  return std::string::npos;
}

/// Bytes as text: valid UTF-8 runs kept, each invalid byte U+FFFD (as Rust's from_utf8_lossy, per byte).
std::string lossyUtf8(const std::string &bytes) {
  std::string out;
  for (size_t i = 0; i < bytes.size();) {
    const std::string rest = bytes.substr(i, 4);
    const size_t bad = invalidUtf8(rest);
    const size_t n = charLen(static_cast<unsigned char>(bytes[i]));
    if (bad == 0 || (bad != std::string::npos && bad < n)) {
      appendUtf8(out, 0xfffd);
      ++i;
    } else {
      out.append(bytes, i, n);
      i += n;
    }
  }
  return out;
}

/// GPT-2's byte-level alphabet: each byte as a printable code point (the printable Latin-1 bytes as
/// themselves, the rest from U+0100 up, in byte order).
const std::array<char32_t, 256> &byteChars() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b)
      t[b] = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174 ? char32_t(b) : next++;
    return t;
  }();
  return table;
}

//===-- Patterns ----------------------------------------------------------===//

using Ranges = std::vector<std::pair<size_t, size_t>>;

/// `re` with `\w` / `\W` spelled as `tokenizers` reads them, where PCRE2 10.42's `\w` takes every number
/// (U+2460 CIRCLED DIGIT ONE) and no combining mark (NFD's accents). The Regex patterns of tokenizer.json
/// files go through Oniguruma: alphabetic characters, marks, decimal digits, connector punctuation, and (its
/// Latin-1 table) superscripts 1-3 and the vulgar fractions; Rust's regex crate, which the Whitespace
/// pre-tokenizer uses, takes ZWNJ / ZWJ instead of those (probed against `tokenizers`, check_tokenizer.py).
/// `\W` inside a bracket class stays PCRE2's.
enum class WordClass { Oniguruma, RustRegex };
std::string spellWords(const std::string &re, WordClass flavor) {
  static const std::string onig = R"(\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{B2}\x{B3}\x{B9}\x{BC}-\x{BE})",
                           rust = R"(\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D})";
  const std::string &word = flavor == WordClass::Oniguruma ? onig : rust;
  std::string out;
  int depth = 0; // inside a [...] class
  for (size_t i = 0; i < re.size(); ++i) {
    const char c = re[i];
    if (c == '\\' && i + 1 < re.size()) {
      const char e = re[++i];
      if (e == 'w')
        out += depth ? word : "[" + word + "]";
      else if (e == 'W' && !depth)
        out += "[^" + word + "]";
      else
        out += std::string(1, c) + e;
      continue;
    }
    if (c == '[')
      ++depth;
    else if (c == ']' && depth)
      --depth;
    out += c;
  }
  return out;
}

/// A tokenizer.json pattern: {"String": literal} or {"Regex": PCRE2-compatible expression}.
class Pattern {
public:
  explicit Pattern(const json &j, const std::string &where, WordClass words = WordClass::Oniguruma) {
    if (j.is_object() && j.contains("String") && j["String"].is_string()) {
      literal = j["String"].get<std::string>();
      return;
    }
    if (!j.is_object() || !j.contains("Regex") || !j["Regex"].is_string())
      throw Unsupported(where + ": pattern is neither {\"String\": ...} nor {\"Regex\": ...}");
    const std::string re = spellWords(j["Regex"].get<std::string>(), words);
    int code = 0;
    PCRE2_SIZE at = 0;
    regex.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(re.data()), re.size(), PCRE2_UTF | PCRE2_UCP,
                              &code, &at, nullptr));
    if (!regex) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(code, msg, sizeof msg);
      throw Unsupported(where + ": regex " + re + " at offset " + std::to_string(at) + ": " +
                        reinterpret_cast<const char *>(msg));
    }
  }

  /// Non-empty, non-overlapping matches, left to right.
  Ranges find(const std::string &s) const {
    Ranges out;
    if (!regex) {
      if (literal.empty())
        return out;
      for (size_t p = s.find(literal); p != std::string::npos; p = s.find(literal, p + literal.size()))
        out.emplace_back(p, p + literal.size());
      return out;
    }
    std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data *)> md(
        pcre2_match_data_create_from_pattern(regex.get(), nullptr), pcre2_match_data_free);
    for (size_t at = 0; at <= s.size();) {
      const int rc = pcre2_match(regex.get(), reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), at,
                                 PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH)
        break;
      if (rc < 0) { // a match limit, say: an error, not silently other tokens
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw std::runtime_error(std::string("a regular expression failed on the text: ") +
                                 reinterpret_cast<const char *>(msg));
      }
      const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md.get());
      if (ov[1] > ov[0]) {
        out.emplace_back(ov[0], ov[1]);
        at = ov[1];
      } else { // an empty match: step over one character
        if (ov[0] >= s.size())
          break;
        at = ov[0] + charLen(static_cast<unsigned char>(s[ov[0]]));
      }
    }
    return out;
  }

private:
  std::string literal;
  std::unique_ptr<pcre2_code, void (*)(pcre2_code *)> regex{nullptr, pcre2_code_free};
};

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior behaviorOf(const json &j, const std::string &where) {
  const std::string b = j.is_string() ? j.get<std::string>() : "";
  if (b == "Removed")
    return Behavior::Removed;
  if (b == "Isolated")
    return Behavior::Isolated;
  if (b == "MergedWithPrevious")
    return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext")
    return Behavior::MergedWithNext;
  if (b == "Contiguous")
    return Behavior::Contiguous;
  throw Unsupported(where + ": split behavior '" + b + "'");
}

/// Splits `s` at `matches` as `tokenizers` splits a string: every byte in a piece that is a match or the gap
/// between matches, then pieces merged by `b`; empty pieces dropped. Returns [begin, end) ranges.
Ranges splitAt(const std::string &s, const Ranges &matches, Behavior b, bool invert) {
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> parts;
  size_t at = 0;
  for (auto [m0, m1] : matches) {
    if (m0 > at)
      parts.push_back({{at, m0}, invert});
    parts.push_back({{m0, m1}, !invert});
    at = m1;
  }
  if (at < s.size())
    parts.push_back({{at, s.size()}, invert});
  Ranges out;
  bool previous = false;
  switch (b) {
  case Behavior::Removed:
    for (auto &[r, m] : parts)
      if (!m)
        out.push_back(r);
    break;
  case Behavior::Isolated:
    for (auto &[r, m] : parts)
      out.push_back(r);
    break;
  case Behavior::MergedWithPrevious:
    for (auto &[r, m] : parts) {
      if (m && !previous && !out.empty())
        out.back().second = r.second;
      else
        out.push_back(r);
      previous = m;
    }
    break;
  case Behavior::MergedWithNext:
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
      if (it->second && !previous && !out.empty())
        out.back().first = it->first.first;
      else
        out.push_back(it->first);
      previous = it->second;
    }
    std::reverse(out.begin(), out.end());
    break;
  case Behavior::Contiguous:
    for (auto &[r, m] : parts) {
      if (m == previous && !out.empty())
        out.back().second = r.second;
      else
        out.push_back(r);
      previous = m;
    }
    break;
  }
  out.erase(std::remove_if(out.begin(), out.end(), [](auto &r) { return r.first == r.second; }), out.end());
  return out;
}

/// Ranges of the characters of `s` for which `pred(code point)` holds.
template <class P> Ranges charMatches(const std::string &s, P pred) {
  Ranges out;
  for (size_t i = 0, len = 0; i < s.size(); i += len)
    if (pred(codePoint(s, i, len)))
      out.emplace_back(i, i + len);
  return out;
}

std::string str(const json &j, const char *key, const std::string &def = "") {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : def;
}
bool flag(const json &j, const char *key, bool def) {
  return j.contains(key) && j[key].is_boolean() ? j[key].get<bool>() : def;
}
std::string typeOf(const json &j) { return j.is_object() ? str(j, "type") : ""; }

//===-- Normalizers -------------------------------------------------------===//

struct Normalizer {
  virtual ~Normalizer() = default;
  virtual std::string apply(const std::string &s) const = 0;
};

struct UnicodeForm : Normalizer {
  const icu::Normalizer2 *n = nullptr;
  explicit UnicodeForm(const std::string &form) {
    UErrorCode e = U_ZERO_ERROR;
    n = form == "NFC"    ? icu::Normalizer2::getNFCInstance(e)
        : form == "NFD"  ? icu::Normalizer2::getNFDInstance(e)
        : form == "NFKC" ? icu::Normalizer2::getNFKCInstance(e)
                         : icu::Normalizer2::getNFKDInstance(e);
    if (U_FAILURE(e) || !n)
      throw Unsupported("normalizer " + form + ": ICU has no such normalization");
  }
  std::string apply(const std::string &s) const override {
    UErrorCode e = U_ZERO_ERROR;
    icu::UnicodeString u = n->normalize(icu::UnicodeString::fromUTF8(s), e);
    std::string out;
    return U_SUCCESS(e) ? u.toUTF8String(out) : s;
  }
};

struct Lowercase : Normalizer {
  std::string apply(const std::string &s) const override {
    std::string out;
    return icu::UnicodeString::fromUTF8(s).toLower(icu::Locale::getRoot()).toUTF8String(out);
  }
};

struct Strip : Normalizer {
  bool left, right;
  Strip(bool l, bool r) : left(l), right(r) {}
  std::string apply(const std::string &s) const override {
    size_t b = 0, e = s.size(), len = 0;
    while (left && b < e && u_isUWhiteSpace(codePoint(s, b, len)))
      b += len;
    while (right && e > b) {
      size_t p = e - 1;
      while (p > b && (static_cast<unsigned char>(s[p]) & 0xc0) == 0x80)
        --p;
      if (!u_isUWhiteSpace(codePoint(s, p, len)))
        break;
      e = p;
    }
    return s.substr(b, e - b);
  }
};

struct Prepend : Normalizer {
  std::string text;
  explicit Prepend(std::string t) : text(std::move(t)) {}
  std::string apply(const std::string &s) const override { return s.empty() ? s : text + s; }
};

struct Replace : Normalizer {
  Pattern pattern;
  std::string content;
  Replace(const json &j, const std::string &where)
      : pattern(j.at("pattern"), where), content(str(j, "content")) {}
  std::string apply(const std::string &s) const override {
    std::string out;
    size_t at = 0;
    for (auto [b, e] : pattern.find(s)) {
      out.append(s, at, b - at);
      out += content;
      at = e;
    }
    return out.append(s, at, std::string::npos);
  }
};

struct NormalizerSequence : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> steps;
  std::string apply(const std::string &s) const override {
    std::string t = s;
    for (const auto &n : steps)
      t = n->apply(t);
    return t;
  }
};

std::unique_ptr<Normalizer> makeNormalizer(const json &j) {
  if (j.is_null())
    return nullptr;
  const std::string t = typeOf(j);
  if (t == "NFC" || t == "NFD" || t == "NFKC" || t == "NFKD")
    return std::make_unique<UnicodeForm>(t);
  if (t == "Lowercase")
    return std::make_unique<Lowercase>();
  if (t == "Strip")
    return std::make_unique<Strip>(flag(j, "strip_left", true), flag(j, "strip_right", true));
  if (t == "Prepend")
    return std::make_unique<Prepend>(str(j, "prepend"));
  if (t == "Replace")
    return std::make_unique<Replace>(j, "normalizer Replace");
  if (t == "Sequence") {
    auto seq = std::make_unique<NormalizerSequence>();
    for (const auto &n : j.at("normalizers"))
      if (auto step = makeNormalizer(n))
        seq->steps.push_back(std::move(step));
    return seq;
  }
  throw Unsupported("normalizer '" + t + "' is not supported");
}

//===-- Pre-tokenizers ----------------------------------------------------===//

/// One piece of the text on its way to the model; `atStart`: it begins at the start of the input (Metaspace's
/// prepend_scheme "first"); `id` >= 0: an added token, already its id.
struct Piece {
  std::string text;
  bool atStart = false;
  int64_t id = -1;
};

struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  /// Splits (or rewrites) each piece that is not an added token yet.
  virtual void apply(std::vector<Piece> &pieces) const = 0;
  /// Helper: replaces each open piece by the ranges `split(text)` gives of it.
  template <class F> static void splitEach(std::vector<Piece> &pieces, F split) {
    std::vector<Piece> out;
    for (Piece &p : pieces) {
      if (p.id >= 0) {
        out.push_back(std::move(p));
        continue;
      }
      Ranges rs = split(p);
      for (auto [b, e] : rs)
        out.push_back({p.text.substr(b, e - b), p.atStart && b == 0, -1});
    }
    pieces = std::move(out);
  }
};

constexpr const char *kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct ByteLevelPre : PreTokenizer {
  bool addPrefixSpace, useRegex;
  Pattern gpt2{json{{"Regex", kGpt2Regex}}, "pre-tokenizer ByteLevel"};
  ByteLevelPre(bool prefix, bool regex) : addPrefixSpace(prefix), useRegex(regex) {}
  void apply(std::vector<Piece> &pieces) const override {
    splitEach(pieces, [&](Piece &p) {
      if (addPrefixSpace && (p.text.empty() || p.text[0] != ' '))
        p.text.insert(0, 1, ' ');
      return useRegex ? splitAt(p.text, gpt2.find(p.text), Behavior::Isolated, false)
                      : Ranges{{0, p.text.size()}};
    });
    const auto &table = byteChars();
    for (Piece &p : pieces)
      if (p.id < 0) {
        std::string mapped;
        for (unsigned char c : p.text)
          appendUtf8(mapped, table[c]);
        p.text = std::move(mapped);
      }
  }
};

struct SplitPre : PreTokenizer {
  Pattern pattern;
  Behavior behavior;
  bool invert;
  explicit SplitPre(const json &j)
      : pattern(j.at("pattern"), "pre-tokenizer Split"),
        behavior(behaviorOf(j.at("behavior"), "pre-tokenizer Split")), invert(flag(j, "invert", false)) {}
  void apply(std::vector<Piece> &pieces) const override {
    splitEach(pieces, [&](Piece &p) { return splitAt(p.text, pattern.find(p.text), behavior, invert); });
  }
};

struct MetaspacePre : PreTokenizer {
  std::string replacement;
  enum { Always, First, Never } scheme;
  bool split;
  MetaspacePre(std::string r, const std::string &s, bool sp)
      : replacement(std::move(r)), scheme(s == "first"   ? First
                                          : s == "never" ? Never
                                                         : Always),
        split(sp) {}
  void apply(std::vector<Piece> &pieces) const override {
    splitEach(pieces, [&](Piece &p) {
      std::string t;
      for (char c : p.text)
        t += c == ' ' ? replacement : std::string(1, c);
      if ((scheme == Always || (scheme == First && p.atStart)) &&
          t.compare(0, replacement.size(), replacement))
        t.insert(0, replacement);
      p.text = std::move(t);
      if (!split)
        return Ranges{{0, p.text.size()}};
      Ranges at;
      for (size_t q = p.text.find(replacement); q != std::string::npos;
           q = p.text.find(replacement, q + replacement.size()))
        at.emplace_back(q, q + replacement.size());
      return splitAt(p.text, at, Behavior::MergedWithNext, false);
    });
  }
};

struct WhitespaceSplitPre : PreTokenizer {
  void apply(std::vector<Piece> &pieces) const override {
    splitEach(pieces, [](Piece &p) {
      return splitAt(p.text, charMatches(p.text, [](char32_t c) { return u_isUWhiteSpace(c); }),
                     Behavior::Removed, false);
    });
  }
};

struct WhitespacePre : PreTokenizer {
  Pattern words{json{{"Regex", R"(\w+|[^\w\s]+)"}}, "pre-tokenizer Whitespace", WordClass::RustRegex};
  void apply(std::vector<Piece> &pieces) const override {
    splitEach(pieces, [&](Piece &p) { return splitAt(p.text, words.find(p.text), Behavior::Removed, true); });
  }
};

struct DigitsPre : PreTokenizer {
  bool individual;
  explicit DigitsPre(bool i) : individual(i) {}
  void apply(std::vector<Piece> &pieces) const override {
    splitEach(pieces, [&](Piece &p) {
      auto numeric = [](char32_t c) { // Rust's char::is_numeric: Nd, Nl, No
        const int8_t t = u_charType(c);
        return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
      };
      return splitAt(p.text, charMatches(p.text, numeric),
                     individual ? Behavior::Isolated : Behavior::Contiguous, false);
    });
  }
};

struct PunctuationPre : PreTokenizer {
  Behavior behavior;
  explicit PunctuationPre(Behavior b) : behavior(b) {}
  void apply(std::vector<Piece> &pieces) const override {
    splitEach(pieces, [&](Piece &p) {
      auto punct = [](char32_t c) { return (c < 128 && std::ispunct(int(c))) || u_ispunct(c); };
      return splitAt(p.text, charMatches(p.text, punct), behavior, false);
    });
  }
};

struct PreTokenizerSequence : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  void apply(std::vector<Piece> &pieces) const override {
    for (const auto &s : steps)
      s->apply(pieces);
  }
};

std::string prependScheme(const json &j) {
  if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string())
    return j["prepend_scheme"].get<std::string>();
  return flag(j, "add_prefix_space", true) ? "always" : "never"; // the older field
}

std::unique_ptr<PreTokenizer> makePreTokenizer(const json &j) {
  if (j.is_null())
    return nullptr;
  const std::string t = typeOf(j);
  if (t == "ByteLevel")
    return std::make_unique<ByteLevelPre>(flag(j, "add_prefix_space", true), flag(j, "use_regex", true));
  if (t == "Split")
    return std::make_unique<SplitPre>(j);
  if (t == "Metaspace")
    return std::make_unique<MetaspacePre>(str(j, "replacement", "\xe2\x96\x81"), prependScheme(j),
                                          flag(j, "split", true));
  if (t == "WhitespaceSplit")
    return std::make_unique<WhitespaceSplitPre>();
  if (t == "Whitespace")
    return std::make_unique<WhitespacePre>();
  if (t == "Digits")
    return std::make_unique<DigitsPre>(flag(j, "individual_digits", false));
  if (t == "Punctuation")
    return std::make_unique<PunctuationPre>(
        j.contains("behavior") ? behaviorOf(j["behavior"], "pre-tokenizer Punctuation") : Behavior::Isolated);
  if (t == "Sequence") {
    auto seq = std::make_unique<PreTokenizerSequence>();
    for (const auto &p : j.at("pretokenizers"))
      if (auto step = makePreTokenizer(p))
        seq->steps.push_back(std::move(step));
    return seq;
  }
  throw Unsupported("pre-tokenizer '" + t + "' is not supported");
}

//===-- Models ------------------------------------------------------------===//

struct Model {
  std::unordered_map<std::string, int64_t> vocab;
  std::unordered_map<int64_t, std::string> tokens; // id -> token
  virtual ~Model() = default;
  virtual void tokenize(const std::string &piece, std::vector<int64_t> &out) const = 0;
  void readVocab(const json &v, const char *what) {
    if (!v.is_object())
      throw Unsupported(std::string("model ") + what + ": vocab is not an object of token -> id");
    vocab.reserve(v.size());
    tokens.reserve(v.size());
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0)
        throw Unsupported(std::string("model ") + what + ": vocab entry '" + it.key() + "' has no id");
      vocab[it.key()] = it.value().get<int64_t>();
      tokens[it.value().get<int64_t>()] = it.key();
    }
  }
};

struct WordLevel : Model {
  std::optional<int64_t> unk;
  explicit WordLevel(const json &j) {
    readVocab(j.at("vocab"), "WordLevel");
    if (auto u = vocab.find(str(j, "unk_token")); u != vocab.end())
      unk = u->second;
  }
  void tokenize(const std::string &piece, std::vector<int64_t> &out) const override {
    if (auto it = vocab.find(piece); it != vocab.end())
      out.push_back(it->second);
    else if (unk)
      out.push_back(*unk);
    else
      throw std::runtime_error("the word '" + piece + "' is not in the vocabulary and it has no unk_token");
  }
};

struct Bpe : Model {
  std::unordered_map<uint64_t, std::pair<int64_t, int64_t>> merges; // (left, right) -> (rank, merged id)
  std::optional<int64_t> unk;
  bool byteFallback, fuseUnk, ignoreMerges;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache;

  explicit Bpe(const json &j)
      : byteFallback(flag(j, "byte_fallback", false)), fuseUnk(flag(j, "fuse_unk", false)),
        ignoreMerges(flag(j, "ignore_merges", false)) {
    readVocab(j.at("vocab"), "BPE");
    for (const char *key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (j.contains(key) && !j[key].is_null() && !(j[key].is_string() && j[key].get<std::string>().empty()))
        throw Unsupported(std::string("model BPE: ") + key + " is not supported");
    if (j.contains("dropout") && !j["dropout"].is_null() && j["dropout"].is_number() &&
        j["dropout"].get<double>() > 0)
      throw Unsupported("model BPE: dropout is not supported (encoding would not be deterministic)");
    if (auto u = vocab.find(str(j, "unk_token")); u != vocab.end())
      unk = u->second;
    const json &m = j.at("merges");
    merges.reserve(m.size());
    for (size_t r = 0; r < m.size(); ++r) {
      std::string a, b;
      if (m[r].is_string()) { // "left right"
        const std::string s = m[r].get<std::string>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos)
          throw Unsupported("model BPE: merge " + std::to_string(r) + " '" + s + "' is not two tokens");
        a = s.substr(0, sp), b = s.substr(sp + 1);
      } else if (m[r].is_array() && m[r].size() == 2 && m[r][0].is_string() && m[r][1].is_string()) {
        a = m[r][0].get<std::string>(), b = m[r][1].get<std::string>();
      } else {
        throw Unsupported("model BPE: merge " + std::to_string(r) + " is not a pair of tokens");
      }
      auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(a + b);
      if (ia == vocab.end() || ib == vocab.end() || iab == vocab.end())
        throw Unsupported("model BPE: merge " + std::to_string(r) + " ('" + a + "', '" + b +
                          "') names a token the vocab lacks");
      merges.emplace(key(ia->second, ib->second), std::make_pair(int64_t(r), iab->second));
    }
  }
  static uint64_t key(int64_t a, int64_t b) { return uint64_t(a) << 32 | uint64_t(uint32_t(b)); }

  /// Merges the adjacent pair of the lowest rank (the leftmost of equals) until none is left: a heap of
  /// candidate pairs over a linked list of symbols, so a long piece (a whole SentencePiece-style prompt is
  /// one) takes O(n log n), not a scan per merge.
  void mergeAll(std::vector<int64_t> &ids) const {
    const int n = static_cast<int>(ids.size());
    if (n < 2)
      return;
    std::vector<int> next(n), prev(n);
    std::vector<bool> alive(n, true);
    for (int i = 0; i < n; ++i)
      next[i] = i + 1, prev[i] = i - 1;
    using Cand = std::tuple<int64_t, int, int64_t>; // (rank, left position, the pair's key when pushed)
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](int i) {
      if (i < 0 || next[i] >= n)
        return;
      const uint64_t k = key(ids[i], ids[next[i]]);
      if (auto m = merges.find(k); m != merges.end())
        heap.emplace(m->second.first, i, int64_t(k));
    };
    for (int i = 0; i + 1 < n; ++i)
      push(i);
    while (!heap.empty()) {
      auto [rank, i, k] = heap.top();
      heap.pop();
      // Stale: a side was merged away or changed since the pair was pushed.
      if (!alive[i] || next[i] >= n || int64_t(key(ids[i], ids[next[i]])) != k)
        continue;
      const int j = next[i];
      ids[i] = merges.at(uint64_t(k)).second;
      alive[j] = false;
      next[i] = next[j];
      if (next[j] < n)
        prev[next[j]] = i;
      push(prev[i]);
      push(i);
    }
    std::vector<int64_t> out;
    for (int i = 0; i < n; i = next[i])
      out.push_back(ids[i]);
    ids = std::move(out);
  }

  void tokenize(const std::string &piece, std::vector<int64_t> &out) const override {
    if (auto c = cache.find(piece); c != cache.end()) {
      out.insert(out.end(), c->second.begin(), c->second.end());
      return;
    }
    std::vector<int64_t> ids;
    if (auto w = vocab.find(piece); ignoreMerges && w != vocab.end()) {
      ids.push_back(w->second);
    } else {
      bool lastUnk = false;
      for (size_t i = 0, len = 0; i < piece.size(); i += len) {
        len = std::min(charLen(static_cast<unsigned char>(piece[i])), piece.size() - i);
        const std::string ch = piece.substr(i, len);
        if (auto it = vocab.find(ch); it != vocab.end()) {
          ids.push_back(it->second);
          lastUnk = false;
          continue;
        }
        if (byteFallback) {
          std::vector<int64_t> bytes;
          for (unsigned char c : ch) {
            char name[8];
            std::snprintf(name, sizeof name, "<0x%02X>", c);
            auto it = vocab.find(name);
            if (it == vocab.end())
              break;
            bytes.push_back(it->second);
          }
          if (bytes.size() == ch.size()) {
            ids.insert(ids.end(), bytes.begin(), bytes.end());
            lastUnk = false;
            continue;
          }
        }
        if (unk && !(fuseUnk && lastUnk))
          ids.push_back(*unk);
        lastUnk = unk.has_value();
      }
      mergeAll(ids);
    }
    if (cache.size() < 100000)
      cache.emplace(piece, ids);
    out.insert(out.end(), ids.begin(), ids.end());
  }
};

std::unique_ptr<Model> makeModel(const json &j) {
  std::string t = typeOf(j);
  if (t.empty() && j.is_object() && j.contains("merges"))
    t = "BPE"; // older files leave the type out
  if (t == "BPE")
    return std::make_unique<Bpe>(j);
  if (t == "WordLevel")
    return std::make_unique<WordLevel>(j);
  throw Unsupported("model '" + t + "' is not supported (BPE and WordLevel are)");
}

//===-- Post-processors ---------------------------------------------------===//

struct PostProcessor {
  virtual ~PostProcessor() = default;
  virtual void apply(std::vector<int64_t> &ids) const = 0;
};

/// Special tokens before and after the sequence ($A), as TemplateProcessing's "single" template (and the
/// Roberta / Bert processors) add them.
struct Wrap : PostProcessor {
  std::vector<int64_t> before, after;
  void apply(std::vector<int64_t> &ids) const override {
    ids.insert(ids.begin(), before.begin(), before.end());
    ids.insert(ids.end(), after.begin(), after.end());
  }
};

struct PostSequence : PostProcessor {
  std::vector<std::unique_ptr<PostProcessor>> steps;
  void apply(std::vector<int64_t> &ids) const override {
    for (const auto &s : steps)
      s->apply(ids);
  }
};

std::unique_ptr<PostProcessor> makePostProcessor(const json &j) {
  if (j.is_null())
    return nullptr;
  const std::string t = typeOf(j);
  if (t == "ByteLevel")
    return nullptr; // offsets only
  if (t == "TemplateProcessing") {
    auto w = std::make_unique<Wrap>();
    bool seen = false;
    for (const auto &item : j.at("single")) {
      if (item.contains("Sequence")) {
        if (seen || str(item["Sequence"], "id") != "A")
          throw Unsupported("post-processor TemplateProcessing: a single-sequence template other than "
                            "[special tokens] $A [special tokens]");
        seen = true;
      } else if (item.contains("SpecialToken")) {
        const std::string name = str(item["SpecialToken"], "id");
        const json &sp = j.at("special_tokens");
        if (!sp.contains(name) || !sp[name].contains("ids") || !sp[name]["ids"].is_array())
          throw Unsupported("post-processor TemplateProcessing: special token '" + name + "' has no ids");
        for (const auto &id : sp[name]["ids"])
          (seen ? w->after : w->before).push_back(id.get<int64_t>());
      } else {
        throw Unsupported("post-processor TemplateProcessing: template item " + item.dump());
      }
    }
    return w;
  }
  if (t == "RobertaProcessing" || t == "BertProcessing") {
    auto w = std::make_unique<Wrap>();
    w->before.push_back(j.at("cls").at(1).get<int64_t>());
    w->after.push_back(j.at("sep").at(1).get<int64_t>());
    return w;
  }
  if (t == "Sequence") {
    auto seq = std::make_unique<PostSequence>();
    for (const auto &p : j.at("processors"))
      if (auto step = makePostProcessor(p))
        seq->steps.push_back(std::move(step));
    return seq;
  }
  throw Unsupported("post-processor '" + t + "' is not supported");
}

//===-- Decoders ----------------------------------------------------------===//

struct Decoder {
  virtual ~Decoder() = default;
  virtual void apply(std::vector<std::string> &tokens) const = 0;
};

struct ByteLevelDec : Decoder {
  std::unordered_map<char32_t, unsigned char> back;
  ByteLevelDec() {
    const auto &t = byteChars();
    for (int b = 0; b < 256; ++b)
      back[t[b]] = static_cast<unsigned char>(b);
  }
  void apply(std::vector<std::string> &tokens) const override {
    std::string bytes;
    for (const std::string &t : tokens) {
      std::string mine; // the token's bytes when every character is one of the alphabet's, else its text
      bool all = true;
      for (size_t i = 0, len = 0; i < t.size() && all; i += len) {
        auto it = back.find(codePoint(t, i, len));
        if (it == back.end())
          all = false;
        else
          mine += char(it->second);
      }
      bytes += all ? mine : t;
    }
    tokens = {lossyUtf8(bytes)};
  }
};

struct ReplaceDec : Decoder {
  Replace r;
  explicit ReplaceDec(const json &j) : r(j, "decoder Replace") {}
  void apply(std::vector<std::string> &tokens) const override {
    for (std::string &t : tokens)
      t = r.apply(t);
  }
};

struct ByteFallbackDec : Decoder {
  void apply(std::vector<std::string> &tokens) const override {
    std::vector<std::string> out;
    std::string bytes;
    auto flush = [&] {
      if (bytes.empty())
        return;
      if (invalidUtf8(bytes) == std::string::npos) {
        out.push_back(bytes);
      } else {
        for (size_t i = 0; i < bytes.size(); ++i)
          out.push_back("\xef\xbf\xbd");
      }
      bytes.clear();
    };
    for (const std::string &t : tokens) {
      unsigned b;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(t[3]) &&
          std::isxdigit(t[4]) && std::sscanf(t.c_str() + 3, "%2x", &b) == 1) {
        bytes += char(b);
        continue;
      }
      flush();
      out.push_back(t);
    }
    flush();
    tokens = std::move(out);
  }
};

struct FuseDec : Decoder {
  void apply(std::vector<std::string> &tokens) const override {
    std::string all;
    for (const std::string &t : tokens)
      all += t;
    tokens = {all};
  }
};

struct StripDec : Decoder {
  std::string content;
  size_t start, stop;
  StripDec(std::string c, size_t b, size_t e) : content(std::move(c)), start(b), stop(e) {}
  void apply(std::vector<std::string> &tokens) const override {
    for (std::string &t : tokens) {
      size_t b = 0, e = t.size();
      for (size_t k = 0; k < start && e - b >= content.size() && !t.compare(b, content.size(), content); ++k)
        b += content.size();
      for (size_t k = 0;
           k < stop && e - b >= content.size() && !t.compare(e - content.size(), content.size(), content);
           ++k)
        e -= content.size();
      t = t.substr(b, e - b);
    }
  }
};

struct MetaspaceDec : Decoder {
  std::string replacement;
  bool prepend;
  MetaspaceDec(std::string r, bool p) : replacement(std::move(r)), prepend(p) {}
  void apply(std::vector<std::string> &tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string &t = tokens[i];
      for (size_t k = 0; k < t.size();) {
        if (!t.compare(k, replacement.size(), replacement)) {
          out += ' ';
          k += replacement.size();
        } else {
          out += t[k++];
        }
      }
      if (i == 0 && prepend && !out.empty() && out[0] == ' ')
        out.erase(0, 1);
      tokens[i] = std::move(out);
    }
  }
};

struct WordPieceDec : Decoder {
  std::string prefix;
  bool cleanup;
  WordPieceDec(std::string p, bool c) : prefix(std::move(p)), cleanup(c) {}
  static void replaceAll(std::string &s, const std::string &from, const std::string &to) {
    for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size()))
      s.replace(p, from.size(), to);
  }
  void apply(std::vector<std::string> &tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string &t = tokens[i];
      if (i != 0) {
        if (!t.compare(0, prefix.size(), prefix))
          t.erase(0, prefix.size());
        else
          t.insert(0, 1, ' ');
      }
      if (cleanup) // as tokenizers' cleanup of tokenization spaces
        for (auto [from, to] : {std::pair<const char *, const char *>{" .", "."},
                                {" ?", "?"},
                                {" !", "!"},
                                {" ,", ","},
                                {" ' ", "'"},
                                {" n't", "n't"},
                                {" 'm", "'m"},
                                {" do not", " don't"},
                                {" 's", "'s"},
                                {" 've", "'ve"},
                                {" 're", "'re"}})
          replaceAll(t, from, to);
    }
  }
};

struct DecoderSequence : Decoder {
  std::vector<std::unique_ptr<Decoder>> steps;
  void apply(std::vector<std::string> &tokens) const override {
    for (const auto &s : steps)
      s->apply(tokens);
  }
};

std::unique_ptr<Decoder> makeDecoder(const json &j) {
  if (j.is_null())
    return nullptr;
  const std::string t = typeOf(j);
  if (t == "ByteLevel")
    return std::make_unique<ByteLevelDec>();
  if (t == "Replace")
    return std::make_unique<ReplaceDec>(j);
  if (t == "ByteFallback")
    return std::make_unique<ByteFallbackDec>();
  if (t == "Fuse")
    return std::make_unique<FuseDec>();
  if (t == "Strip")
    return std::make_unique<StripDec>(str(j, "content", " "), j.value("start", size_t(0)),
                                      j.value("stop", size_t(0)));
  if (t == "Metaspace")
    return std::make_unique<MetaspaceDec>(str(j, "replacement", "\xe2\x96\x81"), prependScheme(j) != "never");
  if (t == "WordPiece")
    return std::make_unique<WordPieceDec>(str(j, "prefix", "##"), flag(j, "cleanup", true));
  if (t == "Sequence") {
    auto seq = std::make_unique<DecoderSequence>();
    for (const auto &d : j.at("decoders"))
      if (auto step = makeDecoder(d))
        seq->steps.push_back(std::move(step));
    return seq;
  }
  throw Unsupported("decoder '" + t + "' is not supported");
}

struct AddedToken {
  std::string content, matched; ///< matched: the content as the text holds it (normalized when `normalized`)
  int64_t id = 0;
  bool special = false, lstrip = false, rstrip = false, singleWord = false, normalized = false;
};

bool isWordChar(char32_t c) { return u_isalnum(c) || c == '_'; }

} // namespace

struct Tokenizer::Impl {
  std::string path;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> preTokenizer;
  std::unique_ptr<Model> model;
  std::unique_ptr<PostProcessor> post;
  std::unique_ptr<Decoder> decoder;
  std::vector<AddedToken> added;
  std::unordered_map<int64_t, size_t> addedById;
  /// The added tokens each pass tries at a position, by the first byte they match: [normalized][byte].
  std::array<std::array<std::vector<size_t>, 256>, 2> byFirst;

  /// Splits each open piece at the added tokens whose `normalized` flag is `normalizedPass` (leftmost, then
  /// longest; lstrip / rstrip take the whitespace beside a match along; single_word needs word boundaries).
  void splitAdded(std::vector<Piece> &pieces, bool normalizedPass) const {
    std::vector<Piece> out;
    for (Piece &p : pieces) {
      if (p.id >= 0) {
        out.push_back(std::move(p));
        continue;
      }
      const std::string &s = p.text;
      size_t at = 0, emitted = 0;
      while (at < s.size()) {
        const AddedToken *best = nullptr;
        for (size_t k : byFirst[normalizedPass][static_cast<unsigned char>(s[at])])
          if (const AddedToken &t = added[k]; !s.compare(at, t.matched.size(), t.matched) &&
                                              (!best || t.matched.size() > best->matched.size())) {
            if (t.singleWord) {
              size_t len;
              bool before = at > 0 && [&] {
                size_t q = at - 1;
                while (q > 0 && (static_cast<unsigned char>(s[q]) & 0xc0) == 0x80)
                  --q;
                return isWordChar(codePoint(s, q, len));
              }();
              const size_t end = at + t.matched.size();
              bool after = end < s.size() && isWordChar(codePoint(s, end, len));
              if (before || after)
                continue;
            }
            best = &t;
          }
        if (!best) {
          at += charLen(static_cast<unsigned char>(s[at]));
          continue;
        }
        size_t b = at, e = at + best->matched.size(), len = 0;
        while (best->lstrip && b > emitted) { // whitespace as Unicode says (Rust's char::is_whitespace)
          size_t q = b - 1;
          while (q > emitted && (static_cast<unsigned char>(s[q]) & 0xc0) == 0x80)
            --q;
          if (!u_isUWhiteSpace(codePoint(s, q, len)))
            break;
          b = q;
        }
        while (best->rstrip && e < s.size() && u_isUWhiteSpace(codePoint(s, e, len)))
          e += len;
        if (b > emitted)
          out.push_back({s.substr(emitted, b - emitted), p.atStart && emitted == 0, -1});
        out.push_back({s.substr(b, e - b), false, best->id});
        emitted = at = e;
      }
      if (emitted < s.size())
        out.push_back({s.substr(emitted), p.atStart && emitted == 0, -1});
    }
    pieces = std::move(out);
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> i) : impl(std::move(i)) {}
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string &path, std::string &err) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    err = path + ": cannot open the tokenizer";
    return nullptr;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path, err);
}

std::unique_ptr<Tokenizer> Tokenizer::parse(const std::string &text, const std::string &path,
                                            std::string &err, bool *isJson) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (isJson)
    *isJson = !j.is_discarded() && j.is_object();
  if (j.is_discarded() || !j.is_object()) {
    err = path + ": not a tokenizer.json (not a JSON object)";
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  try {
    if (!j.contains("model"))
      throw Unsupported("no model");
    impl->normalizer = makeNormalizer(j.value("normalizer", json()));
    impl->preTokenizer = makePreTokenizer(j.value("pre_tokenizer", json()));
    impl->model = makeModel(j["model"]);
    impl->post = makePostProcessor(j.value("post_processor", json()));
    impl->decoder = makeDecoder(j.value("decoder", json()));
    if (j.contains("truncation") && !j["truncation"].is_null())
      throw Unsupported("truncation is set (moert does not truncate prompts)");
    for (const auto &a : j.value("added_tokens", json::array())) {
      AddedToken t;
      t.content = a.at("content").get<std::string>();
      t.id = a.at("id").get<int64_t>();
      t.special = flag(a, "special", false);
      t.lstrip = flag(a, "lstrip", false);
      t.rstrip = flag(a, "rstrip", false);
      t.singleWord = flag(a, "single_word", false);
      t.normalized = flag(a, "normalized", !t.special);
      t.matched = t.normalized && impl->normalizer ? impl->normalizer->apply(t.content) : t.content;
      impl->addedById[t.id] = impl->added.size();
      if (!t.matched.empty())
        impl->byFirst[t.normalized][static_cast<unsigned char>(t.matched[0])].push_back(impl->added.size());
      impl->added.push_back(std::move(t));
    }
  } catch (const Unsupported &e) {
    err = path + ": " + e.what();
    return nullptr;
  } catch (const std::exception &e) { // a field of the wrong type or missing
    err = path + ": not a tokenizer.json moert can read (" + e.what() + ")";
    return nullptr;
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

bool Tokenizer::encode(const std::string &text, bool addSpecial, std::vector<int64_t> &ids,
                       std::string &err) const {
  if (size_t bad = invalidUtf8(text); bad != std::string::npos) {
    err = "the text is not valid UTF-8 (byte " + std::to_string(bad) + ")";
    return false;
  }
  const Impl &m = *impl;
  try {
    std::vector<Piece> pieces{{text, true, -1}};
    m.splitAdded(pieces, false);
    for (Piece &p : pieces)
      if (p.id < 0 && m.normalizer)
        p.text = m.normalizer->apply(p.text);
    m.splitAdded(pieces, true);
    if (m.preTokenizer)
      m.preTokenizer->apply(pieces);
    ids.clear();
    for (const Piece &p : pieces)
      if (p.id >= 0)
        ids.push_back(p.id);
      else if (!p.text.empty())
        m.model->tokenize(p.text, ids);
    if (addSpecial && m.post)
      m.post->apply(ids);
  } catch (const std::exception &e) {
    err = m.path + ": " + e.what();
    return false;
  }
  return true;
}

bool Tokenizer::decode(const std::vector<int64_t> &ids, bool skipSpecial, std::string &text,
                       std::string &err) const {
  const Impl &m = *impl;
  std::vector<std::string> tokens;
  for (int64_t id : ids) {
    if (auto a = m.addedById.find(id); a != m.addedById.end()) {
      if (!(skipSpecial && m.added[a->second].special))
        tokens.push_back(m.added[a->second].content);
    } else if (auto t = m.model->tokens.find(id); t != m.model->tokens.end()) {
      tokens.push_back(t->second);
    }
  }
  try {
    if (m.decoder) {
      m.decoder->apply(tokens);
      text.clear();
      for (const std::string &t : tokens)
        text += t;
    } else { // no decoder: the tokens joined by spaces
      text.clear();
      for (size_t i = 0; i < tokens.size(); ++i)
        text += (i ? " " : "") + tokens[i];
    }
  } catch (const std::exception &e) {
    err = m.path + ": " + e.what();
    return false;
  }
  return true;
}

bool Tokenizer::encodeJsonLines(const std::string &in, bool addSpecial, std::string &out,
                                std::string &err) const {
  std::istringstream lines(in);
  std::string line;
  for (size_t n = 1; std::getline(lines, line); ++n) {
    if (line.empty())
      continue;
    json text = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (text.is_discarded() || !text.is_string()) {
      err = "line " + std::to_string(n) + " is not a JSON string";
      return false;
    }
    std::vector<int64_t> ids;
    std::string decoded;
    if (!encode(text.get<std::string>(), addSpecial, ids, err) || !decode(ids, true, decoded, err)) {
      err = "line " + std::to_string(n) + ": " + err;
      return false;
    }
    out +=
        json{{"ids", ids}, {"decoded", decoded}}.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  }
  return true;
}

} // namespace moert::text
