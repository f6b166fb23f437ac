#!/usr/bin/env python3
"""Keeps docs/ in step with what the build knows: the reference pages tablegen renders from ODS into
build/docs/, and tables the tools print (e.g. `moec import --list-ops` into docs/onnx-support.md).

  sync-docs.py --build build            update docs/
  sync-docs.py --build build --check    exit 1 (and say which) if a committed page differs
"""
import argparse
import collections
import filecmp
import pathlib
import re
import shutil
import subprocess
import sys

# Rendered file (under build/docs) -> committed file (under docs/).
PAGES = {
    "dialects/MoEDialect.md": "dialects/moe.md",
    "dialects/ONNXDialect.md": "dialects/onnx.md",
    "passes/MoECPasses.md": "passes.md",
}


def onnx_ops_table(build):
    """Markdown table of `moec import --list-ops`: one row per (domain, op), its since-versions."""
    out = subprocess.run([str(build / "bin" / "moec"), "import", "--list-ops"], check=True,
                         capture_output=True, text=True).stdout
    versions = collections.OrderedDict()
    for line in out.splitlines()[1:]:
        domain, op, since = line.split("\t")
        versions.setdefault((domain, op), []).append(int(since))
    rows = ["| domain | op | imported from opset (forms) |", "|---|---|---|"]
    for (domain, op), vs in sorted(versions.items()):
        rows.append(f"| {domain} | {op} | {', '.join(str(v) for v in sorted(vs))} |")
    return "\n".join(rows)


# Generated sections: committed file -> (marker name, generator).
SECTIONS = {
    "onnx-support.md": ("moec import --list-ops", onnx_ops_table),
}


def sync_section(path, marker, body, check):
    text = path.read_text()
    pattern = re.compile(rf"(<!-- BEGIN {re.escape(marker)} -->\n).*?(<!-- END {re.escape(marker)} -->)", re.S)
    if not pattern.search(text):
        print(f"sync-docs: {path} lacks the '{marker}' markers", file=sys.stderr)
        return False
    updated = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    if updated == text:
        return True
    if check:
        return False
    path.write_text(updated)
    print(f"sync-docs: updated {path}")
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="build directory (default: build)")
    ap.add_argument("--source", default=pathlib.Path(__file__).resolve().parent.parent, help="source root")
    ap.add_argument("--check", action="store_true", help="only compare; do not write")
    args = ap.parse_args()
    build_docs = pathlib.Path(args.build) / "docs"
    src_docs = pathlib.Path(args.source) / "docs"
    stale = []
    for rendered, committed in PAGES.items():
        r, c = build_docs / rendered, src_docs / committed
        if not r.is_file():
            print(f"sync-docs: {r} was not rendered; build the 'mlir-doc' target first", file=sys.stderr)
            return 2
        if c.is_file() and filecmp.cmp(r, c, shallow=False):
            continue
        if args.check:
            stale.append(str(c))
        else:
            c.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r, c)
            print(f"sync-docs: updated {c}")
    for committed, (marker, generate) in SECTIONS.items():
        if not sync_section(src_docs / committed, marker, generate(pathlib.Path(args.build)), args.check):
            stale.append(str(src_docs / committed))
    if stale:
        print("sync-docs: out of date (run `make docs` and commit): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
