//===- MoertMpi.cpp - moert_comm over MPI (libmoert-mpi.so) -----------------===//
//
// The communicator expert parallelism exchanges tokens through (moert/moert_mpi.h). libmoert never links
// this: it opens it with dlopen when an artifact compiled with --expert-parallel is loaded without a
// communicator, so single-process users need no MPI at all.
//
//===----------------------------------------------------------------------===//
#include "moert/moert_mpi.h"

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <time.h>
#include <vector>

#define MOERT_MPI_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

struct Ctx {
  MPI_Comm comm = MPI_COMM_NULL;
  double timeout = MOERT_MPI_DEFAULT_TIMEOUT_S;
  std::string error;
  std::map<size_t, MPI_Datatype> types; // a contiguous type per item size: counts stay items, not bytes
  std::vector<int> sendCounts, sendDispls, recvCounts, recvDispls;
  moert_comm api{};
};

std::string mpiError(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS)
    return "MPI error " + std::to_string(code);
  return std::string(text, size_t(len));
}

const char *fail(Ctx &c, const std::string &what) {
  c.error = what;
  return c.error.c_str();
}

// Waits for `req` until the deadline. A rank that stopped, crashed or hangs never completes its part of a
// collective; the others then fail here, with an error, instead of waiting for ever (an MPI collective cannot
// be cancelled: the caller's process is expected to end, moert_comm.abort).
const char *finish(Ctx &c, MPI_Request &req, const char *what) {
  const auto start = std::chrono::steady_clock::now();
  for (long polls = 0;; ++polls) {
    int done = 0;
    if (int rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE); rc != MPI_SUCCESS)
      return fail(c, std::string(what) + " failed: " + mpiError(rc));
    if (done)
      return nullptr;
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (waited > c.timeout) {
      char text[160];
      std::snprintf(text, sizeof text,
                    "%s did not complete in %.0f s: another rank has stopped or hangs "
                    "($MOERT_EP_TIMEOUT sets the limit)",
                    what, c.timeout);
      return fail(c, text);
    }
    if (polls > 2000) { // past the first moments, poll gently: ranks may share cores with their peers
      timespec ts{0, 20000};
      nanosleep(&ts, nullptr);
    }
  }
}

bool itemType(Ctx &c, size_t bytes, MPI_Datatype &type) {
  if (auto it = c.types.find(bytes); it != c.types.end())
    return type = it->second, true;
  if (bytes == 0 || bytes > size_t(INT_MAX) ||
      MPI_Type_contiguous(int(bytes), MPI_BYTE, &type) != MPI_SUCCESS ||
      MPI_Type_commit(&type) != MPI_SUCCESS)
    return false;
  c.types[bytes] = type;
  return true;
}

// Counts and displacements (in items) as MPI's ints; false when one does not fit.
bool layout(const int64_t *counts, int ranks, std::vector<int> &n, std::vector<int> &at) {
  n.resize(size_t(ranks)), at.resize(size_t(ranks));
  int64_t off = 0;
  for (int i = 0; i < ranks; ++i) {
    if (counts[i] < 0 || counts[i] > INT_MAX || off > INT_MAX)
      return false;
    n[size_t(i)] = int(counts[i]), at[size_t(i)] = int(off);
    off += counts[i];
  }
  return true;
}

const char *alltoallv(void *p, const void *send, const int64_t *sendCounts, void *recv,
                      const int64_t *recvCounts, size_t itemBytes) {
  Ctx &c = *static_cast<Ctx *>(p);
  MPI_Datatype type;
  if (!itemType(c, itemBytes, type))
    return fail(c, "all-to-all: items of " + std::to_string(itemBytes) + " bytes");
  if (!layout(sendCounts, c.api.size, c.sendCounts, c.sendDispls) ||
      !layout(recvCounts, c.api.size, c.recvCounts, c.recvDispls))
    return fail(c, "all-to-all: more than 2^31 items");
  MPI_Request req;
  if (int rc = MPI_Ialltoallv(send, c.sendCounts.data(), c.sendDispls.data(), type, recv, c.recvCounts.data(),
                              c.recvDispls.data(), type, c.comm, &req);
      rc != MPI_SUCCESS)
    return fail(c, "all-to-all failed: " + mpiError(rc));
  return finish(c, req, "an all-to-all exchange");
}

