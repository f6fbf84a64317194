"""A checkpoint's weights on a backend: the layout the forward pass reads (models/llama.py).

Weights go up once in their stored precision (GGUF blocks as they are), with q/k/v fused into
one matrix (one per run of a shared format where they mix formats) and gate/up into another (their
rows interleaved: gate 0, up 0, gate 1, ...); the
embedding table stays on the host when it is larger than the device can bind. Every tensor is
checked finite on the way (one reduction each).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from shaderbay.backend import Backend
from shaderbay.backends.numpy.quants import values
from shaderbay.dtypes import nbytes, to_f32
from shaderbay.errors import BindingError, CheckpointError, ModelError
from shaderbay.resources import Tensor
from shaderbay.rope import inverse_frequencies

from .checkpoint import Checkpoint, TensorInfo
from .config import ModelConfig

ProgressFn = Callable[[float, float, str], None]

# each layer's matrices uploaded as one (suffixes of "model.layers.{i}."); q/k/v of mixed dtypes go as runs
# of one dtype, gate/up of mixed dtypes as float32
QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
GATE_UP = ("mlp.gate_proj.weight", "mlp.up_proj.weight")


# --- weights --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    """Columns first .. first + rows of w of a fused row (qkv): one matrix product and its bias."""

    first: int
    w: Tensor
    bias: Tensor | None = None


@dataclass
class LayerWeights:
    attn_norm: Tensor
    qkv: tuple[Projection, ...]  # q/k/v in one matrix, or in one per run of a shared format
    wo: Tensor
    ffn_norm: Tensor
    wgu: Tensor
    wdown: Tensor
    bo: Tensor | None = None
    bgu: Tensor | None = None
    bdown: Tensor | None = None

    def tensors(self) -> list[Tensor]:
        parts = [t for part in self.qkv for t in (part.w, part.bias) if t is not None]
        return [t for t in vars(self).values() if isinstance(t, Tensor)] + parts


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

    def tensors(self) -> list[Tensor]:
        """Every tensor uploaded for these weights, once each."""
        held = [self.embed, self.lm_head, self.final_norm, self.inv_freq]
        held += [t for lw in self.layers for t in lw.tensors()]
        return list({id(t): t for t in held if t is not None}.values())


def row_parts(t: Tensor, max_bytes: int, alignment: int) -> list[tuple[int, Tensor]]:
    """Views of consecutive row blocks of a matrix, each at most max_bytes and starting at an aligned
    offset (a binding's); each part's products fill their columns of the logits through matmul's out_offset."""
    rows, cols = t.shape
    row_bytes = nbytes(t.dtype, (1, cols))
    if t.nbytes <= max_bytes:
        return [(0, t)]
    step = alignment // math.gcd(alignment, row_bytes)
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
        """Row-concatenated matrices of one dtype, as stored, written part by part (no host copy)."""
        (dtype,) = {self.infos[n].dtype for n in names}
        shapes = [self.infos[n].shape for n in names]
        rows, cols = sum(s[0] for s in shapes), shapes[0][1]
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

    def projections(self, names: tuple[str, ...], biases: tuple[str, ...] | None) -> tuple[Projection, ...]:
        """Matrices whose outputs share one row (q, k, v), each run of one dtype uploaded as one matrix:
        a GGUF mixing formats (Q4_K_M's q6_k v in some layers) keeps every block as it is."""
        parts, first, start = [], 0, 0
        for end in range(1, len(names) + 1):
            if end < len(names) and self.infos[names[end]].dtype == self.infos[names[start]].dtype:
                continue
            w = self.matrix(*names[start:end])
            parts.append(Projection(first, w, self.f32(*biases[start:end]) if biases else None))
            first, start = first + w.shape[0], end
        return tuple(parts)


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
                qkv=up.projections(
                    tuple(p + n for n in QKV), tuple(a + f"{n}_proj.bias" for n in "qkv") if c.qkv_bias else None
                ),
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


def default_cache_dtype(backend: Backend, weights: Weights) -> str:
    """f16 caches for 16-bit and block (GGUF) weights on devices with f16; f32 otherwise."""
    return "f16" if backend.caps.f16 and weights.wdtype != "f32" else "f32"


def check_cache_dtype(backend: Backend, cache_dtype: str) -> str:
    if cache_dtype not in ("f32", "f16"):
        raise ModelError(f"cache_dtype must be 'f32' or 'f16', got {cache_dtype!r}")
    if cache_dtype == "f16" and not backend.caps.f16:
        raise BindingError(f"{backend.caps.device} has no f16 support; use cache_dtype='f32'")
    return cache_dtype
