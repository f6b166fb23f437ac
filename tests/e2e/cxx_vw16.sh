#!/bin/sh
# The C++ compiler for the CPU kernels with 16-lane vectors forced (what an AVX-512 build uses), so the
# AVX-512 code path's logic is checked on machines without AVX-512: clang lowers each 16-lane operation
# to two 8-lane ones. Used through MOEC_CXX by the cpu-e2e-vw16 test.
exec clang++-19 -DMOERT_VW=16 "$@"
