//===- Model.h - a loaded artifact (internal to libmoert) --------------------===//
#ifndef MOERT_SRC_MODEL_H
#define MOERT_SRC_MODEL_H

#include "Gpu.h"
#include "Ops.h"
#include "ThreadPool.h"
#include "kernels/cpu/moert_kernel_abi.h"
#include "moert/moert.h"
#include "runtime/artifact.pb.h"

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

struct moert_status_s {
  std::string message;
};

namespace moert {

moert_status makeError(std::string message);

/// A control-flow block as loaded: its direct steps (indices into moert_model::flat) and every value it
/// defines (its inputs, and the outputs of its steps and of blocks nested in it), cleared after each run.
struct BlockSteps {
  std::vector<int> steps;
  std::vector<uint32_t> defined;
};

struct Dispatch {
  moert_moe_fn run = nullptr;
  moert_scratch_fn scratch = nullptr;
  const void *weights[MOERT_MOE_SLOTS] = {};
  int64_t hidden = 0, routerColumns = 0, experts = 0, topK = 0;
  // Expert parallelism (moert_model::comm): the routed experts over rows other ranks send
  // (moert_dispatch_<i>_rows), and the rank holding each expert.
  moert_moe_fn rows = nullptr;
  moert_scratch_fn rowsScratch = nullptr;
  std::vector<int32_t> expertRank;
};

/// A linear dispatch's entry point and weights (moert_linear_<i>).
struct Linear {
  moert_linear_fn run = nullptr;
  moert_scratch_fn scratch = nullptr;
  const void *weights[MOERT_LIN_SLOTS] = {};
  int64_t k = 0, n = 0;
};

/// An attention dispatch's entry point (moert_attention_<i>) and its head counts and dims.
struct Attention {
  moert_attention_fn run = nullptr;
  moert_attention_scratch_fn scratch = nullptr;
  int64_t qHeads = 0, kvHeads = 0, keyDim = 0, valueDim = 0;
};

/// A session's KV cache, appended in place by a run: [batch][heads][capacity] rows of a head dim each in
/// `dtype` (f32; bf16 / f16: the appended rows rounded to nearest even; i8: int8 rows with block scales,
/// MOERT_KV_INT8_BLOCK), of which the first `length` positions (the past input's length) are filled.
/// On a GPU, `device` (when set) is the session's copy of the buffer in device memory: the run appends and
/// attends there (gpu::bindCache). The past input and the present are views of the buffer (their dims say
/// the filled positions, not its layout): on a GPU the run moves the cache's bytes as `bytes` from `data`.
struct CacheBinding {
  char *data = nullptr;
  int64_t capacity = 0;
  int dtype = proto::F32;
  gpu::CacheCopy *device = nullptr;
  size_t bytes = 0; // the buffer's: [batch][heads][capacity] rows
};
/// The kernels' storage (moert_storage) of keys / values of `dtype` (proto): f32, or a session's bf16 / f16 /
/// int8 cache.
inline int32_t kvStorage(int dtype) {
  return dtype == proto::BF16  ? MOERT_STORAGE_BF16
         : dtype == proto::F16 ? MOERT_STORAGE_F16
         : dtype == proto::I8  ? MOERT_STORAGE_INT8
                               : MOERT_STORAGE_F32;
}
/// Bytes of one position's row of `dim` values in a session cache of `dtype` (a CacheBinding's).
inline size_t cacheRowBytes(int dtype, int64_t dim) {
  return dtype == proto::I8 ? size_t(moert_kv_int8_row_bytes(dim)) : dtypeSize(dtype) * size_t(dim);
}

/// Loads the shared object `bytes` from memory (a memfd; nothing written to disk) under a path no loaded
/// library has. `fd` receives the memfd, to close after dlclose. Null + `why` on failure.
void *loadFromMemory(const unsigned char *bytes, uint64_t size, const char *name, int &fd, std::string &why);

// stepReads / stepWrites: GpuPlan.h (included through Gpu.h).

/// Marks (moert_model::appendsCache) the step appending each decoder cache's new positions when every cache
/// can be appended in place: its past is read only by that `Concat(past, new)` along the length axis or
/// `moec.KvCacheUpdate` (whose output is the present) and by `Shape`, and its present only by attention
/// dispatches' keys/values, `Shape` and the graph output. Also sets moert_model::perSequenceCaches.
void findCacheAppends(struct ::moert_model &m);

/// Sets moert_model::logitsStep: the linear dispatch step that writes the decoder's logits output, when
/// nothing else reads them and it adds no residual (each logits row then depends on its own input row only).
void findLogitsStep(struct ::moert_model &m);

/// moert_run's body. With `caches` (one per decoder cache, for a session): the past inputs point into those
/// buffers, each cache's append step writes the new positions there instead of concatenating, attention
/// dispatches read the keys/values in place, and the presents come back as dims without data. With
/// `logitsRows` ([batch]: a session, which returns one row of logits per sequence, its last token's), the
/// logits step (findLogitsStep) multiplies only row logitsRows[b] of sequence b: the logits come back as
/// [batch, 1, vocab].
moert_status runProgram(struct ::moert_model *m, const moert_run_options *options, const moert_value *inputs,
                        size_t numInputs, const CacheBinding *caches, moert_result **out,
                        const int64_t *logitsRows = nullptr);
/// The same with tensor inputs only.
moert_status runProgram(struct ::moert_model *m, const moert_run_options *options, const moert_tensor *inputs,
                        size_t numInputs, const CacheBinding *caches, moert_result **out,
                        const int64_t *logitsRows = nullptr);

/// Checks the checksums of the weight sections step `step` reads that no run has checked yet (artifact format
/// 2: with moert_load_options.verify_checksum = 1 each weight section is checked before its first use, not at
/// load). An error names the first corrupted section.
/// `deferExperts`: a CPU MoE dispatch's per-expert sections are left to verifyStepExperts, after the dispatch
/// has said which experts it read.
moert_status verifyStepSections(struct ::moert_model &m, int step, bool deferExperts = false);

/// Checks, in step `step`'s per-expert sections, the chunks of the experts with `touched[e]` set (e <
/// experts) that no run has checked yet. An error names the section and the expert.
moert_status verifyStepExperts(struct ::moert_model &m, int step, const uint8_t *touched, int64_t experts);
/// True when every per-expert section of step `step` has been checked whole (runs need not say which experts
/// they read any more).
bool expertsChecked(const struct ::moert_model &m, int step);

/// Checks every section's checksum (moert_verify); the error names each corrupted section.
moert_status verifyAllSections(struct ::moert_model &m);

/// Loads and validates `path`; on success fills `m`. Every inconsistency is one error naming the file.
/// `loadCode = false` validates everything but does not load the code section (the loader fuzzer: a crafted
/// shared object is not something dlopen can be asked to survive; artifacts are code, trusted like a .so).
moert_status loadArtifact(const std::string &path, const moert_load_options &options, struct ::moert_model &m,
                          bool loadCode = true);

/// Gives back one hold on `m` (moert_model::holders); the last unloads it. Null is ignored.
void releaseModel(struct ::moert_model *m);

} // namespace moert

