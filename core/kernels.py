"""The kernel catalogue: every kernel a Llama-family forward pass needs, declared once.

A `KernelSpec` names the kernel's buffer bindings (dtype, shape as expressions over its
parameters and constants, access, and the span a dispatch touches where that is less than the
bound tensor), its scalar parameters (packed in declaration order,
4 bytes each: the GPU backends' push-constant block), its compile-time constants (a
pipeline is one kernel plus one choice of constants) and its constraints. The NumPy
backend's implementation in `shaderbay.backends.numpy.kernels` *is* each kernel's
meaning; the docs here summarise it.

Conventions: activations are float32; weights are f32, f16, bf16 or one of GGUF's block
formats (q8_0, q4_0, q4_1, q4_k, q6_k: rows of whole blocks, `shaderbay.dtypes`), row-major
[out, in]; token ids and positions are u32; buffers never alias within one dispatch.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

from .dtypes import WEIGHT_DTYPES, block_size
from .errors import BindingError, UnknownKernel

PARAM_TYPES = {"u32": "I", "i32": "i", "f32": "f"}


@dataclass(frozen=True)
class Binding:
    name: str
    dtype: str  # a dtype name, or "{constant}" to take it from a constant
    shape: tuple[str, ...]  # Python expressions over parameters and constants
    access: str = "read"  # "read" | "write" | "readwrite"
    when: str | None = None  # expression over constants: the binding exists only if true
    # the elements a dispatch may touch, [first, end) as expressions over the parameters and constants,
    # where that is less than the whole bound tensor: dispatches touching disjoint parts of one buffer
    # need no barrier between them (the products writing their columns of one row side by side)
    span: tuple[str, str] | None = None

    def present(self, constants: dict[str, Any]) -> bool:
        return self.when is None or bool(_evaluate(self.when, constants))

    def resolved_dtype(self, constants: dict[str, Any]) -> str:
        if self.dtype.startswith("{"):
            return constants[self.dtype[1:-1]]
        return self.dtype

    def numel(self, scope: dict[str, Any]) -> int:
        return math.prod(int(_evaluate(expr, scope)) for expr in self.shape)

    def touched(self, scope: dict[str, Any]) -> tuple[int, int] | None:
        """[first, end) of the elements a dispatch may touch; None: all of the bound tensor."""
        return None if self.span is None else (int(_evaluate(self.span[0], scope)), int(_evaluate(self.span[1], scope)))


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # "u32" | "i32" | "f32"
    doc: str = ""
    default: str | None = None  # an expression over constants and the parameters before it; None: required


@dataclass(frozen=True)
class Constant:
    name: str
    choices: tuple[Any, ...]
    default: Any
    # False: the constant chooses among a backend's variants and changes no compiled code (the
    # variant table keys its rows by the compiled constants only); NumPy's meaning ignores it.
    compiled: bool = True


@dataclass(frozen=True)
class KernelSpec:
    name: str
    doc: str
    bindings: tuple[Binding, ...]
    params: tuple[Param, ...]
    constants: tuple[Constant, ...] = ()
    constraints: tuple[str, ...] = ()  # expressions over params and constants that must hold
    param_format: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_format", "<" + "".join(PARAM_TYPES[p.type] for p in self.params))

    def resolve_constants(self, given: dict[str, Any]) -> dict[str, Any]:
        """All constants with defaults filled in; unknown names or values raise BindingError."""
        known = {c.name: c for c in self.constants}
        for name, value in given.items():
            if name not in known:
                raise BindingError(
                    f"kernel {self.name!r} has no constant {name!r}; its constants: {', '.join(known) or 'none'}"
                )
            if value not in known[name].choices:
                raise BindingError(
                    f"kernel {self.name!r}: constant {name}={value!r} is not one of {known[name].choices}"
                )
        return {c.name: given.get(c.name, c.default) for c in self.constants}

    def compiled_constants(self, constants: dict[str, Any]) -> dict[str, Any]:
        """The compiled constants of a resolved set (the ones a variant is built for)."""
        return {c.name: constants[c.name] for c in self.constants if c.compiled}

    def bindings_for(self, constants: dict[str, Any]) -> tuple[Binding, ...]:
        return tuple(b for b in self.bindings if b.present(constants))

    def check_params(self, params: dict[str, Any], constants: dict[str, Any]) -> dict[str, Any]:
        """Validated parameter values in declaration order; raises BindingError on any problem."""
        names = [p.name for p in self.params]
        missing = [p.name for p in self.params if p.name not in params and p.default is None]
        extra = [n for n in params if n not in names]
        if missing or extra:
            raise BindingError(
                f"kernel {self.name!r} takes parameters ({', '.join(names)}); "
                f"missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'}"
            )
        values: dict[str, Any] = {}
        for p in self.params:
            v = params[p.name] if p.name in params else _evaluate(p.default, {**constants, **values})
            if p.type == "f32":
                if not isinstance(v, int | float):
                    raise BindingError(f"{self.name}: parameter {p.name} must be a number, got {v!r}")
                values[p.name] = float(v)
            else:
                if isinstance(v, bool) or not isinstance(v, int) or (p.type == "u32" and not 0 <= v < 2**32):
                    raise BindingError(
                        f"{self.name}: parameter {p.name} must be an integer in the {p.type} range, got {v!r}"
                    )
                values[p.name] = int(v)
        scope = {**constants, **values}
        for rule in self.constraints:
            if not _evaluate(rule, scope):
                shown = ", ".join(f"{k}={v}" for k, v in values.items())
                raise BindingError(f"{self.name}: constraint `{rule}` does not hold for {shown}")
        return values

    def pack_params(self, values: dict[str, Any]) -> bytes:
        return struct.pack(self.param_format, *(values[p.name] for p in self.params))


def _evaluate(expr: str, scope: dict[str, Any]) -> Any:
    names = {"__builtins__": {}, "min": min, "max": max, "block": block_size, "decode_scratch_row": decode_scratch_row}
    return eval(expr, names, scope)  # noqa: S307 - catalogue text only


# argmax splits a row over at most this many workgroups; each leaves its best (key, index) in
# scratch, after a count of those done: 1 + 2 * ARGMAX_SLICES words a row
ARGMAX_SLICES = 64
ARGMAX_SCRATCH_ROW = 1 + 2 * ARGMAX_SLICES

# decode_attention splits a (row, head)'s keys over at most this many workgroups; each leaves its
# softmax maximum, sum and output in scratch, after a count of those done
DECODE_ATTENTION_SLICES = 32


def decode_scratch_row(head_dim: int) -> int:
    """u32 words of decode_attention's scratch per (row, head)."""
    return 1 + DECODE_ATTENTION_SLICES * (2 + head_dim)


