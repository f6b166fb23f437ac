"""Python access to libmoert (its C API, runtime/include/moert/moert.h) through ctypes, with NumPy arrays.

    import moert
    rt = moert.Runtime("build/lib/libmoert.so")
    model = rt.load("model.moex", threads=2)
    outputs = model.run({"x": x})          # {name: np.ndarray}
    tokens, stats = model.generate([3, 1, 4], max_new_tokens=32)   # a decoder with KV caches: greedy
    tokens, stats = model.generate("Once upon a time")   # text, with tokenizer.json next to the model:
    print(stats["text"])                                   # the new tokens decoded (needs `tokenizers`)
    tokens, stats = model.generate([[3, 1, 4], [0, 2, 7]], attention_mask=[[1, 1, 1], [0, 1, 1]])  # a batch
    model.close()

Used by the tests and the benchmarks; nothing here is needed to run an artifact from C or the `moert` CLI.
"""
import ctypes
import os

import numpy as np

# moert_dtype <-> NumPy (bf16 has no NumPy dtype: its tensors come back as uint16 bit patterns).
_DTYPES = {1: np.float32, 2: np.float16, 3: np.uint16, 4: np.int64, 5: np.int32, 6: np.int8, 7: np.uint8,
           8: np.bool_, 9: np.float64, 10: np.int16, 11: np.uint16, 12: np.uint32, 13: np.uint64}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items() if k != 3}


class _Tensor(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int), ("rank", ctypes.c_int32),
                ("dims", ctypes.POINTER(ctypes.c_int64)), ("data", ctypes.c_void_p)]


class _Value(ctypes.Structure):  # moert_value: a tensor, a sequence of tensors, or an empty optional
    _fields_ = [("name", ctypes.c_char_p), ("kind", ctypes.c_int), ("dtype", ctypes.c_int),
                ("tensors", ctypes.POINTER(_Tensor)), ("count", ctypes.c_size_t)]


_VALUE_TENSOR, _VALUE_SEQUENCE, _VALUE_NONE = 0, 1, 2
_TYPE_SEQUENCE, _TYPE_OPTIONAL_TENSOR, _TYPE_OPTIONAL_SEQUENCE = 1, 2, 3


def _array(t):
    """A moert_tensor's elements as a NumPy array (a copy)."""
    shape = tuple(t.dims[d] for d in range(t.rank))
    dtype = np.dtype(_DTYPES[t.dtype])
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0 or not t.data:
        return np.zeros(shape, dtype)
    buf = (ctypes.c_char * (count * dtype.itemsize)).from_address(t.data)
    return np.frombuffer(bytes(buf), dtype).reshape(shape)


class _LoadOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("threads", ctypes.c_int), ("verify_checksum", ctypes.c_int),
                ("device", ctypes.c_int), ("comm", ctypes.c_void_p), ("no_round_trips", ctypes.c_int)]


class _SessionOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("max_context", ctypes.c_int64), ("profile", ctypes.c_int),
                ("cache_dtype", ctypes.c_int), ("batch", ctypes.c_int64)]


# moert_dtype for a session's KV caches (bf16 has no NumPy dtype: _DTYPES' 3)
CACHE_DTYPES = {"f32": _CODES[np.dtype(np.float32)], "fp32": _CODES[np.dtype(np.float32)], "bf16": 3,
                "f16": _CODES[np.dtype(np.float16)], "fp16": _CODES[np.dtype(np.float16)],
                "int8": _CODES[np.dtype(np.int8)], "i8": _CODES[np.dtype(np.int8)]}


def _session_options(max_context, profile, cache_dtype, batch=1):
    if cache_dtype not in CACHE_DTYPES:
        raise Error(f"cache_dtype {cache_dtype!r}: expected one of f32, bf16, f16, int8")
    return _SessionOptions(ctypes.sizeof(_SessionOptions), max_context, 1 if profile else 0, CACHE_DTYPES[cache_dtype],
                           batch)


def _batch_ids(tokens, mask):
    """Token ids and a padding mask (or None) as contiguous int64 [B, n] arrays."""
    ids = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64))
    if ids.ndim != 2:
        raise Error(f"a batch of token ids is [batch, n]; got shape {list(ids.shape)}")
    if mask is None:
        return ids, None
    m = np.ascontiguousarray(np.asarray(mask, dtype=np.int64))
    if m.shape != ids.shape:
        raise Error(f"attention_mask has shape {list(m.shape)}, the token ids {list(ids.shape)}")
    return ids, m


