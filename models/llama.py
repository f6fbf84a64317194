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
4-byte copy of the token to a read-back buffer) is recorded once for greedy decoding and once
for sampling and submitted again for every token. Its state lives on the device: the token id
(written by argmax/sample, read by the next step's embed), the position, the sampling settings,
the sampler's counters (moved on by `advance`) and the token history (for the repetition penalty). So the host
writes nothing per token and runs one step ahead of the device: two recordings of the step
(each copying its token to its own read-back buffer) alternate, and while the device runs
step n+1 the host reads step n's token. Prefill is recorded per chunk length.

The KV cache is paged as the kernels define it (shaderbay.kernels); this model runs one sequence,
slot 0, whose block table is the identity over max_context positions.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from shaderbay.backend import Backend
from shaderbay.backends.numpy.quants import values
from shaderbay.commands import CommandList, Dispatch
from shaderbay.dtypes import itemsize
from shaderbay.errors import ContextLengthExceeded, ModelError
from shaderbay.kernels import ARGMAX_SCRATCH_ROW, SAMPLE_SETTINGS, decode_scratch_row
from shaderbay.resources import Tensor, Usage

from .busy import one_at_a_time
from .config import ModelConfig
from .sampling import GREEDY, Sampling, Stats
from .weights import Weights

RUN_AHEAD = 2  # decode steps in flight: the host reads one step's token while the next runs
BLOCK_SIZE = 16  # positions per block of the paged KV cache (vLLM's default)

# --- the forward pass -------------------------------------------------------------------------


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
    seqs: Tensor  # the slot of each row: all 0
    block_table: Tensor  # slot 0's: the identity
    settings: Tensor
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
        n_blocks = -(-int(max_context) // BLOCK_SIZE)
        if n_blocks * BLOCK_SIZE * row_bytes > backend.caps.max_binding_size:
            self.free_weights(backend, weights)
            most = backend.caps.max_binding_size // row_bytes // BLOCK_SIZE * BLOCK_SIZE
            raise ModelError(
                f"a KV cache of {max_context} positions needs {max_context * row_bytes} bytes per layer, more than "
                f"{backend.caps.device} can bind ({backend.caps.max_binding_size}); load with max_context <= {most}"
                + (" or cache_dtype='f16'" if cache_dtype == "f32" and backend.caps.f16 else "")
            )
        self.backend = backend
        self.config = c = config
        self.weights = weights
        self.max_context = int(max_context)
        self.n_blocks = n_blocks
        self.cache_dtype = cache_dtype
        self.chunk = max(1, min(int(prefill_chunk), self.max_context))
        # rows per pass when every position's logits are wanted: each block of them must fit a binding
        widest = max(p.shape[0] for _, p in weights.lm_head_parts) * 4
        self.all_chunk = max(1, min(self.chunk, backend.caps.max_binding_size // widest))
        self.stats = Stats()
        self._in_use = threading.Lock()  # held by the running generation (one_at_a_time)
        self.cached_ids: list[int] = []  # the ids whose KV entries the cache holds, from position 0
        self._lists: OrderedDict[tuple, CommandList] = OrderedDict()
        self._pipelines: dict[tuple, object] = {}
        # every buffer the model holds, its weights included, freed by close()
        self._owned: list[Tensor] = [t for t in (weights.embed, weights.lm_head, weights.final_norm) if t is not None]
        self._owned += [weights.inv_freq] + [t for lw in weights.layers for t in vars(lw).values() if t is not None]
        self.caches: list[tuple[Tensor, Tensor]] = []
        try:
            R, new = self.chunk, self._new
            pool = (n_blocks * BLOCK_SIZE, c.kv_dim)
            self.caches = [(new(pool, cache_dtype), new(pool, cache_dtype)) for _ in range(c.n_layers)]
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
                attention_scratch=new((c.n_heads, decode_scratch_row(c.head_dim)), "u32"),
                position=new(1, "u32"),  # written once per generate, then moved on by `advance`
                seqs=new(R, "u32"),
                block_table=new((1, n_blocks), "u32"),
                settings=new((1, SAMPLE_SETTINGS)),
                state=new((1, 4), "u32"),
                history=new((1, self.max_context), "u32"),
                readback=[new(1, "u32", Usage.READBACK) for _ in range(RUN_AHEAD)],
            )
            for t in (self.s.argmax_scratch, self.s.attention_scratch, self.s.seqs):  # the kernels leave them zeroed
                backend.write(t, np.zeros(t.shape, np.uint32))
            backend.write(self.s.block_table, np.arange(n_blocks, dtype=np.uint32))
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

    def _paged(self, rows: int) -> tuple[dict, dict]:
        """The paged cache's bindings and parameters for `rows` rows of slot 0."""
        bindings = {"seqs": self.s.seqs.view(shape=rows), "block_tables": self.s.block_table}
        params = {"block_size": BLOCK_SIZE, "blocks_per_seq": self.n_blocks, "n_blocks": self.n_blocks, "n_seqs": 1}
        return bindings, params

    def _record_body(self, cmd: CommandList, rows: int, ids: Tensor, positions: Tensor) -> None:
        c, s, w = self.config, self.s, self.weights
        paged, paged_params = self._paged(rows)
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
                    {"qkv": qkv, "positions": positions, **paged, "inv_freq": w.inv_freq, "k_cache": k_cache,
                     "v_cache": v_cache, "scratch": s.attention_scratch, "out": attn},
                    f"L{i}.attn",
                    rows=1, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, stride=c.qkv_dim,
                    **paged_params, scale=scale,
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
        paged, paged_params = self._paged(rows)
        cmd.dispatch(
            self._pipe("rope"), {"x": qkv, "positions": positions, "inv_freq": self.weights.inv_freq}, f"L{i}.rope",
            rows=rows, heads=c.n_heads + c.n_kv_heads, head_dim=c.head_dim, stride=c.qkv_dim, offset=0,
        )  # fmt: skip
        cmd.dispatch(
            self._pipe("kv_write", cache_dtype=self.cache_dtype),
            {"src": qkv, "positions": positions, **paged, "k_cache": k_cache, "v_cache": v_cache}, f"L{i}.kv",
            rows=rows, stride=c.qkv_dim, k_offset=c.q_dim, v_offset=c.q_dim + c.kv_dim, kv_dim=c.kv_dim,
            **paged_params,
        )  # fmt: skip
        cmd.dispatch(
            self._pipe("attention", cache_dtype=self.cache_dtype),
            {"q": qkv, "k_cache": k_cache, "v_cache": v_cache, "positions": positions, **paged, "out": attn},
            f"L{i}.attn",
            rows=rows, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, q_stride=c.qkv_dim,
            **paged_params, scale=scale,
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
            cmd.dispatch(
                self._pipe("sample"),
                {"logits": s.logits, "seqs": s.seqs.view(shape=1), "settings": s.settings, "state": s.state,
                 "history": s.history, "out": s.token},
                rows=1, n=c.vocab_size, n_seqs=1, hist_cap=self.max_context,
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
            cmd.dispatch(
                self._pipe("advance"),
                {"positions": s.position, "seqs": s.seqs.view(shape=1), "state": s.state},
                rows=1, n_seqs=1, steps=1,
            )  # fmt: skip
            cmd.copy(s.token.buffer, s.readback[slot].buffer, 4, s.token.offset, s.readback[slot].offset)
        self._lists[key] = cmd
        prefills = [k for k in self._lists if k[0] == "prefill"]
        if len(prefills) > 16:  # prompts of many lengths: keep the recent ones
            del self._lists[prefills[0]]
        return cmd

    def decode_list(self, sampling: Sampling = GREEDY, slot: int = 0) -> CommandList:
        """A recorded decode step for greedy decoding or sampling (recorded on first use); `slot` picks one of
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

    @one_at_a_time
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

    @one_at_a_time
    def generate(
        self,
        ids: list[int],
        max_tokens: int,
        sampling: Sampling = GREEDY,
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
            b.write(s.settings, sampling.settings_row()[None])
            b.write(s.history.view(shape=n_prompt), np.asarray(ids, np.uint32))
            b.write(s.state, np.array([[seed, 0, n_prompt, 0]], np.uint32))
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
            b.write(s.state, np.array([[seed, 1, n_prompt + 1, 0]], np.uint32))
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
