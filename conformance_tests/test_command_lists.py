"""Command lists: ordering, replay, inputs changed between replays, independence, copies.

A decode step is recorded once and submitted again for every token, with the position and
token id written into small buffers in between: these tests hold a backend to exactly that.
Random programs (Hypothesis) of dispatches and copies over a few vectors are checked
against the same program run through the reference kernels on the host.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from shaderbay.backends.numpy.kernels import REFERENCE
from shaderbay.conformance.harness import relative_error
from shaderbay.conformance.plugin import require_kernels
from shaderbay.conformance.tolerances import tolerance
from shaderbay.resources import Tensor, Usage
from shaderbay.rope import inverse_frequencies

TOL = 1e-4  # programs chain a few float32 kernels; each is held to its own budget in test_kernels


def _ref(kernel: str, arrays: dict, constants: dict | None = None, **params) -> dict:
    arrays = {k: np.array(v, copy=True).reshape(-1) for k, v in arrays.items()}
    REFERENCE[kernel](arrays, params, constants or {})
    return arrays


@contextmanager
def _freed(*tensors: Tensor) -> Iterator[None]:
    """Frees the tensors' buffers when the block ends: the session's backend outlives each test."""
    try:
        yield
    finally:
        for t in tensors:
            t.buffer.free()


def _close(got: np.ndarray, want: np.ndarray, what: str, tol: float = TOL) -> None:
    err = relative_error(got, want)
    assert err <= tol, f"{what}: relative error {err:.3g} (tolerance {tol:g})"


# --- random programs -------------------------------------------------------------------------------

VECTORS = 4


@st.composite
def programs(draw):
    n = draw(st.one_of(st.integers(1, 70), st.sampled_from([1, 63, 64, 65, 257])))
    ops = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["add", "copy", "rmsnorm", "silu_mul"]))
        i, j = draw(st.lists(st.integers(0, VECTORS - 1), min_size=2, max_size=2, unique=True))
        ops.append((kind, i, j))
    seed = draw(st.integers(0, 2**32 - 1))
    return n, ops, seed


def _record(backend, cmd, ops, vecs, pipes, weight, n, half):
    for kind, i, j in ops:
        if kind == "add":  # vec[i] += vec[j]
            cmd.dispatch(pipes["add"], {"x": vecs[i], "y": vecs[j]}, n=n)
        elif kind == "copy":  # vec[j] = vec[i]
            cmd.copy(vecs[i].buffer, vecs[j].buffer, 4 * n, vecs[i].offset, vecs[j].offset)
        elif kind == "rmsnorm":  # vec[j] = rmsnorm(vec[i])
            cmd.dispatch(pipes["rmsnorm"], {"x": vecs[i], "weight": weight, "out": vecs[j]}, rows=1, n=n, eps=1e-5)
        else:  # vec[j][:half] = silu(vec[i][:half]) * vec[i][half:2 half]
            cmd.dispatch(
                pipes["silu_mul"],
                {"gate_up": vecs[i].view("f32", 2 * half), "out": vecs[j].view("f32", half)},
                rows=1,
                n=half,
            )


def _simulate(ops, values, weight, n, half):
    values = [v.copy() for v in values]
    for kind, i, j in ops:
        if kind == "add":
            values[i] = _ref("add", {"x": values[i], "y": values[j]}, n=n)["x"]
        elif kind == "copy":
            values[j] = values[i].copy()
        elif kind == "rmsnorm":
            out = _ref("rmsnorm", {"x": values[i], "weight": weight, "out": values[j]}, rows=1, n=n, eps=1e-5)
            values[j] = out["out"]
        else:
            out = _ref("silu_mul", {"gate_up": values[i][: 2 * half], "out": values[j][:half]}, rows=1, n=half)
            values[j] = np.concatenate([out["out"], values[j][half:]])
    return values


def _check_vectors(backend, vecs, want, what):
    for k, (t, w) in enumerate(zip(vecs, want, strict=True)):
        _close(backend.read(t), w, f"{what}: vector {k}")


def test_random_programs_and_replays(backend) -> None:
    """Each dispatch sees the writes of the ones before it; replays run the list again on the
    current contents; writes between replays are seen."""
    require_kernels(backend, "add", "rmsnorm", "silu_mul")
    pipes = {k: backend.pipeline(k) for k in ("add", "rmsnorm", "silu_mul")}
    base = settings.default

    @settings(base, max_examples=max(10, base.max_examples))
    @given(programs())
    def program_conforms(program):
        n, ops, seed = program
        note(f"n={n} ops={ops}")
        rng = np.random.default_rng(seed)
        half = n // 2
        if half == 0:
            ops = [op for op in ops if op[0] != "silu_mul"]
        values = [rng.uniform(-2, 2, n).astype(np.float32) for _ in range(VECTORS)]
        weight_host = rng.uniform(-2, 2, n).astype(np.float32)
        # all vectors in one buffer, at aligned offsets: views at offsets are exercised too
        align = max(backend.caps.offset_alignment, 4)
        slot = -(-4 * n // align) * align
        buf = backend.buffer(slot * VECTORS)
        weight = backend.upload(weight_host)
        try:
            vecs = [buf.tensor("f32", n, k * slot) for k in range(VECTORS)]
            for t, v in zip(vecs, values, strict=True):
                backend.write(t, v)
            cmd = backend.command_list("program")
            _record(backend, cmd, ops, vecs, pipes, weight, n, half)
            backend.submit(cmd)
            want = _simulate(ops, values, weight_host, n, half)
            _check_vectors(backend, vecs, want, "first submit")
            backend.submit(cmd)  # replay: runs again, on the current contents
            want = _simulate(ops, want, weight_host, n, half)
            _check_vectors(backend, vecs, want, "replay")
            fresh = rng.uniform(-2, 2, n).astype(np.float32)
            backend.write(vecs[0], fresh)  # a host write between replays must be seen
            want[0] = fresh
            backend.submit(cmd)
            want = _simulate(ops, want, weight_host, n, half)
            _check_vectors(backend, vecs, want, "replay after a host write")
        finally:
            buf.free()
            weight.buffer.free()

    program_conforms()


# --- a decode-like step ----------------------------------------------------------------------------


def test_replay_reads_inputs_written_between_submits(backend) -> None:
    """Record embed -> rmsnorm -> matmul once; change the token id and the matmul input each time."""
    require_kernels(backend, "embed", "rmsnorm", "matmul")
    rng = np.random.default_rng(11)
    vocab, dim, n = 37, 33, 19
    table = rng.uniform(-1, 1, (vocab, dim)).astype(np.float32)
    norm_w = rng.uniform(0.5, 1.5, dim).astype(np.float32)
    w = rng.uniform(-1, 1, (n, dim)).astype(np.float32)
    t_table, t_norm, t_w = backend.upload(table), backend.upload(norm_w), backend.upload(w)
    ids = backend.empty(1, "u32")
    hidden, normed, logits = backend.empty(dim), backend.empty(dim), backend.empty(n)
    tensors = [t_table, t_norm, t_w, ids, hidden, normed, logits]
    with _freed(*tensors):
        cmd = backend.command_list("step")
        cmd.dispatch(
            backend.pipeline("embed"), {"table": t_table, "ids": ids, "out": hidden}, rows=1, dim=dim, vocab=vocab
        )
        cmd.dispatch(
            backend.pipeline("rmsnorm"), {"x": hidden, "weight": t_norm, "out": normed}, rows=1, n=dim, eps=1e-5
        )
        cmd.dispatch(backend.pipeline("matmul"), {"x": normed, "w": t_w, "out": logits}, rows=1, n=n, k=dim, eps=0.0)
        results = {}
        for token in (3, 17, 3, 0, 36):
            backend.write(ids, np.array([token], np.uint32))
            backend.submit(cmd)
            got = backend.read(logits).copy()
            x = table[token]
            normed_ref = _ref(
                "rmsnorm", {"x": x, "weight": norm_w, "out": np.zeros(dim, np.float32)}, rows=1, n=dim, eps=1e-5
            )
            want = normed_ref["out"].astype(np.float64) @ w.T.astype(np.float64)
            _close(got, want, f"step with token {token}", tolerance("matmul", {"wdtype": "f32"}) * 10)
            if token in results:
                np.testing.assert_array_equal(
                    got, results[token], err_msg=f"replaying token {token} changed the result"
                )
            results[token] = got


def test_replay_identical_results(backend) -> None:
    """A list that reads only inputs gives bit-identical results every time it is submitted."""
    require_kernels(backend, "matmul")
    rng = np.random.default_rng(5)
    x = backend.upload(rng.uniform(-1, 1, (3, 65)).astype(np.float32))
    w = backend.upload(rng.uniform(-1, 1, (31, 65)).astype(np.float32))
    out = backend.empty((3, 31))
    with _freed(x, w, out):
        cmd = backend.command_list()
        cmd.dispatch(backend.pipeline("matmul"), {"x": x, "w": w, "out": out}, rows=3, n=31, k=65, eps=0.0)
        backend.run(cmd)
        first = backend.read(out).copy()
        for _ in range(3):
            backend.write(out, np.full((3, 31), np.nan, np.float32))
            backend.run(cmd)
            np.testing.assert_array_equal(backend.read(out), first, err_msg="a replay gave a different result")


def test_position_from_buffer_replay(backend) -> None:
    """rope, kv_write and attention read positions from a buffer: one recorded list serves every position."""
    require_kernels(backend, "rope", "kv_write", "attention")
    rng = np.random.default_rng(9)
    nh, nkv, hd, max_seq = 4, 2, 8, 12
    table = np.array([2, 0, 3], np.uint32)  # slot 0's blocks of 4 positions, in a pool of 4
    paged = {"block_size": 4, "blocks_per_seq": 3, "n_blocks": 4, "n_seqs": 1}
    pool = 16
    width = (nh + 2 * nkv) * hd  # a fused q|k|v row
    # the same parameters for the device and the reference
    rope_params = dict(rows=1, heads=nh + nkv, head_dim=hd, stride=width, offset=0)
    kv_params = dict(rows=1, stride=width, k_offset=nh * hd, v_offset=(nh + nkv) * hd, kv_dim=nkv * hd, **paged)
    attention_params = dict(
        rows=1, n_heads=nh, n_kv_heads=nkv, head_dim=hd, q_stride=width, **paged, scale=float(np.float32(hd**-0.5))
    )
    f32_cache = {"cache_dtype": "f32"}
    inv = inverse_frequencies(hd, 10000.0)
    pos = backend.empty(1, "u32")
    qkv = backend.empty(width)
    kc, vc = backend.empty((pool, nkv * hd)), backend.empty((pool, nkv * hd))
    out = backend.empty(nh * hd)
    t_inv = backend.upload(inv)
    seqs, t_table = backend.upload(np.zeros(1, np.uint32)), backend.upload(table)
    indirection = {"seqs": seqs, "block_tables": t_table}
    host_indirection = {"seqs": np.zeros(1, np.uint32), "block_tables": table}
    with _freed(pos, qkv, kc, vc, out, t_inv, seqs, t_table):
        backend.write(kc, np.zeros((pool, nkv * hd), np.float32))
        backend.write(vc, np.zeros((pool, nkv * hd), np.float32))
        cmd = backend.command_list("decode")
        cmd.dispatch(backend.pipeline("rope"), {"x": qkv, "positions": pos, "inv_freq": t_inv}, **rope_params)
        cmd.dispatch(
            backend.pipeline("kv_write"),
            {"src": qkv, "positions": pos, **indirection, "k_cache": kc, "v_cache": vc},
            **kv_params,
        )
        cmd.dispatch(
            backend.pipeline("attention"),
            {"q": qkv, "k_cache": kc, "v_cache": vc, "positions": pos, **indirection, "out": out},
            **attention_params,
        )
        host = {
            "k_cache": np.zeros(pool * nkv * hd, np.float32),
            "v_cache": np.zeros(pool * nkv * hd, np.float32),
        }
        for p in range(max_seq):
            row = rng.uniform(-1, 1, width).astype(np.float32)
            backend.write(qkv, row)
            backend.write(pos, np.array([p], np.uint32))
            backend.submit(cmd)
            positions = np.array([p], np.uint32)
            roped = _ref("rope", {"x": row, "positions": positions, "inv_freq": inv}, **rope_params)["x"]
            host = _ref(
                "kv_write", {"src": roped, "positions": positions, **host_indirection, **host}, f32_cache, **kv_params
            )
            host = {"k_cache": host["k_cache"], "v_cache": host["v_cache"]}
            want = _ref(
                "attention",
                {"q": roped, "positions": positions, "out": np.zeros(nh * hd, np.float32), **host_indirection, **host},
                f32_cache,
                **attention_params,
            )["out"]
            _close(backend.read(out), want, f"decode step at position {p}", 1e-3)
            _close(backend.read(kc).reshape(-1), host["k_cache"], f"k cache after position {p}", 1e-3)


def test_independent_lists_do_not_interfere(backend) -> None:
    """Two lists on separate buffers, submitted interleaved (without waiting), each give their own result."""
    require_kernels(backend, "add")
    rng = np.random.default_rng(2)
    n = 1000
    a_x, a_y = (rng.uniform(-1, 1, n).astype(np.float32) for _ in range(2))
    b_x, b_y = (rng.uniform(-1, 1, n).astype(np.float32) for _ in range(2))
    ta_x, ta_y, tb_x, tb_y = (backend.upload(v) for v in (a_x, a_y, b_x, b_y))
    with _freed(ta_x, ta_y, tb_x, tb_y):
        add = backend.pipeline("add")
        list_a, list_b = backend.command_list("a"), backend.command_list("b")
        list_a.dispatch(add, {"x": ta_x, "y": ta_y}, n=n)
        list_b.dispatch(add, {"x": tb_x, "y": tb_y}, n=n)
        list_b.dispatch(add, {"x": tb_x, "y": tb_y}, n=n)
        for lst in (list_a, list_b, list_b, list_a, list_b):
            backend.submit(lst)
        backend.wait()
        want_a = a_x.astype(np.float64) + 2 * a_y.astype(np.float64)
        want_b = b_x.astype(np.float64) + 6 * b_y.astype(np.float64)
        _close(backend.read(ta_x), want_a, "list a", 1e-6)
        _close(backend.read(tb_x), want_b, "list b", 1e-6)
        np.testing.assert_array_equal(backend.read(ta_y), a_y, err_msg="list a changed its read-only input")
        np.testing.assert_array_equal(backend.read(tb_y), b_y, err_msg="list b changed its read-only input")


def test_copies_inside_lists(backend) -> None:
    """copy -> dispatch on the copy -> copy of the result, in one list, replayed."""
    require_kernels(backend, "silu_mul")
    rng = np.random.default_rng(4)
    n = 77
    src_host = rng.uniform(-3, 3, 2 * n).astype(np.float32)
    src = backend.upload(src_host)
    staging = backend.empty(2 * n)
    out = backend.empty(n)
    final = backend.buffer(4 * n + 12)
    try:
        backend.write(final, np.zeros(n + 3, np.float32))
        cmd = backend.command_list("copies")
        cmd.copy(src.buffer, staging.buffer, 8 * n)
        cmd.dispatch(backend.pipeline("silu_mul"), {"gate_up": staging, "out": out}, rows=1, n=n)
        cmd.copy(out.buffer, final, 4 * n, 0, 12)
        want = _ref("silu_mul", {"gate_up": src_host, "out": np.zeros(n, np.float32)}, rows=1, n=n)["out"]
        for round_ in range(2):
            backend.run(cmd)
            got = backend.read(final).view(np.float32)
            np.testing.assert_array_equal(got[:3], 0, err_msg=f"round {round_}: copy wrote before its offset")
            _close(got[3:], want, f"round {round_}: copied result", 1e-4)
            src_host = rng.uniform(-3, 3, 2 * n).astype(np.float32)
            backend.write(src, src_host)
            want = _ref("silu_mul", {"gate_up": src_host, "out": np.zeros(n, np.float32)}, rows=1, n=n)["out"]
    finally:
        for b in (src.buffer, staging.buffer, out.buffer, final):
            b.free()


def test_many_submits_then_one_read(backend) -> None:
    """Queued submits complete in order; a read waits for all of them."""
    require_kernels(backend, "add")
    n = 64
    x = backend.upload(np.zeros(n, np.float32))
    one = backend.upload(np.ones(n, np.float32))
    with _freed(x, one):
        cmd = backend.command_list()
        cmd.dispatch(backend.pipeline("add"), {"x": x, "y": one}, n=n)
        for _ in range(50):
            backend.submit(cmd)
        np.testing.assert_array_equal(backend.read(x), np.full(n, 50, np.float32))


def test_read_after_reads_one_submit_while_later_ones_run(backend) -> None:
    """Run-ahead: two recordings of a step alternate, each copying its result to its own READBACK
    buffer; reading one after its submit gives that submit's result, whatever was queued after it."""
    require_kernels(backend, "add")
    n = 4096
    x = backend.upload(np.zeros(n, np.float32))
    one = backend.upload(np.ones(n, np.float32))
    slots = [backend.empty(1, "f32", Usage.READBACK) for _ in range(2)]
    with _freed(x, one, *slots):
        steps = []
        for slot in slots:
            cmd = backend.command_list(f"step#{len(steps)}")
            for _ in range(20):  # long enough that the next step is still queued when one is read
                cmd.dispatch(backend.pipeline("add"), {"x": x, "y": one}, n=n)
            cmd.copy(x.buffer, slot.buffer, 4, x.offset + 4 * (n - 1), slot.offset)
            steps.append(cmd)
        got = []
        backend.submit(steps[0])
        for i in range(1, 9):
            backend.submit(steps[i % 2])
            got.append(float(backend.read_after(steps[(i - 1) % 2], slots[(i - 1) % 2])[0]))
        got.append(float(backend.read_after(steps[0], slots[0])[0]))
        assert got == [20.0 * (i + 1) for i in range(9)]
        np.testing.assert_array_equal(backend.read(x), np.full(n, 180, np.float32))


