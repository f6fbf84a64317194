"""Vulkan-specific checks: record once and replay, validation layers, pipeline cache, device choice.

The kernels' results are the conformance suite's business (`pytest --pyargs
shaderbay.conformance --backend vulkan`); here simple kernels serve as workloads. Needs a
Vulkan driver (lavapipe in CI); skipped without one unless SHADERBAY_REQUIRE_BACKENDS
names vulkan, and the validation test likewise needs vulkan-validationlayers.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from shaderbay.backends.numpy.kernels import REFERENCE
from shaderbay.conformance.plugin import required_backends
from shaderbay.errors import BackendUnavailable, ClosedError
from shaderbay.kernels import ARGMAX_SCRATCH_ROW
from shaderbay.models.model import load
from shaderbay.resources import Usage

vk = pytest.importorskip("vulkan")

from shaderbay.backends.vulkan import backend as vb  # noqa: E402
from shaderbay.backends.vulkan import loader, memory, statistics, transfers  # noqa: E402


def _required() -> bool:
    return "vulkan" in required_backends()


def _make(**kw) -> vb.VulkanBackend:
    try:
        return vb.create(**kw)
    except BackendUnavailable as exc:
        if _required():
            raise
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHADERBAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SHADERBAY_VULKAN_DEVICE", raising=False)
    monkeypatch.delenv("SHADERBAY_VULKAN_VALIDATE", raising=False)


@pytest.fixture
def be():
    backend = _make()
    yield backend
    backend.close()


def _chain(be, n: int = 1000):
    """x = embed(table, ids); x += y; out = argmax(x): dependent dispatches fed by UPLOAD buffers."""
    rng = np.random.default_rng(1)
    table = be.upload(rng.standard_normal((16, n)).astype(np.float32))
    ids = be.empty(1, "u32", Usage.UPLOAD)
    y = be.empty(n, "f32", Usage.UPLOAD)
    x = be.empty((1, n), "f32")
    out = be.empty(1, "u32")
    cmd = be.command_list("step")
    cmd.dispatch(be.pipeline("embed"), {"table": table, "ids": ids, "out": x}, rows=1, dim=n, vocab=16)
    cmd.dispatch(be.pipeline("add"), {"x": x.view(shape=n), "y": y}, n=n)
    cmd.dispatch(be.pipeline("argmax"), {"x": x, "scratch": _zeros(be, ARGMAX_SCRATCH_ROW), "out": out}, rows=1, n=n)
    return cmd, table, ids, y, x, out


def _zeros(be, n: int):
    """A u32 scratch binding: zeros, as the kernels that use one need it (and leave it)."""
    return be.upload(np.zeros(n, np.uint32))


# --- record once, replay ------------------------------------------------------------------------


def test_replay_sees_fresh_parameters(be):
    n = 1000
    cmd, table, ids, y, x, out = _chain(be, n)
    host_table = be.read(table)
    for step, row in enumerate([3, 7, 0, 15, 3]):
        bump = np.zeros(n, np.float32)
        bump[(step * 97) % n] = 100.0
        be.write(ids, np.array([row], np.uint32))
        be.write(y, bump)
        be.submit(cmd)
        assert int(be.read(out)[0]) == int(np.argmax(host_table[row] + bump))
        np.testing.assert_array_equal(be.read(x)[0], host_table[row] + bump)
        if step == 0:
            prepared = cmd.prepared
        assert cmd.prepared is prepared  # recorded once, re-submitted
    info = be.prepared_info(cmd)
    assert info["dispatches"] == 3
    assert info["barriers"] == 2  # embed -> add -> argmax: each reads what the previous wrote


def test_barriers_only_between_dependent_dispatches(be):
    n = 256
    a = be.upload(np.ones(n, np.float32))
    b = be.upload(np.ones(n, np.float32))
    big = be.upload(np.ones(2 * n, np.float32))  # two halves of one buffer: independent ranges
    y = be.upload(np.full(n, 2.0, np.float32))
    add = be.pipeline("add")
    cmd = be.command_list()
    cmd.dispatch(add, {"x": a, "y": y}, n=n)
    cmd.dispatch(add, {"x": b, "y": y}, n=n)  # independent of the first: no barrier
    cmd.dispatch(add, {"x": big.view(shape=n), "y": y}, n=n)
    cmd.dispatch(add, {"x": big.view(shape=n, offset=4 * n), "y": y}, n=n)  # other half: no barrier
    cmd.dispatch(add, {"x": y, "y": a}, n=n)  # writes what the others read: barrier
    cmd.dispatch(add, {"x": b, "y": a}, n=n)  # b was written before that barrier: none needed
    cmd.dispatch(add, {"x": a, "y": b}, n=n)  # reads b, written since: barrier
    be.run(cmd)
    assert be.prepared_info(cmd)["barriers"] == 2
    np.testing.assert_array_equal(be.read(a), 9.0)
    np.testing.assert_array_equal(be.read(y), 5.0)
    np.testing.assert_array_equal(be.read(b), 6.0)
    np.testing.assert_array_equal(be.read(big), 3.0)


def test_copies_and_several_submits_before_a_wait(be):
    n = 64
    src = be.upload(np.arange(n, dtype=np.float32))
    dst = be.empty(n)
    one = be.upload(np.ones(n, np.float32))
    first = be.command_list()
    first.copy(src.buffer, dst.buffer, 4 * n)
    first.dispatch(be.pipeline("add"), {"x": dst, "y": one}, n=n)
    second = be.command_list()
    second.dispatch(be.pipeline("add"), {"x": dst, "y": one}, n=n)
    be.submit(first)
    be.submit(second)
    be.submit(second)  # still pending: waits, then goes again
    np.testing.assert_array_equal(be.read(dst), np.arange(n) + 3.0)


# --- writes ordered with submits -------------------------------------------------------------------


def _run_ahead_writes(be, steps: int = 200) -> None:
    """The engine's pattern: two recordings of a step alternate, each reading a small input that the
    host rewrites while the step before runs, and each step's result is read a step behind. Every step
    sees the value written just before its submit; no write waits (the step submitted before it is
    still pending after it: a wait would have retired it); the queued writes' command buffers are reused."""
    n = 256
    y = be.upload(np.zeros(n, np.float32))
    xs = [be.empty(n) for _ in range(2)]
    slots = [be.empty(1, "f32", Usage.READBACK) for _ in range(2)]
    cmds = []
    for x, slot in zip(xs, slots, strict=True):
        cmd = be.command_list("step")
        cmd.copy(y.buffer, x.buffer, 4 * n)
        cmd.dispatch(be.pipeline("add"), {"x": x, "y": y}, n=n)
        cmd.copy(x.buffer, slot.buffer, 4, 4 * (n - 1))
        cmds.append(cmd)
    queued = be.stats()["queued_writes"]
    be.submit(cmds[0])
    for i in range(1, steps):
        be.write(y, np.full(n, i, np.float32))
        assert cmds[(i - 1) % 2].prepared.pending, f"step {i}: the write waited for the step before"
        be.submit(cmds[i % 2])
        assert be.read_after(cmds[(i - 1) % 2], slots[(i - 1) % 2])[0] == 2 * (i - 1)
    assert be.read_after(cmds[(steps - 1) % 2], slots[(steps - 1) % 2])[0] == 2 * (steps - 1)
    stats = be.stats()
    assert stats["queued_writes"] - queued == steps - 1
    assert stats["transfer_batches"] <= 2  # one in flight, one being recorded: reused, not leaked


