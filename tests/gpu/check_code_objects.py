#!/usr/bin/env python3
"""GPU code without a GPU: every generated kernel builds for every listed architecture, the artifact carries
each architecture's code, and the AMDGPU code objects stay within the resource budget docs/gpu.md gives.

For each fixture: `moec compile --target=cpu,hip,cuda --dump-kernels=DIR` (gfx90a, gfx942, gfx1100 code
objects; sm_80, sm_90 PTX), then
  - `moert inspect` lists all five architectures;
  - `llvm-readelf-19 --notes` of each AMDGPU code object: the kernels of every dispatch are there, with
    no scratch (`.private_segment_fixed_size` 0), no VGPR/SGPR spills, at most 128 VGPRs (at least 4 waves per
    SIMD on CDNA2/3, 12 on RDNA3) and at most 16 KiB of LDS per block (4 blocks per CU) — MoE dispatches'
    kernels, linear dispatches' (dense models in every storage, MatMulNBits, a decoder-with-past model) and
    attention dispatches' (the whole and decoder-with-past models);
  - the PTX of each sm_* declares the kernels of every dispatch and, where the machine has the CUDA
    toolkit's `ptxas`, assembles for its architecture (the matrix-core GEMM's inline `mma.sync` included),
    the matrix-core GEMMs with no register spills (other kernels' spills are listed).
Options moec cannot serve (unknown architectures or targets) are one error line and no artifact. moec's
compile-time note on the values a GPU call brings back to the host names the steps `moert inspect` does. Where no GPU is usable (CI), also: `moert run --device=gpu` fails with one error line, a non-zero exit and no
output file. Exits 1 with one line per violation.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

AMD = ["gfx90a", "gfx942", "gfx1100"]
NV = ["sm_80", "sm_90"]
MAX_VGPRS = 128
MAX_LDS = 16 * 1024


def fixtures(tmp):
    import check_cpu_e2e as e2e
    # (deepseek_v2: groups scored by their max; phimoe: sparsemixer routing)
    for family in ["mixtral", "qwen2_moe", "deepseek_v3", "zaya", "whole_olmoe", "deepseek_v2", "phimoe"]:
        yield family, os.path.join(ROOT, "tests", "fixtures", "transformers", f"{family}.onnx"), ["--weights=bf16"]
    for bits in (8, 4):  # quantised routed and shared experts
        yield (f"qwen2_moe (int{bits})", os.path.join(ROOT, "tests", "fixtures", "transformers", "qwen2_moe.onnx"),
               [f"--weights=int{bits}"])
    for name, path, _, _ in e2e.ort_moe_cases(tmp):
        if "(" not in name:
            yield name, path, ["--weights=fp16"] if "logits" in name else []
    for name, path, _, _ in e2e.sparse_moe_cases(tmp):  # the low-rank predictor's case included
        yield name, path, []
    # Linear dispatches in every storage (a fused LayerNorm, bias, residual, Gemm) and ONNX Runtime's MatMulNBits
    # with zero points (affine codes); the decoder-with-past fixture's merged projections and LM head.
    import check_linear_e2e as lin
    dense = os.path.join(tmp, "dense.onnx")
    lin.dense_model(dense)
    for storage in ("fp32", "bf16", "fp16", "int8", "int4"):
        yield f"linear/dense {storage}", dense, [f"--dense-weights={storage}"]
    for i, (bits, zp) in enumerate([(4, True), (8, True), (4, False)]):
        path = os.path.join(tmp, f"nbits{i}.onnx")
        lin.nbits_model(path, 70, 17, bits, 32, zp, True, seed=i)
        yield f"linear/MatMulNBits {bits}-bit{' zp' if zp else ''}", path, []
    yield "past_qwen3_moe", os.path.join(ROOT, "tests", "fixtures", "transformers", "past_qwen3_moe.onnx"), []


def kernels_in_notes(text):
    """{kernel name: {key: value}} from llvm-readelf --notes' AMDGPU metadata (YAML: each kernel a list item
    `  - .key: value` at indent 2, its other keys at indent 4, nested lists deeper)."""
    out, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^  - \.(\w+):\s*(.*)$", line)
        if m:
            cur = {}
        else:
            m = re.match(r"^    \.(\w+):\s*(.*)$", line)
        if not m or cur is None:
            continue
        key, value = m.groups()
        cur[key] = value.strip()
        if key == "name":
            out[cur["name"]] = cur
    return out


def bad_option_checks(args, tmp):
    """GPU targets moec cannot serve are one error line, exit 1, no artifact."""
    model = os.path.join(ROOT, "tests", "fixtures", "transformers", "mixtral.onnx")
    out = os.path.join(tmp, "refused.moex")
    problems = []
    for extra, says in ((["--target=cpu,hip", "--hip-arch=gfx999"], "--hip-arch=gfx999: not an architecture"),
                        (["--target=cpu,cuda", "--cuda-arch=sm_70"], "--cuda-arch=sm_70: not an architecture"),
                        (["--target=cpu,emu", "--emu-arch=emu-w16"], "--emu-arch=emu-w16: not an architecture"),
                        (["--target=cpu,metal"], "--target=metal: expected cpu, hip, cuda or emu")):
        r = subprocess.run([args.moec, "compile", model, "-o", out, "--quiet", *extra], capture_output=True, text=True)
        lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("moec: warning:")]
        if r.returncode == 0 or len(lines) != 1 or says not in lines[0] or os.path.exists(out):
            problems.append(f"moec {' '.join(extra)}: exit {r.returncode}, stderr {lines!r}")
        else:
            print(f"ok   moec {' '.join(extra)}: {lines[0]}")
    return problems


def crossing_checks(args, tmp):
    """moec's compile-time note on the values a GPU call brings back to the host for steps the CPU runs is
    libmoert's load-time plan (`moert inspect --device=emu` of the same artifact): the same steps, counted the
    same; none for a model whose every step between its dispatches runs on the device. And the plan keeps on
    the host an op whose inputs are all there and whose result only host steps read: the torchscript Mixtral
    with its experts left as a host loop of MatMuls over Gathers of constant expert weights copies 1 value up
    and 3 back a call (7 back when those Gathers ran on the device for the host's MatMuls)."""
    problems = []
    for folder, family, want, most in (("transformers", "llama4", "Add", None),
                                       ("transformers", "whole_deepseek_v3", None, None),
                                       ("torchscript", "mixtral_eager_partial", "OneHot", (1, 3))):
        model = os.path.join(ROOT, "tests", "fixtures", folder, f"{family}.onnx")
        out = os.path.join(tmp, f"{family}.moex")
        r = subprocess.run([args.moec, "compile", model, "-o", out, "--target=cpu,emu"], capture_output=True,
                           text=True)
        note = next((ln for ln in r.stderr.splitlines() if ln.startswith("moec: note: on a GPU")), None)
        insp = subprocess.run([args.moert, "inspect", out, "--device=emu"], capture_output=True, text=True)
        m = re.search(r"gpu copies per call: (\d+) values? to the device, (\d+) back(?: \(read on the host by (.*)\))?",
                      insp.stdout)
        readers = [x for x in (m.group(3) or "").split(", ") if x and x != "the caller (outputs)"] if m else None
        noted = re.search(r"for steps the CPU runs: (.*) \(", note).group(1).split(", ") if note else []
        copies = (int(m.group(1)), int(m.group(2))) if m else None
        if r.returncode != 0 or readers is None or noted != readers or (want is None) != (note is None) or \
                (want and want not in noted) or (most and (copies[0] > most[0] or copies[1] > most[1])):
            problems.append(f"{family}: moec's note {note!r}, moert inspect's host readers {readers!r}, "
                            f"copies up / back {copies} (at most {most})")
        else:
            print(f"ok   {family}: {note or 'no note (every step between dispatches on the device)'}; copies up / "
                  f"back {copies}")
    return problems


def no_device_checks(args, tmp, moex):
    """Without a GPU: asking for one is one clear error line, exit 1, no output written (and so is asking for the
    emulated device with an artifact that has no --target=emu code)."""
    import numpy as np
    out = os.path.join(tmp, "no-device-out")
    x = os.path.join(tmp, "x.npy")
    np.save(x, np.zeros((2, 16), np.float32))
    problems = []
    for device in ("gpu", "cuda", "hip", "emu"):
        r = subprocess.run([args.moert, "run", moex, "--input", f"x={x}", f"--device={device}", "--output-dir", out],
                           capture_output=True, text=True)
        lines = r.stderr.strip().splitlines()
        if r.returncode == 0 or len(lines) != 1 or not lines[0].startswith("moert: error: ") or os.path.exists(out):
            problems.append(f"--device={device} without a GPU: exit {r.returncode}, stderr {lines!r}, "
                            f"output dir {'written' if os.path.exists(out) else 'absent'}")
        else:
            print(f"ok   --device={device} without a GPU: {lines[0]}")
    return problems


def find_ptxas():
    """The CUDA toolkit's PTX assembler where this machine has one (PATH, /usr/local/cuda*/bin), else None."""
    import glob
    import shutil
    found = shutil.which("ptxas")
    return found or next(iter(sorted(glob.glob("/usr/local/cuda*/bin/ptxas"), reverse=True)), None)


def assemble_ptx(ptxas, path, arch):
    """Assembles one PTX file for `arch` as the driver would load it: (kernels, most registers, problems,
    kernels that spill). A problem is an assembler error (an instruction the architecture lacks, a malformed
    inline asm) or a matrix-core GEMM (the linear layers', the MoE experts') that spills; other kernels' spills are reported, not failed (this ptxas
    is not the driver's JIT, and a few bytes of spills there predate the check)."""
    run = subprocess.run([ptxas, f"-arch={arch}", "-v", "-o", os.devnull, path], capture_output=True, text=True)
    if run.returncode != 0:
        return 0, 0, [f"ptxas failed: {(run.stderr.strip().splitlines() or ['?'])[0]}"], []
    kernels, regs, bad, spilled, current = 0, 0, [], [], "?"
    for line in run.stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            current, kernels = m.group(1), kernels + 1
        if m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            if int(m.group(1)) or int(m.group(2)):
                spilled.append(re.sub(r"_\d+_", "_<i>_", current))
                if re.fullmatch(r"moert_gpu_(lin_\d+_gemm|\d+_(up|down)_mma)", current):
                    bad.append(f"{current}: register spills ({m.group(0)})")
        if m := re.search(r"Used (\d+) registers", line):
            regs = max(regs, int(m.group(1)))
    return kernels, regs, bad, spilled


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--moert", required=True)
    ap.add_argument("--readelf", default="llvm-readelf-19")
    args = ap.parse_args()
    problems, checked, most_vgprs, most_lds = [], 0, 0, 0
    ptxas, ptx_checked, most_regs, spills = find_ptxas(), 0, 0, set()
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, extra in fixtures(tmp):
            tag = name.replace("/", "_")
            dump, moex = os.path.join(tmp, tag), os.path.join(tmp, tag + ".moex")
            run = subprocess.run([args.moec, "compile", path, "-o", moex, "--target=cpu,hip,cuda", "--quiet",
                                  f"--dump-kernels={dump}", *extra], capture_output=True, text=True)
            if run.returncode != 0:
                problems.append(f"{name}: moec compile failed: {run.stderr.strip()}")
                continue
            src = open(os.path.join(dump, "dispatches.hip")).read()
            dispatches = sorted(set(re.findall(r"moert_gpu_(\d+)_route", src)))
            want = {f"moert_gpu_{d}_{k}" for d in dispatches for k in ("route", "up", "down", "up_mma", "down_mma")}
            # the graph ops' kernels (kernels/hip/ops_gpu.h), in every artifact
            want |= {"moert_gpu_op_strided", "moert_gpu_op_reduce", "moert_gpu_op_conv", "moert_gpu_op_topk",
                     "moert_gpu_op_rotary", "moert_gpu_op_norm", "moert_gpu_op_kv_append", "moert_gpu_op_embedding",
                     "moert_gpu_op_copy"}
            want |= set(re.findall(r"MOERT_GPU_KERNEL\((moert_gpu_\d+_(?:logits|predict)),", src))  # routers, predictors
            linears = sorted(set(re.findall(r"moert_gpu_lin_(\d+)_gemv", src)))
            want |= {f"moert_gpu_lin_{j}_{k}" for j in linears for k in ("gemv", "reduce", "gemm")}
            want |= set(re.findall(r"MOERT_GPU_KERNEL\((moert_gpu_lin_\d+_norm),", src))  # fused norms
            attentions = sorted(set(re.findall(r"moert_gpu_attn_(\d+)_attend", src)))
            want |= {f"moert_gpu_attn_{j}_{k}" for j in attentions
                     for k in ("attend", "attend_bf16", "attend_f16", "merge")}
            inspect = subprocess.run([args.moert, "inspect", moex], capture_output=True, text=True).stdout
            gpu_line = next((ln for ln in inspect.splitlines() if ln.startswith("gpu code:")), "")
            for arch in AMD + NV:
                if arch + " (" not in gpu_line:
                    problems.append(f"{name}: the artifact lacks {arch} code ({gpu_line or 'no gpu code line'})")
            for arch in AMD:
                notes = subprocess.run([args.readelf, "--notes", os.path.join(dump, arch + ".co")],
                                       capture_output=True, text=True)
                ks = kernels_in_notes(notes.stdout)
                if set(ks) != want:
                    problems.append(f"{name} {arch}: kernels {sorted(ks)}, expected {sorted(want)}")
                for k, meta in ks.items():
                    checked += 1
                    vg, lds = int(meta.get("vgpr_count", 999)), int(meta.get("group_segment_fixed_size", 1 << 30))
                    most_vgprs, most_lds = max(most_vgprs, vg), max(most_lds, lds)
                    bad = []
                    if int(meta.get("private_segment_fixed_size", 1)) != 0:
                        bad.append(f"scratch {meta.get('private_segment_fixed_size')} bytes")
                    if int(meta.get("vgpr_spill_count", 1)) or int(meta.get("sgpr_spill_count", 1)):
                        bad.append("register spills")
                    if vg > MAX_VGPRS:
                        bad.append(f"{vg} VGPRs > {MAX_VGPRS}")
                    if lds > MAX_LDS:
                        bad.append(f"{lds} bytes of LDS > {MAX_LDS}")
                    if bad:
                        problems.append(f"{name} {arch} {k}: " + ", ".join(bad))
            for arch in NV:
                ptx = open(os.path.join(dump, arch + ".ptx")).read()
                entries = set(re.findall(r"\.entry (moert_gpu_\w+)\(", ptx))
                if entries != want or f".target {arch}" not in ptx:
                    problems.append(f"{name} {arch}: PTX entries {sorted(entries)}, expected {sorted(want)}")
                if ptxas:
                    n, regs, bad, spilled = assemble_ptx(ptxas, os.path.join(dump, arch + ".ptx"), arch)
                    ptx_checked, most_regs = ptx_checked + n, max(most_regs, regs)
                    problems += [f"{name} {arch} {b}" for b in bad]
                    spills |= {f"{arch} {k}" for k in spilled}
            print(f"{'ok  ' if not any(p.startswith(name + ' ') or p.startswith(name + ':') for p in problems) else 'FAIL'}"
                  f" {name:48s} {len(want)} kernels ({len(dispatches)} MoE, {len(linears)} linear, "
                  f"{len(attentions)} attention dispatch(es)) x "
                  f"{len(AMD)} AMD + {len(NV)} NVIDIA archs")
        problems += bad_option_checks(args, tmp)
        problems += crossing_checks(args, tmp)
        if subprocess.run([args.moert, "devices"], capture_output=True).returncode != 0:
            problems += no_device_checks(args, tmp, moex)
    for p in problems:
        print("  " + p)
    print(f"{checked} AMDGPU kernels checked (most VGPRs {most_vgprs}, most LDS {most_lds} bytes); "
          + (f"{ptx_checked} NVIDIA kernels assembled by {ptxas} (most registers {most_regs}; spilling: "
             f"{', '.join(sorted(spills)) or 'none'}); " if ptxas else
             "no ptxas found: the PTX was not assembled; ")
          + f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
