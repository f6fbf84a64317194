"""Bad input: every typed error is raised where it should be, and the backend keeps working.

Nothing here may crash the process or hang; after each error the same backend must still
run a dispatch correctly (checked at the end of the module and by every test's cleanup).
"""

from __future__ import annotations

import numpy as np
import pytest
from shaderbay.conformance.plugin import require_kernels
from shaderbay.errors import (
    BindingError,
    ClosedError,
    LimitExceeded,
    OutOfRange,
    ShaderbayError,
    UnknownKernel,
)
from shaderbay.resources import Usage


@pytest.fixture
def add_setup(backend):
    require_kernels(backend, "add")
    x = backend.upload(np.zeros(8, np.float32))
    y = backend.upload(np.ones(8, np.float32))
    yield backend.pipeline("add"), x, y
    for t in (x, y):
        if not t.buffer.freed:
            t.buffer.free()


def _still_works(backend) -> None:
    x = backend.upload(np.arange(5, dtype=np.float32))
    y = backend.upload(np.full(5, 2, np.float32))
    try:
        cmd = backend.command_list()
        cmd.dispatch(backend.pipeline("add"), {"x": x, "y": y}, n=5)
        backend.run(cmd)
        np.testing.assert_array_equal(backend.read(x), np.arange(5, dtype=np.float32) + 2)
    finally:
        x.buffer.free()
        y.buffer.free()


def test_errors_are_shaderbay_errors() -> None:
    for err in (UnknownKernel, BindingError, OutOfRange, LimitExceeded, ClosedError):
        assert issubclass(err, ShaderbayError)


def test_unknown_kernel(backend) -> None:
    with pytest.raises(UnknownKernel, match="no_such_kernel"):
        backend.pipeline("no_such_kernel")


# --- bindings and parameters ---------------------------------------------------------------------


def test_wrong_dtype(backend, add_setup) -> None:
    add, x, y = add_setup
    y_u32 = y.view("u32")
    with pytest.raises(BindingError, match="f32"):
        backend.command_list().dispatch(add, {"x": x, "y": y_u32}, n=8)


def test_too_small(backend, add_setup) -> None:
    add, x, y = add_setup
    with pytest.raises(BindingError, match="needs"):
        backend.command_list().dispatch(add, {"x": x, "y": y.view("f32", 7)}, n=8)


def test_missing_and_extra_binding(backend, add_setup) -> None:
    add, x, y = add_setup
    with pytest.raises(BindingError):
        backend.command_list().dispatch(add, {"x": x}, n=8)
    with pytest.raises(BindingError):
        backend.command_list().dispatch(add, {"x": x, "y": y, "z": y}, n=8)
    with pytest.raises(BindingError):
        backend.command_list().dispatch(add, {"x": x, "y": np.ones(8, np.float32)}, n=8)


def test_missing_extra_and_bad_params(backend, add_setup) -> None:
    add, x, y = add_setup
    for params in ({}, {"n": 8, "m": 1}, {"n": -1}, {"n": 2**32}, {"n": 2.5}, {"n": True}, {"n": "8"}):
        with pytest.raises(BindingError):
            backend.command_list().dispatch(add, {"x": x, "y": y}, **params)
    with pytest.raises(BindingError, match="constraint"):
        backend.command_list().dispatch(add, {"x": x, "y": y}, n=0)  # n >= 1


def test_bad_constants(backend) -> None:
    require_kernels(backend, "matmul")
    with pytest.raises(BindingError, match="no constant"):
        backend.pipeline("matmul", no_such_constant=1)
    with pytest.raises(BindingError, match="not one of"):
        backend.pipeline("matmul", wdtype="f64")
    with pytest.raises(BindingError):
        backend.pipeline("add", wdtype="f32")  # add has no constants


def test_violated_constraints(backend) -> None:
    require_kernels(backend, "rope", "attention")
    x = backend.empty((2, 16))
    pos = backend.empty(2, "u32")
    inv = backend.empty(8)
    try:
        rope = backend.pipeline("rope")
        with pytest.raises(BindingError, match="head_dim % 2"):
            backend.command_list().dispatch(
                rope, {"x": x, "positions": pos, "inv_freq": inv}, rows=2, heads=1, head_dim=5, stride=16, offset=0
            )
        with pytest.raises(BindingError, match="stride"):
            backend.command_list().dispatch(
                rope, {"x": x, "positions": pos, "inv_freq": inv}, rows=2, heads=2, head_dim=8, stride=16, offset=4
            )
        att = backend.pipeline("attention")
        with pytest.raises(BindingError, match="n_kv_heads"):
            backend.command_list().dispatch(
                att,
                {"q": x, "k_cache": x, "v_cache": x, "positions": pos, "seqs": pos, "block_tables": pos, "out": x},
                rows=1,
                n_heads=3,
                n_kv_heads=2,
                head_dim=2,
                q_stride=6,
                block_size=2,
                blocks_per_seq=1,
                n_blocks=1,
                n_seqs=1,
                scale=1.0,
            )
    finally:
        for t in (x, pos, inv):
            t.buffer.free()


