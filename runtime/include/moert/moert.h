/*===- moert.h - the moert C API: load a .moex artifact and run it ----------===*
 *
 *   moert_model *model;
 *   moert_status st = moert_load("model.moex", NULL, &model);     // NULL options: defaults
 *   if (st) { fprintf(stderr, "%s\n", moert_status_message(st)); moert_status_free(st); }
 *   moert_tensor in = {"x", MOERT_F32, 2, dims, data};
 *   moert_result *res;
 *   st = moert_run(model, NULL, &in, 1, &res);
 *   const moert_tensor *out = moert_result_output(res, 0);
 *   moert_result_free(res);
 *   moert_free(model);
 *
 * Conventions: functions return a moert_status (NULL on success; otherwise an error you must free), take
 * opaque handles, options structs (NULL = defaults; set `struct_size` to sizeof the struct so the library
 * can grow them), and put out-parameters last. A loaded model is immutable: moert_run may be called on it
 * from several threads at once. Weights stay memory-mapped from the file; nothing links LLVM or MLIR.
 *
 *===----------------------------------------------------------------------===*/
#ifndef MOERT_MOERT_H
#define MOERT_MOERT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MOERT_BUILDING_LIBRARY)
#define MOERT_API __attribute__((visibility("default")))
#else
#define MOERT_API
#endif

typedef struct moert_status_s *moert_status; /* NULL = success */
typedef struct moert_model moert_model;
typedef struct moert_result moert_result;

typedef enum moert_dtype {
  MOERT_DTYPE_UNKNOWN = 0,
  MOERT_F32 = 1,
  MOERT_F16 = 2,
  MOERT_BF16 = 3,
  MOERT_I64 = 4,
  MOERT_I32 = 5,
  MOERT_I8 = 6,
  MOERT_U8 = 7,
  MOERT_BOOL = 8,
  MOERT_F64 = 9,
  MOERT_I16 = 10,
  MOERT_U16 = 11,
  MOERT_U32 = 12,
  MOERT_U64 = 13
} moert_dtype;

/* A dense row-major tensor. For inputs `data` is read only; `name` may be NULL to bind by position. */
typedef struct moert_tensor {
  const char *name;
  moert_dtype dtype;
  int32_t rank;
  const int64_t *dims;
  void *data;
} moert_tensor;

/* ONNX sequences and optionals. A model's inputs and outputs may be sequences of tensors (`seq(tensor)`) or
 * optionals (a tensor or a sequence, or nothing); moert_input_kind / moert_output_kind say which, and
 * moert_run_values / moert_result_value pass them. */
typedef enum moert_value_kind {
  MOERT_VALUE_TENSOR = 0,   /* one tensor: tensors[0] */
  MOERT_VALUE_SEQUENCE = 1, /* `count` tensors (possibly none), each of `dtype`, shapes their own */
  MOERT_VALUE_NONE = 2      /* an optional that holds nothing */
} moert_value_kind;

typedef struct moert_value {
  const char *name; /* NULL to bind by position */
  moert_value_kind kind;
  moert_dtype dtype;           /* the tensors' dtype (also for an empty sequence; any for NONE) */
  const moert_tensor *tensors; /* TENSOR: 1, SEQUENCE: `count`; their names are ignored */
  size_t count;
} moert_value;

/* What an input or output of the model is declared as. */
typedef enum moert_type_kind {
  MOERT_TYPE_TENSOR = 0,
  MOERT_TYPE_SEQUENCE = 1,
  MOERT_TYPE_OPTIONAL_TENSOR = 2,  /* a tensor or nothing */
  MOERT_TYPE_OPTIONAL_SEQUENCE = 3 /* a sequence or nothing */
} moert_type_kind;

/* Where fused MoE and linear dispatches run (every other op runs on the CPU). */
typedef enum moert_device {
  MOERT_DEVICE_CPU = 0,  /* default */
  MOERT_DEVICE_GPU = 1,  /* CUDA if its driver opens, else HIP */
  MOERT_DEVICE_CUDA = 2, /* NVIDIA, through libcuda.so.1 (the artifact needs --target=cuda code) */
  MOERT_DEVICE_HIP = 3,  /* AMD, through libamdhip64.so (the artifact needs --target=hip code) */
  MOERT_DEVICE_EMU = 4   /* the GPU path on a host emulator of the GPU (the artifact needs --target=emu code):
                            for testing without a GPU; slow */
} moert_device;

