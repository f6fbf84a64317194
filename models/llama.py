"""The Llama-family forward pass over a paged KV cache, recorded as command lists on any backend.

Weights are uploaded once in their stored precision, with q/k/v fused into one matrix and
gate/up into another (their rows interleaved: gate 0, up 0, gate 1, ...), so that a decode
step's layer is five dispatches for all its rows together (six where a GGUF stores v in another
format than q and k: each format's product fills its columns of the same qkv rows):

    matmul(rmsnorm prologue) -> qkv
    decode_attention (each row: rope on its q and k, k and v -> its slot's blocks, attention)
    matmul(o, accumulate into x)
    matmul(rmsnorm prologue, silu_mul epilogue: each (gate, up) pair -> silu(gate) * up)
    matmul(down, accumulate into x)

A prefill chunk (several positions of one sequence) takes seven: decode_attention's work is
three dispatches there, rope on q and k (adjacent in each qkv row), kv_write (k, v -> the
pools, through the slot's block table) and attention.

A decode step of R rows (embed, the layers, the final norm + lm_head, argmax or sample,
`advance`, a copy of the R tokens to a read-back buffer) is recorded once per R and head kind
and submitted again for every token: its state lives on the device (the rows' tokens, written
by argmax/sample and read by the next step's embed; their positions and the sampler's
counters, moved on by `advance`). Two recordings of each (RUN_AHEAD) alternate, each copying
its tokens to its own read-back buffer, so the host reads step n's tokens while step n+1 runs.
Every row is computed the same way whatever the other rows are (the kernels' BATCH_ROWS
promise), so a sequence's tokens never depend on who else is served. The engine
(models/engine.py) decides what runs; this module only records and holds the buffers.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
from shaderbay.backend import Backend
from shaderbay.backends.numpy.quants import values
from shaderbay.commands import CommandList, Dispatch
from shaderbay.errors import ContextLengthExceeded, ModelError
from shaderbay.kernels import ARGMAX_SCRATCH_ROW, BATCH_ROWS, decode_scratch_row
from shaderbay.resources import Tensor, Usage

from .buffers import ROW_SIZED, Buffers, Layout, allocate, row_sized, zeroed
from .config import ModelConfig
from .kv_blocks import blocks_for, pool_size
from .weights import Weights

BLOCK_SIZE = 16  # positions per KV block (vLLM's default): small enough that memory follows the tokens


class Llama:
    """A loaded model on one backend: weights, the paged KV pools, buffers and recorded command lists."""

    def __init__(
        self,
        backend: Backend,
        config: ModelConfig,
        weights: Weights,
        max_context: int,
        cache_dtype: str,
        prefill_chunk: int = 512,
        streams: int = 1,
        batch_invariant: bool = True,
    ):
        try:
            self.layout = _layout(backend, config, max_context, cache_dtype, prefill_chunk, streams)
        except ModelError:
            self.free_weights(backend, weights)
            raise
        self.backend = backend
        self.config = c = config
        self.weights = weights
        self.max_context = int(max_context)
        self.cache_dtype = cache_dtype
        self.chunk = self.layout.chunk
        # With several streams the products run in the matrix units' form where the device has them, for
        # one row as well as 64 when batch-invariant (a row's sums never depend on how many rows share
        # its step), else from two rows on; one row alone otherwise takes the matrix-vector form, the
        # fastest for a row.
        one_row = "matrix" if streams > 1 and batch_invariant else "vector"
        self.row_forms = (one_row, "matrix" if streams > 1 else "vector")  # rows_form of one row, of several
        self.batch_invariant = self.row_forms[0] == self.row_forms[1]
        # rows per pass when every position's logits are wanted: each block of them must fit a binding
        widest = max(p.shape[0] for _, p in weights.lm_head_parts) * 4
        self.all_chunk = max(1, min(self.chunk, backend.caps.max_binding_size // widest))
        self._lists: OrderedDict[tuple, CommandList] = OrderedDict()
        self._pipelines: dict[tuple, object] = {}
        # every buffer the model holds, its weights included, freed by close()
        self._owned: list[Tensor] = weights.tensors()
        try:
            self.s: Buffers = allocate(self._new, c, self.layout, cache_dtype)
            self.row_capacity = 1  # decode rows the ROW_SIZED buffers hold
            for t, data in zeroed(self.s):
                backend.write(t, data)
            backend.write(self.s.block_tables, np.full(self.s.block_tables.shape, self.layout.n_blocks, np.uint32))
        except BaseException:
            self.close()
            raise

    @property
    def caches(self) -> list[tuple[Tensor, Tensor]]:
        return self.s.caches

    def ensure_rows(self, rows: int) -> None:
        """Room for decode steps of `rows` rows (nothing may be in flight): the ROW_SIZED buffers grow to
        the next power of two (at most layout.rows), and the recorded lists, which bind them, go."""
        if rows <= self.row_capacity:
            return
        capacity = min(self.layout.rows, 1 << (rows - 1).bit_length())
        old = {id(t) for name in ROW_SIZED for t in _tensors(getattr(self.s, name))}
        for t in [t for t in self._owned if id(t) in old]:
            self.backend.free(t.buffer)
            self._owned.remove(t)
        for name, t in row_sized(self._new, self.config, capacity).items():
            setattr(self.s, name, t)
        for t, data in zeroed(self.s):
            self.backend.write(t, data)
        self._lists.clear()
        self.row_capacity = capacity

    @staticmethod
    def free_weights(backend: Backend, weights: Weights) -> None:
        for t in weights.tensors():
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
                accumulate=False, pairs=False, first=0, label="") -> None:  # fmt: skip
        """out[:, first:] (+)= x @ w.T, x rms-normalised with `norm` first; `pairs`: w's rows interleave gate
        and up and out gets silu(gate) * up."""
        pipe = self._pipe(
            "matmul",
            wdtype=w.dtype,
            bias=bias is not None,
            accumulate=accumulate,
            prologue="rmsnorm" if norm is not None else "none",
            epilogue="silu_mul" if pairs else "none",
            rows_form=self.row_forms[rows > 1],
        )
        n, k = w.shape
        bindings = {"x": x, "w": w, "out": out}
        if norm is not None:
            bindings["norm_weight"] = norm
        if bias is not None:
            bindings["bias"] = bias
        out_stride = out.shape[-1]
        cmd.dispatch(pipe, bindings, label, rows=rows, n=n, k=k, eps=self.config.rms_eps, out_stride=out_stride,
                     out_offset=first)  # fmt: skip

    def _record_body(self, cmd: CommandList, rows: int, ids: Tensor, positions: Tensor, seqs: Tensor,
                     decode: bool) -> None:  # fmt: skip
        c, s, w, L = self.config, self.s, self.weights, self.layout
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
        paged = {"positions": positions, "seqs": seqs, "block_tables": s.block_tables}
        for i, (lw, (k_cache, v_cache)) in enumerate(zip(w.layers, s.caches, strict=True)):
            caches = {"k_cache": k_cache, "v_cache": v_cache}
            for part in lw.qkv:
                self._matmul(cmd, x, part.w, qkv, rows, norm=lw.attn_norm, bias=part.bias, first=part.first,
                             label=f"L{i}.qkv")  # fmt: skip
            if decode:  # one dispatch: each row's rope, cache write and attention
                scratch = s.attention_scratch.view(shape=(rows * c.n_heads, decode_scratch_row(c.head_dim)))
                cmd.dispatch(
                    self._pipe("decode_attention", cache_dtype=self.cache_dtype),
                    {"qkv": qkv, **paged, "inv_freq": w.inv_freq, **caches, "scratch": scratch, "out": attn},
                    f"L{i}.attn",
                    rows=rows, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, stride=c.qkv_dim,
                    **L.paged, scale=scale,
                )  # fmt: skip
            else:  # a chunk: rope, kv_write, attention
                cmd.dispatch(
                    self._pipe("rope"), {"x": qkv, "positions": positions, "inv_freq": w.inv_freq}, f"L{i}.rope",
                    rows=rows, heads=c.n_heads + c.n_kv_heads, head_dim=c.head_dim, stride=c.qkv_dim, offset=0,
                )  # fmt: skip
                cmd.dispatch(
                    self._pipe("kv_write", cache_dtype=self.cache_dtype), {"src": qkv, **paged, **caches}, f"L{i}.kv",
                    rows=rows, stride=c.qkv_dim, k_offset=c.q_dim, v_offset=c.q_dim + c.kv_dim, kv_dim=c.kv_dim,
                    **L.paged,
                )  # fmt: skip
                cmd.dispatch(
                    self._pipe("attention", cache_dtype=self.cache_dtype), {"q": qkv, **paged, **caches, "out": attn},
                    f"L{i}.attn",
                    rows=rows, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, q_stride=c.qkv_dim,
                    **L.paged, scale=scale,
                )  # fmt: skip
            self._matmul(cmd, attn, lw.wo, x, rows, bias=lw.bo, accumulate=True, label=f"L{i}.o")
            self._matmul(cmd, x, lw.wgu, act, rows, norm=lw.ffn_norm, bias=lw.bgu, pairs=True, label=f"L{i}.gate_up")
            self._matmul(cmd, act, lw.wdown, x, rows, bias=lw.bdown, accumulate=True, label=f"L{i}.down")

    def _lm_head(self, cmd: CommandList, x: Tensor, rows: int) -> Tensor:
        """logits[:rows] = lm_head(final_norm(x)); a head in several parts fills each row part by part."""
        w = self.weights
        logits = self.s.logits.view(shape=(rows, self.config.vocab_size))
        for first, part in w.lm_head_parts:
            self._matmul(cmd, x, part, logits, rows, norm=w.final_norm, first=first, label="lm_head")
        return logits

    def _pick(self, cmd: CommandList, head: str, rows: int, logits: Tensor, seqs: Tensor, out: Tensor) -> None:
        """out[r] = the token chosen from logits[r]: argmax, or sampled with slot seqs[r]'s settings."""
        s, L, n = self.s, self.layout, self.config.vocab_size
        if head == "argmax":
            scratch = s.argmax_scratch.view(shape=(rows, ARGMAX_SCRATCH_ROW))
            cmd.dispatch(self._pipe("argmax"), {"x": logits, "scratch": scratch, "out": out}, rows=rows, n=n)
        else:
            cmd.dispatch(
                self._pipe("sample"),
                {"logits": logits, "seqs": seqs, "settings": s.settings, "state": s.state, "history": s.history,
                 "out": out},
                rows=rows, n=n, n_seqs=L.n_seqs, hist_cap=L.hist_cap,
            )  # fmt: skip

    def _record(self, key: tuple) -> CommandList:
        kind, rows, head, slot = key
        s, c, L = self.s, self.config, self.layout
        cmd = self.backend.command_list(f"{kind}[{rows}]" + (f"#{slot}" if kind == "decode" else ""))
        if kind == "decode":
            tokens, positions, seqs = (t.view(shape=rows) for t in (s.tokens, s.row_positions, s.row_seqs))
            self._record_body(cmd, rows, tokens, positions, seqs, decode=True)
            self._pick(cmd, head, rows, self._lm_head(cmd, s.x.view(shape=(rows, c.dim)), rows), seqs, tokens)
            cmd.dispatch(self._pipe("advance"), {"positions": positions, "seqs": seqs, "state": s.state},
                         rows=rows, n_seqs=L.n_seqs, steps=1)  # fmt: skip
            cmd.copy(s.tokens.buffer, s.readback[slot].buffer, rows * 4, s.tokens.offset, s.readback[slot].offset)
            return cmd
        ids, positions, seqs = (t.view(shape=rows) for t in (s.ids, s.positions, s.seqs))
        self._record_body(cmd, rows, ids, positions, seqs, decode=False)
        if head == "all":  # one [rows, part] block per lm_head part; the host joins them
            x = s.x.view(shape=(rows, c.dim))
            for (_, part), out in zip(self.weights.lm_head_parts, s.all_logits, strict=True):
                self._matmul(cmd, x, part, out.view(shape=(rows, part.shape[0])), rows, norm=self.weights.final_norm)
        elif head is not None:  # the chunk's last row picks the sequence's first token
            row_bytes = c.dim * 4
            cmd.copy(s.x.buffer, s.last.buffer, row_bytes, s.x.offset + (rows - 1) * row_bytes, s.last.offset)
            self._pick(cmd, head, 1, self._lm_head(cmd, s.last, 1), seqs.view(shape=1), s.first)
            cmd.copy(s.first.buffer, s.first_readback.buffer, 4, s.first.offset, s.first_readback.offset)
        return cmd

    def _list(self, key: tuple) -> CommandList:
        cmd = self._lists.get(key)
        if cmd is not None:
            self._lists.move_to_end(key)
            return cmd
        cmd = self._lists[key] = self._record(key)
        chunks = [k for k in self._lists if k[0] == "prefill"]
        if len(chunks) > 16:  # prompts of many lengths: keep the recent ones
            del self._lists[chunks[0]]
        return cmd

    def decode_list(self, head: str = "argmax", rows: int = 1, slot: int = 0) -> CommandList:
        """The recorded decode step of `rows` rows (recorded on first use); `slot` picks one of the
        RUN_AHEAD recordings, which differ only in the read-back buffer their tokens go to."""
        return self._list(("decode", rows, head, slot))

    def prefill_list(self, rows: int, head: str | None) -> CommandList:
        """A recorded prefill chunk of `rows` positions; `head` (argmax/sample/all, or None for a
        chunk before the prompt's last) ends it."""
        return self._list(("prefill", rows, head, 0))

    def all_logits(self) -> list[Tensor]:
        """Where a prefill chunk with the "all" head leaves every row's logits: a [all_chunk, part]
        block per lm_head part (allocated on first use)."""
        if self.s.all_logits is None:
            self.s.all_logits = [self._new((self.all_chunk, p.shape[0])) for _, p in self.weights.lm_head_parts]
        return self.s.all_logits

    # --- the host's side of a step ------------------------------------------------------------
    def host_rows(self, ids: list[int]) -> np.ndarray:
        """Embedding rows looked up on the host (for tables larger than the device can bind)."""
        w = self.weights
        return values(np.asarray(w.host_embed[np.asarray(ids, np.int64)]), w.host_embed_dtype).astype(np.float32)

    def write_chunk(self, ids: list[int], start: int, slot: int) -> None:
        """The rows of a prefill chunk: ids at positions start.., all of slot `slot`."""
        b, s, rows = self.backend, self.s, len(ids)
        if self.weights.host_embed is None:
            b.write(s.ids, np.asarray(ids, np.uint32))
        else:
            b.write(s.x, self.host_rows(ids))
        b.write(s.positions, np.arange(start, start + rows, dtype=np.uint32))
        b.write(s.seqs, np.full(rows, slot, np.uint32))

    def check_ids(self, ids: list[int]) -> None:
        if not ids:
            raise ModelError("the prompt is empty: at least one token is needed")
        bad = [t for t in ids if not 0 <= int(t) < self.config.vocab_size]
        if bad:
            raise ModelError(f"token id {bad[0]} is outside the vocabulary (0..{self.config.vocab_size - 1})")

    def check_fits(self, n_prompt: int, max_tokens: int) -> None:
        """A prompt of n_prompt tokens and max_tokens new ones fit the context (the last one sampled
        is never written to the cache), or ContextLengthExceeded."""
        needed = n_prompt + max(max_tokens - 1, 0)
        if needed > self.max_context:
            raise ContextLengthExceeded(needed, self.max_context)

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