def test_matmul_results_must_fit_out_rows(backend) -> None:
    """out_stride and out_offset place a product's columns in wider rows; they must fit in them, and
    out must hold rows x out_stride (by default out_stride is the product's own width)."""
    require_kernels(backend, "matmul")
    x, w, out = backend.empty((2, 8)), backend.empty((4, 8)), backend.empty((2, 6))
    try:
        mm = backend.pipeline("matmul")
        bindings = {"x": x, "w": w, "out": out}
        backend.command_list().dispatch(mm, bindings, rows=2, n=4, k=8, eps=0.0)
        backend.command_list().dispatch(mm, bindings, rows=2, n=4, k=8, eps=0.0, out_stride=6, out_offset=2)
        with pytest.raises(BindingError, match="out_offset"):
            backend.command_list().dispatch(mm, bindings, rows=2, n=4, k=8, eps=0.0, out_stride=6, out_offset=3)
        with pytest.raises(BindingError, match="needs"):
            backend.command_list().dispatch(mm, bindings, rows=2, n=4, k=8, eps=0.0, out_stride=7, out_offset=3)
    finally:
        for t in (x, w, out):
            t.buffer.free()


def test_sealed_list_and_foreign_list(backend, fresh_backend, add_setup) -> None:
    add, x, y = add_setup
    cmd = backend.command_list()
    cmd.dispatch(add, {"x": x, "y": y}, n=8)
    backend.run(cmd)
    with pytest.raises(BindingError, match="sealed"):
        cmd.dispatch(add, {"x": x, "y": y}, n=8)
    with pytest.raises(BindingError):
        fresh_backend.submit(cmd)  # recorded on another backend
    other = fresh_backend.upload(np.ones(8, np.float32))
    with pytest.raises(BindingError, match="belongs to"):
        backend.command_list().dispatch(add, {"x": x, "y": other}, n=8)
    with pytest.raises(BindingError):
        backend.read(other)


# --- ranges --------------------------------------------------------------------------------------


def test_out_of_range_read_write(backend) -> None:
    buf = backend.buffer(64)
    try:
        for offset, size in ((60, 8), (64, 1), (-4, 4), (0, 65), (0, -1)):
            with pytest.raises(OutOfRange):
                backend.read(buf, offset, size)
        with pytest.raises(OutOfRange):
            backend.write(buf, bytes(68))
        with pytest.raises(OutOfRange):
            backend.write(buf, bytes(8), offset=60)
        with pytest.raises(OutOfRange):
            backend.write(buf, bytes(4), offset=-4)
        t = buf.tensor("f32", 4, 16)
        with pytest.raises(OutOfRange):
            backend.write(t, np.zeros(5, np.float32))  # past the tensor, though inside the buffer
        with pytest.raises(OutOfRange):
            backend.read(t, 8, 12)
    finally:
        buf.free()


def test_misaligned_write(backend) -> None:
    buf = backend.buffer(64)
    try:
        with pytest.raises(OutOfRange):
            backend.write(buf, bytes(4), offset=2)
        with pytest.raises(OutOfRange):
            backend.write(buf, bytes(6))
    finally:
        buf.free()


def test_out_of_range_view(backend) -> None:
    buf = backend.buffer(64)
    try:
        with pytest.raises(OutOfRange):
            buf.tensor("f32", 17)
        with pytest.raises(OutOfRange):
            buf.tensor("f32", 4, offset=52)
        with pytest.raises(OutOfRange):
            buf.tensor("f16", 1, offset=-2)
        with pytest.raises(OutOfRange):
            buf.tensor("f32", 8, offset=32).view("f32", 4, offset=20)  # the view is still bounded by the buffer
    finally:
        buf.free()


def test_out_of_range_and_misaligned_copy(backend) -> None:
    a, b = backend.buffer(64), backend.buffer(32)
    align = backend.caps.copy_alignment
    try:
        cases = [(a, b, 36, 0, 0), (a, b, 32, 36, 0), (a, b, 16, 0, 20), (a, b, 0, 0, 0), (a, b, -4, 0, 0)]
        cases.append((a, a, 32, 0, 16))  # overlapping source and destination
        if align > 1:
            cases += [(a, b, align + 1, 0, 0), (a, b, align, 1, 0), (a, b, align, 0, 1)]
        for src, dst, size, so, do in cases:
            with pytest.raises(OutOfRange):
                backend.command_list().copy(src, dst, size, so, do)
    finally:
        a.free()
        b.free()