/* The most worker threads a model may have (moert_load_options.threads beyond it is an error). */
#define MOERT_MAX_THREADS 1024

/* Expert parallelism (docs/scale-out.md). An artifact compiled with `moec compile --expert-parallel=N` runs
 * on N ranks (processes) that each load it and make the same calls (moert_run, sessions, moert_generate) with
 * the same inputs, and get the same outputs. Each rank reads only the weights of its own experts (and every
 * weight outside the experts); in each MoE layer a rank routes its share of the tokens, sends each token to
 * the ranks holding its experts and gets their outputs back, through this communicator. libmoert-mpi.so makes
 * one over an MPI communicator (moert/moert_mpi.h). With no communicator given, libmoert opens
 * libmoert-mpi.so with dlopen (beside libmoert.so, or $MOERT_MPI_LIBRARY) over MPI_COMM_WORLD: `mpirun -np N`
 * needs no code. Each call returns NULL or an error message (valid until the next call); ranks must make the
 * same calls in the same order, so libmoert runs one call at a time on such a model. */
typedef struct moert_comm {
  size_t struct_size; /* sizeof(moert_comm) */
  void *ctx;
  int rank;       /* this process, 0 .. size - 1 */
  int size;       /* ranks */
  int local_size; /* ranks on this machine (the default thread count is its cores / local_size) */
  int any_thread; /* nonzero: the functions may be called from another thread than the one running the model
                     (never two at once; MPI_THREAD_SERIALIZED or more): the rows of a MoE layer with a shared
                     expert then travel while the shared expert runs */
  /* Sends send_counts[j] items of item_bytes to rank j (`send` holds them by destination, in rank order) and
   * receives recv_counts[i] items from rank i into `recv` (by source, in rank order). */
  const char *(*alltoallv)(void *ctx, const void *send, const int64_t *send_counts, void *recv,
                           const int64_t *recv_counts, size_t item_bytes);
  /* Every rank's counts[i] items into `recv`, in rank order; this rank's are at `send` (which may be their
   * place in `recv`). */
  const char *(*allgatherv)(void *ctx, const void *send, void *recv, const int64_t *counts,
                            size_t item_bytes);
  /* Ends the processes of every rank, after printing `message` (for a rank that cannot go on: the others
   * would wait for it). Does not return. */
  void (*abort)(void *ctx, const char *message);
} moert_comm;

typedef struct moert_load_options {
  size_t struct_size;  /* sizeof(moert_load_options) */
  int threads;         /* worker threads, 1..MOERT_MAX_THREADS; 0 = one per available core */
  int verify_checksum; /* 1 (default): the header, metadata and code are checked at load and each weight
                          section before the first step that reads it (load reads no weight pages);
                          2: every section at load (reads the whole file); 0: nothing */
  int device;          /* a moert_device; no driver or device for it is an error at load */
  const moert_comm *comm; /* expert parallelism: the ranks' communicator (kept by the caller while the model
                             is loaded), or NULL: libmoert-mpi's MPI_COMM_WORLD for artifacts that need one */
  int no_round_trips;     /* on a GPU, nonzero: a step the CPU runs that reads a value a GPU step made (a copy
                             back to the host inside every call) fails the run with one error naming the step
                             and the value, instead of copying it; the outputs are copied back as always.
                             `moert inspect --device=gpu` lists such steps (a session's cache appends run on
                             the device and are none). 0 (default): copied */
} moert_load_options;

typedef struct moert_run_options {
  size_t struct_size; /* sizeof(moert_run_options) */
  int profile;        /* nonzero: record each step's time (moert_result_profile_json) */
} moert_run_options;

MOERT_API const char *moert_status_message(moert_status status);
MOERT_API void moert_status_free(moert_status status);

MOERT_API moert_status moert_load(const char *path, const moert_load_options *options, moert_model **out);
/* Frees the caller's hold on the model; sessions of it that are still open keep it loaded and working until
 * the last of them is freed (the handle itself must not be used after moert_free). */
MOERT_API void moert_free(moert_model *model);
/* The tokenizer.json moec embedded in the artifact (moec compile --tokenizer, or the one next to the ONNX
 * file) and its size in bytes, valid while the model is loaded; NULL (size 0) when there is none. */
MOERT_API const char *moert_model_tokenizer(const moert_model *model, size_t *size);
/* Expert parallelism: this process's rank and the number of ranks the model runs on (0 and 1 without). */
MOERT_API void moert_ranks(const moert_model *model, int *rank, int *size);
/* Expert parallelism: ends every rank's process after printing `message` (the others would wait for this one
 * in their next MoE layer). Returns without doing anything for a model without expert parallelism. */