struct moert_model {
  // Who holds the model: moert_free's caller and each open session (moert_session_create takes a hold,
  // moert_session_free gives it back), so a session may outlive moert_free; the last release unloads it
  // (moert::releaseModel).
  std::atomic<int> holders{1};
  std::string path;
  const unsigned char *map = nullptr; // the whole file, mmap'd read-only
  size_t mapSize = 0;
  moert::proto::Artifact meta;
  void *code = nullptr; // dlopen handle
  int codeFd = -1;
  std::vector<moert::Dispatch> dispatches; // by MoEDispatch.index
  std::vector<moert::Linear> linears;      // by LinearDispatch.index
  std::vector<moert::Attention> attentions;        // by AttentionDispatch.index
  // Steps are numbered in pre-order across control-flow blocks (the per-step tables below use that index).
  std::vector<const moert::proto::Step *> flat;       // every step, nested ones after their op
  std::vector<int> depth;                             // per step: how many blocks it is nested in
  std::vector<int> topSteps;                          // the program's own steps
  std::vector<std::vector<moert::BlockSteps>> blocks; // per step: its blocks (control-flow op steps)
  std::vector<std::vector<uint32_t>> releaseAfter; // per step: values last read there (freed after it)
  std::vector<const moert::OpEntry *> opKernels;   // per step: its op kernel, resolved at load (null: not an op)
  // Per step: the decoder cache (Program.decoder.caches index) whose past this step's Concat extends, when a
  // session can run that append in place (moert::findCacheAppends), else -1. All -1 unless every cache can.
  std::vector<int> appendsCache;
  // Per step: the decoder cache whose append (a Concat(past, new) in appendsCache) reads this step's output
  // and nothing else does: a moec.Rotary or a Transpose(perm [0, 2, 1, 3]) making the new positions, which
  // on a GPU writes them into the session's device cache itself (gpu::CacheWrite); else -1.
  std::vector<int> cacheProducer;
  // Per step: a later moec.Rotary launched with this one on a GPU (the keys' with the queries': one launch),
  // else -1. The later one writes its cache (cacheProducer), reads the same cos / sin tables, and everything
  // it reads is made before this step.
  std::vector<int> rotaryPartner;
  bool cachesConcatenated = false; // every present is Concat(past, new): the mask then spans past + new
  // A moec.KvCacheUpdate extends a decoder past (GroupQueryAttention's caches): the caches hold each
  // sequence's positions from row 0, as many as its attention mask counts, not the batch's at one common
  // length.
  bool perSequenceCaches = false;
  int logitsStep = -1; // the linear step writing the decoder's logits (moert::findLogitsStep), or -1
  // Checksums: moert_load_options.verify_checksum (0 none; 1 header, metadata and code at load, each weight
  // section before the first step reading it; 2 every section at load), each section's state (0 unchecked,
  // 1 good, 2 corrupted: checked once, by whichever run gets there first) and the weight sections per step.
  int verifyLevel = 1;
  std::unique_ptr<std::atomic<uint8_t>[]> sectionState;
  // Sections checksummed per chunk (Section.chunk_checksums: a MoE dispatch's per-expert slots): chunk c of
  // section i has state chunkState[chunkBase[i] + c]; the section's own state turns 1 once every chunk is
  // good.
  std::vector<uint32_t> chunkBase;
  std::unique_ptr<std::atomic<uint8_t>[]> chunkState;
  std::vector<std::vector<int>> stepSections;
  std::unique_ptr<moert::ThreadPool> pool;
  moert::gpu::DevicePtr gpu; // set when dispatches run on a GPU (moert_load_options.device)
  // Per step: whether it is a graph op the device's kernels run (gpu::graphOpCandidate) that may run there
  // (gpu::opQualifies and planOp decide at run time): not when the load-time plan (moert inspect's) finds its
  // inputs current on the host and its result read by host steps only.
  std::vector<char> gpuOps;
  // Expert parallelism (Artifact.expert_parallel; runtime/src/ExpertParallel.cpp): the ranks' communicator
  // (the caller's, or libmoert-mpi's over MPI_COMM_WORLD, which `mpiLibrary` then holds and frees), and the
  // lock that keeps the ranks' calls in one order.
  const moert_comm *comm = nullptr;
  void *mpiLibrary = nullptr;
  void (*freeComm)(moert_comm *) = nullptr;
  std::mutex commMutex;
  std::string epError; // why this expert-parallel model cannot run here (no MPI, a wrong rank count)
  std::atomic<uint64_t> gpuToDevice{0}, gpuToHost{0}; // bytes copied by the last finished run (GPU only)
  std::string gpuGraphs;                              // moert_gpu_graphs's state, as last asked
  bool noRoundTrips =
      false; // moert_load_options.no_round_trips: a host step reading a GPU step's value fails
  std::string description;
  // The memory plan's buffer sizes, learned per input shape (a run measures them; later runs with the shape
  // place every planned value in one arena), and one spare arena kept between runs. A run with a shape not
  // seen before (each decode step: its past is one longer) uses `grownBufferBytes`: each buffer's size in the
  // runs so far, rounded up to a power of two when it grows, and cut back to the one over a run's when that
  // run's is under a quarter of it (decode after a long prompt). A value that does not fit its buffer gets a
  // block of its own, and the layout (on a GPU, the device addresses too) stays the same over many decode
  // steps. A spare arena over twice the size a run asks for is let go rather than kept.
  bool planIgnoresViews = false; // the artifact's plan gives a view a buffer: runs do not use the plan
  std::mutex planMutex;
  std::map<std::vector<int64_t>, std::vector<uint64_t>> bufferBytes;
  std::vector<uint64_t> grownBufferBytes;
  std::shared_ptr<char> spareArena;
  size_t spareArenaBytes = 0;
  ~moert_model();
};

/// One run's outputs (moert_run's result; sessions take their buffers over instead of copying them).
struct moert_result {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> dims;
  std::vector<std::shared_ptr<char>> data; // the outputs' bytes (buffers handed over by the run, or copies)
  std::vector<moert_tensor> tensors;
  // Every output as a value; a sequence's tensors (their dims and bytes) are kept per output here.
  std::vector<moert_value> values;
  std::vector<int> kinds; // moert_value_kind per output
  std::vector<std::vector<std::vector<int64_t>>> elementDims;
  std::vector<std::vector<std::shared_ptr<char>>> elementData;
  std::vector<std::vector<moert_tensor>> elementTensors;
  std::string profile;
  bool hasProfile = false;
};

#endif // MOERT_SRC_MODEL_H
