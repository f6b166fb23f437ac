/* The cost of MPI's all-to-all on this machine, for docs/scale-out.md (bench/expert_parallel.py builds it with
 * mpicc and runs it under mpirun -np N): for each message size (bytes each rank sends to each other rank),
 * the best and median time of MPI_Alltoall over `repeats` calls after a barrier, as one JSON line per size.
 *
 *   mpirun -np 4 ./alltoall 64 67108864 20     sizes 64 B .. 64 MiB (x4 steps), 20 calls each
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  long lo = argc > 1 ? atol(argv[1]) : 64, hi = argc > 2 ? atol(argv[2]) : 1 << 24;
  int repeats = argc > 3 ? atoi(argv[3]) : 20;
  if (lo < 1 || hi < lo || repeats < 1) {
    if (rank == 0)
      fprintf(stderr, "usage: alltoall MIN_BYTES MAX_BYTES REPEATS\n");
    MPI_Finalize();
    return 2;
  }
  char *send = malloc((size_t)hi * size), *recv = malloc((size_t)hi * size);
  double *t = malloc(sizeof(double) * repeats);
  if (!send || !recv || !t)
    MPI_Abort(MPI_COMM_WORLD, 1);
  memset(send, rank, (size_t)hi * size);
  memset(recv, 0, (size_t)hi * size);
  for (long bytes = lo; bytes <= hi; bytes *= 4) {
    MPI_Datatype type;
    MPI_Type_contiguous((int)bytes, MPI_BYTE, &type);
    MPI_Type_commit(&type);
    MPI_Alltoall(send, 1, type, recv, 1, type, MPI_COMM_WORLD); /* warm-up */
    for (int r = 0; r < repeats; ++r) {
      MPI_Barrier(MPI_COMM_WORLD);
      double s = MPI_Wtime();
      MPI_Alltoall(send, 1, type, recv, 1, type, MPI_COMM_WORLD);
      double e = MPI_Wtime() - s, worst;
      MPI_Allreduce(&e, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD); /* the slowest rank's time */
      t[r] = worst;
    }
    qsort(t, repeats, sizeof(double), cmp);
    if (rank == 0)
      printf("{\"ranks\": %d, \"bytes_per_pair\": %ld, \"best_us\": %.2f, \"median_us\": %.2f}\n", size, bytes,
             t[0] * 1e6, t[repeats / 2] * 1e6);
    fflush(stdout);
    MPI_Type_free(&type);
  }
  free(send);
  free(recv);
  free(t);
  MPI_Finalize();
  return 0;
}