def test_small_writes_while_lists_run_are_queued_not_waited_for(be):
    _run_ahead_writes(be)


def test_large_writes_and_reads_wait_for_queued_writes(be):
    """A write too large for vkCmdUpdateBuffer waits for the queue (and the writes queued before it),
    as does a read; freeing a buffer with a write queued to it is safe."""
    n = transfers.MAX_UPDATE // 4 + 4
    x, one = be.upload(np.zeros(n, np.float32)), be.upload(np.ones(n, np.float32))
    cmd = be.command_list()
    cmd.dispatch(be.pipeline("add"), {"x": x, "y": one}, n=n)
    be.submit(cmd)
    be.write(x, np.full(4, 5, np.float32), offset=4)  # queued
    assert cmd.prepared.pending
    be.write(x, np.full(n - 3, 7, np.float32), offset=12)  # too large to queue: waits, then in place
    assert not cmd.prepared.pending
    np.testing.assert_array_equal(be.read(x)[:6], [1, 5, 5, 7, 7, 7])
    be.submit(cmd)
    be.write(x, np.full(2, 9, np.float32))  # queued; the read submits it and waits
    np.testing.assert_array_equal(be.read(x)[:4], [9, 9, 6, 8])
    be.submit(cmd)
    doomed = be.empty(4)
    be.write(doomed, np.ones(4, np.float32))
    doomed.buffer.free()
    np.testing.assert_array_equal(be.read(x)[:4], [10, 10, 7, 9])