MOERT_API void moert_abort_ranks(const moert_model *model, const char *message);
/* Checks every section's checksum now (weights included); the error names each corrupted section. */
MOERT_API moert_status moert_verify(moert_model *model);

/* What the model takes and gives. Dims are -1 where symbolic; `symbol` names it (e.g. "T"). */
MOERT_API size_t moert_num_inputs(const moert_model *model);
MOERT_API size_t moert_num_outputs(const moert_model *model);
MOERT_API const char *moert_input_name(const moert_model *model, size_t i);
/* The dtype input i takes (MOERT_DTYPE_UNKNOWN when i is out of range). */
MOERT_API moert_dtype moert_input_dtype(const moert_model *model, size_t i);
MOERT_API const char *moert_output_name(const moert_model *model, size_t i);
/* Whether input / output i is a tensor, a sequence or an optional (MOERT_TYPE_TENSOR when out of range). */
MOERT_API moert_type_kind moert_input_kind(const moert_model *model, size_t i);
MOERT_API moert_type_kind moert_output_kind(const moert_model *model, size_t i);
/* Human-readable summary (inputs, outputs, dispatches, target, sizes, versions); valid while loaded. */
MOERT_API const char *moert_describe(const moert_model *model);
/* Describes the GPU `device` would use (name, architecture) into a string you free with free(); with
 * `measure_bandwidth` nonzero also its device-to-device copy bandwidth. */
MOERT_API moert_status moert_device_probe(moert_device device, int measure_bandwidth, char **description);
/* Benchmark helper for models loaded on a GPU: re-runs dispatch `dispatch`'s kernels `repeats` times back to
 * back on the device buffers its last moert_run left (no copies, no host synchronisation in between) and gives
 * the device time per call in microseconds and the weight bytes one call reads. */
MOERT_API moert_status moert_gpu_time(moert_model *model, size_t dispatch, int repeats, double *us_per_call,
                                      double *weight_bytes);
/* The same for linear dispatch `linear` (its weight bytes: every weight of the layer, read once a call). */
MOERT_API moert_status moert_gpu_time_linear(moert_model *model, size_t linear, int repeats,
                                             double *us_per_call, double *weight_bytes);
/* For models loaded on a GPU: the bytes the last finished moert_run copied to the device (inputs of GPU steps
 * that had no current device copy) and back to the host (GPU steps' results read by host steps or returned).
 * Activations passed from one GPU step to the next (views between them included) are not copied. A session's
 * KV caches stay in device memory between its calls (appended and attended there; copied whole only when the
 * session moves positions on the host: a sequence leaving a batch, a buffer growing). */
MOERT_API moert_status moert_gpu_traffic(const moert_model *model, uint64_t *to_device, uint64_t *to_host);
/* For models loaded on a GPU: how runs send their kernels to the device. While a run is open, its kernel
 * launches and small uploads are recorded and go to the device as CUDA / HIP graphs of at most
 * MOERT_GPU_GRAPHS kernels (environment, read at load; default 16; 0 launches every kernel directly), sent
 * when full or when the host needs the device's work done (a copy back, the run's end). The k-th graph of a
 * run is the k-th of the run before, its nodes' arguments and grids updated in place, when it launches the
 * same kernels (decode steps repeat), else it is built anew. `state`: "on (...)" or "off (why)" (the
 * environment, GPU code from before graphs, a driver without the graph API, or the driver refusing one),
 * valid while the model is; the counts are since the load. */
typedef struct moert_gpu_graph_stats {
  const char *state;
  uint64_t graphs;  /* graphs launched */
  uint64_t builds;  /* graphs built */
  uint64_t updates; /* graph nodes updated in place */
  uint64_t staged;  /* uploads staged into graphs */
} moert_gpu_graph_stats;
MOERT_API moert_status moert_gpu_graphs(moert_model *model, moert_gpu_graph_stats *out);
/* For models loaded on a GPU: the device memory held for activations now. A run whose input shape libmoert
 * has seen (or any after the first: sizes from earlier runs, grown) places the memory plan's values in one
 * device arena laid out as its host arena; `arenas` counts the one kept between runs and those runs hold.
 * Values outside the plan (inputs, a first run's) take buffers from a pool that keeps them: `pooled`. */
