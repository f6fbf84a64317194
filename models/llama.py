"""The Llama-family forward pass, recorded as command lists on any backend.

Weights are uploaded once in their stored precision, with q/k/v fused into one matrix and
gate/up into another (their rows interleaved: gate 0, up 0, gate 1, ...), so that a decode
step's layer is five dispatches:

    matmul(rmsnorm prologue) -> qkv
    decode_attention (rope on the row's q and k, k and v -> this layer's cache, attention)
    matmul(o, accumulate into x)
    matmul(rmsnorm prologue, silu_mul epilogue: each (gate, up) pair -> silu(gate) * up)
    matmul(down, accumulate into x)

A prefill chunk (several rows) takes seven: decode_attention's work is three dispatches
there, rope on q and k (adjacent in each qkv row), kv_write (k, v -> the cache) and
attention (reads q from qkv, the cache).

A decode step (embed, the layers, the final norm + lm_head, argmax or sample, `advance`, a
4-byte copy of the token to a read-back buffer) is recorded once per sampling setting and
submitted again for every token. Its state lives on the device: the token id (written by
argmax/sample, read by the next step's embed), the position and the sampler's counters
(moved on by `advance`) and the token history (for the repetition penalty). So the host
writes nothing per token and runs one step ahead of the device: two recordings of the step
(each copying its token to its own read-back buffer) alternate, and while the device runs
step n+1 the host reads step n's token. Prefill is recorded per chunk length.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from shaderbay.backend import Backend
from shaderbay.backends.numpy.quants import values
from shaderbay.commands import CommandList, Dispatch
from shaderbay.dtypes import itemsize, nbytes, to_f32
from shaderbay.errors import BindingError, CheckpointError, ContextLengthExceeded, ModelBusy, ModelError
from shaderbay.kernels import ARGMAX_SCRATCH_ROW, DECODE_ATTENTION_SLICES
from shaderbay.resources import Tensor, Usage
from shaderbay.rope import inverse_frequencies

from .checkpoint import Checkpoint, TensorInfo
from .config import ModelConfig

ProgressFn = Callable[[float, float, str], None]

RUN_AHEAD = 2  # decode steps in flight: the host reads one step's token while the next runs
# each layer's matrices uploaded as one (suffixes of "model.layers.{i}."); of mixed dtypes, one is float32
QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
GATE_UP = ("mlp.gate_proj.weight", "mlp.up_proj.weight")


# --- weights --------------------------------------------------------------------------------


@dataclass
class LayerWeights:
    attn_norm: Tensor
    wqkv: Tensor
    wo: Tensor
    ffn_norm: Tensor
    wgu: Tensor
    wdown: Tensor
    bqkv: Tensor | None = None
    bo: Tensor | None = None
    bgu: Tensor | None = None
    bdown: Tensor | None = None


@dataclass
class Weights:
    embed: Tensor | None  # None when the table is looked up on the host (see host_embed)
    final_norm: Tensor
    lm_head: Tensor
    layers: list[LayerWeights]
    inv_freq: Tensor
    nbytes: int = 0
    # lm_head as (first row, view) parts, each small enough to bind on this device
    lm_head_parts: list[tuple[int, Tensor]] = field(default_factory=list)
    # the embedding table on the host (memory-mapped), for tables larger than the device can bind
    host_embed: np.ndarray | None = None
    host_embed_dtype: str = "f32"

    @property
    def wdtype(self) -> str:
        return self.lm_head.dtype


def row_parts(t: Tensor, max_bytes: int, alignment: int) -> list[tuple[int, Tensor]]:
    """Views of consecutive row blocks of a matrix, each at most max_bytes and starting at aligned
    offsets in the matrix and in a float32 vector of its rows (the logits)."""
    rows, cols = t.shape
    row_bytes = nbytes(t.dtype, (1, cols))
    if t.nbytes <= max_bytes:
        return [(0, t)]
    step = math.lcm(alignment // math.gcd(alignment, 4), alignment // math.gcd(alignment, row_bytes))
    per = max_bytes // row_bytes // step * step
    if per < 1:
        raise ModelError(
            f"a {t.dtype} matrix with rows of {row_bytes} bytes cannot be split into bindings of {max_bytes} bytes"
        )
    return [(r, t.view(shape=(min(per, rows - r), cols), offset=r * row_bytes)) for r in range(0, rows, per)]


def tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the model reads, with the shape the config implies."""
    c = config
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (c.vocab_size, c.dim),
        "model.norm.weight": (c.dim,),
    }
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.dim)
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (c.dim,)
        shapes[p + "post_attention_layernorm.weight"] = (c.dim,)
        for proj, rows in (("q", c.q_dim), ("k", c.kv_dim), ("v", c.kv_dim)):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (rows, c.dim)
            if c.qkv_bias:
                shapes[f"{p}self_attn.{proj}_proj.bias"] = (rows,)
        shapes[p + "self_attn.o_proj.weight"] = (c.dim, c.q_dim)
        if c.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (c.dim,)
        for proj, shape in (("gate", (c.ffn_dim, c.dim)), ("up", (c.ffn_dim, c.dim)), ("down", (c.dim, c.ffn_dim))):
            shapes[f"{p}mlp.{proj}_proj.weight"] = shape
            if c.mlp_bias:
                shapes[f"{p}mlp.{proj}_proj.bias"] = shape[:1]
    return shapes


