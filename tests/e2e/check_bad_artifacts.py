#!/usr/bin/env python3
"""Damaged artifacts are one clear error each, never a crash: `moert inspect` and `moert run` on a truncated,
empty, wrong-magic, newer-version, padded, wrong-target, wrong-CPU or garbage-metadata file, or one with a bit
flipped in its metadata or code, must exit 1 with a single `moert: error: FILE: ...` line saying what is wrong
(docs/artifact-format.md). A bit flipped in a weight section: loading (`inspect`) reads no weights and works;
the first run reading it, `run --verify` and `moert verify` each fail naming the section and the expert (an
expert no token of a run chose is not checked by that run). And a compile whose
artifact write fails part way (a file-size limit) is one error line with nothing left at the output path.

The checksum is recomputed here (an independent implementation of runtime/ArtifactFormat.h's) for the
damage that must get past it: a different target or CPU feature, or unreadable metadata.

    check_bad_artifacts.py --moec build/bin/moec --moert build/bin/moert
"""
import argparse
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MASK = (1 << 64) - 1


def checksum(data, seed=0x6D6F65632D6D6F65):
    mul = 0x9E3779B97F4A7C15
    lanes = [seed, seed ^ 0x1234567, seed ^ 0xABCDEF, seed ^ 0x7654321]
    n = len(data)
    full = n - n % 32
    for i in range(0, full, 32):
        for l in range(4):
            (w,) = struct.unpack_from("<Q", data, i + 8 * l)
            lanes[l] = ((lanes[l] ^ w) * mul) & MASK
            lanes[l] ^= lanes[l] >> 29
    h = lanes[0] ^ ((lanes[1] * 3) & MASK) ^ ((lanes[2] * 5) & MASK) ^ ((lanes[3] * 7) & MASK) ^ n
    for b in data[full:]:
        h = ((h ^ b) * mul) & MASK
    h ^= h >> 32
    return (h * mul) & MASK


def reseal(image):
    """Recomputes the header checksum (bytes 40..48: the header with it zeroed, then the metadata, which the header
    locates: offset at 24, size at 32) of an image."""
    image = bytearray(image)
    header = bytearray(image[:64])
    header[40:48] = b"\0" * 8
    meta_offset, meta_size = struct.unpack_from("<QQ", image, 24)
    struct.pack_into("<Q", image, 40,
                     checksum(bytes(image[meta_offset:meta_offset + meta_size]), checksum(bytes(header))))
    return bytes(image)


def flipped(image, at):
    return image[:at] + bytes([image[at] ^ 0x10]) + image[at + 1:]