MOERT_API moert_status moert_gpu_activation_memory(const moert_model *model, uint64_t *arenas,
                                                   uint64_t *pooled);

/* Runs the model on `inputs` (all of them, by name or in order). Shapes and dtypes are checked against the
 * artifact; symbolic dims (the token count) are bound from the inputs. */
MOERT_API moert_status moert_run(moert_model *model, const moert_run_options *options, const moert_tensor *inputs,
                                 size_t num_inputs, moert_result **out);
/* The same with inputs that may be sequences or optionals (each as the model declares it: a tensor where it
 * takes a tensor, a sequence or NONE where it takes an optional, ...). */
MOERT_API moert_status moert_run_values(moert_model *model, const moert_run_options *options,
                                        const moert_value *inputs, size_t num_inputs, moert_result **out);
MOERT_API size_t moert_result_num_outputs(const moert_result *result);
/* Output i (name, dtype, dims, data owned by the result); NULL when it is a sequence or an empty optional. */
MOERT_API const moert_tensor *moert_result_output(const moert_result *result, size_t i);
/* Output i as a value (a tensor, a sequence or NONE; tensors and data owned by the result). */
MOERT_API const moert_value *moert_result_value(const moert_result *result, size_t i);
/* Chrome-trace JSON of the run's steps when run with profile set, else NULL. */
MOERT_API const char *moert_result_profile_json(const moert_result *result);
MOERT_API void moert_result_free(moert_result *result);

/* ---- Generation: a decoder with KV caches (an artifact whose `moert inspect` shows "decoder")
 * ----------------
 *
 *   moert_session *s;
 *   moert_session_create(model, NULL, &s);
 *   int64_t out[32]; size_t n; moert_generate_stats stats;
 *   moert_generate(s, prompt, prompt_len, NULL, out, 32, &n, &stats);   // greedy, 32 new tokens
 *   moert_session_free(s);
 *
 * A session holds `batch` sequences (default 1) side by side and their KV caches between calls: the graph's
 * `past_key_values.*` inputs are fed from the session and its `present.*` outputs kept (appended to in place
 * when only attention dispatches read the caches: `moert inspect` says which); `input_ids`, `attention_mask`
 * (ones, or the padding mask given) and `position_ids` (each new token's count of earlier non-padding
 * positions in its sequence; 1 for padding, as transformers' generate makes them) are made by the session.
 * Sequences of different lengths in one batch are left-padded: the padded positions' mask is 0. One session
 * per thread; many sessions may share a model, and each keeps it loaded (moert_free while one is open is
 * safe). */
typedef struct moert_session moert_session;

typedef struct moert_session_options {
  size_t struct_size;  /* sizeof(moert_session_options) */
  int64_t max_context; /* positions the caches hold at most (prompt + generated); 0 = 4096 */
  int profile;         /* nonzero: keep a Chrome trace of each call's steps (moert_session_profile_json) */
  moert_dtype cache_dtype; /* how the KV caches are stored: MOERT_F32 (default; also 0), MOERT_BF16 or
                              MOERT_F16 (half the bytes to read per token; keys and values rounded to
                              nearest even as they are appended), MOERT_I8 (int8 codes with an f32 scale per
                              32 values: 0.28x the bytes of f32 at head dim 128; each block rounded as
                              round-half-even(x * 127 / max|x|)); narrow caches need a model whose caches are
                              appended in place, `moert inspect` */
  int64_t batch;           /* sequences held side by side (0 = 1); more than one: moert_session_append_batch,
                              moert_generate_batch */
} moert_session_options;

MOERT_API moert_status moert_session_create(moert_model *model, const moert_session_options *options,
                                            moert_session **out);
MOERT_API void moert_session_free(moert_session *session);
/* Runs `n` new tokens and appends them to the caches; *logits is the last token's `*vocab` logits, valid
 * until the next call on the session. A session of batch 1 only. */
MOERT_API moert_status moert_session_append(moert_session *session, const int64_t *tokens, size_t n,
                                            const float **logits, size_t *vocab);
/* The same for every sequence of the session's batch: `tokens` [batch][n], n new tokens each; `mask`
 * [batch][n] (NULL: all 1) is 0 at padding positions, 1 elsewhere, and each sequence's last new token must
 * not be padding unless its whole row is (it sits the call out: an idle place of the batch, its logits NaN).
 * *logits is [batch][*vocab]: each sequence's last token's logits, valid until the next call on the session.
 * When the call would pass the context, padding no sequence needs is dropped first (as
 * moert_session_reset_sequence does; decoders that take position_ids). GroupQueryAttention decoders (`moert
 * inspect`: "each sequence's positions from row 0") keep each sequence from the start of its caches: the
 * session moves each sequence's tokens of a padded first prompt to the front of its row (right padding, as
 * ONNX Runtime reads them), and later calls take no padding (an error) and no idle rows. */
