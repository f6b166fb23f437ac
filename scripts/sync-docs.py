#!/usr/bin/env python3
"""Keeps docs/ in step with the reference pages tablegen renders from ODS into build/docs/.

  sync-docs.py --build build            copy the rendered pages into docs/
  sync-docs.py --build build --check    exit 1 (and say which) if a committed page differs
"""
import argparse
import filecmp
import pathlib
import shutil
import sys

# Rendered file (under build/docs) -> committed file (under docs/).
PAGES = {
    "dialects/MoEDialect.md": "dialects/moe.md",
    "passes/MoECPasses.md": "passes.md",
}


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
    if stale:
        print("sync-docs: out of date (run `make docs` and commit): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
