"""wgpu-specific checks: adapter choice, replay without crashes, binding windows, timestamps.

The kernels' results are the conformance suite's business; here `add` and `rmsnorm` only
serve as workloads. Needs a Vulkan adapter (lavapipe in CI); skipped without one unless
SHADERBAY_REQUIRE_BACKENDS names wgpu.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from shaderbay.errors import BackendUnavailable, BindingError, ClosedError, LimitExceeded
from shaderbay.resources import Usage

pytest.importorskip("wgpu")

from shaderbay.backends.wgpu import adapter, commands, pipelines  # noqa: E402
from shaderbay.backends.wgpu import backend as wb  # noqa: E402


def _required() -> bool:
    return "wgpu" in os.environ.get("SHADERBAY_REQUIRE_BACKENDS", "").split(",")


def _make(**kw) -> wb.WgpuBackend:
    try:
        return wb.create(**kw)
    except BackendUnavailable as exc:
        if _required():
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def be():
    backend = _make()
    yield backend
    backend.close()


def fake(device: str, backend_type: str = "Vulkan", adapter_type: str = "DiscreteGPU", vendor: str = "") -> object:
    info = {
        "device": device,
        "description": f"{device} driver",
        "vendor": vendor,
        "backend_type": backend_type,
        "adapter_type": adapter_type,
    }
    return SimpleNamespace(info=info)


# --- adapter choice (no device needed) ----------------------------------------------------


def test_opengl_only_is_refused_with_what_to_do():
    gl = fake("llvmpipe (LLVM 15.0.6, 256 bits)", "OpenGL", "CPU")
    with pytest.raises(BackendUnavailable) as err:
        adapter.choose_adapter([gl])
    msg = str(err.value)
    assert "no Vulkan adapter" in msg and "OpenGL" in msg
    assert "mesa-vulkan-drivers" in msg and adapter.ENV_ALLOW_ANY in msg
    assert adapter.choose_adapter([gl], allow_any=True) is gl


def test_no_adapter_at_all():
    with pytest.raises(BackendUnavailable, match="no adapter"):
        adapter.choose_adapter([])


def test_prefers_discrete_vulkan_and_ignores_others():
    cpu = fake("llvmpipe", adapter_type="CPU")
    igpu = fake("Intel UHD", adapter_type="IntegratedGPU")
    dgpu_gl = fake("NVIDIA H100 (GL)", "OpenGL", "DiscreteGPU")
    dgpu = fake("NVIDIA H100 80GB HBM3", adapter_type="DiscreteGPU")
    assert adapter.choose_adapter([cpu, dgpu_gl, igpu, dgpu]) is dgpu
    assert adapter.choose_adapter([cpu, dgpu_gl, igpu]) is igpu
    assert adapter.choose_adapter([cpu, dgpu_gl]) is cpu


def test_adapter_by_name():
    cpu = fake("llvmpipe (LLVM 15)", adapter_type="CPU", vendor="llvmpipe")
    dgpu = fake("NVIDIA H100 80GB HBM3")
    assert adapter.choose_adapter([cpu, dgpu], name="LLVMPIPE") is cpu
    assert adapter.choose_adapter([cpu, dgpu], name="h100") is dgpu
    with pytest.raises(BackendUnavailable, match="matches no usable adapter") as err:
        adapter.choose_adapter([cpu, dgpu], name="radeon")
    assert "llvmpipe" in str(err.value) and "H100" in str(err.value)


def test_create_refuses_an_opengl_fallback(monkeypatch):
    import wgpu
    import wgpu.backends.wgpu_native  # noqa: F401 - installs the real wgpu.gpu first

    gl = fake("llvmpipe (LLVM 15.0.6, 256 bits)", "OpenGL", "CPU")
    monkeypatch.setattr(wgpu.gpu, "enumerate_adapters_sync", lambda: [gl])
    monkeypatch.delenv(adapter.ENV_ALLOW_ANY, raising=False)
    with pytest.raises(BackendUnavailable, match="no Vulkan adapter"):
        wb.create()


def test_create_with_a_missing_wgpu_says_what_to_install(monkeypatch):
    from shaderbay.backends.wgpu import plugin

    for name in [m for m in sys.modules if m.startswith("shaderbay.backends.wgpu.") and m != plugin.__name__]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh below, and put back afterwards
    monkeypatch.setitem(sys.modules, "wgpu", None)  # makes `import wgpu` raise ImportError
    with pytest.raises(BackendUnavailable, match="pip install wgpu"):
        plugin._create()


# --- the device -------------------------------------------------------------------------


def test_caps(be):
    caps = be.caps
    assert caps.extras["backend_type"] == "Vulkan"
    assert caps.max_binding_size <= caps.max_buffer_size
    assert caps.max_binding_size % 4 == 0 and caps.max_buffer_size % 4 == 0
    assert caps.offset_alignment in (4, 8, 16, 32, 64, 128, 256)
    if caps.subgroups:
        lo, hi = caps.extras["subgroup_size_range"]
        assert caps.subgroup_size >= 1 and (not lo or lo <= caps.subgroup_size <= hi)
    if "llvmpipe" in caps.device:
        assert caps.subgroup_size == 8 and caps.device_type == "software" and caps.f16 and caps.timestamps


def _add_list(be, n=1000, repeat=3):
    x = be.upload(np.zeros(n, np.float32))
    y = be.upload(np.arange(n, dtype=np.float32))
    cmd = be.command_list("adds")
    for _ in range(repeat):
        cmd.dispatch(be.pipeline("add"), {"x": x, "y": y}, n=n)
    return cmd, x, y


def test_replay_many_times_never_crashes(be):
    # wgpu aborts the process on a second submit of a command buffer; a command list is re-encoded instead.
    cmd, x, y = _add_list(be)
    for _ in range(300):
        be.submit(cmd)
    assert np.array_equal(be.read(x), 900 * np.arange(1000, dtype=np.float32))
    for i in range(20):  # interleaved with reads and writes
        be.write(y, np.full(1000, i, np.float32))
        be.run(cmd)
    assert np.array_equal(be.read(x), 900 * np.arange(1000, dtype=np.float32) + 3 * sum(range(20)))


def test_copies_between_dispatches(be):
    n = 256
    x = be.upload(np.zeros(n, np.float32))
    y = be.upload(np.ones(n, np.float32))
    z = be.upload(np.zeros(n, np.float32))
    add = be.pipeline("add")
    cmd = be.command_list("copy")
    cmd.dispatch(add, {"x": x, "y": y}, n=n)  # x = 1
    cmd.copy(x.buffer, z.buffer, 4 * n)  # z = x
    cmd.dispatch(add, {"x": z, "y": x}, n=n)  # z = 2
    cmd.dispatch(add, {"x": x, "y": z}, n=n)  # x = 3
    xv, zv = 0.0, 0.0
    for _ in range(3):
        be.submit(cmd)
        xv += 1
        zv = xv
        zv += xv
        xv += zv
    assert be.read(x).tolist() == [xv] * n and be.read(z).tolist() == [zv] * n


@pytest.mark.parametrize("checks", ["0", "1"])
def test_encoders_and_shader_checks_agree(monkeypatch, checks):
    """The ffi and python encoders, with and without wgpu's shader runtime checks, compute the same
    bits, and a run-ahead read (read_after) works with both."""
    monkeypatch.setenv(pipelines.ENV_CHECKS, checks)
    results = []
    for encoder in ("ffi", "python"):
        monkeypatch.setenv(commands.ENV_ENCODER, encoder)
        with _make() as backend:
            assert backend.caps.extras["encoder"] == encoder
            assert backend.caps.extras["shader_runtime_checks"] is (checks == "1")
            rows, n = 3, 100
            x = backend.upload(np.linspace(-2, 2, rows * n, dtype=np.float32).reshape(rows, n))
            w = backend.upload(np.linspace(0.5, 1.5, n, dtype=np.float32))
            out = backend.empty((rows, n))
            last = backend.empty(1, "f32", Usage.READBACK)
            cmd = backend.command_list()
            cmd.dispatch(backend.pipeline("rmsnorm"), {"x": x, "weight": w, "out": out}, rows=rows, n=n, eps=1e-5)
            cmd.dispatch(backend.pipeline("add"), {"x": out.view(shape=rows * n), "y": x.view(shape=rows * n)}, n=300)
            cmd.copy(out.buffer, last.buffer, 4, 4 * (rows * n - 1))
            backend.run(cmd)
            backend.submit(cmd)
            tail = backend.read_after(cmd, last)
            results.append(backend.read(out))
            assert tail[0] == results[-1][-1, -1]
    np.testing.assert_array_equal(results[0], results[1])


def test_freed_buffer_in_a_recorded_list(be):
    cmd, x, y = _add_list(be, n=64, repeat=1)
    be.run(cmd)
    y.buffer.free()
    with pytest.raises(ClosedError, match="freed"):
        be.submit(cmd)
    be.wait()


def test_reads_of_every_shape(be):
    data = np.random.default_rng(0).integers(0, 256, 10 << 20, dtype=np.uint8)
    t = be.upload(data.view(np.uint32))
    np.testing.assert_array_equal(be.read(t.buffer, 0, data.size), data)  # over the kept staging buffer
    assert bytes(be.read(t.buffer, 5, 7)) == data[5:12].tobytes()  # unaligned start and size
    assert bytes(be.read(t.buffer, data.size - 3, 3)) == data[-3:].tobytes()


# --- bindings over the device's limit ------------------------------------------------------


def test_buffer_over_the_binding_limit_binds_through_windows(be):
    limit = be.caps.max_binding_size
    if limit > 512 << 20:
        pytest.skip(f"the binding limit ({limit} bytes) is too large to exceed cheaply")
    size = limit + (4 << 20)
    big = be.buffer(size)
    n = 1 << 16
    align = be.caps.offset_alignment
    far = (size - 4 * n) // align * align  # a window wholly past the limit
    x = big.tensor("f32", n, far)
    y = big.tensor("f32", n, 0)
    be.write(x, np.ones(n, np.float32))
    be.write(y, np.arange(n, dtype=np.float32))
    cmd = be.command_list()
    cmd.dispatch(be.pipeline("add"), {"x": x, "y": y}, n=n)
    be.run(cmd)
    assert np.array_equal(be.read(x), np.arange(n, dtype=np.float32) + 1)
    whole = big.tensor("f32", size // 4)
    with pytest.raises(LimitExceeded, match="split the tensor"):
        cmd2 = be.command_list()
        cmd2.dispatch(be.pipeline("add"), {"x": whole, "y": whole}, n=size // 4)
    big.free()


def test_buffer_over_the_device_limit(be):
    with pytest.raises(LimitExceeded):
        be.buffer(be.caps.max_buffer_size + 4)


def test_misaligned_window_is_refused(be):
    if be.caps.offset_alignment <= 4:
        pytest.skip("every offset is aligned on this device")
    buf = be.buffer(4096)
    with pytest.raises(Exception, match="alignment"):
        cmd = be.command_list()
        cmd.dispatch(be.pipeline("add"), {"x": buf.tensor("f32", 16, 4), "y": buf.tensor("f32", 16, 1024)}, n=16)


# --- timestamps -------------------------------------------------------------------------


def test_timestamps_give_positive_durations(be):
    if not be.caps.timestamps:
        pytest.skip("no timestamp queries on this device")
    cmd, x, _ = _add_list(be, n=1 << 16, repeat=4)
    be.run(cmd)
    assert be.gpu_timings(cmd) is None  # not asked for yet
    be.gpu_timestamps = True
    try:
        for _ in range(3):
            be.run(cmd)
        timings = be.gpu_timings(cmd)
    finally:
        be.gpu_timestamps = False
    assert [label for label, _ in timings] == ["add"] * 4
    assert all(ns > 0 for _, ns in timings)


def test_tracer_gets_gpu_spans(be):
    if not be.caps.timestamps:
        pytest.skip("no timestamp queries on this device")
    cmd, _, _ = _add_list(be, n=4096, repeat=2)
    be.tracer.enabled = True
    try:
        be.run(cmd)
        events = list(be.tracer.events)
    finally:
        be.tracer.enabled = False
        be.tracer.events.clear()
    gpu = [e for e in events if e["cat"] == "gpu"]
    assert [e["name"] for e in gpu] == ["add", "add"] and all(e["dur"] > 0 for e in gpu)
    assert {"prepare", "submit", "wait"} <= {e["name"] for e in events}


def test_many_timestamps_span_several_query_sets(be):
    if not be.caps.timestamps:
        pytest.skip("no timestamp queries on this device")
    cmd, x, _ = _add_list(be, n=64, repeat=commands.MAX_QUERIES // 2 + 10)
    be.gpu_timestamps = True
    try:
        be.run(cmd)
    finally:
        be.gpu_timestamps = False
    timings = be.gpu_timings(cmd)
    assert len(timings) == commands.MAX_QUERIES // 2 + 10 and all(ns >= 0 for _, ns in timings)


def test_closed_backend():
    backend = _make()
    backend.close()
    with pytest.raises(ClosedError):
        backend.buffer(16)


def test_process_survives_a_bad_binding(be):
    # wgpu validation problems come back as typed errors, not aborts.
    buf = be.buffer(64)
    cmd = be.command_list()
    with pytest.raises(BindingError):
        cmd.dispatch(be.pipeline("add"), {"x": buf.tensor("f32", 16)}, n=16)


@pytest.mark.skipif(sys.platform != "linux", reason="uses a subprocess with a plain environment")
def test_import_is_quiet():
    # Mesa's "XDG_RUNTIME_DIR is invalid" noise is silenced by the backend.
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    code = "from shaderbay.backends.wgpu.backend import create\ntry:\n    create().close()\nexcept Exception:\n    pass"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "XDG_RUNTIME_DIR" not in out.stderr


# --- translator panics ------------------------------------------------------------------

FAKE_CHILD = """
import os, sys
for name in sys.argv[1:]:
    if name == "rope":
        print("thread '<unnamed>' panicked at naga-29.0.3/src/proc/emitter.rs:24:47:", file=sys.stderr)
        print("called `Option::unwrap()` on a `None` value", file=sys.stderr, flush=True)
        os.abort()
    print("built " + name, flush=True)