def test_submitting_a_list_whose_buffer_was_freed_is_refused(be):
    a = be.upload(np.ones(8, np.float32))
    y = be.upload(np.ones(8, np.float32))
    cmd = be.command_list()
    cmd.dispatch(be.pipeline("add"), {"x": a, "y": y}, n=8)
    be.run(cmd)
    y.buffer.free()
    with pytest.raises(ClosedError):
        be.submit(cmd)


def test_gpu_timings_per_dispatch():
    be = _make(timestamps=True)
    try:
        if not be.caps.timestamps:
            pytest.skip("this device has no timestamps")
        cmd, *_ = _chain(be)
        assert be.gpu_timings(cmd) is None  # never submitted
        be.run(cmd)
        timings = be.gpu_timings(cmd)
        assert [label for label, _ in timings] == ["embed", "add", "argmax"]
        assert all(ns >= 0 for _, ns in timings)
    finally:
        be.close()


def test_tracer_gets_gpu_spans(be):
    if not be.caps.timestamps:
        pytest.skip("this device has no timestamps")
    be.tracer.enabled = True
    cmd, *_ = _chain(be)
    be.run(cmd)
    gpu = [e for e in be.tracer.events if e["cat"] == "gpu"]
    assert [e["name"] for e in gpu] == ["embed", "add", "argmax"]


