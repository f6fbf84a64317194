"""Deliberately broken backends: the NumPy backend with one planted bug each.

They exist to prove that the conformance suite catches bugs (tests/test_suite_catches_bugs.py).
Each is registered with shaderbay's plugin manager through `PLUGIN` (a pluggy plugin
object, the same hook a third-party package implements), under a name ``broken-<what>``
that names no kernel, so that `-k KERNEL` selects only that kernel's tests. ``honest`` is
the same machinery with no bug planted, which must pass.

Each bug lists the `-k` expression selecting the conformance tests expected to catch it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from shaderbay.backends.numpy import kernels as ref
from shaderbay.backends.numpy.backend import NumpyBackend
from shaderbay.commands import Copy
from shaderbay.dtypes import BLOCK_DTYPES, bf16_to_f32, host_shape
from shaderbay.kernels import SAMPLE_SETTINGS
from shaderbay.plugins import BackendEntry, hookimpl, plugin_manager

Arrays = dict[str, np.ndarray]


# --- the planted bugs ----------------------------------------------------------------------------


def rmsnorm_without_eps(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    ref.rmsnorm(b, {**p, "eps": 0.0}, c)


def attention_without_causal_mask(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    # every query attends to the whole of its slot, as if positions[r] were the last one
    rows = p["rows"]
    b = dict(b)
    b["positions"] = np.full(rows, p["block_size"] * p["blocks_per_seq"] - 1, np.uint32)
    ref.attention(b, p, c)


def matmul_dropping_partial_tile(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    # a 4x4-tiled kernel that forgets the last partial tile of rows and of columns
    rows, n = p["rows"], p["n"]
    full_rows, full_n = rows - rows % 4, n - n % 4
    if full_rows == 0 or full_n == 0:
        return
    full_out = full_n // 2 if c["epilogue"] == "silu_mul" else full_n  # results of the whole tiles' columns
    first = p["out_offset"]
    out = b["out"][: rows * p["out_stride"]].reshape(rows, p["out_stride"])[:full_rows, first : first + full_out]
    scratch = dict(b)
    scratch["out"] = np.ascontiguousarray(out).reshape(-1)
    width = 2 * p["k"] if c["prologue"] == "silu_mul" else p["k"]
    scratch["x"] = b["x"][: rows * width].reshape(rows, width)[:full_rows].reshape(-1)
    w_row = host_shape(c["wdtype"], (p["k"],))[0]  # host elements of a weight row (bytes of a block row)
    scratch["w"] = b["w"][: n * w_row].reshape(n, w_row)[:full_n].reshape(-1)
    if c["bias"]:
        scratch["bias"] = b["bias"][:full_n]
    ref.matmul(scratch, {**p, "rows": full_rows, "n": full_n, "out_stride": full_out, "out_offset": 0}, c)
    out[...] = scratch["out"].reshape(full_rows, full_out)


def rope_wrong_sign(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    # rotates by -angle: (x1 cos + x2 sin, x2 cos - x1 sin)
    b = dict(b)
    b["inv_freq"] = -b["inv_freq"]
    ref.rope(b, p, c)


def argmax_last_on_ties(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    rows, n = p["rows"], p["n"]
    x = b["x"][: rows * n].reshape(rows, n)
    for r in range(rows):
        row = np.where(np.isnan(x[r]), -np.inf, x[r])
        b["out"][r] = n - 1 - int(np.argmax(row[::-1]))


def argmax_from_zero(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    # the running maximum starts at (0.0, index 0) instead of -inf: a row with nothing above 0 gives 0
    rows, n = p["rows"], p["n"]
    ref.argmax(b, p, c)
    x = b["x"][: rows * n].reshape(rows, n)
    for r in range(rows):
        if not (x[r] > 0).any():
            b["out"][r] = 0


def argmax_flushing_subnormals(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    # compares as a device flushing subnormals to zero does: they all tie with 0
    x = b["x"]
    ref.argmax({**b, "x": np.where(np.abs(x) < np.finfo(np.float32).tiny, np.float32(0), x)}, p, c)


def sample_penalty_dividing_negatives(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    # l / penalty whatever the sign: a penalised negative logit rises toward 0 instead of falling
    n, used = p["n"], min(int(b["state"][2]), p["hist_cap"])
    logits = b["logits"][:n].copy()
    history = b["history"][:used]
    seen = np.unique(history[history < n]).astype(np.int64)
    logits[seen] = (logits[seen] / np.float32(p["penalty"])).astype(np.float32)
    ref.sample({**b, "logits": logits}, {**p, "penalty": 1.0}, c)


def kv_write_at_next_position(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    b = dict(b)
    b["positions"] = b["positions"] + np.uint32(1)
    ref.kv_write(b, p, c)


def embed_f16_read_as_bf16(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    if c["wdtype"] != "f16":
        ref.embed(b, p, c)
        return
    rows, dim, vocab = p["rows"], p["dim"], p["vocab"]
    table = b["table"][: vocab * dim].reshape(vocab, dim).view(np.uint16)
    ids = b["ids"][:rows].astype(np.int64)
    out = np.zeros((rows, dim), np.float32)
    ok = ids < vocab
    out[ok] = bf16_to_f32(table[ids[ok]])
    b["out"][: rows * dim] = out.ravel()


def _block_bytes(data: np.ndarray, dtype: str, first: int, stop: int, change) -> np.ndarray:
    """A copy of block rows with bytes [first, stop) of every block replaced by change(those bytes)."""
    blocks = data.copy().reshape(-1, BLOCK_DTYPES[dtype].nbytes)
    blocks[:, first:stop] = change(blocks[:, first:stop])
    return blocks.reshape(-1)


def matmul_q4_1_without_min(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    # dequantizes q4_1 as d * q, dropping the block's minimum m (bytes 2..3 of its 20)
    if c["wdtype"] == "q4_1":
        b = {**b, "w": _block_bytes(b["w"], "q4_1", 2, 4, np.zeros_like)}
    ref.matmul(b, p, c)


def embed_q4_0_nibbles_swapped(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    # takes value i from the high nibble of qs[i] and value i + 16 from the low one
    if c["wdtype"] == "q4_0":
        b = {**b, "table": _block_bytes(b["table"], "q4_0", 2, 18, lambda qs: (qs << 4) | (qs >> 4))}
    ref.embed(b, p, c)


def silu_mul_swapped_halves(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    # silu applied to the "up" half instead of the "gate" half
    rows, n = p["rows"], p["n"]
    g = b["gate_up"][: rows * 2 * n].reshape(rows, 2 * n)
    swapped = np.concatenate([g[:, n:], g[:, :n]], axis=1).reshape(-1)
    ref.silu_mul({"gate_up": swapped, "out": b["out"]}, p, c)


def sample_ignoring_top_k(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    b = dict(b)
    b["settings"] = b["settings"].copy().reshape(-1, SAMPLE_SETTINGS)
    b["settings"][:, 1] = 0  # top_k
    b["settings"] = b["settings"].reshape(-1)
    ref.sample(b, p, c)


def add_skipping_last_element(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    if p["n"] > 1:
        ref.add(b, {**p, "n": p["n"] - 1}, c)


def copy_one_byte_short(op: Copy) -> None:
    size = op.size - 1
    op.dst.data[op.dst_offset : op.dst_offset + size] = op.src.data[op.src_offset : op.src_offset + size]


# --- backends carrying them ----------------------------------------------------------------------


class PlantedBugBackend(NumpyBackend):
    """The NumPy backend with some kernels (or the copy) replaced."""

    kernels: dict[str, Any] = {}
    copy = None

    def _prepare(self, cmd):
        steps = super()._prepare(cmd)
        out = []
        for (fn, args, written), op in zip(steps, cmd.ops, strict=True):
            if isinstance(op, Copy):
                out.append((self.copy or fn, args, written))
            else:
                out.append((self.kernels.get(op.pipeline.spec.name, fn), args, written))
        return out


class SnapshotInputsBackend(NumpyBackend):
    """Binds copies of the read-only inputs when a list is first submitted (a 'record-time upload'):
    replays then never see what the host wrote into input buffers in between."""

    def _prepare(self, cmd):
        steps = super()._prepare(cmd)
        frozen = []
        for (fn, args, written), op in zip(steps, cmd.ops, strict=True):
            if not isinstance(op, Copy):
                views, params, constants = args
                reads = {bd.name for bd in op.pipeline.bindings if bd.access == "read"}
                args = ({k: (v.copy() if k in reads else v) for k, v in views.items()}, params, constants)
            frozen.append((fn, args, written))
        return frozen


class WriteIgnoringOffsetBackend(NumpyBackend):
    """Host writes at an offset land at the start of the buffer."""

    def _write(self, buffer, offset, data):
        super()._write(buffer, 0, data)


@dataclass(frozen=True)
class Bug:
    name: str
    description: str
    make: Any  # () -> Backend
    catch: str  # -k expression: the conformance tests that must catch it
    module: str  # the conformance test module those tests live in


def _planted(name: str, kernels: dict | None = None, copy=None) -> Any:
    cls = type(f"Broken_{name}", (PlantedBugBackend,), {"kernels": kernels or {}, "copy": copy, "name": name})
    return cls


BUGS: list[Bug] = [
    Bug(
        "broken-eps",
        "RMSNorm without epsilon",
        _planted("broken-eps", {"rmsnorm": rmsnorm_without_eps}),
        "test_kernel and rmsnorm and not large",
        "test_kernels",
    ),
    Bug(
        "broken-causal-mask",
        "attention ignores the causal mask (reads the whole cache)",
        _planted("broken-causal-mask", {"attention": attention_without_causal_mask}),
        "test_kernel and attention and not large",
        "test_kernels",
    ),
    Bug(
        "broken-partial-tile",
        "matmul drops the last partial 4x4 tile of rows and columns",
        _planted("broken-partial-tile", {"matmul": matmul_dropping_partial_tile}),
        "test_kernel and matmul and not large and not f16 and not bf16",
        "test_kernels",
    ),
    Bug(
        "broken-copy",
        "buffer copy one byte short",
        _planted("broken-copy", copy=copy_one_byte_short),
        "test_buffer_state_machine",
        "test_buffers",
    ),
    Bug(
        "broken-rotation-sign",
        "rope rotates with the wrong sign",
        _planted("broken-rotation-sign", {"rope": rope_wrong_sign}),
        "test_kernel and rope and not large",
        "test_kernels",
    ),
    Bug(
        "broken-tie-break",
        "argmax returns the last of equal maxima",
        _planted("broken-tie-break", {"argmax": argmax_last_on_ties}),
        "test_kernel and argmax and not large",
        "test_kernels",
    ),
    Bug(
        "broken-zero-start",
        "argmax starts its maximum at 0.0 instead of -inf",
        _planted("broken-zero-start", {"argmax": argmax_from_zero}),
        "test_regime and argmax",
        "test_kernels",
    ),
    Bug(
        "broken-subnormal-flush",
        "argmax compares subnormals as zero",
        _planted("broken-subnormal-flush", {"argmax": argmax_flushing_subnormals}),
        "test_regime and argmax",
        "test_kernels",
    ),
    Bug(
        "broken-penalty-sign",
        "sample divides negative logits by the penalty too",
        _planted("broken-penalty-sign", {"sample": sample_penalty_dividing_negatives}),
        "test_regime and sample",
        "test_kernels",
    ),
    Bug(
        "broken-cache-position",
        "kv_write writes at position + 1",
        _planted("broken-cache-position", {"kv_write": kv_write_at_next_position}),
        "test_kernel and kv_write and not large",
        "test_kernels",
    ),
    Bug(
        "broken-half-table",
        "embed reads an f16 table as bf16",
        _planted("broken-half-table", {"embed": embed_f16_read_as_bf16}),
        "test_kernel and embed and not large",
        "test_kernels",
    ),
    Bug(
        "broken-block-min",
        "matmul dequantizes q4_1 without the block's minimum",
        _planted("broken-block-min", {"matmul": matmul_q4_1_without_min}),
        "test_kernel and matmul and q4_1 and not large",
        "test_kernels",
    ),
    Bug(
        "broken-nibble-order",
        "embed reads q4_0 nibbles in the wrong order",
        _planted("broken-nibble-order", {"embed": embed_q4_0_nibbles_swapped}),
        "test_kernel and embed and q4_0 and not large",
        "test_kernels",
    ),
    Bug(
        "broken-gate-half",
        "silu_mul applies SiLU to the wrong half",
        _planted("broken-gate-half", {"silu_mul": silu_mul_swapped_halves}),
        "test_kernel and silu_mul and not matmul and not large",
        "test_kernels",
    ),
    Bug(
        "broken-top-k",
        "sample ignores top_k",
        _planted("broken-top-k", {"sample": sample_ignoring_top_k}),
        "test_kernel and sample and not large",
        "test_kernels",
    ),
    Bug(
        "broken-tail-element",
        "add skips the last element",
        _planted("broken-tail-element", {"add": add_skipping_last_element}),
        "test_kernel and add and not large",
        "test_kernels",
    ),
    Bug(
        "broken-replay-snapshot",
        "replays use the inputs as they were at the first submit",
        type("SnapshotBackend", (SnapshotInputsBackend,), {"name": "broken-replay-snapshot"}),
        "replay",
        "test_command_lists",
    ),
    Bug(
        "broken-write-offset",
        "host writes ignore their offset",
        type("WriteOffsetBackend", (WriteIgnoringOffsetBackend,), {"name": "broken-write-offset"}),
        "test_buffer_state_machine",
        "test_buffers",
    ),
]

HONEST = "honest"


class _Plugin:
    @hookimpl
    def shaderbay_backends(self) -> list[BackendEntry]:
        entries = [BackendEntry(bug.name, bug.make, priority=-1000, description=bug.description) for bug in BUGS]
        honest = type("HonestBackend", (PlantedBugBackend,), {"name": HONEST})
        entries.append(BackendEntry(HONEST, honest, priority=-1000, description="the NumPy backend, no bug"))
        return entries


PLUGIN = _Plugin()


def register() -> None:
    """Make the broken backends discoverable in this process (idempotent)."""
    pm = plugin_manager()
    if not pm.is_registered(PLUGIN):
        pm.register(PLUGIN, name="shaderbay-broken-backends")


def unregister() -> None:
    pm = plugin_manager()
    if pm.is_registered(PLUGIN):
        pm.unregister(PLUGIN)


# a pytest plugin too (`-p broken_backends` with tests/ on sys.path): registers them for a run
def pytest_configure(config) -> None:
    register()