def test_readback_buffers_are_only_copied_into(backend, add_setup) -> None:
    """READBACK buffers take copies and host reads: binding one, copying out of one or waiting on
    it through read_after for a DEVICE tensor are refused with what to do instead."""
    add, x, y = add_setup
    down = backend.empty(8, "f32", Usage.READBACK)
    try:
        with pytest.raises(BindingError, match="copy the result"):
            backend.command_list().dispatch(add, {"x": down, "y": y}, n=8)
        with pytest.raises(BindingError, match="only copied into"):
            backend.command_list().copy(down.buffer, x.buffer, 32)
        cmd = backend.command_list()
        cmd.copy(y.buffer, down.buffer, 32)
        with pytest.raises(BindingError, match="submitted"):
            backend.read_after(cmd, down)
        backend.submit(cmd)
        with pytest.raises(BindingError, match="READBACK"):
            backend.read_after(cmd, x)
        np.testing.assert_array_equal(backend.read_after(cmd, down), np.ones(8, np.float32))
    finally:
        down.buffer.free()


def test_misaligned_binding_offset(backend, add_setup) -> None:
    add, x, y = add_setup
    align = backend.caps.offset_alignment
    if align < 2:
        pytest.skip(f"offset alignment {align}: every offset is aligned")
    buf = backend.buffer(4 * align + 64)
    try:
        t = buf.tensor("f32", 8, offset=align // 2)
        with pytest.raises(OutOfRange, match="alignment"):
            backend.command_list().dispatch(add, {"x": x, "y": t}, n=8)
    finally:
        buf.free()


def test_misaligned_16bit_binding(backend) -> None:
    """An f16 table view at a 2-byte offset is misaligned on every device (alignment >= 4)."""
    require_kernels(backend, "embed")
    align = backend.caps.offset_alignment
    if align < 4:
        pytest.skip(f"offset alignment {align}")
    buf = backend.buffer(256)
    ids = backend.upload(np.zeros(1, np.uint32))
    out = backend.empty(4)
    try:
        table = buf.tensor("f16", 8, offset=2)
        with pytest.raises(OutOfRange, match="alignment"):
            backend.command_list().dispatch(
                backend.pipeline("embed", wdtype="f16"),
                {"table": table, "ids": ids, "out": out},
                rows=1,
                dim=4,
                vocab=2,
            )
    finally:
        for b in (buf, ids.buffer, out.buffer):
            b.free()


def test_buffer_over_device_limit(backend) -> None:
    with pytest.raises(LimitExceeded):
        backend.buffer(backend.caps.max_buffer_size + 1)
    for bad in (0, -4, 2.5, "64"):
        with pytest.raises(BindingError):
            backend.buffer(bad)


def test_binding_over_device_limit(backend, add_setup) -> None:
    add, x, y = add_setup
    limit = backend.caps.max_binding_size
    if limit + 4 > min(backend.caps.max_buffer_size, 1 << 31):
        pytest.skip(f"the binding limit ({limit} bytes) cannot be exceeded with a buffer this test may allocate")
    buf = backend.buffer(limit + 4)
    try:
        big = buf.tensor("f32", (limit + 4) // 4)
        with pytest.raises(LimitExceeded):
            backend.command_list().dispatch(add, {"x": x, "y": big}, n=8)
    finally:
        buf.free()


# --- lifetimes -----------------------------------------------------------------------------------


def test_freed_buffer(backend, add_setup) -> None:
    add, x, y = add_setup
    buf = backend.buffer(16)
    t = buf.tensor("f32", 4)
    buf.free()
    for action in (
        lambda: backend.read(buf),
        lambda: backend.read(t),
        lambda: backend.write(buf, bytes(4)),
        lambda: backend.free(buf),
        lambda: buf.free(),
        lambda: backend.command_list().copy(buf, x.buffer, 4),
        lambda: backend.command_list().dispatch(add, {"x": x, "y": t}, n=4),
    ):
        with pytest.raises(ClosedError):
            action()


def test_closed_backend(fresh_backend) -> None:
    b = fresh_backend
    buf = b.buffer(16)
    cmd = b.command_list()
    b.close()
    b.close()  # closing twice is harmless
    assert b.closed
    for action in (
        lambda: b.buffer(16),
        lambda: b.read(buf),
        lambda: b.write(buf, bytes(4)),
        lambda: b.pipeline("add"),
        lambda: b.command_list(),
        lambda: b.submit(cmd),
        lambda: b.wait(),
        lambda: b.upload(np.zeros(4, np.float32)),
    ):
        with pytest.raises(ClosedError):
            action()


def test_errors_leave_the_backend_working(backend) -> None:
    """After all of the above (same session backend), a dispatch still runs correctly."""
    require_kernels(backend, "add")
    _still_works(backend)
