//===- ExpertParallel.cpp - MoE layers split across ranks -------------------===//
//
// One MoE dispatch on rank r of P (runExpertParallel), tokens [T r / P, T (r + 1) / P) being r's own:
//   1. ROUTE (moert_moe_phase) over its own tokens: each token's k experts and weights, and its normalised
//   row;
//   2. every (token, slot) whose expert is not a zero expert goes to the rank holding that expert: counts,
//   then
//      (expert, weight) pairs, then the rows, each an all-to-all (rows packed by destination, in token and
//      slot order, so a rank receives each expert's tokens in the order a single process would group them);
//   3. moert_dispatch_<i>_rows runs the rank's experts on what it received (the same code path, tiles and
//      GEMMs as a whole layer for those tokens), each result row scaled by its routing weight;
//   4. the results go back by the reverse all-to-all; COMBINE adds the residual, each slot's result in slot
//      order and the shared expert (SHARED ran it here, on the token's own rank, while the rows travelled);
//   5. an all-gather gives every rank every token's output, as the next (replicated) step needs.
// Results equal a single process's up to the order of floating-point sums inside an expert (its hidden dims
// split in fewer or more chunks for the rows a rank computes): docs/scale-out.md states the bound.
//
//===----------------------------------------------------------------------===//
#include "ExpertParallel.h"

#include "Model.h"
#include "ops/OpKernel.h"

#include <chrono>
#include <cstring>
#include <dlfcn.h>
#include <thread>
#include <vector>

namespace pb = moert::proto;

namespace {

// libmoert-mpi.so: $MOERT_MPI_LIBRARY, else beside libmoert.so, else wherever the dynamic loader finds it.
std::string openMpiWorld(moert_model &m, const moert_comm *&comm) {
  std::vector<std::string> tries;
  if (const char *env = std::getenv("MOERT_MPI_LIBRARY"); env && *env) {
    tries.push_back(env);
  } else {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void *>(&moert_load), &info) && info.dli_fname) {
      std::string self = info.dli_fname;
      if (size_t slash = self.rfind('/'); slash != std::string::npos)
        tries.push_back(self.substr(0, slash + 1) + "libmoert-mpi.so");
    }
    tries.push_back("libmoert-mpi.so");
  }
  std::string why;
  for (const std::string &path : tries) {
    // RTLD_GLOBAL: Open MPI's components, which libmpi opens in turn, resolve libmpi's symbols globally.
    if ((m.mpiLibrary = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL)))
      break;
    const char *e = dlerror();
    why = e ? e : path;
  }
  if (!m.mpiLibrary)
    return "needs libmoert-mpi.so to run on its ranks (built with libmoert when Open MPI's development files "
           "are installed: libopenmpi-dev; or set $MOERT_MPI_LIBRARY): " +
           why;
  using World = moert_comm *(*)(char *, size_t);
  auto world = reinterpret_cast<World>(dlsym(m.mpiLibrary, "moert_mpi_world"));
  m.freeComm = reinterpret_cast<void (*)(moert_comm *)>(dlsym(m.mpiLibrary, "moert_mpi_comm_free"));
  if (!world || !m.freeComm)
    return "libmoert-mpi.so lacks moert_mpi_world / moert_mpi_comm_free";
  char error[512] = {};
  comm = world(error, sizeof error);
  if (!comm)
    return std::string("cannot open MPI_COMM_WORLD: ") + error;
  return "";
}

// Whether a dispatch's rows travel while its shared expert runs: it has one, the communicator may be called
// from another thread, and $MOERT_EP_OVERLAP is not 0 (for measuring the difference).
bool overlap(const moert_model &m, const moert::Dispatch &x) {
  static const bool enabled = [] {
    const char *env = std::getenv("MOERT_EP_OVERLAP");
    return !env || std::strcmp(env, "0") != 0;
  }();
  return enabled && m.comm->any_thread && x.weights[MOERT_SHARED1] != nullptr;
}

std::string exchangeError(int index, const char *what) {
  return "dispatch " + std::to_string(index) + ": expert-parallel exchange: " + what;
}

} // namespace