def _tensors(value: Tensor | list[Tensor] | None) -> list[Tensor]:
    return [] if value is None else value if isinstance(value, list) else [value]


def _layout(backend: Backend, c: ModelConfig, max_context: int, cache_dtype: str, prefill_chunk: int,
            streams: int) -> Layout:  # fmt: skip
    """The pool and batch sizes for this model on this device: rows and slots as many as BATCH_ROWS
    allows and each per-row buffer can bind."""
    if cache_dtype not in ("f32", "f16"):
        raise ModelError(f"cache_dtype must be 'f32' or 'f16', got {cache_dtype!r}")
    binding = backend.caps.max_binding_size
    n_blocks = pool_size(block_size=BLOCK_SIZE, max_context=max_context, max_streams=max(1, int(streams)),
                         kv_dim=c.kv_dim, n_layers=c.n_layers, cache_dtype=cache_dtype,
                         max_binding_size=binding)  # fmt: skip
    row_bytes = max(c.vocab_size * 4, c.n_heads * decode_scratch_row(c.head_dim) * 4, max_context * 4)
    rows = max(1, min(BATCH_ROWS, binding // row_bytes))
    chunk = max(1, min(int(prefill_chunk), max_context))
    return Layout(BLOCK_SIZE, blocks_for(max_context, BLOCK_SIZE), n_blocks, rows, rows, chunk, max_context)
