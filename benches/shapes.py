"""Model shapes and the bytes each kernel dispatch must move (the roofline's numerator).

`Shape` is a model's own ModelConfig under a name: from the checkpoint's config.json, or from
`shaderbay.models.synthetic` for a named random-weight shape.

`dispatch_bytes` counts the *minimum unique* bytes a kernel reads and writes (weights once,
activations once, the live part of the KV cache once): achieved GB/s = those bytes / time,
compared with the copy bandwidth (bytes read + bytes written per second by a buffer copy).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shaderbay.dtypes import bytes_per_value, nbytes
from shaderbay.models.config import ModelConfig, ModelShape
from shaderbay.models.model import open_checkpoint
from shaderbay.models.synthetic import SHAPES, stored_dtypes, synthetic_config
from shaderbay.models.weights import tensor_shapes


@dataclass(frozen=True)
class Shape:
    """A model's hyper-parameters (its own ModelConfig, whose attributes it exposes) under a name, and a
    checkpoint's dtype of each tensor where it comes from one."""

    name: str
    config: ModelConfig
    dtypes: Mapping[str, str] | None = field(default=None, compare=False, hash=False)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.config, attr)

    def tensor_dtypes(self, wdtype: str) -> Mapping[str, str]:
        """Each tensor's dtype: the checkpoint's, else what a model of `wdtype` stores it in."""
        return self.dtypes if self.dtypes is not None else stored_dtypes(self.config, wdtype)

    def weights_bytes(self, wdtype: str) -> int:
        """The weights' own size, each tensor in its dtype (tensor_dtypes)."""
        dtypes = self.tensor_dtypes(wdtype)
        return sum(nbytes(dtypes[name], shape) for name, shape in tensor_shapes(self.config).items())

    def weight_bytes_per_token(self, wdtype: str) -> int:
        """Weight bytes one decode step must read: every matrix once; an untied embedding only one row."""
        if self.tie_word_embeddings:
            return self.weights_bytes(wdtype)
        table = "model.embed_tokens.weight"
        unread = (self.vocab_size - 1) * self.dim * bytes_per_value(self.tensor_dtypes(wdtype)[table])
        return int(self.weights_bytes(wdtype) - unread)

    def record(self) -> ModelShape:
        """The shape as the bench results record it."""
        return self.config.shape


def synthetic_names() -> list[str]:
    return sorted(SHAPES)


def named_shape(name: str) -> Shape:
    """A named synthetic shape (shaderbay.models.synthetic)."""
    return Shape(name, ModelConfig.from_dict(synthetic_config(name), source=f"synthetic {name}"))


def checkpoint_shape(path: Any, name: str = "") -> tuple[Shape, str]:
    """The shape (each tensor's dtype with it) of a checkpoint directory or GGUF file, and its weights'
    dtype: the one most of the matrices' bytes are in."""
    ckpt, _ = open_checkpoint(path)
    try:
        shape = Shape(name or "model", ckpt.config, {n: i.dtype for n, i in ckpt.infos().items()})
    finally:
        ckpt.close()
    matrices = Counter()
    for tensor, dims in tensor_shapes(shape.config).items():
        if len(dims) > 1:
            matrices[shape.dtypes[tensor]] += nbytes(shape.dtypes[tensor], dims)
    return shape, matrices.most_common(1)[0][0]


# --- bytes per dispatch ---------------------------------------------------------------------