std::string moert::openExpertParallel(moert_model &m, const moert_comm *comm) {
  const pb::Artifact &a = m.meta;
  const int ranks = int(a.expert_parallel());
  if (ranks == 0)
    return ""; // one process: a communicator given for it is not needed
  for (const pb::Step *sp : m.flat) {
    if (!sp->has_moe())
      continue;
    const auto &d = sp->moe();
    Dispatch &x = m.dispatches[d.index()];
    const std::string base = "moert_dispatch_" + std::to_string(d.index());
    x.rows = reinterpret_cast<moert_moe_fn>(dlsym(m.code, (base + "_rows").c_str()));
    x.rowsScratch = reinterpret_cast<moert_scratch_fn>(dlsym(m.code, (base + "_rows_scratch").c_str()));
    if (!x.rows || !x.rowsScratch)
      return "its code lacks the expert-parallel rows of dispatch " + std::to_string(d.index());
    if (d.expert_rank_size() != x.experts)
      return "is corrupted: dispatch " + std::to_string(d.index()) + " maps " +
             std::to_string(d.expert_rank_size()) + " experts to ranks, of " + std::to_string(x.experts);
    x.expertRank.assign(d.expert_rank().begin(), d.expert_rank().end());
    for (int32_t r : x.expertRank)
      if (r < 0 || r >= ranks)
        return "is corrupted: dispatch " + std::to_string(d.index()) + " puts an expert on rank " +
               std::to_string(r) + " of " + std::to_string(ranks);
  }
  // Without its ranks the model still loads (`moert inspect` describes it); runs then fail with m.epError.
  if (!comm)
    if (std::string why = openMpiWorld(m, comm); !why.empty())
      return m.epError = why, "";
  if (comm->struct_size < sizeof(moert_comm) || !comm->alltoallv || !comm->allgatherv || !comm->abort ||
      comm->size < 1 || comm->rank < 0 || comm->rank >= comm->size || comm->local_size < 1)
    return "moert_load_options.comm is not a valid moert_comm (struct_size, rank, size and functions)";
  m.comm = comm;
  if (comm->size != ranks)
    m.epError = "was compiled for " + std::to_string(ranks) +
                " ranks (moec compile --expert-parallel=" + std::to_string(ranks) + ") but runs on " +
                std::to_string(comm->size) + ": start it with mpirun -np " + std::to_string(ranks);
  return "";
}

int moert::defaultThreads(const moert_model &m) {
  const int cores = std::max(1, int(std::thread::hardware_concurrency()));
  return m.comm ? std::max(1, cores / m.comm->local_size) : cores;
}

std::string moert::sameOnEveryRank(moert_model &m, uint64_t hash) {
  const moert_comm &c = *m.comm;
  std::vector<uint64_t> all(static_cast<size_t>(c.size));
  std::vector<int64_t> ones(size_t(c.size), 1);
  all[size_t(c.rank)] = hash;
  if (const char *e = c.allgatherv(c.ctx, &all[size_t(c.rank)], all.data(), ones.data(), sizeof(uint64_t)))
    return std::string("expert-parallel exchange: ") + e;
  for (int r = 1; r < c.size; ++r)
    if (all[size_t(r)] != all[0])
      return "expert parallelism: rank " + std::to_string(r) +
             "'s inputs differ from rank 0's (every rank must make the same call with the same inputs)";
  return "";
}

