"""The device buffers of a loaded model besides its weights: the paged KV pools, the scratch of a
forward pass, the rows of a decode step and the per-slot sampler state (see llama.py).

Sizes: a prefill chunk has up to `chunk` rows and a decode step up to `rows` (one per live
sequence, <= BATCH_ROWS); the activations are shared by both, since the queue runs them in order.
The buffers with a row per decode row (the logits above all) start with one row and grow with
the largest batch seen, so a model serving one stream pays for one.
A slot is one sequence's row of `block_tables` and of the sampler's state, history and settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from shaderbay.kernels import ARGMAX_SCRATCH_ROW, SAMPLE_SETTINGS, decode_scratch_row
from shaderbay.resources import Tensor, Usage

from .config import ModelConfig

RUN_AHEAD = 2  # decode steps in flight: the host reads one step's tokens while the next runs

New = Callable[..., Tensor]  # (shape, dtype="f32", usage=DEVICE) -> a tensor the model owns


@dataclass(frozen=True)
class Layout:
    """The shape of the paged KV cache and of the batches: what every paged kernel is told."""

    block_size: int
    blocks_per_seq: int  # entries in a slot's block table: max_context positions, rounded up
    n_blocks: int  # blocks in each layer's K and V pool
    n_seqs: int  # slots
    rows: int  # most rows of a decode step
    chunk: int  # most rows of a prefill chunk
    hist_cap: int  # tokens of a slot's history (the repetition penalty's window)

    @property
    def paged(self) -> dict[str, int]:
        return dict(block_size=self.block_size, blocks_per_seq=self.blocks_per_seq, n_blocks=self.n_blocks,
                    n_seqs=self.n_seqs)  # fmt: skip

    @property
    def capacity(self) -> int:
        """Positions one sequence can hold."""
        return self.blocks_per_seq * self.block_size


@dataclass
class Buffers:
    caches: list[tuple[Tensor, Tensor]]  # (k, v) pools per layer: (n_blocks * block_size, kv_dim)
    block_tables: Tensor  # (n_seqs, blocks_per_seq) u32; n_blocks = no block
    # the activations of a chunk or a step
    x: Tensor
    qkv: Tensor
    attn: Tensor
    act: Tensor  # silu(gate) * up
    last: Tensor  # a chunk's last row, copied to an aligned place
    # a prefill chunk's rows (written by the host) and its token
    ids: Tensor
    positions: Tensor
    seqs: Tensor
    first: Tensor
    first_readback: Tensor
    # per slot: the sampler's [seed, step, hist_len, 0], its history and settings
    state: Tensor
    history: Tensor
    settings: Tensor
    # a decode step's rows (ROW_SIZED): written by the host when the batch changes, then moved on by the kernels
    logits: Tensor  # (rows, vocab)
    tokens: Tensor
    row_positions: Tensor
    row_seqs: Tensor
    readback: list[Tensor]  # one per recording of a decode step (RUN_AHEAD of them)
    argmax_scratch: Tensor
    attention_scratch: Tensor
    all_logits: list[Tensor] | None = None


# the buffers with a row per decode row: they grow with the largest batch seen (Llama.ensure_rows)
ROW_SIZED = ("logits", "tokens", "row_positions", "row_seqs", "readback", "argmax_scratch",
             "attention_scratch")  # fmt: skip


def allocate(new: New, c: ModelConfig, layout: Layout, cache_dtype: str) -> Buffers:
    """Every buffer of `layout`, with room for decode steps of one row."""
    L = layout
    R = max(L.chunk, L.rows)
    pool_rows = L.n_blocks * L.block_size
    return Buffers(
        caches=[
            (new((pool_rows, c.kv_dim), cache_dtype), new((pool_rows, c.kv_dim), cache_dtype))
            for _ in range(c.n_layers)
        ],  # fmt: skip
        block_tables=new((L.n_seqs, L.blocks_per_seq), "u32"),
        x=new((R, c.dim)),
        qkv=new((R, c.qkv_dim)),
        attn=new((R, c.q_dim)),
        act=new((R, c.ffn_dim)),
        last=new((1, c.dim)),
        ids=new(L.chunk, "u32", Usage.UPLOAD),
        positions=new(L.chunk, "u32", Usage.UPLOAD),
        seqs=new(L.chunk, "u32", Usage.UPLOAD),
        first=new(1, "u32"),
        first_readback=new(1, "u32", Usage.READBACK),
        state=new((L.n_seqs, 4), "u32"),
        history=new((L.n_seqs, L.hist_cap), "u32"),
        settings=new((L.n_seqs, SAMPLE_SETTINGS)),
        **row_sized(new, c, 1),
    )


def row_sized(new: New, c: ModelConfig, rows: int) -> dict[str, Any]:
    """The ROW_SIZED buffers for decode steps of up to `rows` rows."""
    return dict(
        logits=new((rows, c.vocab_size)),
        tokens=new(rows, "u32"),
        row_positions=new(rows, "u32"),
        row_seqs=new(rows, "u32"),
        readback=[new(rows, "u32", Usage.READBACK) for _ in range(RUN_AHEAD)],
        argmax_scratch=new((rows, ARGMAX_SCRATCH_ROW), "u32"),
        attention_scratch=new((rows * c.n_heads, decode_scratch_row(c.head_dim)), "u32"),
    )


def zeroed(b: Buffers) -> list[tuple[Tensor, np.ndarray]]:
    """The kernels' working memory, zeros before their first dispatch (they leave it so)."""
    return [(t, np.zeros(t.shape, np.uint32)) for t in (b.argmax_scratch, b.attention_scratch)]