"""


def test_preflight_turns_a_translator_abort_into_an_error(be, tmp_path, monkeypatch):
    from shaderbay.backends.shaders import variants
    from shaderbay.backends.wgpu.preflight import Preflight
    from shaderbay.errors import KernelCompileError

    monkeypatch.setenv("SHADERBAY_CACHE", str(tmp_path))
    monkeypatch.setattr(Preflight, "child", (sys.executable, "-c", FAKE_CHILD))
    info = {"device": "x", "backend_type": "Vulkan"}
    pre = Preflight(info, be.caps, "test")
    assert pre.path.parent == tmp_path
    add, rope, silu = (variants.by_name(n) for n in ("add", "rope", "silu_mul"))
    pre.run([add, rope, silu])  # the child dies on rope; a second child builds silu_mul
    pre.check(add)
    pre.check(silu)
    with pytest.raises(KernelCompileError, match="rope.*panicked at naga"):
        pre.check(rope)
    again = Preflight(info, be.caps, "test")  # verdicts persist on disk
    assert again.verdicts == pre.verdicts and len(again.verdicts) == 3


def test_the_package_ships_every_variants_translator_verdict(be):
    """A fresh install starts without the preflight's child (~50 s here, minutes on a GPU): every variant
    wgpu may be given has its verdict in translated.json, under this wgpu's key (`make shaders` writes it)."""
    from shaderbay.backends.wgpu.preflight import OK, SHIPPED
    from shaderbay.backends.wgpu.translated import translatable

    preflight = be.pipelines.preflight
    assert preflight is not None and preflight.shipped, f"no verdicts in {SHIPPED}: run `make shaders`"
    missing = [v.name for v in translatable() if preflight.key(v) not in preflight.shipped]
    assert not missing, f"{len(missing)} variants without a shipped verdict (e.g. {missing[:3]}): run `make shaders`"
    assert set(preflight.shipped.values()) == {OK}  # a variant that crashes the translator is not shipped