std::string moert::runExpertParallel(moert_model &m, const Dispatch &x, int index, int64_t T,
                                     const float *input, const float *logits, const float *residual,
                                     float *output, const moert_exec &exec, uint8_t *touched,
                                     ExchangeStats &stats) {
  const moert_comm &c = *m.comm;
  const int P = c.size, me = c.rank;
  const int64_t H = x.hidden, K = x.topK, E = x.experts, N = x.routerColumns;
  const int64_t t0 = T * me / P, t1 = T * (me + 1) / P, own = t1 - t0;
  const std::string what = "dispatch " + std::to_string(index);
  const auto clock = [] { return std::chrono::steady_clock::now(); };
  auto exchange = [&](const void *send, const std::vector<int64_t> &sendCounts, void *recv,
                      const std::vector<int64_t> &recvCounts, size_t item) -> const char * {
    const auto start = clock();
    const char *e = c.alltoallv(c.ctx, send, sendCounts.data(), recv, recvCounts.data(), item);
    stats.seconds += std::chrono::duration<double>(clock() - start).count();
    for (int r = 0; r < P; ++r)
      if (r != me)
        stats.bytes += uint64_t(sendCounts[size_t(r)]) * item;
    return e;
  };
  auto block = [](size_t bytes) { return moert::allocBlock(std::max<size_t>(bytes, 64)); };

  // 1. Route this rank's tokens; the scratch keeps what SHARED and COMBINE need.
  std::vector<int32_t> chosen(static_cast<size_t>(own * K));
  std::vector<float> weight(static_cast<size_t>(own * K));
  auto normed = block(sizeof(float) * size_t(own * H));
  auto scratch = block(own ? x.scratch(own, exec.threads) : 0); // a rank may own no token (T < ranks)
  if (!normed || !scratch)
    return "out of memory for " + what;
  moert_moe_args a{};
  a.tokens = own;
  a.input = input + t0 * H;
  a.logits = logits ? logits + t0 * N : nullptr;
  a.residual = residual ? residual + t0 * H : nullptr;
  a.output = output + t0 * H;
  std::memcpy(a.weights, x.weights, sizeof a.weights);
  a.scratch = scratch.get();
  a.exec = &exec;
  a.phase = MOERT_MOE_ROUTE;
  a.routes_out = chosen.data();
  a.route_weights_out = weight.data();
  a.normed_out = reinterpret_cast<float *>(normed.get());
  if (int rc = x.run(&a))
    return what + " failed (code " + std::to_string(rc) + ")";

  // 2. Pack each (token, slot) for its expert's rank, by destination, in token and slot order.
  std::vector<int64_t> sendCounts(size_t(P), 0), recvCounts(size_t(P), 0), ones(size_t(P), 1);
  for (int32_t e : chosen) {
    if (e < 0 || e >= N)
      return what + ": routed a token to expert " + std::to_string(e) + " of " + std::to_string(N);
    if (e < E)
      ++sendCounts[size_t(x.expertRank[size_t(e)])];
  }
  std::vector<int64_t> fill(size_t(P), 0);
  for (int r = 1; r < P; ++r)
    fill[size_t(r)] = fill[size_t(r - 1)] + sendCounts[size_t(r - 1)];
  const int64_t sent = fill[size_t(P - 1)] + sendCounts[size_t(P - 1)];
  struct Route {
    int32_t expert;
    float weight;
  };
  std::vector<Route> sendRoutes(static_cast<size_t>(sent));
  std::vector<int64_t> slotIndex(size_t(own * K), -1);
  // Rows cross as f32, or as bf16 (Artifact.expert_wire): every row and result rounded, whichever rank holds
  // its expert (this one included), so the outputs do not depend on the rank count.
  const bool bf16 = m.meta.expert_wire() == pb::BF16;
  const size_t rowBytes = size_t(H) * (bf16 ? sizeof(uint16_t) : sizeof(float));
  auto narrow = [&](const float *src, char *dst) {
    if (!bf16)
      return (void)std::memcpy(dst, src, rowBytes);
    for (int64_t h = 0; h < H; ++h) {
      const uint16_t b = moert::ops::floatToBf16(src[h]);
      std::memcpy(dst + 2 * h, &b, 2);
    }
  };
  auto widen = [&](const char *src, float *dst, int64_t rows) {
    for (int64_t i = 0; bf16 && i < rows * H; ++i) {
      uint16_t b;
      std::memcpy(&b, src + 2 * i, 2);
      dst[i] = moert::ops::bf16ToFloat(b);
    }
  };
  auto sendRows = block(rowBytes * size_t(sent));
  if (!sendRows)
    return "out of memory for " + what;
  const float *xn = reinterpret_cast<const float *>(normed.get());
  for (int64_t i = 0; i < own * K; ++i) {
    const int32_t e = chosen[size_t(i)];
    if (e >= E)
      continue; // a zero expert: no output
    const int64_t at = fill[size_t(x.expertRank[size_t(e)])]++;
    sendRoutes[size_t(at)] = Route{e, weight[size_t(i)]};
    narrow(xn + (i / K) * H, sendRows.get() + size_t(at) * rowBytes);
    slotIndex[size_t(i)] = at;
  }
  normed.reset();
  if (const char *e = exchange(sendCounts.data(), ones, recvCounts.data(), ones, sizeof(int64_t)))
    return exchangeError(index, e);
  int64_t received = 0;
  for (int64_t n : recvCounts)
    received += n;
  std::vector<Route> recvRoutes(static_cast<size_t>(received));
  auto recvWire = block(rowBytes * size_t(received));
  auto recvRows = bf16 ? block(sizeof(float) * size_t(received * H)) : recvWire;
  if (!recvWire || !recvRows)
    return "out of memory for " + what;
  // The rows travel while this rank runs its tokens' shared expert (SHARED), on a thread of their own when
  // the communicator allows it (MPI progresses inside its calls: the waiting thread polls it).
  const char *sendError = nullptr;
  auto dispatchRows = [&] {
    sendError = exchange(sendRoutes.data(), sendCounts, recvRoutes.data(), recvCounts, sizeof(Route));
    if (!sendError)
      sendError = exchange(sendRows.get(), sendCounts, recvWire.get(), recvCounts, rowBytes);
  };
  a.phase = MOERT_MOE_SHARED;
  int rc = 0;
  if (overlap(m, x)) {
    std::thread rows(dispatchRows);
    rc = x.run(&a);
    rows.join();
  } else {
    dispatchRows();
    rc = x.run(&a);
  }
  if (sendError)
    return exchangeError(index, sendError);
  if (rc)
    return what + " failed (code " + std::to_string(rc) + ")";
  widen(recvWire.get(), reinterpret_cast<float *>(recvRows.get()), received);
  recvWire.reset();
  stats.rowsSent += sent - sendCounts[size_t(me)];
  stats.rowsReceived += received - recvCounts[size_t(me)];

  // 3. This rank's experts over the rows it holds.
  std::vector<int32_t> routes(static_cast<size_t>(received));
  std::vector<float> routeWeights(static_cast<size_t>(received));
  for (int64_t i = 0; i < received; ++i) {
    const Route &r = recvRoutes[size_t(i)];
    if (r.expert < 0 || r.expert >= E || x.expertRank[size_t(r.expert)] != me)
      return exchangeError(
          index, ("received a row for expert " + std::to_string(r.expert) + ", which this rank does not hold")
                     .c_str());
    routes[size_t(i)] = r.expert;
    routeWeights[size_t(i)] = r.weight;
  }
  auto results = block(sizeof(float) * size_t(received * H));
  auto rowsScratch = block(received ? x.rowsScratch(received, exec.threads) : 0);
  if (!results || !rowsScratch)
    return "out of memory for " + what;
  moert_moe_args b{};
  b.tokens = received;
  b.input = reinterpret_cast<const float *>(recvRows.get());
  b.output = reinterpret_cast<float *>(results.get());
  std::memcpy(b.weights, x.weights, sizeof b.weights);
  b.scratch = rowsScratch.get();
  b.exec = &exec;
  b.touched = touched;
  b.routes = routes.data();
  b.route_weights = routeWeights.data();
  if (int rc = x.rows(&b))
    return what + " failed (code " + std::to_string(rc) + ")";
  recvRows.reset();
  rowsScratch.reset();

  // 4. The results go back where their tokens live; COMBINE adds them in slot order.
  if (bf16)
    for (int64_t i = 0; i < received; ++i) // in place: row i's bf16 bytes end before row i + 1's f32 ones
      narrow(reinterpret_cast<const float *>(results.get()) + i * H, results.get() + size_t(i) * rowBytes);
  auto back = bf16 ? block(sizeof(float) * size_t(sent * H)) : sendRows;
  if (!back)
    return "out of memory for " + what;
  if (const char *e = exchange(results.get(), recvCounts, sendRows.get(), sendCounts, rowBytes))
    return exchangeError(index, e);
  results.reset();
  widen(sendRows.get(), reinterpret_cast<float *>(back.get()), sent);
  a.phase = MOERT_MOE_COMBINE;
  a.slot_results = reinterpret_cast<const float *>(back.get());
  a.slot_index = slotIndex.data();
  if ((rc = x.run(&a)))
    return what + " failed (code " + std::to_string(rc) + ")";

  // 5. Every rank gets every token's output.
  std::vector<int64_t> counts(static_cast<size_t>(P));
  for (int r = 0; r < P; ++r)
    counts[size_t(r)] = T * (r + 1) / P - T * r / P;
  const auto start = clock();
  const char *e = c.allgatherv(c.ctx, output + t0 * H, output, counts.data(), sizeof(float) * H);
  stats.seconds += std::chrono::duration<double>(clock() - start).count();
  stats.bytes += uint64_t(own) * uint64_t(H) * sizeof(float) * uint64_t(P - 1);
  if (e)
    return exchangeError(index, e);
  return "";
}
