//===- ExpertParallel.h - MoE layers split across ranks (internal) -----------===//
//
// Artifacts compiled with `moec compile --expert-parallel=N` run on N ranks that make the same calls with the
// same inputs. Everything but the routed experts runs on every rank; in each MoE dispatch a rank routes its
// share of the tokens, sends each (token, slot) to the rank holding the slot's expert, runs its own experts
// on the rows it received, sends the results back and combines its tokens; the ranks then gather every
// token's output. Design, numerics and costs: docs/scale-out.md.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SRC_EXPERTPARALLEL_H
#define MOERT_SRC_EXPERTPARALLEL_H

#include "kernels/cpu/moert_kernel_abi.h"
#include "moert/moert.h"

#include <cstdint>
#include <string>

struct moert_model;

namespace moert {

struct Dispatch;

/// At load, for an artifact compiled with --expert-parallel: takes `comm` (or opens libmoert-mpi's
/// MPI_COMM_WORLD), checks it has the artifact's rank count and each dispatch's rows entry point and expert
/// map. Empty on success, else the error (without the path).
std::string openExpertParallel(moert_model &m, const moert_comm *comm);

/// The thread count a model gets when the caller asks for none: the cores divided between the ranks that
/// share this machine.
int defaultThreads(const moert_model &m);

/// What one expert-parallel MoE layer exchanged and how long its exchanges took.
struct ExchangeStats {
  int64_t rowsSent = 0, rowsReceived = 0; // (token, slot) rows sent to other ranks / received from them
  uint64_t bytes = 0;                     // bytes this rank sent (dispatch, return and gather)
  double seconds = 0;                     // in the exchanges (waiting for other ranks included)
};

/// One MoE dispatch over `T` tokens on every rank: input [T][H], logits [T][N] or null, residual [T][H] or
/// null, output [T][H] (every row, on every rank). `touched` [E] (or null) gets the experts this rank read.
std::string runExpertParallel(moert_model &m, const Dispatch &x, int index, int64_t T, const float *input,
                              const float *logits, const float *residual, float *output,
                              const moert_exec &exec, uint8_t *touched, ExchangeStats &stats);

/// Fails unless every rank's `hash` (of its call's inputs, moert::format::checksum) is rank 0's: ranks that
/// computed on different data would exchange tokens that mean nothing.
std::string sameOnEveryRank(moert_model &m, uint64_t hash);

} // namespace moert

#endif // MOERT_SRC_EXPERTPARALLEL_H