def _tokenizer_class(what):
    """The `tokenizers` package's Tokenizer, which reads tokenizer.json files; one Error when it is missing."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise Error(f"{what}: reading a tokenizer.json needs the `tokenizers` package (pip install tokenizers)") \
            from None
    return Tokenizer


_ON_TOKEN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


class _GenerateOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("max_new_tokens", ctypes.c_int), ("greedy", ctypes.c_int),
                ("temperature", ctypes.c_float), ("top_k", ctypes.c_int), ("top_p", ctypes.c_float),
                ("seed", ctypes.c_uint64), ("eos_token_id", ctypes.c_int64), ("on_token", _ON_TOKEN),
                ("user_data", ctypes.c_void_p)]


class _GenerateStats(ctypes.Structure):
    _fields_ = [("prompt_tokens", ctypes.c_size_t), ("new_tokens", ctypes.c_size_t), ("prefill_ms", ctypes.c_double),
                ("decode_ms", ctypes.c_double)]


class _GraphStats(ctypes.Structure):
    _fields_ = [("state", ctypes.c_char_p), ("graphs", ctypes.c_uint64), ("builds", ctypes.c_uint64),
                ("updates", ctypes.c_uint64), ("staged", ctypes.c_uint64)]


DEVICES = {"cpu": 0, "gpu": 1, "cuda": 2, "hip": 3, "emu": 4}  # moert_device


class Error(RuntimeError):
    """A moert_status: the library's one-line message."""


