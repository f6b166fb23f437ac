#!/usr/bin/env bash
# The runtime never links LLVM or MLIR: neither libmoert nor the moert CLI may depend on them (ldd), and
# the artifact's code section (a shared object) links only the C/C++ runtime.
#   check_no_llvm.sh LIBMOERT MOERT
set -euo pipefail
status=0
for f in "$@"; do
  if ldd "$f" | grep -Ei 'libLLVM|libMLIR|libclang(-cpp)?\.so'; then  # (a sanitizer build's libclang_rt is fine)
    echo "FAIL $f links LLVM/MLIR (above)"
    status=1
  else
    echo "ok   $f: $(ldd "$f" | awk '{print $1}' | tr '\n' ' ')"
  fi
done
exit $status