# The batch-invariance promise: for rows <= BATCH_ROWS, every per-row kernel (matmul, decode_attention,
# argmax, sample, ...) gives each row bit for bit the result it gives that row alone, whatever the
# other rows hold; so a sequence's tokens never depend on who else is decoded in the same step. The
# conformance suite checks it on every backend.
BATCH_ROWS = 64

# the paged KV cache (kv_write, attention, decode_attention): a pool of n_blocks blocks of block_size
# rows, and one table row of blocks_per_seq entries per sequence slot
_PAGED = (
    "The caches are pools of n_blocks blocks of block_size rows; block_tables[s] lists slot s's blocks, "
    "so logical position p of slot s is cache row block_tables[s, p // block_size] * block_size + "
    "p % block_size, and a slot holds capacity = blocks_per_seq * block_size positions. An entry >= "
    "n_blocks is invalid (a position without a block), and so is every entry of a slot >= n_seqs."
)
PAGED_PARAMS = tuple(Param(name, "u32") for name in ("block_size", "blocks_per_seq", "n_blocks", "n_seqs"))
PAGED_CONSTRAINTS = ("block_size >= 1", "blocks_per_seq >= 1", "n_blocks >= 1", "n_seqs >= 1")
# the attention kernels' heads: grouped-query (n_heads a multiple of n_kv_heads), even head_dim
HEAD_PARAMS = tuple(Param(name, "u32") for name in ("n_heads", "n_kv_heads", "head_dim"))
HEAD_CONSTRAINTS = ("n_kv_heads >= 1", "n_heads % n_kv_heads == 0", "head_dim % 2 == 0", "head_dim <= 256")