class Runtime:
    def __init__(self, library):
        lib = self.lib = ctypes.CDLL(library)
        vp = ctypes.c_void_p
        lib.moert_status_message.restype = ctypes.c_char_p
        lib.moert_status_message.argtypes = [vp]
        lib.moert_status_free.argtypes = [vp]
        lib.moert_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(_LoadOptions), ctypes.POINTER(vp)]
        lib.moert_load.restype = vp
        lib.moert_run.argtypes = [vp, vp, ctypes.POINTER(_Tensor), ctypes.c_size_t, ctypes.POINTER(vp)]
        lib.moert_run.restype = vp
        lib.moert_num_inputs.argtypes = [vp]
        lib.moert_num_inputs.restype = ctypes.c_size_t
        lib.moert_input_name.argtypes = [vp, ctypes.c_size_t]
        lib.moert_input_name.restype = ctypes.c_char_p
        lib.moert_input_dtype.argtypes = [vp, ctypes.c_size_t]
        lib.moert_input_dtype.restype = ctypes.c_int
        lib.moert_result_num_outputs.argtypes = [vp]
        lib.moert_result_num_outputs.restype = ctypes.c_size_t
        lib.moert_result_output.restype = ctypes.POINTER(_Tensor)
        lib.moert_result_output.argtypes = [vp, ctypes.c_size_t]
        lib.moert_run_values.argtypes = [vp, vp, ctypes.POINTER(_Value), ctypes.c_size_t, ctypes.POINTER(vp)]
        lib.moert_run_values.restype = vp
        lib.moert_model_tokenizer.restype = ctypes.c_void_p
        lib.moert_model_tokenizer.argtypes = [vp, ctypes.POINTER(ctypes.c_size_t)]
        lib.moert_result_value.restype = ctypes.POINTER(_Value)
        lib.moert_result_value.argtypes = [vp, ctypes.c_size_t]
        lib.moert_input_kind.argtypes = [vp, ctypes.c_size_t]
        lib.moert_input_kind.restype = ctypes.c_int
        lib.moert_result_free.argtypes = [vp]
        lib.moert_free.argtypes = [vp]
        lib.moert_ranks.argtypes = [vp, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
        lib.moert_verify.restype = vp
        lib.moert_verify.argtypes = [vp]
        lib.moert_session_create.argtypes = [vp, ctypes.POINTER(_SessionOptions), ctypes.POINTER(vp)]
        lib.moert_session_create.restype = vp
        lib.moert_session_free.argtypes = [vp]
        lib.moert_generate.argtypes = [vp, ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t,
                                       ctypes.POINTER(_GenerateOptions), ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t,
                                       ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(_GenerateStats)]
        lib.moert_generate.restype = vp
        lib.moert_session_append.argtypes = [vp, ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t,
                                             ctypes.POINTER(ctypes.POINTER(ctypes.c_float)),
                                             ctypes.POINTER(ctypes.c_size_t)]
        lib.moert_session_append.restype = vp
        lib.moert_session_append_batch.argtypes = [vp, ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t,
                                                   ctypes.POINTER(ctypes.c_int64),
                                                   ctypes.POINTER(ctypes.POINTER(ctypes.c_float)),
                                                   ctypes.POINTER(ctypes.c_size_t)]
        lib.moert_session_append_batch.restype = vp
        lib.moert_generate_batch.argtypes = [vp, ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t,
                                             ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(_GenerateOptions),
                                             ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t,
                                             ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(_GenerateStats)]
        lib.moert_generate_batch.restype = vp
        lib.moert_session_rewind.argtypes = [vp, ctypes.c_size_t]
        lib.moert_session_rewind.restype = vp
        lib.moert_session_reset_sequence.argtypes = [vp, ctypes.c_size_t]
        lib.moert_session_reset_sequence.restype = vp
        lib.moert_session_length.argtypes = [vp]
        lib.moert_session_length.restype = ctypes.c_size_t
        lib.moert_session_profile_json.argtypes = [vp]
        lib.moert_session_profile_json.restype = ctypes.c_char_p
        lib.moert_gpu_traffic.argtypes = [vp, ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64)]
        lib.moert_gpu_traffic.restype = vp
        lib.moert_gpu_activation_memory.argtypes = [vp, ctypes.POINTER(ctypes.c_uint64),
                                                    ctypes.POINTER(ctypes.c_uint64)]
        lib.moert_gpu_activation_memory.restype = vp
        lib.moert_gpu_graphs.argtypes = [vp, ctypes.POINTER(_GraphStats)]
        lib.moert_gpu_graphs.restype = vp

    def check(self, status):
        if status:
            message = self.lib.moert_status_message(status).decode(errors="replace")
            self.lib.moert_status_free(status)
            raise Error(message)

    def load(self, path, threads=0, verify_checksum=True, device="cpu", no_round_trips=False):
        """verify_checksum: True (the header, metadata and code at load, each weight section on its first use),
        "all" (every section at load) or False. no_round_trips (on a GPU): a step the CPU runs that reads a value
        a GPU step made fails the run (moert_load_options.no_round_trips) instead of copying it back."""
        handle = ctypes.c_void_p()
        if device not in DEVICES:
            raise ValueError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
        level = 2 if verify_checksum == "all" else int(bool(verify_checksum))
        opts = _LoadOptions(ctypes.sizeof(_LoadOptions), threads, level, DEVICES[device], None, int(no_round_trips))
        self.check(self.lib.moert_load(str(path).encode(), ctypes.byref(opts), ctypes.byref(handle)))
        return Model(self, handle, path)


