// The C API's own communicators for expert parallelism (moert/moert_mpi.h), run by check_expert_parallel.py:
//
//   mpirun -np 4 ep-comm-api-test ONE.moex TWO.moex H
//
// splits MPI_COMM_WORLD into two communicators of two ranks, gives each to moert_load_options.comm (TWO.moex
// was compiled with --expert-parallel=2), and runs each pair on its own input ([37, H], seeded by the pair):
// every rank's output must equal ONE.moex's (the same layer for one process, loaded without a communicator)
// within 1e-5 of its largest value, and moert_ranks must report the rank within the pair. Prints one line per
// rank; exits nonzero on any mismatch or error.
#include "moert/moert.h"
#include "moert/moert_mpi.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

int fail(int rank, const char *what, moert_status st = nullptr) {
  std::fprintf(stderr, "ep-comm-api-test: rank %d: %s%s%s\n", rank, what, st ? ": " : "",
               st ? moert_status_message(st) : "");
  if (st)
    moert_status_free(st);
  MPI_Abort(MPI_COMM_WORLD, 1);
  return 1;
}

bool runOnce(moert_model *m, std::vector<float> &x, int64_t rows, int64_t h, std::vector<float> &y,
             moert_status &st) {
  const int64_t dims[2] = {rows, h};
  moert_tensor in{"x", MOERT_F32, 2, dims, x.data()};
  moert_result *res = nullptr;
  if ((st = moert_run(m, nullptr, &in, 1, &res)))
    return false;
  const moert_tensor *out = moert_result_output(res, 0);
  y.assign(static_cast<const float *>(out->data), static_cast<const float *>(out->data) + rows * h);
  moert_result_free(res);
  return true;
}

} // namespace

int main(int argc, char **argv) {
  int provided = 0, rank = 0, size = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (argc != 4 || size % 2)
    return fail(rank, "usage: mpirun -np <even> ep-comm-api-test ONE.moex TWO.moex H");
  const int64_t h = std::atoll(argv[3]), rows = 37;
  const int pair = rank / 2;
  MPI_Comm pairComm;
  MPI_Comm_split(MPI_COMM_WORLD, pair, rank, &pairComm);

  char error[256] = {};
  moert_comm *comm = nullptr;
  if (moert_mpi_comm_create(pairComm, 30.0, &comm, error, sizeof error) != 0)
    return fail(rank, error);
  moert_load_options lo{sizeof lo, 1, 1, MOERT_DEVICE_CPU, comm, 0};
  moert_model *ep = nullptr, *one = nullptr;
  if (moert_status st = moert_load(argv[2], &lo, &ep))
    return fail(rank, "loading the expert-parallel artifact", st);
  moert_load_options plain{sizeof plain, 1, 1, MOERT_DEVICE_CPU, nullptr, 0};
  if (moert_status st = moert_load(argv[1], &plain, &one))
    return fail(rank, "loading the one-process artifact", st);
  int r = -1, n = -1;
  moert_ranks(ep, &r, &n);
  if (r != rank % 2 || n != 2)
    return fail(rank, "moert_ranks does not give the rank within the pair");

  std::vector<float> x(static_cast<size_t>(rows * h)), got, want;
  uint64_t s = 0x9e3779b97f4a7c15ull * uint64_t(pair + 1);
  for (float &v : x) { // the pair's own input
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    v = float(int64_t(s >> 40) % 2001 - 1000) / 500.0f;
  }
  moert_status st = nullptr;
  if (!runOnce(ep, x, rows, h, got, st))
    return fail(rank, "running on the pair", st);
  if (!runOnce(one, x, rows, h, want, st))
    return fail(rank, "running on one process", st);
  double worst = 0, scale = 1;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::fmax(worst, std::fabs(double(got[i]) - want[i]));
    scale = std::fmax(scale, std::fabs(double(want[i])));
  }
  std::printf("rank %d (pair %d, rank %d of %d in it): max difference %.3g of %.3g\n", rank, pair, r, n,
              worst, scale);
  std::fflush(stdout);
  moert_free(ep);
  moert_free(one);
  moert_mpi_comm_free(comm);
  MPI_Comm_free(&pairComm);
  const bool ok = worst <= 1e-5 * scale;
  int all = ok ? 1 : 0, every = 0;
  MPI_Allreduce(&all, &every, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Finalize();
  return every ? 0 : 1;
}
