# lit configuration for moec (loaded by the build tree's lit.site.cfg.py; not named lit.cfg.py so that lit never
# treats tests/ as a suite of its own). Lit tests live next to the code they test, in folders named `test`
import os
import sys

sys.path.insert(0, os.path.join(config.moec_src_root, "tests"))
from moec_lit_format import CollectTestFolders  # noqa: E402

config.name = "moec"
config.suffixes = [".mlir", ".onnxtxt", ".test"]
config.test_source_root = config.moec_src_root
config.test_exec_root = os.path.join(config.moec_obj_root, "tests", "lit-out")
# Never descend into build trees, VCS data or per-test input folders.
config.excludes = ["Inputs", ".git", "build", "lit-out", "__pycache__", "node_modules"]
# Other build trees in the source folder (build-address-undefined/ of `make test SANITIZE=...`, ...): their
# lit.site.cfg.py would make them suites of their own, run with their tools.
config.excludes += [d for d in os.listdir(config.moec_src_root)
                    if os.path.isfile(os.path.join(config.moec_src_root, d, "CMakeCache.txt"))]
config.test_format = CollectTestFolders(execute_external=False)

config.environment["PATH"] = os.pathsep.join(
    [config.moec_tools_dir, config.llvm_tools_dir, config.environment.get("PATH", os.environ["PATH"])]
)
config.substitutions.append(("%moec_lib", config.moec_lib_dir))
config.substitutions.append(("%moec_tools", config.moec_tools_dir))
if config.moec_build_examples:
    config.available_features.add("examples")