class Model:
    @property
    def ranks(self):
        """(this process's rank, rank count): (0, 1) unless the artifact was compiled with --expert-parallel
        (docs/scale-out.md), which runs under mpirun with every rank making the same calls."""
        rank, size = ctypes.c_int(), ctypes.c_int()
        self.rt.lib.moert_ranks(self.handle, ctypes.byref(rank), ctypes.byref(size))
        return rank.value, size.value

    def __init__(self, rt, handle, path=None):
        self.rt, self.handle, self.path = rt, handle, path
        lib = rt.lib
        n = lib.moert_num_inputs(handle)
        self.input_names = [lib.moert_input_name(handle, i).decode() for i in range(n)]
        self.input_dtypes = {self.input_names[i]: lib.moert_input_dtype(handle, i) for i in range(n)}
        self.input_kinds = {self.input_names[i]: lib.moert_input_kind(handle, i) for i in range(n)}

    def verify(self):
        """Checks every section's checksum now, weights included; raises moert.Error naming each corrupted one."""
        self.rt.check(self.rt.lib.moert_verify(self.handle))

    def run(self, feeds):
        """feeds: {name: value} (or a list in input order). A value is an array; for an input the model declares
        a sequence, a list of arrays; for an optional, None (empty) or its content. Returns {output name:
        value} (copies), sequences as lists of arrays and empty optionals as None."""
        if not isinstance(feeds, dict):
            feeds = dict(zip(self.input_names, feeds))
        keep, values = [], []

        def tensor(name, a):
            a = np.require(a, requirements="C")  # keeps rank 0 (ascontiguousarray would not)
            code = _CODES.get(a.dtype)
            if self.input_dtypes.get(name) == 3 and (a.dtype == np.uint16 or a.dtype.name == "bfloat16"):
                a, code = a.view(np.uint16), 3  # bf16 given as its bit patterns (or ml_dtypes.bfloat16)
            if code is None:
                raise Error(f"input '{name}': NumPy dtype {a.dtype} has no moert dtype")
            dims = (ctypes.c_int64 * max(a.ndim, 1))(*a.shape)
            keep.extend([a, dims])
            return _Tensor(name.encode(), code, a.ndim, dims, a.ctypes.data)

        for name, a in feeds.items():
            kind = self.input_kinds.get(name, 0)
            if a is None:
                values.append(_Value(name.encode(), _VALUE_NONE, self.input_dtypes.get(name, 0), None, 0))
            elif kind in (_TYPE_SEQUENCE, _TYPE_OPTIONAL_SEQUENCE):
                ts = [tensor(name, x) for x in a]
                arr = (_Tensor * max(len(ts), 1))(*ts)
                keep.append(arr)
                values.append(_Value(name.encode(), _VALUE_SEQUENCE, self.input_dtypes.get(name, 0), arr, len(ts)))
            else:
                t = tensor(name, a)
                keep.append(t)
                values.append(_Value(name.encode(), _VALUE_TENSOR, t.dtype, ctypes.pointer(t), 1))
        arr = (_Value * max(len(values), 1))(*values)
        res = ctypes.c_void_p()
        lib = self.rt.lib
        self.rt.check(lib.moert_run_values(self.handle, None, arr, len(values), ctypes.byref(res)))
        try:
            out = {}
            for i in range(lib.moert_result_num_outputs(res)):
                v = lib.moert_result_value(res, i).contents
                name = v.name.decode()
                if v.kind == _VALUE_NONE:
                    out[name] = None
                elif v.kind == _VALUE_SEQUENCE:
                    out[name] = [_array(v.tensors[j]) for j in range(v.count)]
                else:
                    out[name] = _array(v.tensors[0])
            return out
        finally:
            lib.moert_result_free(res)

    def tokenizer(self, tokenizer=None):
        """The tokenizer for text prompts: `tokenizer` itself (an object with encode / decode, as the
        `tokenizers` package's), a tokenizer.json path, or (None) the tokenizer.json next to the artifact, else
        the one moec embedded in it (moec compile --tokenizer); None when there is none. Reading a
        tokenizer.json needs the `tokenizers` package."""
        if tokenizer is None:
            next_to = os.path.join(os.path.dirname(os.path.abspath(str(self.path))), "tokenizer.json") \
                if self.path else None
            if next_to and os.path.exists(next_to):
                tokenizer = next_to
            else:
                size = ctypes.c_size_t()
                ptr = self.rt.lib.moert_model_tokenizer(self.handle, ctypes.byref(size))
                if not ptr:
                    return None
                return _tokenizer_class("the artifact's tokenizer.json").from_str(
                    ctypes.string_at(ptr, size.value).decode("utf-8"))
        if isinstance(tokenizer, (str, os.PathLike)):
            return _tokenizer_class(str(tokenizer)).from_file(str(tokenizer))
        return tokenizer

    def generate(self, prompt, max_new_tokens=32, greedy=True, temperature=1.0, top_k=0, top_p=1.0, seed=0,
                 eos_token_id=-1, max_context=0, tokenizer=None, cache_dtype="f32", attention_mask=None,
                 on_token=None):
        """A decoder with KV caches: runs `prompt` (token ids, or text given a tokenizer: see tokenizer()) in a
        fresh session, then picks up to max_new_tokens tokens (greedy, or sampled with temperature / top_k /
        top_p / seed); cache_dtype "bf16" / "f16" keeps the KV caches at half the bytes, "int8" at 0.28x
        (int8 codes, an f32 scale per 32 values). Returns (tokens as an
        int64 array, {"prompt_tokens", "new_tokens", "prefill_ms", "decode_ms"} and, with a tokenizer, "text":
        the new tokens decoded).

        A batch, generated side by side in one session: `prompt` [B, n] token ids, left-padded with
        attention_mask ([B, n], 0 at padding) when their lengths differ, or a list of texts (padded here).
        Then tokens is a list of B arrays (one that stopped at eos_token_id is shorter) and "text" a list.

        Streaming: `on_token(sequence, token)` is called with each token as it is picked, before the next step
        runs; a true result stops the generation after this step (an exception it raises too, re-raised here)."""
        tok = self.tokenizer(tokenizer)
        texts = isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(isinstance(p, str) for p in prompt)
        if isinstance(prompt, str) or texts:
            if tok is None:
                raise Error("a text prompt needs a tokenizer: a tokenizer.json next to the model, or tokenizer=")
            if texts:  # left-padded to the longest, the padding masked out
                enc = [tok.encode(p).ids for p in prompt]
                n = max(len(e) for e in enc)
                prompt = [[0] * (n - len(e)) + e for e in enc]
                attention_mask = [[0] * (n - len(e)) + [1] * len(e) for e in enc]
            else:
                prompt = tok.encode(prompt).ids
        lib = self.rt.lib
        ids = np.asarray(prompt, dtype=np.int64)
        batched = ids.ndim == 2
        if batched:
            ids, mask = _batch_ids(ids, attention_mask)
        elif attention_mask is not None:
            raise Error("attention_mask is for a batch: give the prompt as [batch, n] token ids")
        else:
            ids, mask = np.ascontiguousarray(ids.reshape(1, -1)), None
        batch = ids.shape[0]
        session = ctypes.c_void_p()
        opts = _session_options(max_context, False, cache_dtype, batch)
        self.rt.check(lib.moert_session_create(self.handle, ctypes.byref(opts), ctypes.byref(session)))
        try:
            cap = max(max_new_tokens, 1)
            out = np.zeros((batch, cap), np.int64)
            made, stats = (ctypes.c_size_t * batch)(), _GenerateStats()
            failed = []

            def step(_, sequence, token):  # on_token(sequence, token) -> true stops; its errors end the call
                try:
                    return 1 if on_token(int(sequence), int(token)) else 0
                except BaseException as err:  # noqa: BLE001 (re-raised below, after the C call returns)
                    failed.append(err)
                    return 1
            callback = _ON_TOKEN(step) if on_token else _ON_TOKEN()
            go = _GenerateOptions(ctypes.sizeof(_GenerateOptions), max_new_tokens, int(greedy), temperature, top_k,
                                  top_p, seed, eos_token_id, callback, None)
            i64 = ctypes.POINTER(ctypes.c_int64)
            self.rt.check(lib.moert_generate_batch(session, ids.ctypes.data_as(i64), ids.shape[1],
                                                   mask.ctypes.data_as(i64) if mask is not None else None,
                                                   ctypes.byref(go), out.ctypes.data_as(i64), cap, made,
                                                   ctypes.byref(stats)))
            if failed:
                raise failed[0]
            tokens = [out[b, :made[b]].copy() for b in range(batch)]
            info = {name: getattr(stats, name) for name, _ in _GenerateStats._fields_}
            if tok is not None:
                words = [tok.decode(t.tolist()) for t in tokens]
                info["text"] = words if batched else words[0]
            return (tokens if batched else tokens[0]), info
        finally:
            lib.moert_session_free(session)

    def gpu_copies(self):
        """(bytes to the device, bytes to the host) of the last finished run or session call on a GPU
        (moert_gpu_traffic)."""
        up, down = ctypes.c_uint64(), ctypes.c_uint64()
        self.rt.check(self.rt.lib.moert_gpu_traffic(self.handle, ctypes.byref(up), ctypes.byref(down)))
        return up.value, down.value

    def gpu_activation_memory(self):
        """(bytes in device arenas, bytes in pooled device buffers) held for activations now, on a GPU
        (moert_gpu_activation_memory)."""
        arenas, pooled = ctypes.c_uint64(), ctypes.c_uint64()
        self.rt.check(self.rt.lib.moert_gpu_activation_memory(self.handle, ctypes.byref(arenas),
                                                              ctypes.byref(pooled)))
        return arenas.value, pooled.value

    def gpu_graphs(self):
        """How runs sent their kernels to the GPU (moert_gpu_graphs): {"state": "on (...)" or "off (why)",
        "graphs": launched, "builds", "updates": nodes updated in place, "staged": uploads staged}."""
        g = _GraphStats()
        self.rt.check(self.rt.lib.moert_gpu_graphs(self.handle, ctypes.byref(g)))
        return {"state": g.state.decode(), "graphs": g.graphs, "builds": g.builds, "updates": g.updates,
                "staged": g.staged}

    def session(self, max_context=0, profile=False, cache_dtype="f32", batch=1):
        """A generation session over this decoder (moert_session_*): append(tokens) -> the last token's logits,
        rewind(length), len(session); with profile, profile() is the last call's Chrome trace (JSON text);
        cache_dtype "bf16" / "f16" stores the KV caches at half the bytes (rounded to nearest even), "int8"
        as int8 codes with an f32 scale per 32 values (0.28x the bytes at head dim 128). With
        batch > 1 it holds that many sequences side by side: append([B, n] tokens, mask=None) -> [B, vocab];
        reset_sequence(b) ends sequence b so a new one can take its place."""
        return Session(self, max_context, profile, cache_dtype, batch)

    def close(self):
        """Frees this handle's hold on the model; its open sessions keep it loaded until they are closed."""
        if getattr(self, "handle", None):  # (None when __init__ was called with wrong arguments)
            self.rt.lib.moert_free(self.handle)
            self.handle = None

    def __del__(self):
        self.close()


