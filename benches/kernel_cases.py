"""The kernel micro-benches' cases: the dispatches one decode step and one prefill of a model make.

Each catalogue kernel at the shapes one decode step (1 row) and one prefill (`prefill_tokens`
rows) of a model use, in the fused forms the model uses (RMSNorm prologue on the QKV, gate/up
and LM-head projections, the SiLU-gated epilogue on gate/up, residual accumulate on the o and
down projections), and the unfused kernels beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from shaderbay.models.llama import BLOCK_SIZE

from .shapes import Shape


@dataclass
class KernelCase:
    name: str  # e.g. "matmul.qkv"
    phase: str  # "decode" or "prefill"
    kernel: str
    params: dict[str, Any]
    constants: dict[str, Any] = field(default_factory=dict)
    context: int | None = None  # live context for attention
    positions: list[int] | None = None


def model_cases(
    shape: Shape, wdtype: str, prefill_tokens: int, context: int, max_context: int, cache_dtype: str = "f32"
) -> list[KernelCase]:
    """The kernels of one decode step (1 row, attention over `context` positions) and one prefill."""
    s = shape
    cases: list[KernelCase] = []
    for phase, rows in (("decode", 1), ("prefill", prefill_tokens)):
        if phase == "decode":
            positions, max_seq, live = [context - 1], max_context, context
        else:
            positions, max_seq, live = list(range(rows)), max(max_context, rows), rows
        w = {"wdtype": wdtype}
        c = {"cache_dtype": cache_dtype}
        blocks = -(-max_seq // BLOCK_SIZE)
        paged = {"block_size": BLOCK_SIZE, "blocks_per_seq": blocks, "n_blocks": blocks, "n_seqs": 1}
        heads = {  # the attention kernels' common parameters
            "n_heads": s.n_heads,
            "n_kv_heads": s.n_kv_heads,
            "head_dim": s.head_dim,
            **paged,
            "scale": 1.0 / float(np.sqrt(s.head_dim)),
        }
        cases += [
            KernelCase("embed", phase, "embed", {"rows": rows, "dim": s.dim, "vocab": s.vocab_size}, w),
            KernelCase("rmsnorm", phase, "rmsnorm", {"rows": rows, "n": s.dim, "eps": 1e-5}),
            KernelCase(
                "matmul.qkv",
                phase,
                "matmul",
                {"rows": rows, "n": s.qkv_dim, "k": s.dim, "eps": 1e-5},
                {**w, "prologue": "rmsnorm"},
            ),
            KernelCase(
                "rope.qk",
                phase,
                "rope",
                {
                    "rows": rows,
                    "heads": s.n_heads + s.n_kv_heads,
                    "head_dim": s.head_dim,
                    "stride": s.qkv_dim,
                    "offset": 0,
                },
                positions=positions,
            ),
            KernelCase(
                "kv_write",
                phase,
                "kv_write",
                {
                    "rows": rows,
                    "stride": s.qkv_dim,
                    "k_offset": s.q_dim,
                    "v_offset": s.q_dim + s.kv_dim,
                    "kv_dim": s.kv_dim,
                    **paged,
                },
                c,
                positions=positions,
            ),
            KernelCase(
                "attention",
                phase,
                "attention",
                {"rows": rows, "q_stride": s.qkv_dim, **heads},
                c,
                context=live,
                positions=positions,
            ),
            KernelCase(
                "matmul.o",
                phase,
                "matmul",
                {"rows": rows, "n": s.dim, "k": s.q_dim, "eps": 1e-5},
                {**w, "accumulate": True},
            ),
            KernelCase(
                "matmul.gate_up",
                phase,
                "matmul",
                {"rows": rows, "n": 2 * s.ffn_dim, "k": s.dim, "eps": 1e-5},
                {**w, "prologue": "rmsnorm", "epilogue": "silu_mul"},
            ),
            KernelCase("silu_mul", phase, "silu_mul", {"rows": rows, "n": s.ffn_dim}),
            KernelCase(
                "matmul.down",
                phase,
                "matmul",
                {"rows": rows, "n": s.dim, "k": s.ffn_dim, "eps": 1e-5},
                {**w, "accumulate": True},
            ),
            KernelCase("add", phase, "add", {"n": rows * s.dim}),
        ]
        if phase == "decode":  # prefill computes logits for its last row only: the decode shapes
            cases += [
                KernelCase(  # what a decode step runs instead of rope.qk, kv_write and attention
                    "decode_attention",
                    phase,
                    "decode_attention",
                    {"rows": 1, "stride": s.qkv_dim, **heads},
                    c,
                    context=live,
                    positions=positions,
                ),
                KernelCase(
                    "matmul.lm_head",
                    phase,
                    "matmul",
                    {"rows": 1, "n": s.vocab_size, "k": s.dim, "eps": 1e-5},
                    {**w, "prologue": "rmsnorm"},
                ),
                KernelCase("argmax", phase, "argmax", {"rows": 1, "n": s.vocab_size}),
                KernelCase(
                    "sample",
                    phase,
                    "sample",
                    {"rows": 1, "n": s.vocab_size, "n_seqs": 1, "hist_cap": max_context},
                ),
            ]
    return cases
