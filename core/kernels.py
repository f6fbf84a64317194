"""The kernel catalogue: every kernel a Llama-family forward pass needs, declared once.

A `KernelSpec` names the kernel's buffer bindings (dtype, shape as expressions over its
parameters and constants, access), its scalar parameters (packed in declaration order,
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

    def present(self, constants: dict[str, Any]) -> bool:
        return self.when is None or bool(_evaluate(self.when, constants))

    def resolved_dtype(self, constants: dict[str, Any]) -> str:
        if self.dtype.startswith("{"):
            return constants[self.dtype[1:-1]]
        return self.dtype

    def numel(self, scope: dict[str, Any]) -> int:
        return math.prod(int(_evaluate(expr, scope)) for expr in self.shape)


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # "u32" | "i32" | "f32"
    doc: str = ""


@dataclass(frozen=True)
class Constant:
    name: str
    choices: tuple[Any, ...]
    default: Any


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

    def bindings_for(self, constants: dict[str, Any]) -> tuple[Binding, ...]:
        return tuple(b for b in self.bindings if b.present(constants))

    def check_params(self, params: dict[str, Any], constants: dict[str, Any]) -> dict[str, Any]:
        """Validated parameter values in declaration order; raises BindingError on any problem."""
        names = [p.name for p in self.params]
        missing = [n for n in names if n not in params]
        extra = [n for n in params if n not in names]
        if missing or extra:
            raise BindingError(
                f"kernel {self.name!r} takes parameters ({', '.join(names)}); "
                f"missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'}"
            )
        values: dict[str, Any] = {}
        for p in self.params:
            v = params[p.name]
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
    return eval(expr, {"__builtins__": {}, "min": min, "max": max, "block": block_size}, scope)  # noqa: S307 - catalogue text only


# argmax splits a row over at most this many workgroups; each leaves its best (key, index) in
# scratch, after a count of those done: 1 + 2 * ARGMAX_SLICES words a row
ARGMAX_SLICES = 64
ARGMAX_SCRATCH_ROW = 1 + 2 * ARGMAX_SLICES

# The batch-invariance promise: for rows <= BATCH_ROWS, row r of matmul's result is bit for bit
# the one that row gets alone (rows = 1), whatever the other rows are (a decode batch's answers
# never depend on who else is served); every backend keeps it (the conformance suite checks)
BATCH_ROWS = 64

# decode_attention splits a head's keys over at most this many workgroups; each leaves its
# softmax maximum, sum and output in scratch, after a count of those done
DECODE_ATTENTION_SLICES = 32

W = Constant("wdtype", WEIGHT_DTYPES, "f32")
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
            f"rows <= {BATCH_ROWS}, out[r] is bit for bit what rows = 1 gives for x[r] (and out[r]).",
            bindings=(
                Binding("x", "f32", ("rows", "2 * k if prologue == 'silu_mul' else k")),
                Binding("w", "{wdtype}", ("n", "k")),
                Binding("norm_weight", "f32", ("k",), when="prologue == 'rmsnorm'"),
                Binding("bias", "f32", ("n",), when="bias"),
                Binding("out", "f32", ("rows", "n // 2 if epilogue == 'silu_mul' else n"), "readwrite"),
            ),
            params=(Param("rows", "u32"), Param("n", "u32"), Param("k", "u32"), Param("eps", "f32")),
            constants=(
                W,
                Constant("bias", (False, True), False),
                Constant("accumulate", (False, True), False),
                Constant("prologue", ("none", "rmsnorm", "silu_mul"), "none"),
                Constant("epilogue", ("none", "silu_mul"), "none"),
            ),
            constraints=(
                "rows >= 1",
                "n >= 1",
                "k >= 1",
                "k % block(wdtype) == 0",
                "epilogue == 'none' or n % 2 == 0",
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
            "KV-cache write: for each row r with p = positions[r] < max_seq, "
            "k_cache[p] = src[r, k_offset : k_offset+kv_dim] and v_cache[p] = src[r, v_offset : "
            "v_offset+kv_dim], rounded to cache_dtype; positions >= max_seq are dropped.",
            bindings=(
                Binding("src", "f32", ("rows", "stride")),
                Binding("positions", "u32", ("rows",)),
                Binding("k_cache", "{cache_dtype}", ("max_seq", "kv_dim"), "readwrite"),
                Binding("v_cache", "{cache_dtype}", ("max_seq", "kv_dim"), "readwrite"),
            ),
            params=(
                Param("rows", "u32"),
                Param("stride", "u32"),
                Param("k_offset", "u32"),
                Param("v_offset", "u32"),
                Param("kv_dim", "u32"),
                Param("max_seq", "u32"),
            ),
            constants=(CACHE,),
            constraints=(
                "rows >= 1",
                "kv_dim % 2 == 0",
                "k_offset + kv_dim <= stride",
                "v_offset + kv_dim <= stride",
            ),
        ),
        KernelSpec(
            "attention",
            "Causal grouped-query attention over the KV cache. For row r and head h, with "
            "p = positions[r], g = h // (n_heads // n_kv_heads) and L = min(p + 1, max_seq): "
            "out[r, h] = softmax(scale * q[r, h] . k_cache[:L, g]) @ v_cache[:L, g]. q[r, h] is "
            "q[r, h*head_dim : (h+1)*head_dim] in a row q_stride wide. Positions come from a "
            "buffer, so a recorded decode step replays at any position.",
            bindings=(
                Binding("q", "f32", ("rows", "q_stride")),
                Binding("k_cache", "{cache_dtype}", ("max_seq", "n_kv_heads * head_dim")),
                Binding("v_cache", "{cache_dtype}", ("max_seq", "n_kv_heads * head_dim")),
                Binding("positions", "u32", ("rows",)),
                Binding("out", "f32", ("rows", "n_heads * head_dim"), "write"),
            ),
            params=(
                Param("rows", "u32"),
                Param("n_heads", "u32"),
                Param("n_kv_heads", "u32"),
                Param("head_dim", "u32"),
                Param("q_stride", "u32"),
                Param("max_seq", "u32"),
                Param("scale", "f32"),
            ),
            constants=(CACHE,),
            constraints=(
                "rows >= 1",
                "n_kv_heads >= 1",
                "n_heads % n_kv_heads == 0",
                "n_heads * head_dim <= q_stride",
                "head_dim % 2 == 0",
                "head_dim <= 256",
                "max_seq >= 1",
            ),
        ),
        KernelSpec(
            "decode_attention",
            "One decode step's rope + kv_write + attention, for a single row. With p = positions[0], "
            "q = qkv[0, :n_heads*head_dim], k and v the next n_kv_heads*head_dim columns each (the "
            "fused qkv row, `stride` wide): q and k are rotated as `rope` does (angle = float32(p) * "
            "inv_freq[i]), the rotated k and v go to k_cache[p] and v_cache[p] rounded to cache_dtype "
            "(dropped if p >= max_seq, as `kv_write`), and out = `attention` of the rotated q over the "
            "caches (L = min(p + 1, max_seq)). qkv itself is left as it is. scratch is working memory "
            "for the GPU forms that split the keys over workgroups: zeros before a dispatch and after it.",
            bindings=(
                Binding("qkv", "f32", ("1", "stride")),
                Binding("positions", "u32", ("1",)),
                Binding("inv_freq", "f32", ("head_dim // 2",)),
                Binding("k_cache", "{cache_dtype}", ("max_seq", "n_kv_heads * head_dim"), "readwrite"),
                Binding("v_cache", "{cache_dtype}", ("max_seq", "n_kv_heads * head_dim"), "readwrite"),
                Binding("scratch", "u32", ("n_heads", f"1 + {DECODE_ATTENTION_SLICES} * (2 + head_dim)"), "readwrite"),
                Binding("out", "f32", ("1", "n_heads * head_dim"), "write"),
            ),
            params=(
                Param("n_heads", "u32"),
                Param("n_kv_heads", "u32"),
                Param("head_dim", "u32"),
                Param("stride", "u32"),
                Param("max_seq", "u32"),
                Param("scale", "f32"),
            ),
            constants=(CACHE,),
            constraints=(
                "n_kv_heads >= 1",
                "n_heads % n_kv_heads == 0",
                "(n_heads + 2 * n_kv_heads) * head_dim <= stride",
                "head_dim % 2 == 0",
                "head_dim <= 256",
                "max_seq >= 1",
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
            "Draw one token from logits. state = [seed, step, hist_len, 0]. Repetition penalty on "
            "each distinct id in history[:hist_len] (l/penalty if l > 0 else l*penalty); "
            "temperature <= 0 means greedy (argmax); otherwise softmax(l / temperature), keep "
            "p >= the top_k-th largest p (top_k 0: all) and p >= the smallest p of the shortest "
            "descending prefix whose mass reaches top_p, and p >= min_p * max p (min_p 0: all), then "
            "walk the kept ids in index order to u * kept mass, u = uniform(seed, step). Writes out[0] "
            "and history[hist_len] (if hist_len < hist_cap).",
            bindings=(
                Binding("logits", "f32", ("n",)),
                Binding("history", "u32", ("hist_cap",), "readwrite"),
                Binding("state", "u32", ("4",)),
                Binding("out", "u32", ("1",), "write"),
            ),
            params=(
                Param("n", "u32"),
                Param("hist_cap", "u32"),
                Param("temperature", "f32"),
                Param("top_k", "u32"),
                Param("top_p", "f32"),
                Param("penalty", "f32"),
                Param("min_p", "f32"),
            ),
            constraints=("n >= 1", "hist_cap >= 1", "0 < top_p <= 1", "penalty > 0", "0 <= min_p < 1"),
        ),
        KernelSpec(
            "advance",
            "Moves a recorded decode step on by `steps` tokens, so that the host writes nothing between "
            "steps: position[0] += steps, and the sampler's step and history length with it "
            "(state[1] += steps, state[2] += steps); u32 arithmetic, wrapping at 2**32.",
            bindings=(Binding("position", "u32", ("1",), "readwrite"), Binding("state", "u32", ("4",), "readwrite")),
            params=(Param("steps", "u32"),),
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