class Session:
    def __init__(self, model, max_context=0, profile=False, cache_dtype="f32", batch=1):
        self.model, self.lib, self.handle, self.batch = model, model.rt.lib, ctypes.c_void_p(), batch
        opts = _session_options(max_context, profile, cache_dtype, batch)
        model.rt.check(self.lib.moert_session_create(model.handle, ctypes.byref(opts), ctypes.byref(self.handle)))

    def append(self, tokens, mask=None):
        """Runs the new tokens: [n] -> the last one's logits [vocab]; a batch session takes [batch, n] (and a
        padding mask, 0 at padding) -> [batch, vocab]."""
        logits, vocab = ctypes.POINTER(ctypes.c_float)(), ctypes.c_size_t()
        i64 = ctypes.POINTER(ctypes.c_int64)
        if self.batch == 1 and mask is None and np.asarray(tokens).ndim <= 1:
            ids = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).reshape(-1))
            self.model.rt.check(self.lib.moert_session_append(self.handle, ids.ctypes.data_as(i64), ids.size,
                                                              ctypes.byref(logits), ctypes.byref(vocab)))
            return np.ctypeslib.as_array(logits, shape=(vocab.value,)).copy()
        ids, m = _batch_ids(tokens, mask)
        if ids.shape[0] != self.batch:
            raise Error(f"{ids.shape[0]} sequences of token ids for a session of batch {self.batch}")
        self.model.rt.check(self.lib.moert_session_append_batch(
            self.handle, ids.ctypes.data_as(i64), ids.shape[1], m.ctypes.data_as(i64) if m is not None else None,
            ctypes.byref(logits), ctypes.byref(vocab)))
        return np.ctypeslib.as_array(logits, shape=(self.batch, vocab.value)).copy()

    def rewind(self, length):
        self.model.rt.check(self.lib.moert_session_rewind(self.handle, length))

    def reset_sequence(self, sequence):
        """Ends sequence `sequence` of a batch session and frees its place for a new one (continuous batching):
        its positions become padding and the padding no sequence needs is dropped. A new sequence joins with
        append(): its prompt in its row, the others' next tokens right-aligned after padding (mask 0); a row of
        padding only sits the call out (its logits are NaN)."""
        self.model.rt.check(self.lib.moert_session_reset_sequence(self.handle, sequence))

    def __len__(self):
        return self.lib.moert_session_length(self.handle)

    def profile(self):
        """The last call's Chrome trace (JSON text) when the session was made with profile=True, else None."""
        p = self.lib.moert_session_profile_json(self.handle)
        return p.decode() if p else None

    def close(self):
        if getattr(self, "handle", None):
            self.lib.moert_session_free(self.handle)
            self.handle = None

    def __del__(self):
        self.close()