def test_pipeline_statistics_on_request(monkeypatch, capfd):
    """SHADERBAY_VULKAN_STATS=1: a line of statistics per created pipeline where the driver lists the
    extension (NVIDIA), else a warning saying it does not (lavapipe); the kernels run either way."""
    monkeypatch.setenv(statistics.ENV_STATS, "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        be = _make()
    try:
        cmd, *_ = _chain(be)
        be.run(cmd)
        printed = capfd.readouterr().err
        if be.gpu.statistics.extensions:
            assert "shaderbay vulkan: pipeline add:" in printed, printed
        else:
            assert any(statistics.EXTENSION in str(w.message) for w in caught), [str(w.message) for w in caught]
            assert "shaderbay vulkan: pipeline" not in printed
    finally:
        be.close()


# --- memory ---------------------------------------------------------------------------------


def test_small_buffers_share_blocks(be):
    before = be.stats()["blocks"]
    bufs = [be.buffer(4096) for _ in range(100)]
    assert be.stats()["blocks"] - before <= 1
    for b in bufs:
        b.free()
    big = be.buffer(memory.DEVICE_BLOCK)  # larger than half a block: a dedicated allocation
    assert be.stats()["block_bytes"] >= memory.DEVICE_BLOCK
    big.free()


def test_staging_path_round_trips(be):
    """Device memory that is not host-visible goes through the staging buffer (forced here)."""
    data = np.random.default_rng(2).standard_normal(3 * (memory.STAGING_SIZE // 4) // 2 + 5).astype(np.float32)
    t = be.empty(data.size)
    t.buffer.mapped = None  # as on a discrete GPU
    be.write(t, data)
    np.testing.assert_array_equal(be.read(t), data)
    y = be.upload(np.ones(data.size, np.float32))
    cmd = be.command_list()
    cmd.dispatch(be.pipeline("add"), {"x": t, "y": y}, n=data.size)
    be.run(cmd)
    np.testing.assert_array_equal(be.read(t), data + 1)


def test_memory_types_follow_usage(be):
    up = be.buffer(64, Usage.UPLOAD)
    down = be.buffer(64, Usage.READBACK)
    assert up.mapped is not None and down.mapped is not None
    dev = be.buffer(64)
    assert (dev.mapped is not None) == be.caps.extras["device_local_host_visible"]


# --- validation layers ------------------------------------------------------------------------


def _validating() -> vb.VulkanBackend:
    """A backend under the validation layer; without the layer the test is skipped (failed where CI
    requires vulkan)."""
    be = _make(validate=True)
    if not be.validation:
        be.close()
        if _required():
            pytest.fail("validation layers missing: apt install vulkan-validationlayers")
        pytest.skip("VK_LAYER_KHRONOS_validation is not installed")
    return be


def test_validation_layers_report_nothing():
    with _validating() as be:
        cmd, table, ids, y, x, out = _chain(be)
        for row in (1, 2):
            be.write(ids, np.array([row], np.uint32))
            be.run(cmd)
            be.read(out)
        _run_every_simple_kernel(be)
        staged = be.empty(100)
        staged.buffer.mapped = None
        be.write(staged, np.ones(100, np.float32))
        be.read(staged)
        be.gpu_timings(cmd)
        _run_ahead_writes(be, steps=20)
    assert be.validation_messages == []


def test_validation_layers_report_nothing_for_a_model():
    """Run-ahead decoding (two recordings in flight, token copies to READBACK buffers, advance) and
    the stage-precise barriers between dispatches and copies, greedy and sampled, one row and a batch."""
    with _validating() as be:
        with load("synthetic:tiny:f32", backend=be, max_context=64, streams=3) as model:
            assert len(list(model.tokens([1, 2, 3, 4], 8))) == 8
            assert len(list(model.tokens([1, 2, 3, 4], 8, temperature=0.8, seed=3))) == 8
            batch = model.generate_batch([[1, 2, 3, 4], [5, 6], [7, 8, 9]], 8, ignore_eos=True, temperature=0.8)
            assert [len(done.token_ids) for done in batch] == [8, 8, 8]  # rows of several slots, sampled
    assert be.validation_messages == []


def test_validation_messages_are_collected():
    """The messenger works: an invalid call is reported (so an empty list above means something)."""
    with _validating() as be:
        ffi, lib = loader.ffi, loader.lib
        info = loader.new(
            "VkBufferCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
            size=0,  # invalid
            usage=vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT,
        )
        out = ffi.new("VkBuffer*")
        lib.vkCreateBuffer(be.gpu.handle, info, ffi.NULL, out)
        if out[0] != ffi.NULL:
            lib.vkDestroyBuffer(be.gpu.handle, out[0], ffi.NULL)
        assert any("size" in m for m in be.validation_messages)


def _run_every_simple_kernel(be) -> None:
    rng = np.random.default_rng(3)
    rows, n = 2, 96
    x = be.upload(rng.standard_normal((rows, n)).astype(np.float32))
    w = be.upload(rng.standard_normal(n).astype(np.float32))
    out = be.empty((rows, n))
    pos = be.upload(np.array([0, 5], np.uint32))
    inv = be.upload(np.linspace(1, 0.01, 8).astype(np.float32))
    kc = be.empty((8, 16), "f16")
    vc = be.empty((8, 16), "f16")
    am = be.empty(rows, "u32")
    table = be.upload(rng.standard_normal((10, n)).astype(np.float16))
    cmd = be.command_list()
    cmd.dispatch(
        be.pipeline("embed", wdtype="f16"), {"table": table, "ids": pos, "out": out}, rows=rows, dim=n, vocab=10
    )
    cmd.dispatch(be.pipeline("rmsnorm"), {"x": out, "weight": w, "out": x}, rows=rows, n=n, eps=1e-5)
    cmd.dispatch(
        be.pipeline("rope"),
        {"x": x, "positions": pos, "inv_freq": inv},
        rows=rows,
        heads=2,
        head_dim=16,
        stride=n,
        offset=0,
    )
    cmd.dispatch(
        be.pipeline("kv_write", cache_dtype="f16"),
        {"src": x, "positions": pos, "seqs": _zeros(be, rows), "block_tables": _zeros(be, 2), "k_cache": kc,
         "v_cache": vc},
        rows=rows,
        stride=n,
        k_offset=0,
        v_offset=32,
        kv_dim=16,
        block_size=4,
        blocks_per_seq=2,
        n_blocks=2,
        n_seqs=1,
    )  # fmt: skip
    cmd.dispatch(be.pipeline("silu_mul"), {"gate_up": x, "out": out}, rows=rows, n=n // 2)
    cmd.dispatch(be.pipeline("add"), {"x": x.view(shape=rows * n), "y": out.view(shape=rows * n)}, n=rows * n)
    scratch = _zeros(be, rows * ARGMAX_SCRATCH_ROW)
    cmd.dispatch(be.pipeline("argmax"), {"x": x, "scratch": scratch, "out": am}, rows=rows, n=n)
    be.run(cmd)
    be.read(am)


# --- pipeline cache ---------------------------------------------------------------------------


def test_pipeline_cache_is_saved_and_reused(tmp_path):
    first = _make()
    path = first.pipeline_cache_path
    assert path is not None and str(path).startswith(os.environ["SHADERBAY_CACHE"])
    assert first.pipeline_cache_loaded == 0
    _run_every_simple_kernel(first)
    created = first.pipelines_created
    assert created >= 7
    first.close()
    assert path.is_file() and path.stat().st_size > 0
    second = _make()
    try:
        assert second.pipeline_cache_path == path
        assert second.pipeline_cache_loaded == path.stat().st_size
        _run_every_simple_kernel(second)
    finally:
        second.close()


def test_corrupt_pipeline_cache_is_ignored(tmp_path):
    probe = _make()
    path = probe.pipeline_cache_path
    probe.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a pipeline cache" * 10)
    be = _make()
    try:
        _run_every_simple_kernel(be)
    finally:
        be.close()


# --- device choice --------------------------------------------------------------------------


def test_device_env_by_index_and_name(monkeypatch):
    probe = _make()
    name = probe.caps.device
    probe.close()
    monkeypatch.setenv("SHADERBAY_VULKAN_DEVICE", "0")
    be = _make()
    assert be.device_index == 0
    be.close()
    monkeypatch.setenv("SHADERBAY_VULKAN_DEVICE", name.split()[0].upper())
    be = _make()
    assert be.caps.device == name
    be.close()


@pytest.mark.parametrize("wanted", ["99", "no-such-gpu"])
def test_device_env_that_matches_nothing_says_what_exists(monkeypatch, wanted):
    _make().close()  # skip when no driver
    monkeypatch.setenv("SHADERBAY_VULKAN_DEVICE", wanted)
    with pytest.raises(BackendUnavailable) as err:
        vb.create()
    assert wanted in str(err.value) and "0:" in str(err.value)


def test_caps_report_the_device(be):
    caps = be.caps
    assert caps.max_binding_size > 0 and caps.offset_alignment >= 4
    assert caps.max_workgroups >= 65535
    if caps.subgroups:
        assert caps.subgroup_size > 0 and "arithmetic" in caps.extras["subgroup_ops"]
    for kernel in ("embed", "rmsnorm", "rope", "kv_write", "silu_mul", "add", "argmax"):
        assert be.supports(kernel)


def test_both_subgroup_kinds_agree_with_the_reference(monkeypatch):
    be = _make()
    try:
        rng = np.random.default_rng(4)
        x = rng.standard_normal((3, 777)).astype(np.float32)
        x[1, 5] = x[1, 600] = 50.0
        w = rng.standard_normal(777).astype(np.float32)
        ref_norm = np.zeros(3 * 777, np.float32)
        REFERENCE["rmsnorm"]({"x": x.ravel(), "weight": w, "out": ref_norm}, {"rows": 3, "n": 777, "eps": 1e-6}, {})
        used = set()
        for no_sg in ("0", "1"):
            monkeypatch.setenv("SHADERBAY_NO_SUBGROUPS", no_sg)
            tx, tw, out, am = be.upload(x), be.upload(w), be.empty((3, 777)), be.empty(3, "u32")
            cmd = be.command_list()
            cmd.dispatch(be.pipeline("rmsnorm"), {"x": tx, "weight": tw, "out": out}, rows=3, n=777, eps=1e-6)
            scratch = _zeros(be, 3 * ARGMAX_SCRATCH_ROW)
            cmd.dispatch(be.pipeline("argmax"), {"x": tx, "scratch": scratch, "out": am}, rows=3, n=777)
            be.run(cmd)
            used.update(be.prepared_info(cmd)["variants"])
            np.testing.assert_allclose(be.read(out).ravel(), ref_norm, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(be.read(am), np.argmax(x, axis=1))
        assert {"rmsnorm", "argmax"} <= used
        if be.caps.subgroups:
            assert {"rmsnorm_sg", "argmax_sg"} <= used
    finally:
        be.close()


def test_close_releases_everything():
    be = _make()
    cmd, *_ = _chain(be)
    be.run(cmd)
    be.close()
    with pytest.raises(ClosedError):
        be.buffer(16)
    be.close()  # twice is fine


def test_products_writing_their_own_columns_of_one_row_need_no_barrier():
    """Several matrix products filling one row side by side (a q/k/v split by format, the LM head's parts)
    touch disjoint bytes of `out` at one row: they may run together, with no hazard for the synchronization
    validation to report; what reads the row waits for both."""
    k, widths = 64, (48, 16)
    rng = np.random.default_rng(0)
    with _validating() as be:
        x = be.upload(rng.standard_normal(k, dtype=np.float32))
        ws = [rng.standard_normal((n, k), dtype=np.float32) for n in widths]
        out = be.empty(sum(widths), "f32")
        matmul, add = be.pipeline("matmul", wdtype="f32"), be.pipeline("add")
        cmd = be.command_list()
        first = 0
        for w in ws:
            cmd.dispatch(matmul, {"x": x, "w": be.upload(w), "out": out}, rows=1, n=w.shape[0], k=k, eps=0.0,
                         out_stride=sum(widths), out_offset=first)  # fmt: skip
            first += w.shape[0]
        cmd.dispatch(add, {"x": out, "y": out}, n=sum(widths))  # reads both parts' columns
        be.run(cmd)
        assert be.prepared_info(cmd)["barriers"] == 1
        want = 2 * np.concatenate([w @ be.read(x) for w in ws])
        np.testing.assert_allclose(be.read(out), want, rtol=1e-5, atol=1e-5)
    assert be.validation_messages == []


def test_working_memory_of_a_variant_is_bound_after_the_catalogues_bindings(monkeypatch):
    """A variant with working memory (Variant.scratch: the tensor-core rows form's splits, which lavapipe
    cannot run; here `add` made to ask for some) gets its pipeline's own zeroed buffer, bound after the
    catalogue's bindings, grown as dispatches need and kept for the lists recorded with the old one;
    two dispatches of that pipeline never run together, though their tensors are independent."""
    import dataclasses

    from shaderbay.backends.shaders import variants as V

    def working(v):
        return dataclasses.replace(v, scratch=lambda p: 2 * p["n"]) if v.kernel == "add" else v

    variants_for, select = V.variants_for, V.select
    monkeypatch.setattr(V, "variants_for", lambda *a: [working(v) for v in variants_for(*a)])
    monkeypatch.setattr(V, "select", lambda *a: working(select(*a)))
    n = 256
    with _validating() as be:
        add = be.pipeline("add")
        assert add.working and add.scratch is None
        a, b, y = (be.upload(np.full(n, v, np.float32)) for v in (1.0, 1.0, 2.0))
        first = be.command_list()
        first.dispatch(add, {"x": a, "y": y}, n=n)
        first.dispatch(add, {"x": b, "y": y}, n=n)  # independent but for the working memory: a barrier
        be.run(first)
        assert be.prepared_info(first)["barriers"] == 1
        small = add.scratch
        assert small.size == 4 * 2 * n and not np.frombuffer(be._memory.read(small, 0, small.size), np.uint32).any()
        big = be.upload(np.ones(4 * n, np.float32))
        second = be.command_list()
        second.dispatch(add, {"x": big, "y": be.upload(np.ones(4 * n, np.float32))}, n=4 * n)
        be.run(second)
        assert add.scratch.size == 4 * 8 * n and add.scratch is not small
        be.run(first)  # recorded with the smaller buffer, which stays
        np.testing.assert_array_equal(be.read(a), 5.0)
        np.testing.assert_array_equal(be.read(b), 5.0)
        np.testing.assert_array_equal(be.read(big), 2.0)
    assert be.validation_messages == []