MOERT_API moert_status moert_session_append_batch(moert_session *session, const int64_t *tokens, size_t n,
                                                  const int64_t *mask, const float **logits, size_t *vocab);
/* Ends sequence `sequence` of the batch and frees its place for a new one (continuous batching): its cached
 * positions become padding, masked from every later call, and its next tokens start a sequence at position 0;
 * the other sequences keep theirs. Then each sequence's cached tokens are moved together (in order) and the
 * padding no sequence needs is dropped, so the length becomes the most tokens any sequence holds. A new
 * sequence joins with moert_session_append_batch: its prompt in its row, the others' next tokens
 * right-aligned after padding; a row of padding only sits a call out. Needs a decoder that takes position_ids
 * (each token gets its count of earlier tokens; without them positions are cache indices and a batch of more
 * than one is refused); refused for GroupQueryAttention decoders (see moert_session_append_batch). */
MOERT_API moert_status moert_session_reset_sequence(moert_session *session, size_t sequence);
/* Cached positions (the batch's common length: every sequence's tokens and padding). */
MOERT_API size_t moert_session_length(const moert_session *session);
/* Keeps the first `length` cached positions and forgets the rest (0: all; more than cached is an error). */
MOERT_API moert_status moert_session_rewind(moert_session *session, size_t length);
/* With moert_session_options.profile: the last call's Chrome trace (as moert_result_profile_json), valid
 * until the next call on the session; NULL without profiling or before the first call. */
MOERT_API const char *moert_session_profile_json(const moert_session *session);

typedef struct moert_generate_options {
  size_t struct_size;   /* sizeof(moert_generate_options) */
  int max_new_tokens;   /* default 32 */
  int greedy;           /* nonzero (default): the most likely token (the lowest id on ties); 0: sample */
  float temperature;    /* sampling: logits divided by it (default 1, > 0) */
  int top_k;            /* sampling: only the k most likely tokens (0 = all, default) */
  float top_p;          /* sampling: the fewest most likely tokens whose probability reaches p (default 1) */
  uint64_t seed;        /* sampling: the random stream (same seed, same tokens) */
  int64_t eos_token_id; /* stop after generating it (-1 = never, default) */
  /* Streaming: called with each token as it is picked (the sequence's index in the batch, the token), before
   * the next step runs; a nonzero return stops the generation after this step (the tokens so far are the
   * result). NULL (default): none. */
  int (*on_token)(void *user_data, int64_t sequence, int64_t token);
  void *user_data; /* passed to on_token */
} moert_generate_options;

typedef struct moert_generate_stats {
  size_t prompt_tokens, new_tokens;
  double prefill_ms; /* the prompt's one call */
  double decode_ms;  /* the calls for generated tokens (new_tokens - 1 of them) */
} moert_generate_stats;

/* Appends `prompt` (n >= 1 tokens) to the session, then picks up to max_new_tokens tokens one at a time
 * (each fed back before the next is picked) into out[0 .. *num_out). `stats` may be NULL. A session of
 * batch 1 only. */
MOERT_API moert_status moert_generate(moert_session *session, const int64_t *prompt, size_t n,
                                      const moert_generate_options *options, int64_t *out,
                                      size_t out_capacity, size_t *num_out, moert_generate_stats *stats);
/* The same for every sequence of the session's batch: `prompts` [batch][n] with `mask` as
 * moert_session_append_batch takes it (NULL: no padding); sequence b's tokens go to
 * out[b * out_capacity ...], num_out[b] of them. A sequence that generated eos_token_id stops there (the
 * others go on; it is fed its last token meanwhile, whose results are not used). Sampling draws from one
 * random stream, sequence by sequence. stats count every sequence's prompt tokens (padding excluded) and new
 * tokens. */
MOERT_API moert_status moert_generate_batch(moert_session *session, const int64_t *prompts, size_t n,
                                            const int64_t *mask, const moert_generate_options *options,
                                            int64_t *out, size_t out_capacity, size_t *num_out,
                                            moert_generate_stats *stats);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_MOERT_H */