const char *allgatherv(void *p, const void *send, void *recv, const int64_t *counts, size_t itemBytes) {
  Ctx &c = *static_cast<Ctx *>(p);
  MPI_Datatype type;
  if (!itemType(c, itemBytes, type))
    return fail(c, "all-gather: items of " + std::to_string(itemBytes) + " bytes");
  if (!layout(counts, c.api.size, c.recvCounts, c.recvDispls))
    return fail(c, "all-gather: more than 2^31 items");
  const int me = c.api.rank;
  const char *mine = static_cast<const char *>(recv) + size_t(c.recvDispls[size_t(me)]) * itemBytes;
  MPI_Request req;
  if (int rc = MPI_Iallgatherv(send == mine ? MPI_IN_PLACE : send, c.recvCounts[size_t(me)], type, recv,
                               c.recvCounts.data(), c.recvDispls.data(), type, c.comm, &req);
      rc != MPI_SUCCESS)
    return fail(c, "all-gather failed: " + mpiError(rc));
  return finish(c, req, "an all-gather exchange");
}

void abortAll(void *p, const char *message) {
  Ctx &c = *static_cast<Ctx *>(p);
  if (message && *message)
    std::fprintf(stderr, "%s\n", message);
  std::fflush(stderr);
  std::fflush(stdout);
  MPI_Abort(c.comm == MPI_COMM_NULL ? MPI_COMM_WORLD : c.comm, 1);
  std::_Exit(1);
}

void copyError(const std::string &text, char *error, size_t bytes) {
  if (error && bytes)
    std::snprintf(error, bytes, "%s", text.c_str());
}

void finalizeAtExit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized)
    MPI_Finalize();
}

} // namespace

MOERT_MPI_EXPORT int moert_mpi_comm_create(MPI_Comm comm, double timeoutS, moert_comm **out, char *error,
                                           size_t errorBytes) {
  if (!out)
    return copyError("moert_mpi_comm_create: out must not be NULL", error, errorBytes), 1;
  *out = nullptr;
  auto *c = new Ctx;
  if (timeoutS <= 0) {
    const char *env = std::getenv("MOERT_EP_TIMEOUT");
    char *end = nullptr;
    const double v = env ? std::strtod(env, &end) : 0.0;
    if (env && (end == env || *end || !(v > 0))) {
      delete c;
      return copyError("$MOERT_EP_TIMEOUT=" + std::string(env) + ": expected seconds (> 0)", error,
                       errorBytes),
             1;
    }
    timeoutS = env ? v : MOERT_MPI_DEFAULT_TIMEOUT_S;
  }
  c->timeout = timeoutS;
  MPI_Comm local = MPI_COMM_NULL;
  int rank = 0, size = 0, localSize = 1;
  int rc = MPI_Comm_dup(comm, &c->comm);
  if (rc == MPI_SUCCESS)
    rc = MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
  if (rc == MPI_SUCCESS)
    rc = MPI_Comm_rank(c->comm, &rank);
  if (rc == MPI_SUCCESS)
    rc = MPI_Comm_size(c->comm, &size);
  if (rc == MPI_SUCCESS)
    rc = MPI_Comm_split_type(c->comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local);
  if (rc == MPI_SUCCESS)
    rc = MPI_Comm_size(local, &localSize);
  if (local != MPI_COMM_NULL)
    MPI_Comm_free(&local);
  if (rc != MPI_SUCCESS) {
    copyError("cannot set up the MPI communicator: " + mpiError(rc), error, errorBytes);
    if (c->comm != MPI_COMM_NULL)
      MPI_Comm_free(&c->comm);
    delete c;
    return 1;
  }
  c->api.struct_size = sizeof(moert_comm);
  c->api.ctx = c;
  c->api.rank = rank;
  c->api.size = size;
  c->api.local_size = localSize;
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  c->api.any_thread = level >= MPI_THREAD_SERIALIZED;
  c->api.alltoallv = alltoallv;
  c->api.allgatherv = allgatherv;
  c->api.abort = abortAll;
  *out = &c->api;
  return 0;
}

MOERT_MPI_EXPORT void moert_mpi_comm_free(moert_comm *comm) {
  if (!comm)
    return;
  auto *c = static_cast<Ctx *>(comm->ctx);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) {
    for (auto &[bytes, type] : c->types)
      MPI_Type_free(&type);
    MPI_Comm_free(&c->comm);
  }
  delete c;
}

MOERT_MPI_EXPORT moert_comm *moert_mpi_world(char *error, size_t errorBytes) {
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised) {
    int provided = 0;
    if (int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided); rc != MPI_SUCCESS) {
      copyError("MPI_Init_thread failed: " + mpiError(rc), error, errorBytes);
      return nullptr;
    }
    std::atexit(finalizeAtExit); // initialised here: finalised here
  }
  moert_comm *comm = nullptr;
  if (moert_mpi_comm_create(MPI_COMM_WORLD, 0, &comm, error, errorBytes) != 0)
    return nullptr;
  return comm;
}