# the sampler's per-slot settings row: [temperature, top_k, top_p, penalty, min_p, 0, 0, 0]
SAMPLE_SETTINGS = 8

W = Constant("wdtype", WEIGHT_DTYPES, "f32")
MATMUL_OUTPUTS = "(n // 2 if epilogue == 'silu_mul' else n)"  # a matmul row's results
MATMUL_OUT_SPAN = ("out_offset", f"(rows - 1) * out_stride + out_offset + {MATMUL_OUTPUTS}")  # its columns of out
CACHE = Constant("cache_dtype", ("f32", "f16"), "f32")

CATALOGUE: dict[str, KernelSpec] = {
    k.name: k
    for k in (
        KernelSpec(
            "embed",
            "out[r] = table[ids[r]] as float32; ids >= vocab give a row of zeros.",
            bindings=(
                Binding("table", "{wdtype}", ("vocab", "dim")),
                Binding("ids", "u32", ("rows",)),
                Binding("out", "f32", ("rows", "dim"), "write"),
            ),
            params=(Param("rows", "u32"), Param("dim", "u32"), Param("vocab", "u32")),
            constants=(W,),
            constraints=("rows >= 1", "dim >= 1", "dim % block(wdtype) == 0"),
        ),
        KernelSpec(
            "rmsnorm",
            "out[r] = x[r] / sqrt(mean(x[r]**2) + eps) * weight.",
            bindings=(
                Binding("x", "f32", ("rows", "n")),
                Binding("weight", "f32", ("n",)),
                Binding("out", "f32", ("rows", "n"), "write"),
            ),
            params=(Param("rows", "u32"), Param("n", "u32"), Param("eps", "f32")),
            constraints=("rows >= 1", "n >= 1", "eps >= 0"),
        ),
        KernelSpec(
            "matmul",
            "out[r] (+)= epilogue(prologue(x[r]) @ w.T (+ bias)). prologue 'rmsnorm' normalises x[r] "
            "with norm_weight and eps first; 'silu_mul' reads x[r] as [gate | up] (2k wide) and uses "
            "silu(gate) * up. epilogue 'silu_mul' pairs adjacent outputs y of a row, w's rows being "
            "interleaved gate and up rows: out[r, j] = silu(y[2j]) * y[2j+1], n/2 columns. accumulate "
            "adds into out (a fused residual add). Batch-invariant up to BATCH_ROWS rows: with "
            f"rows <= {BATCH_ROWS}, out[r] is bit for bit what rows = 1 gives for x[r] (and out[r]), "
            "within one rows_form. rows_form 'vector' (default): the matrix-vector forms, fastest for "
            "one row; 'matrix': the matrix units (tensor cores) for every rows count up to BATCH_ROWS "
            "where the device has them (else as 'vector'), fastest for many rows; the two may differ "
            "in the last bits. out[r] is columns out_offset .. out_offset + (n/2 or n) - 1 of row r of a "
            "matrix out_stride wide (by default the whole row): several products fill one row side by "
            "side, and the other columns are left as they are.",
            bindings=(
                Binding("x", "f32", ("rows", "2 * k if prologue == 'silu_mul' else k")),
                Binding("w", "{wdtype}", ("n", "k")),
                Binding("norm_weight", "f32", ("k",), when="prologue == 'rmsnorm'"),
                Binding("bias", "f32", ("n",), when="bias"),
                Binding("out", "f32", ("rows", "out_stride"), "readwrite", span=MATMUL_OUT_SPAN),
            ),
            params=(
                Param("rows", "u32"),
                Param("n", "u32"),
                Param("k", "u32"),
                Param("eps", "f32"),
                Param("out_stride", "u32", default=MATMUL_OUTPUTS),
                Param("out_offset", "u32", default="0"),
            ),
            constants=(
                W,
                Constant("bias", (False, True), False),
                Constant("accumulate", (False, True), False),
                Constant("prologue", ("none", "rmsnorm", "silu_mul"), "none"),
                Constant("epilogue", ("none", "silu_mul"), "none"),
                Constant("rows_form", ("vector", "matrix"), "vector", compiled=False),
            ),
            constraints=(
                "rows >= 1",
                "n >= 1",
                "k >= 1",
                "k % block(wdtype) == 0",
                "epilogue == 'none' or n % 2 == 0",
                f"out_offset + {MATMUL_OUTPUTS} <= out_stride",
            ),
        ),
        KernelSpec(
            "rope",
            "Rotary embedding, rotate-half convention, in place on `heads` heads of each row, "
            "starting at column `offset` of a row `stride` wide: angle = float32(positions[r]) * "
            "inv_freq[i]; (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) for x1 = x[i], "
            "x2 = x[i + head_dim/2]. inv_freq carries theta and any llama3 scaling "
            "(shaderbay.rope.inverse_frequencies).",
            bindings=(
                Binding("x", "f32", ("rows", "stride"), "readwrite"),
                Binding("positions", "u32", ("rows",)),
                Binding("inv_freq", "f32", ("head_dim // 2",)),
            ),
            params=(
                Param("rows", "u32"),
                Param("heads", "u32"),
                Param("head_dim", "u32"),
                Param("stride", "u32"),
                Param("offset", "u32"),
            ),
            constraints=(
                "rows >= 1",
                "heads >= 1",
                "head_dim % 2 == 0",
                "offset + heads * head_dim <= stride",
            ),
        ),
        KernelSpec(
            "kv_write",
            f"Paged KV-cache write. {_PAGED} For each row r with p = positions[r] and b = the entry for "
            "(seqs[r], p // block_size): k_cache[b * block_size + p % block_size] = src[r, k_offset : "
            "k_offset+kv_dim] and the same row of v_cache = src[r, v_offset : v_offset+kv_dim], rounded to "
            "cache_dtype. Positions >= capacity and invalid entries are dropped; rows that land on one cache "
            "row: the last of them wins.",
            bindings=(
                Binding("src", "f32", ("rows", "stride")),
                Binding("positions", "u32", ("rows",)),
                Binding("seqs", "u32", ("rows",)),
                Binding("block_tables", "u32", ("n_seqs", "blocks_per_seq")),
                Binding("k_cache", "{cache_dtype}", ("n_blocks * block_size", "kv_dim"), "readwrite"),
                Binding("v_cache", "{cache_dtype}", ("n_blocks * block_size", "kv_dim"), "readwrite"),
            ),
            params=(
                Param("rows", "u32"),
                Param("stride", "u32"),
                Param("k_offset", "u32"),
                Param("v_offset", "u32"),
                Param("kv_dim", "u32"),
                *PAGED_PARAMS,
            ),
            constants=(CACHE,),
            constraints=(
                "rows >= 1",
                "kv_dim % 2 == 0",
                "k_offset + kv_dim <= stride",
                "v_offset + kv_dim <= stride",
                *PAGED_CONSTRAINTS,
            ),
        ),
        KernelSpec(
            "attention",
            f"Causal grouped-query attention over the paged KV cache. {_PAGED} For row r and head h, with "
            "p = positions[r], g = h // (n_heads // n_kv_heads) and K, V the cache rows of logical positions "
            "0..min(p, capacity - 1) of slot seqs[r] whose entry is valid (in position order): "
            "out[r, h] = softmax(scale * q[r, h] . K[:, g]) @ V[:, g], zeros if no position is valid. "
            "q[r, h] is q[r, h*head_dim : (h+1)*head_dim] in a row q_stride wide. Positions and tables "
            "come from buffers, so a recorded step replays at any position.",
            bindings=(
                Binding("q", "f32", ("rows", "q_stride")),
                Binding("k_cache", "{cache_dtype}", ("n_blocks * block_size", "n_kv_heads * head_dim")),
                Binding("v_cache", "{cache_dtype}", ("n_blocks * block_size", "n_kv_heads * head_dim")),
                Binding("positions", "u32", ("rows",)),
                Binding("seqs", "u32", ("rows",)),
                Binding("block_tables", "u32", ("n_seqs", "blocks_per_seq")),
                Binding("out", "f32", ("rows", "n_heads * head_dim"), "write"),
            ),
            params=(Param("rows", "u32"), *HEAD_PARAMS, Param("q_stride", "u32"), *PAGED_PARAMS, Param("scale", "f32")),
            constants=(CACHE,),
            constraints=("rows >= 1", *HEAD_CONSTRAINTS, "n_heads * head_dim <= q_stride", *PAGED_CONSTRAINTS),
        ),
        KernelSpec(
            "decode_attention",
            "One decode step's rope + kv_write + attention, for each of `rows` rows (one token of a "
            "sequence each). With p = positions[r], q = qkv[r, :n_heads*head_dim], k and v the next "
            "n_kv_heads*head_dim columns each (the fused qkv row, `stride` wide): q and k are rotated as "
            "`rope` does (angle = float32(p) * inv_freq[i]), the rotated k and v are written as `kv_write` "
            "writes them (slot seqs[r], position p), and out[r] = `attention` of the rotated q. Each row "
            "sees the cache as it was before the dispatch plus its own new row: the rows of one dispatch "
            "must be of distinct slots, none writing a cache row another row of the dispatch can see "
            "(the host's duty: a constraint cannot see buffer contents). qkv itself is left as it is. "
            "scratch is working memory for the GPU forms that split a (row, head)'s keys over workgroups: "
            "zeros before a dispatch and after it.",
            bindings=(
                Binding("qkv", "f32", ("rows", "stride")),
                Binding("positions", "u32", ("rows",)),
                Binding("seqs", "u32", ("rows",)),
                Binding("block_tables", "u32", ("n_seqs", "blocks_per_seq")),
                Binding("inv_freq", "f32", ("head_dim // 2",)),
                Binding("k_cache", "{cache_dtype}", ("n_blocks * block_size", "n_kv_heads * head_dim"), "readwrite"),
                Binding("v_cache", "{cache_dtype}", ("n_blocks * block_size", "n_kv_heads * head_dim"), "readwrite"),
                Binding("scratch", "u32", ("rows * n_heads", "decode_scratch_row(head_dim)"), "readwrite"),
                Binding("out", "f32", ("rows", "n_heads * head_dim"), "write"),
            ),
            params=(Param("rows", "u32"), *HEAD_PARAMS, Param("stride", "u32"), *PAGED_PARAMS, Param("scale", "f32")),
            constants=(CACHE,),
            constraints=(
                "rows >= 1",
                *HEAD_CONSTRAINTS,
                "(n_heads + 2 * n_kv_heads) * head_dim <= stride",
                *PAGED_CONSTRAINTS,
            ),
        ),
        KernelSpec(
            "silu_mul",
            "SiLU-gated multiply: out[r] = silu(gate_up[r, :n]) * gate_up[r, n:], silu(g) = g / (1 + exp(-g)).",
            bindings=(
                Binding("gate_up", "f32", ("rows", "2 * n")),
                Binding("out", "f32", ("rows", "n"), "write"),
            ),
            params=(Param("rows", "u32"), Param("n", "u32")),
            constraints=("rows >= 1", "n >= 1"),
        ),
        KernelSpec(
            "add",
            "Residual add, in place: x += y.",
            bindings=(Binding("x", "f32", ("n",), "readwrite"), Binding("y", "f32", ("n",))),
            params=(Param("n", "u32"),),
            constraints=("n >= 1",),
        ),
        KernelSpec(
            "argmax",
            "out[r] = index of the largest x[r] (the smallest such index on ties; NaN never wins). "
            "scratch is working memory for the GPU forms that split a row over workgroups: it holds "
            "zeros before a dispatch and again after it.",
            bindings=(
                Binding("x", "f32", ("rows", "n")),
                Binding("scratch", "u32", ("rows", str(ARGMAX_SCRATCH_ROW)), "readwrite"),
                Binding("out", "u32", ("rows",), "write"),
            ),
            params=(Param("rows", "u32"), Param("n", "u32")),
            constraints=("rows >= 1", "n >= 1"),
        ),
        KernelSpec(
            "sample",
            "Draw one token for each row r from logits[r], with the settings, counters and history of "
            "slot s = seqs[r]: settings[s] = [temperature, top_k, top_p, penalty, min_p, 0, 0, 0] (top_k "
            "an integral float; the host keeps them valid: 0 < top_p <= 1, penalty > 0, 0 <= min_p < 1) and "
            "state[s] = [seed, step, hist_len, 0]. Repetition penalty on each distinct id in "
            "history[s, :hist_len] (l/penalty if l > 0 else l*penalty); temperature <= 0 means greedy "
            "(argmax: with penalty 1, exactly `argmax`'s answer); otherwise softmax(l / temperature), keep "
            "p >= the top_k-th largest p (top_k 0 or >= n: all) and p >= the smallest p of the shortest "
            "descending prefix whose mass reaches top_p, and p >= min_p * max p (min_p 0: all), then "
            "walk the kept ids in index order to u * kept mass, u = uniform(seed, step). Writes out[r] "
            "and history[s, hist_len] (if hist_len < hist_cap). The rows of one dispatch must be of "
            "distinct slots, each < n_seqs (the host's duty).",
            bindings=(
                Binding("logits", "f32", ("rows", "n")),
                Binding("seqs", "u32", ("rows",)),
                Binding("settings", "f32", ("n_seqs", str(SAMPLE_SETTINGS))),
                Binding("state", "u32", ("n_seqs", "4")),
                Binding("history", "u32", ("n_seqs", "hist_cap"), "readwrite"),
                Binding("out", "u32", ("rows",), "write"),
            ),
            params=(Param("rows", "u32"), Param("n", "u32"), Param("n_seqs", "u32"), Param("hist_cap", "u32")),
            constraints=("rows >= 1", "n >= 1", "n_seqs >= 1", "hist_cap >= 1"),
        ),
        KernelSpec(
            "advance",
            "Moves a recorded decode step on by `steps` tokens, so that the host writes nothing between "
            "steps: for each row r, positions[r] += steps, and the sampler's step and history length of "
            "its slot with it (state[seqs[r], 1] += steps, state[seqs[r], 2] += steps); u32 arithmetic, "
            "wrapping at 2**32. The rows must be of distinct slots, each < n_seqs (the host's duty).",
            bindings=(
                Binding("positions", "u32", ("rows",), "readwrite"),
                Binding("seqs", "u32", ("rows",)),
                Binding("state", "u32", ("n_seqs", "4"), "readwrite"),
            ),
            params=(Param("rows", "u32"), Param("n_seqs", "u32"), Param("steps", "u32")),
            constraints=("rows >= 1", "n_seqs >= 1"),
        ),
    )
}


def kernel(name: str) -> KernelSpec:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownKernel(name, list(CATALOGUE)) from None


def uniform(seed: int, step: int) -> float:
    """The sampler's random number in [0, 1): a pure function of (seed, step), same on every backend."""
    return (_hash32((seed ^ _hash32(step)) & 0xFFFFFFFF) >> 8) / float(1 << 24)


def _hash32(x: int) -> int:
    # "lowbias32" integer hash (Chris Wellons): cheap in a shader, exact in Python.
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x
