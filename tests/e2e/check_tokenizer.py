#!/usr/bin/env python3
"""moert's tokenizer.json reader (tools/moert/Tokenizer.cpp, `moert tokenize`, `moert generate --prompt`) against
Hugging Face's `tokenizers`, the library that writes those files.

Tokenizers trained here with `tokenizers` on a generated corpus, one per family of pipelines models ship:
  - gpt2: byte-level BPE (ByteLevel pre-tokenizer with GPT-2's regex, ByteLevel decoder), <|endoftext|>;
  - llama3: NFC, Split(Llama-3's regex, isolated) + ByteLevel without regex, ignore_merges, a BOS added by a
    TemplateProcessing post-processor, special and non-special added tokens (lstrip / rstrip / single_word);
  - sentencepiece: Llama-2 / Mistral style: Prepend + Replace normalizers, BPE with byte fallback (<0xXX> in the
    vocab) and fused unknowns, Replace / ByteFallback / Fuse / Strip decoders, <s> added;
  - metaspace: a Metaspace pre-tokenizer (prepend_scheme first, split) and decoder, byte fallback;
  - mixed: NFKC + Lowercase + Strip, Whitespace + Digits + Punctuation, a WordPiece decoder;
  - wordlevel: WordLevel with WhitespaceSplit (the generate test's tokenizer).
For each, 300 strings (words, numbers, punctuation, tabs / newlines / runs of spaces, accented and combining
characters, CJK, emoji, the special tokens inside text) go through `moert tokenize --jsonl`: the ids must equal
`Tokenizer.encode(s).ids` and the decoded text `Tokenizer.decode(ids)` exactly (also without the special tokens
the post-processor adds: `--no-special` against `add_special_tokens=False`). Then unsupported or broken files
are one error line each and a non-zero exit.

    check_tokenizer.py --moert build/bin/moert
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

failures = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "token", "tokenizer", "model", "expert",
         "mixture", "don't", "it's", "we'll", "I'm", "they've", "Hello", "WORLD", "café", "naïve", "über", "straße",
         "日本語", "中文", "한국어", "привет", "مرحبا", "🙂", "🚀🚀", "e\u0301", "Å", "ﬁ", "①", "½", "x²", "3.14",
         "1234567", "42", "-7", "$100", "50%", "a_b", "foo-bar", "(paren)", "[x]", "{y}", "<tag>", "path/to/file",
         "email@example.com", "#hash", "...", "?!", "\"quoted\"", "'single'", "tab\tsep", "line\nbreak", "\r\n",
         "  ", "   ", "\u00a0", "\u3000", "x²", "①②", "H₂O", "10⁴", "Ⅳ", "ªº", "a\u200db", "nai\u0308ve", "µs"]


def sample_text(rng, specials):
    parts = []
    for _ in range(rng.integers(1, 14)):
        r = rng.random()
        if specials and r < 0.06:
            parts.append(specials[rng.integers(len(specials))])
        elif r < 0.12:
            parts.append(str(rng.integers(0, 10 ** int(rng.integers(1, 9)))))
        else:
            parts.append(WORDS[rng.integers(len(WORDS))])
    seps = [" ", " ", " ", "", "  ", "\n", "\t", ", ", ". "]
    out = parts[0]
    for p in parts[1:]:
        out += seps[rng.integers(len(seps))] + p
    if rng.random() < 0.2:
        out = " " + out
    if rng.random() < 0.1:
        out += " "
    return out


def corpus(rng, n=3000):
    return [sample_text(rng, []) for _ in range(n)]


def _mixes():
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers as pt
    return {
        "bytelevel prefix space": lambda: dict(pre=pt.ByteLevel(add_prefix_space=True), dec=decoders.ByteLevel()),
        "bytelevel after a split": lambda: dict(pre=pt.Sequence([
            pt.Split(Regex(r"\d+"), behavior="isolated"), pt.ByteLevel(add_prefix_space=True, use_regex=False)]),
            dec=decoders.ByteLevel()),
        "metaspace always": lambda: dict(pre=pt.Metaspace(prepend_scheme="always", split=True),
                                         dec=decoders.Metaspace(prepend_scheme="always")),
        "metaspace never, unsplit": lambda: dict(pre=pt.Metaspace(prepend_scheme="never", split=False),
                                                 dec=decoders.Metaspace(prepend_scheme="never")),
        "split removed": lambda: dict(pre=pt.Split(Regex(r"\s+"), behavior="removed")),
        "split merged with previous": lambda: dict(pre=pt.Split(" ", behavior="merged_with_previous")),
        "split merged with next": lambda: dict(pre=pt.Split(Regex(r"[,.]"), behavior="merged_with_next")),
        "split contiguous": lambda: dict(pre=pt.Split(Regex(r"[a-z]"), behavior="contiguous")),
        # \w as Oniguruma reads it (superscripts, circled digits, combining marks): PCRE2's differs
        "split inverted words": lambda: dict(pre=pt.Split(Regex(r"\w+"), behavior="isolated", invert=True)),
        "digit runs, punctuation merged": lambda: dict(pre=pt.Sequence([
            pt.WhitespaceSplit(), pt.Digits(individual_digits=False), pt.Punctuation(behavior="merged_with_previous")])),
        # \w as Rust's regex reads it (Whitespace), after NFD's combining marks
        "nfd, regex replace, strip, lowercase": lambda: dict(norm=normalizers.Sequence([
            normalizers.NFD(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(left=True, right=False),
            normalizers.Lowercase()]), pre=pt.Whitespace(), dec=decoders.WordPiece()),
        "nfkd": lambda: dict(norm=normalizers.NFKD(), pre=pt.ByteLevel(), dec=decoders.ByteLevel()),
    }


COMPONENT_MIXES = _mixes()
KINDS = ("gpt2", "llama3", "sentencepiece", "metaspace", "mixed", "wordlevel", *COMPONENT_MIXES)


def build(kind, rng, tmp):
    """(tokenizer.json path, the special tokens put inside test strings)."""
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                            processors, trainers)
    texts = corpus(rng)
    if kind == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        specials = ["<|endoftext|>"]
    elif kind == "llama3":
        pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                   r"|\s*[\r\n]+|\s+(?!\S)|\s+")
        tok = Tokenizer(models.BPE(ignore_merges=True))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=800, special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", bos)])
        tok.add_tokens([AddedToken("<extra>", lstrip=True, rstrip=True), AddedToken("fox", single_word=True),
                        AddedToken("<sep>", special=True, normalized=False)])
        specials = ["<|eot_id|>", "<extra>", "<sep>", "<|end_of_text|>"]
    elif kind in ("sentencepiece", "metaspace"):
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        if kind == "sentencepiece":
            tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
            tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                             decoders.Strip(" ", 1, 0)])
        else:
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
            tok.decoder = decoders.Sequence([decoders.ByteFallback(),
                                             decoders.Metaspace(replacement="▁", prepend_scheme="first")])
        tok.train_from_iterator([t.replace(" ", "▁") for t in texts] if kind == "sentencepiece" else texts,
                                trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"],
                                                    limit_alphabet=60))
        # Byte fallback: the 256 <0xXX> tokens in the model's vocab (as SentencePiece conversions have them).
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        for b in range(256):
            vocab.setdefault(f"<0x{b:02X}>", len(vocab))
        bos = vocab["<s>"]
        spec["post_processor"] = {"type": "TemplateProcessing",
                                  "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                             {"Sequence": {"id": "A", "type_id": 0}}],
                                  "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                           {"Sequence": {"id": "B", "type_id": 1}}],
                                  "special_tokens": {"<s>": {"id": "<s>", "ids": [bos], "tokens": ["<s>"]}}}
        tok = Tokenizer.from_str(json.dumps(spec))
        specials = ["</s>", "<s>"]
    elif kind == "mixed":
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                     pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.Punctuation()])
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["[UNK]", "[CLS]",
                                                                                             "[SEP]"]))
        tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                       ("[CLS]", tok.token_to_id("[CLS]")))
        specials = ["[SEP]"]
    elif kind in COMPONENT_MIXES:  # one pipeline option each, a small BPE trained under it
        parts = COMPONENT_MIXES[kind]()
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        if "norm" in parts:
            tok.normalizer = parts["norm"]
        tok.pre_tokenizer = parts["pre"]
        if "dec" in parts:
            tok.decoder = parts["dec"]
        byte_level = kind.startswith("bytelevel") or kind == "nfkd"
        tok.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=500, special_tokens=["[UNK]", "<s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if byte_level else []))
        tok.add_tokens(["<extra>"])
        specials = ["<s>", "<extra>"]
    else:  # wordlevel
        words = {w: i for i, w in enumerate(["[UNK]"] + sorted({w for t in texts for w in t.split()}))}
        tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix="##")
        specials = []
    path = os.path.join(tmp, kind.replace(" ", "_").replace(",", "") + ".json")
    tok.save(path)
    return path, specials


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moert", required=True)
    ap.add_argument("--strings", type=int, default=300)
    args = ap.parse_args()
    from tokenizers import Tokenizer
    rng = np.random.default_rng(11)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            path, specials = build(kind, rng, tmp)
            ref = Tokenizer.from_file(path)
            strings = [sample_text(rng, specials) for _ in range(args.strings)] + ["", " ", "a", "\n\n", "🙂"]
            lines = path[:-len(".json")] + ".jsonl"
            with open(lines, "w", encoding="utf-8") as f:
                for s in strings:
                    f.write(json.dumps(s) + "\n")
            for special in (True, False):
                cmd = [args.moert, "tokenize", path, "--jsonl", lines] + ([] if special else ["--no-special"])
                r = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
                what = f"{kind}{'' if special else ' --no-special'}"
                if r.returncode != 0:
                    check(what, False, r.stderr.strip())
                    continue
                got = [json.loads(line) for line in r.stdout.splitlines()]
                bad_ids = bad_text = 0
                first = None
                for s, g in zip(strings, got):
                    want = ref.encode(s, add_special_tokens=special).ids
                    text = ref.decode(want)
                    if g["ids"] != want:
                        bad_ids += 1
                        first = first or f"{s!r}: {g['ids']} (want {want})"
                    elif g["decoded"] != text:
                        bad_text += 1
                        first = first or f"{s!r} decoded {g['decoded']!r} (want {text!r})"
                ok = len(got) == len(strings) and not bad_ids and not bad_text
                check(what, ok, f"{len(strings)} strings, {bad_ids} ids and {bad_text} texts differ from "
                                f"tokenizers'" + (f"; first: {first}" if first else ""))
            # The one-text and --ids forms of the command, on one string each way.
            s = strings[0]
            r = subprocess.run([args.moert, "tokenize", path, "--text", s], capture_output=True, text=True)
            want = ref.encode(s).ids
            check(f"{kind}: --text {s!r}", r.returncode == 0 and r.stdout.split() == [str(i) for i in want],
                  r.stdout.strip() or r.stderr.strip())
            r = subprocess.run([args.moert, "tokenize", path, "--ids", ",".join(map(str, want))],
                               capture_output=True)  # bytes: text mode would turn "\r\n" into "\n"
            out = r.stdout.decode("utf-8", "replace")
            check(f"{kind}: --ids", r.returncode == 0 and out == ref.decode(want) + "\n",
                  repr(out) + r.stderr.decode(errors="replace").strip())

        # Bad input: one error line naming the problem, exit 1.
        base = json.load(open(os.path.join(tmp, "gpt2.json")))
        cases = []
        unigram = dict(base, model={"type": "Unigram", "unk_id": 0, "vocab": [["a", -1.0]]})
        cases.append(("a Unigram model", unigram, "model 'Unigram' is not supported"))
        bert = dict(base, pre_tokenizer={"type": "BertPreTokenizer"})
        cases.append(("a BertPreTokenizer", bert, "pre-tokenizer 'BertPreTokenizer' is not supported"))
        bad_regex = dict(base, pre_tokenizer={"type": "Split", "pattern": {"Regex": "(?<!"}, "behavior": "Isolated",
                                              "invert": False})
        cases.append(("a broken regex", bad_regex, "pre-tokenizer Split: regex"))
        bad_merge = json.loads(json.dumps(base))
        bad_merge["model"]["merges"] = bad_merge["model"]["merges"][:3] + ["nope zilch"]
        cases.append(("a merge of unknown tokens", bad_merge, "names a token the vocab lacks"))
        no_vocab = json.loads(json.dumps(base))
        no_vocab["model"]["vocab"] = [1, 2]
        cases.append(("a vocab that is a list", no_vocab, "vocab is not an object"))
        for what, spec, needle in cases:
            p = os.path.join(tmp, "bad.json")
            with open(p, "w") as f:
                json.dump(spec, f)
            r = subprocess.run([args.moert, "tokenize", p, "--text", "hello"], capture_output=True, text=True)
            lines = r.stderr.strip().splitlines()
            check(f"bad tokenizer: {what}", r.returncode == 1 and len(lines) == 1 and needle in lines[0] and
                  not r.stdout, lines[-1] if lines else "(no error)")
        for what, content, needle in (("not JSON", "{nope", "not a tokenizer.json"),
                                      ("truncated", json.dumps(base)[:200], "not a tokenizer.json")):
            p = os.path.join(tmp, "bad.json")
            with open(p, "w") as f:
                f.write(content)
            r = subprocess.run([args.moert, "tokenize", p, "--text", "hello"], capture_output=True, text=True)
            check(f"bad tokenizer: {what}", r.returncode == 1 and needle in r.stderr, r.stderr.strip())
        gpt2 = os.path.join(tmp, "gpt2.json")
        for what, extra, needle in (
                ("a missing file", [os.path.join(tmp, "none.json"), "--text", "x"], "cannot open the tokenizer"),
                ("a model file that is not there", [os.path.join(tmp, "m.moex"), "--text", "x"], "cannot open"),
                ("invalid UTF-8", [gpt2, "--file", os.path.join(tmp, "latin1.txt")], "not valid UTF-8"),
                ("bad ids", [gpt2, "--ids", "1 two"], "expected token ids"),
                ("two inputs", [gpt2, "--text", "a", "--ids", "1"], "usage: moert tokenize")):
            with open(os.path.join(tmp, "latin1.txt"), "wb") as f:
                f.write("café".encode("latin-1"))
            r = subprocess.run([args.moert, "tokenize", *extra], capture_output=True, text=True)
            check(f"bad input: {what}", r.returncode == 1 and needle in r.stderr, r.stderr.strip())
    if failures:
        print(f"{len(failures)} tokenizer check(s) failed")
        return 1
    print("all tokenizer checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
