/*===- moert_mpi.h - expert parallelism over MPI (libmoert-mpi) -------------===*
 *
 * libmoert-mpi.so makes a moert_comm (moert/moert.h) over an MPI communicator, for artifacts compiled with
 * `moec compile --expert-parallel=N` (docs/scale-out.md). libmoert itself never links MPI: given no
 * communicator, it opens this library with dlopen and calls moert_mpi_world. Link it (and MPI) yourself to
 * run such a model on a communicator of your own:
 *
 *   MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
 *   moert_comm *comm;
 *   if (moert_mpi_comm_create(my_comm, 0, &comm, error, sizeof error) != 0) ...
 *   moert_load_options o = {sizeof o, 0, 1, MOERT_DEVICE_CPU, comm};
 *   moert_load("model.moex", &o, &model);  ...  moert_free(model);
 *   moert_mpi_comm_free(comm);
 *
 * Every exchange is a nonblocking MPI collective (MPI_Ialltoallv, MPI_Iallgatherv) on a duplicate of the
 * communicator, waited for with a deadline: a rank that stopped or hangs makes the others fail with an error
 * naming the exchange after `timeout_s` seconds instead of waiting for ever.
 *
 *===----------------------------------------------------------------------===*/
#ifndef MOERT_MOERT_MPI_H
#define MOERT_MOERT_MPI_H

#include "moert/moert.h"

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The seconds an exchange may take when timeout_s is 0: $MOERT_EP_TIMEOUT, else this. */
#define MOERT_MPI_DEFAULT_TIMEOUT_S 300.0

/* Makes *out over a duplicate of `comm` (collective over `comm`; MPI initialised by the caller). Returns 0,
 * or nonzero with a message in `error`. */
int moert_mpi_comm_create(MPI_Comm comm, double timeout_s, moert_comm **out, char *error, size_t error_bytes);
void moert_mpi_comm_free(moert_comm *comm);

/* What libmoert calls through dlopen: a communicator over MPI_COMM_WORLD, initialising MPI first if nobody
 * has (MPI_THREAD_MULTIPLE asked; MPI is then finalised at exit). NULL with a message in `error` on failure.
 */
moert_comm *moert_mpi_world(char *error, size_t error_bytes);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_MOERT_MPI_H */