def kernel_bytes(kernel: str, params: dict[str, Any], dtypes: dict[str, str], constants: dict[str, Any],
                 context: int | None = None) -> int:  # fmt: skip
    """Minimum unique bytes a dispatch of `kernel` reads plus writes.

    dtypes: binding name -> dtype; context: the live context length for a decode attention
    (its positions live in a device buffer); without it a slot's whole capacity is assumed.
    """
    p = params
    f = 4  # activations are float32

    def size(binding: str) -> float:
        return bytes_per_value(dtypes[binding])

    rows = p.get("rows", 1)
    if kernel == "embed":
        return int(rows * (p["dim"] * size("table") + 4 + p["dim"] * f))
    if kernel == "rmsnorm":
        return rows * p["n"] * 2 * f + p["n"] * f
    if kernel == "matmul":
        n, k = p["n"], p["k"]
        x_width = 2 * k if constants.get("prologue") == "silu_mul" else k
        outputs = n // 2 if constants.get("epilogue") == "silu_mul" else n
        total = int(n * k * size("w")) + rows * x_width * f + rows * outputs * f
        if constants.get("accumulate"):
            total += rows * outputs * f
        if constants.get("prologue") == "rmsnorm":
            total += k * f
        if constants.get("bias"):
            total += n * f
        return total
    if kernel == "rope":
        half = p["head_dim"] // 2
        return rows * p["heads"] * p["head_dim"] * 2 * f + rows * 4 + half * f
    if kernel == "kv_write":
        kv = p["kv_dim"]
        return rows * (2 * kv * f + 2 * kv * size("k_cache") + 4)
    if kernel == "attention":
        hd, nh, nkv = p["head_dim"], p["n_heads"], p["n_kv_heads"]
        live = min(context if context is not None else _capacity(p), _capacity(p))
        return 2 * live * nkv * hd * size("k_cache") + rows * (2 * nh * hd * f + 4)
    if kernel == "decode_attention":  # per row: its q, k, v, the live cache rows (row p written), out
        hd, nh, nkv = p["head_dim"], p["n_heads"], p["n_kv_heads"]
        live = min(context if context is not None else _capacity(p), _capacity(p))
        return rows * (2 * live * nkv * hd * size("k_cache") + (2 * nh + 2 * nkv) * hd * f + 8) + hd // 2 * f
    if kernel == "silu_mul":
        return rows * p["n"] * 3 * f
    if kernel == "add":
        return p["n"] * 3 * f
    if kernel == "argmax":
        return rows * (p["n"] * f + 4)
    if kernel == "sample":
        return rows * (p["n"] * f + p["hist_cap"] * 4 + 16 + 32 + 8)
    return 0


def _capacity(params: dict[str, Any]) -> int:
    """The positions a slot of the paged cache holds."""
    return params["block_size"] * params["blocks_per_seq"]


def kernel_flops(kernel: str, params: dict[str, Any], context: int | None = None) -> int | None:
    """Floating-point operations of the kernels that can be compute-bound (matmul, attention), else None.

    Attention: a row at position p does 4 * head_dim * n_heads * (p + 1) (scores and weighted sum);
    attention's rows (a prompt's chunk) are taken as consecutive positions ending at `context` - 1,
    decode_attention's (one a sequence) as each `context` long.
    """
    p = params
    rows = p.get("rows", 1)
    if kernel == "matmul":
        return 2 * rows * p["n"] * p["k"]
    if kernel in ("attention", "decode_attention"):
        end = min(context if context is not None else _capacity(p), _capacity(p))
        if kernel == "decode_attention":
            live = rows * end
        else:
            live = rows * end - rows * (rows - 1) // 2 if rows <= end else end * (end + 1) // 2
        return 4 * p["head_dim"] * p["n_heads"] * live
    return None


def dispatch_bytes(dispatch: Any, context: int | None = None) -> int:
    """`kernel_bytes` of a recorded `shaderbay.commands.Dispatch`."""
    pipe = dispatch.pipeline
    return kernel_bytes(pipe.spec.name, dispatch.params, pipe.dtypes, pipe.constants, context)


def dispatch_key(dispatch: Any) -> str:
    """A short name grouping dispatches of one role, kernel and shape: layers collapse into one row.

    The role is the dispatch's label without a layer prefix ("L12.qkv" -> "qkv"), when it says more
    than the kernel's name.
    """
    shape = _shape_key(dispatch)
    role = re.sub(r"^[A-Za-z]*\d+[._]", "", dispatch.label or "")
    return f"{role}: {shape}" if role and role != dispatch.pipeline.spec.name else shape


def _shape_key(dispatch: Any) -> str:
    pipe, p = dispatch.pipeline, dispatch.params
    name = pipe.spec.name
    c = pipe.constants
    if name == "matmul":
        extras = [c["prologue"]] if c.get("prologue", "none") != "none" else []
        extras += [f"{c['epilogue']} epilogue"] if c.get("epilogue", "none") != "none" else []
        extras += ["acc"] if c.get("accumulate") else []
        extras += ["bias"] if c.get("bias") else []
        tail = f" {'+'.join(extras)}" if extras else ""
        return f"matmul {c.get('wdtype')} {p['n']}x{p['k']}{tail} r{p['rows']}"
    if name in ("rmsnorm", "silu_mul", "argmax"):
        return f"{name} {p['n']} r{p['rows']}"
    if name == "add":
        return f"add {p['n']}"
    if name == "embed":
        return f"embed {c.get('wdtype')} {p['vocab']}x{p['dim']} r{p['rows']}"
    if name == "rope":
        return f"rope {p['heads']}x{p['head_dim']} r{p['rows']}"
    if name in ("kv_write", "attention", "decode_attention"):
        return f"{name} {c.get('cache_dtype')} r{p.get('rows', 1)}"
    if name == "sample":
        return f"sample {p['n']} r{p['rows']}"
    return name