class _Uploader:
    def __init__(self, backend: Backend, ckpt: Checkpoint, infos: dict[str, TensorInfo], progress: ProgressFn | None):
        self.backend = backend
        self.ckpt = ckpt
        self.infos = infos
        self.progress = progress
        self.total = float(sum(i.nbytes for i in infos.values()))
        self.done = 0.0
        self.nbytes = 0
        self.made: list[Tensor] = []

    def free(self) -> None:
        """Free what was uploaded (a load that failed half-way leaves nothing behind)."""
        for t in self.made:
            if not t.buffer.freed and not self.backend.closed:
                self.backend.free(t.buffer)

    def _host(self, name: str) -> np.ndarray:
        info = self.infos[name]
        try:
            array = self.ckpt.array(name)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{info.source}: tensor {name!r} cannot be read ({exc})") from None
        if not _finite(array, info.dtype):
            raise CheckpointError(
                f"{info.source}: tensor {name!r} holds NaN or infinite values; the checkpoint is corrupt "
                "(re-download or re-convert it)"
            )
        return array

    def _tick(self, names: list[str]) -> None:
        self.done += sum(self.infos[n].nbytes for n in names)
        if self.progress is not None:
            self.progress(self.done, self.total, names[-1])

    def f32(self, *names: str) -> Tensor:
        """Small tensors (norms, biases), concatenated, as float32."""
        arrays = [to_f32(self._host(n), self.infos[n].dtype).reshape(-1) for n in names]
        t = self.backend.upload(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
        self.made.append(t)
        self.nbytes += t.nbytes
        self._tick(list(names))
        return t

    def interleaved(self, first: str, second: str, matrix: bool = True) -> Tensor:
        """Two same-shaped tensors with their rows (or, for vectors, elements) interleaved: first[0],
        second[0], first[1], ... (gate and up for the matmul's silu_mul epilogue). Matrices keep
        their stored dtype (float32 if the two differ), vectors become float32."""
        names = [first, second]
        arrays = [self._host(n) for n in names]
        dtypes = {self.infos[n].dtype for n in names}
        if not matrix or len(dtypes) > 1:
            arrays = [values(a, self.infos[n].dtype) for a, n in zip(arrays, names, strict=True)]
            dtype = "f32"
        else:
            (dtype,) = dtypes
        data = np.stack(arrays, axis=1)
        t = self.backend.upload(np.ascontiguousarray(data.reshape(-1, *arrays[0].shape[1:])), dtype)
        self.made.append(t)
        self.nbytes += t.nbytes
        self._tick(names)
        return t

    def matrix(self, *names: str) -> Tensor:
        """Row-concatenated matrices in their stored dtype, written part by part (no host copy)."""
        dtypes = {self.infos[n].dtype for n in names}
        shapes = [self.infos[n].shape for n in names]
        rows, cols = sum(s[0] for s in shapes), shapes[0][1]
        if len(dtypes) > 1:  # mixed precisions in one fused group: widen the group to float32
            data = np.concatenate([values(self._host(n), self.infos[n].dtype) for n in names])
            t = self.backend.upload(np.ascontiguousarray(data, dtype=np.float32))
            self.made.append(t)
        else:
            (dtype,) = dtypes
            t = self.backend.empty((rows, cols), dtype)
            self.made.append(t)
            sizes = [nbytes(dtype, (s[0], cols)) for s in shapes]
            if any(s % 4 for s in sizes):  # writes are whole 4-byte words: the buffer's padding takes the tail
                data = np.concatenate([self._host(n) for n in names]).tobytes()
                self.backend.write(t.buffer, data + bytes(-len(data) % 4), t.offset)
            else:
                offset = 0
                for n, size in zip(names, sizes, strict=True):
                    self.backend.write(t, self._host(n), offset)
                    offset += size
        self.nbytes += t.nbytes
        self._tick(list(names))
        return t


def _finite(array: np.ndarray, dtype: str) -> bool:
    """No NaN or infinity, in one pass: a float64 sum (finite weights cannot overflow it), or for bf16
    bits the largest magnitude below the all-ones exponent."""
    if dtype == "bf16":
        return array.size == 0 or int(np.bitwise_and(array, 0x7FFF).max()) < 0x7F80
    return bool(np.isfinite(np.sum(array, dtype=np.float64)))


def load_weights(ckpt: Checkpoint, backend: Backend, progress: ProgressFn | None = None) -> Weights:
    """Check every tensor (presence, shape, dtype) first, then upload them one by one."""
    c = ckpt.config
    ckpt.prepare(backend)
    infos = {name: ckpt.expect(name, shape) for name, shape in tensor_shapes(c).items()}
    up = _Uploader(backend, ckpt, infos, progress)
    try:
        return _upload(ckpt, backend, c, infos, up)
    except BaseException:
        up.free()
        raise


def _upload(ckpt: Checkpoint, backend: Backend, c: ModelConfig, infos: dict[str, TensorInfo], up: _Uploader) -> Weights:
    caps = backend.caps
    embed_info = infos["model.embed_tokens.weight"]
    host_embed = None
    if embed_info.nbytes > caps.max_binding_size:
        # Larger than one binding: the host looks rows up (it reads every token id back anyway)
        # and the device holds the table only as the tied lm_head, bound in parts.
        host_embed = up._host("model.embed_tokens.weight")
    embed = up.matrix("model.embed_tokens.weight") if host_embed is None or c.tie_word_embeddings else None
    layers = []
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        layers.append(
            LayerWeights(
                attn_norm=up.f32(p + "input_layernorm.weight"),
                wqkv=up.matrix(*(p + n for n in QKV)),
                bqkv=up.f32(a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias") if c.qkv_bias else None,
                wo=up.matrix(a + "o_proj.weight"),
                bo=up.f32(a + "o_proj.bias") if c.o_bias else None,
                ffn_norm=up.f32(p + "post_attention_layernorm.weight"),
                wgu=up.interleaved(*(p + n for n in GATE_UP)),
                bgu=up.interleaved(m + "gate_proj.bias", m + "up_proj.bias", matrix=False) if c.mlp_bias else None,
                wdown=up.matrix(m + "down_proj.weight"),
                bdown=up.f32(m + "down_proj.bias") if c.mlp_bias else None,
            )
        )
    final_norm = up.f32("model.norm.weight")
    lm_head = embed if c.tie_word_embeddings else up.matrix("lm_head.weight")
    inv_freq = backend.upload(inverse_frequencies(c.head_dim, c.rope_theta, c.rope_scaling))
    up.made.append(inv_freq)
    return Weights(
        embed if host_embed is None else None,
        final_norm,
        lm_head,
        layers,
        inv_freq,
        up.nbytes,
        lm_head_parts=row_parts(lm_head, caps.max_binding_size, caps.offset_alignment),
        host_embed=host_embed,
        host_embed_dtype=embed_info.dtype,
    )


# --- sampling -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen, on the device. temperature <= 0 is greedy. The ranges are
    checked where a caller's options come in (settings.GenerationSettings); here only the key."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0

    @property
    def greedy(self) -> bool:
        """Plain argmax: no temperature and no penalty (the history is then not needed)."""
        return self.temperature <= 0 and self.repetition_penalty == 1.0

    def key(self) -> tuple:
        if self.greedy:
            return ("argmax",)
        if self.temperature <= 0:
            return ("sample", 0.0, 0, 1.0, float(self.repetition_penalty), 0.0)
        return (
            "sample",
            float(self.temperature),
            int(self.top_k),
            float(self.top_p),
            float(self.repetition_penalty),
            float(self.min_p),
        )


@dataclass
class Stats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    first_token_s: float = 0.0
    cached_tokens: int = 0  # prompt tokens whose KV entries were reused from the previous call
    seed: int = 0
    finish_reason: str | None = None  # "stop", "length" or "cancelled" (set by generation.run)

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens computed by this call's prefill."""
        return self.prompt_tokens - self.cached_tokens

    @property
    def decode_tokens_per_s(self) -> float:
        n = self.generated_tokens - 1  # the first token comes from the prefill
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else 0.0


# --- the forward pass -------------------------------------------------------------------------


def _one_at_a_time(method):
    """A Llama method (or generator) that holds the model for its whole run: the scratch buffers, the KV
    cache and the recorded steps serve one sequence, so a second caller gets ModelBusy at once."""

    def claim(self):
        if not self._in_use.acquire(blocking=False):
            raise ModelBusy(
                "this model runs one generation at a time and one is unfinished: finish or close() the other "
                "generator first, or load another model for the other thread (models can share a backend)"
            )

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def held_generator(self, *args, **kwargs):
            claim(self)
            try:
                yield from method(self, *args, **kwargs)
            finally:
                self._in_use.release()

        return held_generator

    @functools.wraps(method)
    def held(self, *args, **kwargs):
        claim(self)
        try:
            return method(self, *args, **kwargs)
        finally:
            self._in_use.release()

    return held


@dataclass
class _Scratch:
    x: Tensor
    qkv: Tensor
    attn: Tensor
    act: Tensor  # silu(gate) * up
    last: Tensor
    logits: Tensor
    ids: Tensor
    positions: Tensor
    token: Tensor
    argmax_scratch: Tensor
    attention_scratch: Tensor
    position: Tensor
    state: Tensor
    history: Tensor
    readback: list[Tensor]  # one per recording of the decode step (RUN_AHEAD of them)
    all_logits: list[Tensor] | None = None
    extra: list[Tensor] = field(default_factory=list)


class Llama:
    """A loaded model on one backend: weights, KV caches, scratch buffers and recorded command lists."""

    def __init__(
        self,
        backend: Backend,
        config: ModelConfig,
        weights: Weights,
        max_context: int,
        cache_dtype: str,
        prefill_chunk: int = 512,
    ):
        if cache_dtype not in ("f32", "f16"):
            self.free_weights(backend, weights)
            raise ModelError(f"cache_dtype must be 'f32' or 'f16', got {cache_dtype!r}")
        row_bytes = config.kv_dim * itemsize(cache_dtype)
        if max_context * row_bytes > backend.caps.max_binding_size:
            self.free_weights(backend, weights)
            most = backend.caps.max_binding_size // row_bytes
            raise ModelError(
                f"a KV cache of {max_context} positions needs {max_context * row_bytes} bytes per layer, more than "
                f"{backend.caps.device} can bind ({backend.caps.max_binding_size}); load with max_context <= {most}"
                + (" or cache_dtype='f16'" if cache_dtype == "f32" and backend.caps.f16 else "")
            )
        self.backend = backend
        self.config = c = config
        self.weights = weights
        self.max_context = int(max_context)
        self.cache_dtype = cache_dtype
        self.chunk = max(1, min(int(prefill_chunk), self.max_context))
        # rows per pass when every position's logits are wanted: each block of them must fit a binding
        widest = max(p.shape[0] for _, p in weights.lm_head_parts) * 4
        self.all_chunk = max(1, min(self.chunk, backend.caps.max_binding_size // widest))
        self.stats = Stats()
        self._in_use = threading.Lock()  # held by the running generation (_one_at_a_time)
        self.cached_ids: list[int] = []  # the ids whose KV entries the cache holds, from position 0
        self._lists: OrderedDict[tuple, CommandList] = OrderedDict()
        self._pipelines: dict[tuple, object] = {}
        # every buffer the model holds, its weights included, freed by close()
        self._owned: list[Tensor] = [t for t in (weights.embed, weights.lm_head, weights.final_norm) if t is not None]
        self._owned += [weights.inv_freq] + [t for lw in weights.layers for t in vars(lw).values() if t is not None]
        self.caches: list[tuple[Tensor, Tensor]] = []
        try:
            R, new = self.chunk, self._new
            self.caches = [
                (new((self.max_context, c.kv_dim), cache_dtype), new((self.max_context, c.kv_dim), cache_dtype))
                for _ in range(c.n_layers)
            ]
            self.s = _Scratch(
                x=new((R, c.dim)),
                qkv=new((R, c.qkv_dim)),
                attn=new((R, c.q_dim)),
                act=new((R, c.ffn_dim)),
                last=new((1, c.dim)),
                logits=new((1, c.vocab_size)),
                ids=new(R, "u32", Usage.UPLOAD),
                positions=new(R, "u32", Usage.UPLOAD),
                token=new(1, "u32"),
                argmax_scratch=new((1, ARGMAX_SCRATCH_ROW), "u32"),
                attention_scratch=new((c.n_heads, 1 + DECODE_ATTENTION_SLICES * (2 + c.head_dim)), "u32"),
                position=new(1, "u32"),  # written once per generate, then moved on by `advance`
                state=new(4, "u32"),
                history=new(self.max_context, "u32"),
                readback=[new(1, "u32", Usage.READBACK) for _ in range(RUN_AHEAD)],
            )
            for t in (self.s.argmax_scratch, self.s.attention_scratch):  # the kernels leave them zeroed
                backend.write(t, np.zeros(t.shape, np.uint32))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def free_weights(backend: Backend, weights: Weights) -> None:
        tensors = [t for t in (weights.embed, weights.lm_head, weights.final_norm, weights.inv_freq) if t is not None]
        tensors += [t for lw in weights.layers for t in vars(lw).values() if t is not None]
        for t in tensors:
            if not backend.closed and not t.buffer.freed:
                backend.free(t.buffer)

    def _new(self, shape, dtype: str = "f32", usage: Usage = Usage.DEVICE) -> Tensor:
        t = self.backend.empty(shape, dtype, usage)
        self._owned.append(t)
        return t

    # --- recording ------------------------------------------------------------------------
    def _pipe(self, kernel: str, **constants):
        key = (kernel, tuple(sorted(constants.items())))
        if key not in self._pipelines:
            self._pipelines[key] = self.backend.pipeline(kernel, **constants)
        return self._pipelines[key]

    def _matmul(self, cmd: CommandList, x: Tensor, w: Tensor, out: Tensor, rows: int, *, norm=None, bias=None,
                accumulate=False, pairs=False, label="") -> None:  # fmt: skip
        """out (+)= x @ w.T, x rms-normalised with `norm` first; `pairs`: w's rows interleave gate and up and
        out gets silu(gate) * up."""
        pipe = self._pipe(
            "matmul",
            wdtype=w.dtype,
            bias=bias is not None,
            accumulate=accumulate,
            prologue="rmsnorm" if norm is not None else "none",
            epilogue="silu_mul" if pairs else "none",
        )
        n, k = w.shape
        bindings = {"x": x, "w": w, "out": out}
        if norm is not None:
            bindings["norm_weight"] = norm
        if bias is not None:
            bindings["bias"] = bias
        cmd.dispatch(pipe, bindings, label, rows=rows, n=n, k=k, eps=self.config.rms_eps)

    def _record_body(self, cmd: CommandList, rows: int, ids: Tensor, positions: Tensor) -> None:
        c, s, w = self.config, self.s, self.weights
        x = s.x.view(shape=(rows, c.dim))
        qkv = s.qkv.view(shape=(rows, c.qkv_dim))
        attn = s.attn.view(shape=(rows, c.q_dim))
        act = s.act.view(shape=(rows, c.ffn_dim))
        if w.embed is not None:  # else the host writes the rows of x
            cmd.dispatch(
                self._pipe("embed", wdtype=w.embed.dtype),
                {"table": w.embed, "ids": ids, "out": x},
                rows=rows, dim=c.dim, vocab=c.vocab_size,
            )  # fmt: skip
        scale = 1.0 / math.sqrt(c.head_dim)
        for i, (lw, (k_cache, v_cache)) in enumerate(zip(w.layers, self.caches, strict=True)):
            self._matmul(cmd, x, lw.wqkv, qkv, rows, norm=lw.attn_norm, bias=lw.bqkv, label=f"L{i}.qkv")
            if rows == 1:  # one dispatch: rope, the cache write and attention of the one row
                cmd.dispatch(
                    self._pipe("decode_attention", cache_dtype=self.cache_dtype),
                    {"qkv": qkv, "positions": positions, "inv_freq": w.inv_freq, "k_cache": k_cache,
                     "v_cache": v_cache, "scratch": s.attention_scratch, "out": attn},
                    f"L{i}.attn",
                    n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, stride=c.qkv_dim,
                    max_seq=self.max_context, scale=scale,
                )  # fmt: skip
            else:
                self._attention_rows(cmd, i, rows, qkv, positions, k_cache, v_cache, attn, scale)
            self._matmul(cmd, attn, lw.wo, x, rows, bias=lw.bo, accumulate=True, label=f"L{i}.o")
            self._matmul(cmd, x, lw.wgu, act, rows, norm=lw.ffn_norm, bias=lw.bgu, pairs=True, label=f"L{i}.gate_up")
            self._matmul(cmd, act, lw.wdown, x, rows, bias=lw.bdown, accumulate=True, label=f"L{i}.down")

    def _attention_rows(self, cmd: CommandList, i: int, rows: int, qkv: Tensor, positions: Tensor, k_cache: Tensor,
                        v_cache: Tensor, attn: Tensor, scale: float) -> None:  # fmt: skip
        """rope, kv_write and attention of several rows (prefill): three dispatches."""
        c = self.config
        cmd.dispatch(
            self._pipe("rope"), {"x": qkv, "positions": positions, "inv_freq": self.weights.inv_freq}, f"L{i}.rope",
            rows=rows, heads=c.n_heads + c.n_kv_heads, head_dim=c.head_dim, stride=c.qkv_dim, offset=0,
        )  # fmt: skip
        cmd.dispatch(
            self._pipe("kv_write", cache_dtype=self.cache_dtype),
            {"src": qkv, "positions": positions, "k_cache": k_cache, "v_cache": v_cache}, f"L{i}.kv",
            rows=rows, stride=c.qkv_dim, k_offset=c.q_dim, v_offset=c.q_dim + c.kv_dim, kv_dim=c.kv_dim,
            max_seq=self.max_context,
        )  # fmt: skip
        cmd.dispatch(
            self._pipe("attention", cache_dtype=self.cache_dtype),
            {"q": qkv, "k_cache": k_cache, "v_cache": v_cache, "positions": positions, "out": attn},
            f"L{i}.attn",
            rows=rows, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, q_stride=c.qkv_dim,
            max_seq=self.max_context, scale=scale,
        )  # fmt: skip

    def _record_head(self, cmd: CommandList, rows: int, head: tuple) -> None:
        c, s, w = self.config, self.s, self.weights
        if head[0] == "all":  # one [rows, part] block per lm_head part; the host joins them
            x = s.x.view(shape=(rows, c.dim))
            for (_, part), out in zip(w.lm_head_parts, s.all_logits, strict=True):
                out = out.view(shape=(rows, part.shape[0]))
                self._matmul(cmd, x, part, out, rows, norm=w.final_norm, label="lm_head")
            return
        if rows > 1:  # the last row, copied to an aligned place
            row_bytes = c.dim * 4
            cmd.copy(s.x.buffer, s.last.buffer, row_bytes, s.x.offset + (rows - 1) * row_bytes, s.last.offset)
            last = s.last
        else:
            last = s.x.view(shape=(1, c.dim))
        for first, part in w.lm_head_parts:
            out = s.logits.view(shape=(1, part.shape[0]), offset=first * 4)
            self._matmul(cmd, last, part, out, 1, norm=w.final_norm, label="lm_head")
        if head[0] == "argmax":
            bindings = {"x": s.logits, "scratch": s.argmax_scratch, "out": s.token}
            cmd.dispatch(self._pipe("argmax"), bindings, rows=1, n=c.vocab_size)
        else:
            _, temperature, top_k, top_p, penalty, min_p = head
            cmd.dispatch(
                self._pipe("sample"),
                {"logits": s.logits, "history": s.history, "state": s.state, "out": s.token},
                n=c.vocab_size, hist_cap=self.max_context, temperature=temperature,
                top_k=top_k if top_k < c.vocab_size else 0, top_p=top_p, penalty=penalty, min_p=min_p,
            )  # fmt: skip

    def _list(self, kind: str, rows: int, head: tuple | None, slot: int = 0) -> CommandList:
        key = (kind, rows, head, slot)
        cmd = self._lists.get(key)
        if cmd is not None:
            self._lists.move_to_end(key)
            return cmd
        s = self.s
        cmd = self.backend.command_list(f"{kind}[{rows}]" + (f"#{slot}" if kind == "decode" else ""))
        if kind == "decode":
            self._record_body(cmd, 1, s.token, s.position)
        else:
            self._record_body(cmd, rows, s.ids.view(shape=rows), s.positions.view(shape=rows))
        if head is not None:
            self._record_head(cmd, rows, head)
        if kind == "decode":  # the next step's position and counters, and this step's token for the host
            cmd.dispatch(self._pipe("advance"), {"position": s.position, "state": s.state}, steps=1)
            cmd.copy(s.token.buffer, s.readback[slot].buffer, 4, s.token.offset, s.readback[slot].offset)
        self._lists[key] = cmd
        prefills = [k for k in self._lists if k[0] == "prefill"]
        if len(prefills) > 16:  # prompts of many lengths: keep the recent ones
            del self._lists[prefills[0]]
        return cmd

    def decode_list(self, sampling: Sampling = Sampling(), slot: int = 0) -> CommandList:
        """A recorded decode step for a sampling setting (recorded on first use); `slot` picks one of
        the RUN_AHEAD recordings, which differ only in the read-back buffer their token goes to."""
        return self._list("decode", 1, sampling.key(), slot)

    # --- running ----------------------------------------------------------------------------
    def check_ids(self, ids: list[int]) -> None:
        if not ids:
            raise ModelError("the prompt is empty: at least one token is needed")
        bad = [t for t in ids if not 0 <= int(t) < self.config.vocab_size]
        if bad:
            raise ModelError(f"token id {bad[0]} is outside the vocabulary (0..{self.config.vocab_size - 1})")

    def _prefill(self, ids: list[int], head: tuple, first: int = 0) -> np.ndarray | None:
        """Run ids[first:] through the model at their positions (the cache holds ids[:first]);
        `head` ends the last chunk."""
        b, s = self.backend, self.s
        out = []
        chunk = self.all_chunk if head[0] == "all" else self.chunk
        for start in range(first, len(ids), chunk):
            part = ids[start : start + chunk]
            rows = len(part)
            is_last = start + rows == len(ids)
            cmd = self._list("prefill", rows, head if is_last or head[0] == "all" else None)
            if self.weights.host_embed is None:
                b.write(s.ids, np.asarray(part, np.uint32))
            else:
                b.write(s.x, self._host_rows(part))
            b.write(s.positions, np.arange(start, start + rows, dtype=np.uint32))
            b.submit(cmd)
            if head[0] == "all":
                blocks = [
                    b.read(t.view(shape=(rows, p.shape[0])))
                    for t, (_, p) in zip(s.all_logits, self.weights.lm_head_parts, strict=True)
                ]
                out.append(np.concatenate(blocks, axis=1))
        return np.concatenate(out) if out else None

    def _host_rows(self, ids: list[int]) -> np.ndarray:
        w = self.weights
        return values(np.asarray(w.host_embed[np.asarray(ids, np.int64)]), w.host_embed_dtype).astype(np.float32)

    @_one_at_a_time
    def logits(self, ids: list[int], all_positions: bool = False) -> np.ndarray:
        """Next-token logits after every prefix of `ids` ([T, vocab]) or after the whole ([vocab])."""
        ids = [int(t) for t in ids]
        self.check_ids(ids)
        if len(ids) > self.max_context:
            raise ContextLengthExceeded(len(ids), self.max_context)
        self.cached_ids = []
        if all_positions:
            if self.s.all_logits is None:
                self.s.all_logits = [self._new((self.all_chunk, p.shape[0])) for _, p in self.weights.lm_head_parts]
            out = self._prefill(ids, ("all",))
        else:
            self._prefill(ids, ("argmax",))
            out = self.backend.read(self.s.logits)[0].copy()
        self.cached_ids = ids
        return out

    def reusable(self, ids: list[int]) -> int:
        """How many leading ids of a prompt the KV cache already holds (at least one is left to compute)."""
        n = 0
        for a, b in zip(self.cached_ids, ids[:-1], strict=False):
            if a != b:
                break
            n += 1
        return n

    def check_fits(self, n_prompt: int, max_tokens: int) -> None:
        """A prompt of n_prompt tokens and max_tokens new ones fit the context (the last one sampled
        is never written to the cache), or ContextLengthExceeded."""
        needed = n_prompt + max(max_tokens - 1, 0)
        if needed > self.max_context:
            raise ContextLengthExceeded(needed, self.max_context)

    @_one_at_a_time
    def generate(
        self,
        ids: list[int],
        max_tokens: int,
        sampling: Sampling = Sampling(),
        seed: int | None = None,
        stop: set[int] | frozenset[int] = frozenset(),
    ) -> Iterator[int]:
        """Token ids after `ids`, one at a time; the stop token (if reached) is yielded, then it ends.
        The leading ids that the KV cache holds from the previous call are not computed again."""
        ids = [int(t) for t in ids]
        self.check_ids(ids)
        n_prompt = len(ids)
        max_tokens = int(max_tokens)
        self.check_fits(n_prompt, max_tokens)
        if max_tokens <= 0:
            return
        b, s = self.backend, self.s
        head = sampling.key()
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        seed &= 0xFFFFFFFF
        reused = self.reusable(ids)
        self.cached_ids = []  # unknown until the prefill has run
        stats = self.stats = Stats(prompt_tokens=n_prompt, cached_tokens=reused, seed=seed)
        if not sampling.greedy:
            b.write(s.history, np.asarray(ids, np.uint32))
            b.write(s.state, np.array([seed, 0, n_prompt, 0], np.uint32))
        # with the embedding table on the host, each step needs the previous token first: no run-ahead
        host_rows = self.weights.host_embed is not None
        depth = 1 if host_rows else RUN_AHEAD
        steps = [self.decode_list(sampling, slot) for slot in range(depth)]  # recorded before the clock starts
        t0 = time.perf_counter()
        self._prefill(ids, head, reused)
        self.cached_ids = ids
        token = int(b.read(s.token)[0])
        stats.prefill_s = stats.first_token_s = time.perf_counter() - t0
        stats.generated_tokens = 1
        yield token
        if token in stop or max_tokens == 1:
            return
        # the first decode step's position and sampler counters; `advance` moves them on from here
        b.write(s.position, np.array([n_prompt], np.uint32))
        if host_rows:
            b.write(s.x, self._host_rows([token]))
        if not sampling.greedy:
            b.write(s.state, np.array([seed, 1, n_prompt + 1, 0], np.uint32))
        t0 = time.perf_counter()
        in_flight: deque[int] = deque()
        submitted = 0
        try:
            while submitted < min(depth, max_tokens - 1):
                b.submit(steps[submitted % depth])
                in_flight.append(submitted % depth)
                submitted += 1
            while in_flight:
                slot = in_flight.popleft()
                self.cached_ids.append(token)  # the token this step read, its KV entries now written
                token = int(b.read_after(steps[slot], s.readback[slot])[0])
                if token in stop:
                    in_flight.clear()  # what is still running is dropped (drained below)
                elif submitted < max_tokens - 1:
                    if host_rows:
                        b.write(s.x, self._host_rows([token]))
                    b.submit(steps[slot])
                    in_flight.append(slot)
                    submitted += 1
                stats.generated_tokens += 1
                stats.decode_s += time.perf_counter() - t0
                yield token
                t0 = time.perf_counter()
        finally:
            if not b.closed:
                b.wait()  # a consumer that stops early leaves no step running

    @property
    def dispatches_per_token(self) -> int:
        return sum(1 for op in self.decode_list().ops if isinstance(op, Dispatch))

    def close(self) -> None:
        """Drop the recorded lists and free every buffer this model allocated."""
        self._lists.clear()
        self._pipelines.clear()
        if self.backend.closed:
            return
        for t in self._owned:
            if not t.buffer.freed:
                self.backend.free(t.buffer)
        self._owned.clear()


def default_cache_dtype(backend: Backend, weights: Weights) -> str:
    """f16 caches for 16-bit and block (GGUF) weights on devices with f16; f32 otherwise."""
    return "f16" if backend.caps.f16 and weights.wdtype != "f32" else "f32"


def check_cache_dtype(backend: Backend, cache_dtype: str) -> str:
    if cache_dtype not in ("f32", "f16"):
        raise ModelError(f"cache_dtype must be 'f32' or 'f16', got {cache_dtype!r}")
    if cache_dtype == "f16" and not backend.caps.f16:
        raise BindingError(f"{backend.caps.device} has no f16 support; use cache_dtype='f32'")
    return cache_dtype