def test_writes_are_ordered_with_submits(backend) -> None:
    """A write is seen by every list submitted after it and by none submitted before it, with no wait
    in between: lists that read one input (a dispatch and a copy) are submitted one after another,
    the input rewritten before each (a whole rewrite, then an overlapping part of it), and each list's
    outputs hold the value written just before its submit. Then the same lists again, replayed."""
    require_kernels(backend, "add")
    n, lists = 64, 12
    x = backend.upload(np.zeros(n, np.float32))
    sums = [backend.upload(np.zeros(n, np.float32)) for _ in range(lists)]
    copies = [backend.empty(n) for _ in range(lists)]
    with _freed(x, *sums, *copies):
        add = backend.pipeline("add")
        cmds = []
        for total, copied in zip(sums, copies, strict=True):
            cmd = backend.command_list("reads x")
            cmd.dispatch(add, {"x": total, "y": x}, n=n)
            cmd.copy(x.buffer, copied.buffer, 4 * n, x.offset, copied.offset)
            cmds.append(cmd)

        def value(round_: int, k: int) -> np.ndarray:
            return np.arange(n, dtype=np.float32) + 1000 * round_ + k

        for round_ in range(3):
            for k, cmd in enumerate(cmds):
                backend.write(x, np.full(n, -1, np.float32))
                backend.write(x, value(round_, k)[: n // 2] - 7)
                backend.write(x, value(round_, k)[: n // 2 + 4] - 7)  # overlaps the write before it
                backend.write(x, value(round_, k)[n // 4 :], offset=4 * (n // 4))
                backend.write(x, value(round_, k)[: n // 2 + 4])
                backend.submit(cmd)
            for k in range(lists):
                want = sum(value(r, k).astype(np.float64) for r in range(round_ + 1))
                np.testing.assert_array_equal(
                    backend.read(copies[k]), value(round_, k), err_msg=f"round {round_}: list {k} copied"
                )
                np.testing.assert_array_equal(backend.read(sums[k]), want, err_msg=f"round {round_}: list {k} added")


@pytest.mark.parametrize("count", [1, 200])
def test_long_lists(backend, count: int) -> None:
    """A list of many dependent dispatches (a model's decode step has hundreds)."""
    require_kernels(backend, "add")
    n = 33
    x = backend.upload(np.zeros(n, np.float32))
    y = backend.upload(np.arange(n, dtype=np.float32))
    with _freed(x, y):
        cmd = backend.command_list()
        add = backend.pipeline("add")
        for _ in range(count):
            cmd.dispatch(add, {"x": x, "y": y}, n=n)
        backend.run(cmd)
        np.testing.assert_array_equal(backend.read(x), count * np.arange(n, dtype=np.float32))
