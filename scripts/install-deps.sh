#!/usr/bin/env bash
# Installs what moec needs to build, test and benchmark, and only what is missing.
# Idempotent: a second run installs nothing. Debian packages via apt, Python tooling via pip.
#   scripts/install-deps.sh            everything (build + test + bench)
#   scripts/install-deps.sh --no-python  skip the PyPI requirements
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
want_python=1
for a in "$@"; do
  case "$a" in
    --no-python) want_python=0 ;;
    -h|--help) sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-deps: unknown option '$a' (try --help)" >&2; exit 2 ;;
  esac
done

say() { echo "[install-deps] $*"; }

# Debian packages. HIP device code is built with clang-19 (not ROCm 5.2's hipcc, which cannot target gfx942).
debs=(
  build-essential cmake ninja-build pkg-config
  llvm-19-dev libmlir-19-dev mlir-19-tools clang-19 lld-19 llvm-19-tools
  libonnx-dev libonnx-testdata libprotobuf-dev protobuf-compiler
  libfmt-dev googletest libgtest-dev libgmock-dev libbenchmark-dev
  libamdhip64-dev rocm-device-libs
  libclang-rt-19-dev
  zlib1g-dev libzstd-dev libedit-dev libxml2-dev libcurl4-openssl-dev
  libssl-dev openssl
  libopenmpi-dev openmpi-bin
  nlohmann-json3-dev libpcre2-dev libicu-dev
)

missing=()
for p in "${debs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { say "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "Debian packages: all ${#debs[@]} present"
fi

if ((want_python)); then
  py=${PYTHON:-python3}
  req="$here/../requirements.txt"
  if "$py" - "$req" <<'PY'
import sys, importlib.metadata as md
ok = True
for line in open(sys.argv[1]):
    line = line.split('#')[0].strip()
    if not line: continue
    name, _, ver = line.partition('==')
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        ok = False; break
    if ver and have != ver:
        ok = False; break
sys.exit(0 if ok else 1)
PY
  then
    say "Python requirements: all present ($req)"
  else
    say "installing Python requirements from $req"
    "$py" -m pip install --disable-pip-version-check -q -r "$req"
  fi
fi
say "done"