def tiny_model(path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 6, 8)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 6)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "wr")]
    nodes = [helper.make_node("MatMul", ["x", "wr"], ["logits"]),
             helper.make_node("MoE", ["x", "logits", "w1", "", "w2"], ["y"], domain="com.microsoft", k=2,
                              activation_type="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 8])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    onnx.save(m, path)


def npy_header_only(path, shape, data_bytes):
    """A float32 .npy file of `shape` whose data is `data_bytes` long (a sparse file: nothing written)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.truncate(f.tell() + data_bytes)


def links_sanitizer(binary, which):
    """Whether `binary` links a shared sanitizer runtime (`which`: "" any, ".tsan", ".asan"...): a
    sanitizer build's tools do (cmake/MoecSanitize.cmake)."""
    return "libclang_rt" + which in subprocess.run(["ldd", binary], capture_output=True, text=True).stdout


def sanitizer_options(args, tmp, model):
    """`moec compile --sanitize`: names it cannot build with are one error line and no artifact; an artifact
    whose kernels are instrumented is refused by a moert that is not (one line naming why)."""
    failures = 0
    out = os.path.join(tmp, "sanitized.moex")
    env = {k: v for k, v in os.environ.items() if k != "MOEC_SANITIZE"}
    for flags, want in [(["--sanitize=memory"], "--sanitize=memory: 'memory' is not a sanitizer moec builds with"),
                        (["--sanitize=address,thread"], "address and thread cannot be combined")]:
        r = subprocess.run([args.moec, "compile", model, "-o", out, "--quiet"] + flags, capture_output=True,
                           text=True, env=env)
        lines = r.stderr.strip().splitlines()
        if r.returncode != 1 or len(lines) != 1 or want not in lines[0] or os.path.exists(out):
            failures += 1
            print(f"FAIL moec {flags[0]}: exit {r.returncode}, stderr {r.stderr.strip()!r}; expected {want!r}")
        else:
            print(f"ok   moec {flags[0]:24s} {lines[0]}")
    sanitized_moert = links_sanitizer(args.moert, "")
    if not sanitized_moert:
        subprocess.run([args.moec, "compile", model, "-o", out, "--quiet", "--sanitize=address"], check=True, env=env)
        r = subprocess.run([args.moert, "inspect", out], capture_output=True, text=True)
        lines = r.stderr.strip().splitlines()
        want = "has kernels built with -fsanitize=address (moec --sanitize), which only a moert built with that"
        if r.returncode != 1 or len(lines) != 1 or want not in lines[0]:
            failures += 1
            print(f"FAIL a sanitized artifact in a plain moert: exit {r.returncode}, stderr {r.stderr.strip()!r}")
        else:
            print(f"ok   sanitized artifact, plain moert: {lines[0].split(': ', 3)[-1]}")
    return failures


def resource_limits(args, tmp, good):
    """Requests beyond what a run can have: one error line naming the request, exit 1, no output written."""
    many = os.path.join(tmp, "many.npy")  # 2^33 tokens (256 GiB, a sparse file): more than a dispatch takes
    npy_header_only(many, (1 << 33, 8), (1 << 33) * 8 * 4)
    # Tokens whose output (32 bytes each) is more than this machine's memory and swap (Linux's default
    # overcommit refuses such an allocation); the input as large (sparse).
    info = dict(ln.split(":", 1) for ln in open("/proc/meminfo"))
    memory = (int(info["MemTotal"].split()[0]) + int(info["SwapTotal"].split()[0])) * 1024
    tokens = 1 << (memory // 32).bit_length()
    assert tokens < 1 << 31, "a machine this large needs another way to exhaust its memory"
    huge = os.path.join(tmp, "huge.npy")
    npy_header_only(huge, (tokens, 8), tokens * 8 * 4)
    overflow = os.path.join(tmp, "overflow.npy")  # a shape whose byte count overflows 64 bits
    npy_header_only(overflow, (1 << 40, 1 << 40, 8), 64)
    x = os.path.join(tmp, "x.npy")
    out = os.path.join(tmp, "limits-out")
    os.makedirs(out, exist_ok=True)
    run = [args.moert, "run", good, "--output-dir", out]
    cases = [("--threads 0", run + ["--input", f"x={x}", "--threads", "0"], "--threads 0: expected 1 to 1024"),
             ("--threads 10000", run + ["--input", f"x={x}", "--threads", "10000"],
              "--threads 10000: expected 1 to 1024"),
             ("input of 2^33 tokens", run + ["--input", f"x={many}"],
              "dispatch 0: 8589934592 rows in one call; a dispatch takes at most 2147483647"),
             (f"input of 2^{tokens.bit_length() - 1} tokens", run + ["--input", f"x={huge}"],
              "out of memory for dispatch 0"),
             ("input shape overflowing", run + ["--input", f"x={overflow}"],
              "has more bytes than a 64-bit size holds")]
    if open("/proc/sys/vm/overcommit_memory").read().strip() != "0":
        print("skip out-of-memory check: vm.overcommit_memory is not 0 (an allocation beyond memory would succeed)")
        cases = [c for c in cases if "tokens" not in c[0] or "2^33" in c[0]]
    failures = 0
    for name, cmd, want in cases:
        r = subprocess.run(cmd, capture_output=True, text=True)
        lines = r.stderr.strip().splitlines()
        written = os.listdir(out)
        if r.returncode != 1 or len(lines) != 1 or want not in lines[0] or written:
            failures += 1
            print(f"FAIL {name}: exit {r.returncode}, stderr {r.stderr.strip()!r}, wrote {written}; expected {want!r}")
        else:
            print(f"ok   {name:20s} {lines[0]}")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--moert", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, good = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "good.moex")
        tiny_model(model)
        subprocess.run([args.moec, "compile", model, "-o", good, "--quiet"], check=True)
        image = open(good, "rb").read()
        meta_offset, meta_size = struct.unpack_from("<QQ", image, 24)
        assert meta_offset + meta_size == len(image), "formats 3 and 4: the metadata comes last"
        meta = image[meta_offset:meta_offset + meta_size]
        x = os.path.join(tmp, "x.npy")
        np.save(x, np.ones((3, 8), np.float32))

        def patched_meta(old, new):
            assert meta.count(old) >= 1, old
            fixed = bytearray(image)
            i = image.index(old, meta_offset)
            fixed[i:i + len(old)] = new
            return reseal(fixed)

        half = len(image) // 2
        code = image.index(b"\x7fELF", 64)  # the code section (a shared object), the last before the metadata
        first_weights = 64  # the first section: weights, right after the header
        garbage_meta = bytearray(image)
        garbage_meta[meta_offset:] = b"\xff" * meta_size
        overlapping = bytearray(image)  # a copy of the metadata inside the code section, the header pointing at it
        overlapping[code + 64:code + 64 + meta_size] = meta
        struct.pack_into("<Q", overlapping, 24, code + 64)
        cases = [
            ("truncated", image[:half], f"is truncated: the header says {len(image)} bytes, the file has {half}"),
            ("empty", b"", "is not a moec artifact: 0 bytes, shorter than the 64-byte header"),
            ("wrong_magic", b"ONNX" + image[4:], "is not a moec artifact (wrong magic bytes)"),
            ("newer_version", image[:8] + struct.pack("<I", 5) + image[12:],
             "was written by a newer moec (artifact format 5; this moert reads formats 2 to 4)"),
            ("older_version", image[:8] + struct.pack("<I", 1) + image[12:],
             "has unsupported artifact format 1 (recompile it with this moec)"),
            ("metadata_bit_flip", flipped(image, meta_offset + meta_size // 2),
             "is corrupted (checksum mismatch in its header or metadata)"),
            ("code_bit_flip", flipped(image, code + 4096), "(code, "),
            ("trailing_bytes", image + b"\0" * 7, "has 7 unexpected bytes after its end"),
            ("wrong_target", patched_meta(b"\x12\x03cpu", b"\x12\x03hip"),
             "targets 'hip'; this moert runs cpu artifacts"),
            ("missing_cpu_feature", patched_meta(b"avx2", b"avx9"), "needs the CPU feature 'avx9'"),
            ("garbage_metadata", reseal(garbage_meta), "has corrupted metadata"),
            ("metadata_over_section", reseal(overlapping), "(section 'code' out of bounds)"),
        ]
        failures = 0
        for name, data, want in cases:
            path = os.path.join(tmp, f"{name}.moex")
            with open(path, "wb") as f:
                f.write(data)
            for cmd in ([args.moert, "inspect", path], [args.moert, "run", path, "--input", f"x={x}"]):
                r = subprocess.run(cmd, capture_output=True, text=True)
                lines = r.stderr.strip().splitlines()
                ok = (r.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"moert: error: {path}: ")
                      and want in lines[0])
                if not ok:
                    failures += 1
                    print(f"FAIL {name} ({cmd[1]}): exit {r.returncode}, stderr {r.stderr.strip()!r}; expected {want!r}")
            if not failures:
                print(f"ok   {name:20s} {want}")
        # A flipped weight byte: loading reads no weights, so inspect works; the first run that reads it fails
        # naming the section (and the expert: experts are checksummed one by one, and a run checks those its
        # tokens chose), as do `moert verify` and a load with --verify. A flip in an expert no token chose does
        # not stop a run; --verify and `moert verify` still find it.
        wr = numpy_helper.to_array(next(t for t in onnx.load(model).graph.initializer if t.name == "wr"))
        logits = np.ones((1, 8)) @ wr.astype(np.float64)
        chosen = sorted(np.argsort(-logits[0], kind="stable")[:2].tolist())
        idle = [e for e in range(4) if e not in chosen][0]
        per_expert = 6 * 8 * 4  # d0.fc1: [E = 4][F = 6][H = 8] f32, the first section
        want = "fails its checksum"
        for expert, run_fails in [(chosen[1], True), (idle, False)]:
            path = os.path.join(tmp, f"weights_bit_flip_{expert}.moex")
            with open(path, "wb") as f:
                f.write(flipped(image, first_weights + expert * per_expert + 5))
            named = f"section 'd0.fc1' expert {expert} (weights, "
            for cmd, code_, extra in [([args.moert, "inspect", path], 0, None),
                                      ([args.moert, "run", path, "--input", f"x={x}", "--output-dir", tmp],
                                       1 if run_fails else 0, "found on its first use"),
                                      ([args.moert, "run", path, "--verify", "--input", f"x={x}"], 1, named),
                                      ([args.moert, "verify", path], 1, "1 of ")]:
                r = subprocess.run(cmd, capture_output=True, text=True)
                lines = r.stderr.strip().splitlines()
                ok = r.returncode == code_ and (code_ == 0 or (len(lines) == 1 and want in lines[0] and extra in lines[0]
                                                               and named in lines[0]))
                what = f"weights_bit_flip in {'a chosen' if run_fails else 'an idle'} expert ({expert})"
                if not ok:
                    failures += 1
                    print(f"FAIL {what} ({' '.join(cmd[1:2] + cmd[3:4])}): exit {r.returncode}, "
                          f"stderr {r.stderr.strip()!r}")
                else:
                    print(f"ok   {what}: {cmd[1]}{' --verify' if '--verify' in cmd else ''}: "
                          f"{lines[0] if lines else 'exit 0'}")
        r = subprocess.run([args.moert, "run", good, "--input", f"x={x}", "--output-dir", tmp], capture_output=True,
                           text=True)
        if r.returncode != 0:
            failures += 1
            print("FAIL the undamaged artifact does not run: " + r.stderr.strip())
        r = subprocess.run([args.moert, "verify", good], capture_output=True, text=True)
        if r.returncode != 0 or "every section's checksum matches" not in r.stdout:
            failures += 1
            print("FAIL moert verify on the undamaged artifact: " + r.stderr.strip())
        # A compile whose artifact cannot be written whole (a file-size limit below its size: the write fails
        # part way) is one error line and leaves nothing at the output path, not even a temporary file.
        # (Not under ThreadSanitizer: its runtime dies of SIGBUS in moec once a write passes the limit, where
        # the same moec without it, and under ASan, reports EFBIG as below.)
        tsan = links_sanitizer(args.moec, ".tsan")
        block = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "transformers",
                             "mixtral.onnx")
        full = os.path.join(tmp, "full.moex")
        subprocess.run([args.moec, "compile", block, "-o", full, "--quiet"], check=True, capture_output=True)
        if tsan:
            print("skip file-size limit: moec is built with ThreadSanitizer")
        else:
            limit_kib = (os.path.getsize(full) - 8192) // 1024
            out = os.path.join(tmp, "limited.moex")
            r = subprocess.run(["bash", "-c", f'ulimit -f {limit_kib}; exec "$0" compile "$1" -o "$2" --quiet',
                                args.moec, block, out], capture_output=True, text=True)
            lines = [ln for ln in r.stderr.strip().splitlines() if "warning:" not in ln]
            left = [f for f in os.listdir(tmp) if f.startswith("limited.moex")]
            if r.returncode != 1 or len(lines) != 1 or "moec: error:" not in lines[0] or "cannot write" not in lines[0] \
                    or left:
                failures += 1
                print(f"FAIL a compile over a {limit_kib} KiB file-size limit: exit {r.returncode}, stderr {lines!r}, "
                      f"left {left}")
            else:
                print(f"ok   file-size limit      {lines[0].split(': ', 2)[-1]} (exit 1, nothing at the output path)")
        failures += resource_limits(args, tmp, good)
        failures += sanitizer_options(args, tmp, model)
        print(f"{len(cases) - (failures > 0)}/{len(cases)} damaged artifacts rejected with one clear error"
              if not failures else f"{failures} check(s) failed")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
