"""Buffers, as a stateful test: random create / write / copy / read / view / free sequences.

A `RuleBasedStateMachine` keeps a model of every buffer (its bytes, and which bytes are
defined: a new buffer's content is unspecified) and checks every read against it: no byte
may be lost, moved or altered by writes at offsets, copies recorded in command lists
(several per list, dependent ones included), typed views, or frees of other buffers.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from shaderbay.errors import ClosedError

SIZES = st.one_of(st.integers(1, 600), st.sampled_from([1, 2, 3, 4, 5, 7, 8, 252, 256, 260, 1023, 1024, 4097, 65536]))
VIEW_DTYPES = ("f32", "f16", "bf16", "u32", "i32", "u8")
ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2, "u32": 4, "i32": 4, "u8": 1}


class ModelBuffer:
    def __init__(self, size: int):
        self.data = np.zeros(size, np.uint8)
        self.defined = np.zeros(size, bool)


def _payload(data: st.DataObject, n: int) -> bytes:
    if n <= 512:
        return data.draw(st.binary(min_size=n, max_size=n), label="bytes")
    seed = data.draw(st.integers(0, 2**32 - 1), label="payload seed")
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


class BufferMachine(RuleBasedStateMachine):
    buffers = Bundle("buffers")

    def __init__(self, backend):
        super().__init__()
        self.backend = backend
        self.model: dict[int, ModelBuffer] = {}
        self.live: dict[int, object] = {}
        self.freed: list[object] = []
        self.align = backend.caps.copy_alignment

    # --- helpers ---------------------------------------------------------------------------
    def _check_read(self, buf, offset: int, got: np.ndarray, what: str) -> None:
        m = self.model[id(buf)]
        got = np.asarray(got).view(np.uint8).reshape(-1)
        want = m.data[offset : offset + got.size]
        defined = m.defined[offset : offset + got.size]
        wrong = np.flatnonzero(defined & (got != want))
        assert wrong.size == 0, (
            f"{what}: {wrong.size} byte(s) differ from what was written, first at byte {offset + int(wrong[0])} "
            f"of a {buf.size}-byte buffer: got {got[wrong[:8]].tolist()}, wrote {want[wrong[:8]].tolist()}"
        )

    # --- rules -----------------------------------------------------------------------------
    @rule(target=buffers, size=SIZES)
    def create(self, size: int):
        buf = self.backend.buffer(size)
        assert buf.size >= size, f"asked for {size} bytes, got a buffer of {buf.size}"
        self.model[id(buf)] = ModelBuffer(buf.size)
        self.live[id(buf)] = buf
        return buf

    @rule(buf=buffers, data=st.data())
    def write(self, buf, data):
        words = buf.size // 4
        start = data.draw(st.integers(0, words), label="start word")
        count = data.draw(st.integers(0, words - start), label="words")
        payload = _payload(data, 4 * count)
        self.backend.write(buf, payload, offset=4 * start)
        m = self.model[id(buf)]
        m.data[4 * start : 4 * (start + count)] = np.frombuffer(payload, np.uint8)
        m.defined[4 * start : 4 * (start + count)] = True

    @rule(buf=buffers, data=st.data())
    def write_whole(self, buf, data):
        payload = _payload(data, buf.size)
        self.backend.write(buf, payload)
        m = self.model[id(buf)]
        m.data[:] = np.frombuffer(payload, np.uint8)
        m.defined[:] = True

    @rule(buf=buffers, data=st.data())
    def read(self, buf, data):
        offset = data.draw(st.integers(0, buf.size), label="offset")
        size = data.draw(st.integers(0, buf.size - offset), label="size")
        got = self.backend.read(buf, offset, size)
        assert got.size == size, f"read {size} bytes at {offset}, got {got.size}"
        self._check_read(buf, offset, got, f"read({offset}, {size})")

    @rule(buf=buffers)
    def read_all(self, buf):
        got = self.backend.read(buf)
        assert got.size == buf.size
        self._check_read(buf, 0, got, "read of the whole buffer")

    @rule(buf=buffers, dtype=st.sampled_from(VIEW_DTYPES), data=st.data())
    def read_view(self, buf, dtype, data):
        item = ITEMSIZE[dtype]
        offset = item * data.draw(st.integers(0, buf.size // item), label="view offset")
        count = data.draw(st.integers(0, (buf.size - offset) // item), label="elements")
        if count == 0:
            return
        rows = data.draw(st.sampled_from([d for d in (1, 2, 3, 4) if count % d == 0]), label="rows")
        tensor = buf.tensor(dtype, (rows, count // rows), offset)
        got = self.backend.read(tensor)
        assert got.shape == (rows, count // rows), f"a {tensor.shape} view read back as {got.shape}"
        assert got.dtype.itemsize == item
        self._check_read(buf, offset, got, f"read of a {dtype}{list(tensor.shape)} view at {offset}")
        # a view of the view, further in
        if count > 1:
            sub = tensor.view(dtype, count - 1, offset=item)
            self._check_read(buf, offset + item, self.backend.read(sub), "read of a view of a view")

    @rule(buf=buffers, data=st.data())
    def write_view(self, buf, data):
        if buf.size < 4:
            return
        offset = 4 * data.draw(st.integers(0, buf.size // 4 - 1), label="view offset word")
        count = data.draw(st.integers(1, (buf.size - offset) // 4), label="f32 elements")
        tensor = buf.tensor("f32", count, offset)
        sub_offset = 4 * data.draw(st.integers(0, count - 1), label="offset in view")
        payload = _payload(data, 4 * data.draw(st.integers(0, count - sub_offset // 4), label="words"))
        self.backend.write(tensor, np.frombuffer(payload, np.uint8), offset=sub_offset)
        m = self.model[id(buf)]
        at = offset + sub_offset
        m.data[at : at + len(payload)] = np.frombuffer(payload, np.uint8)
        m.defined[at : at + len(payload)] = True

    def _copy_args(self, data, src, dst):
        a = self.align
        if src.size < a or dst.size < a:
            return None
        size = a * data.draw(st.integers(1, min(src.size, dst.size) // a), label="copy units")
        so = a * data.draw(st.integers(0, (src.size - size) // a), label="src offset")
        do = a * data.draw(st.integers(0, (dst.size - size) // a), label="dst offset")
        if src is dst and abs(so - do) < size:
            return None
        return size, so, do

    def _apply_copy(self, src, dst, size, so, do):
        ms, md = self.model[id(src)], self.model[id(dst)]
        data, defined = ms.data[so : so + size].copy(), ms.defined[so : so + size].copy()
        md.data[do : do + size] = data
        md.defined[do : do + size] = defined

    @rule(src=buffers, dst=buffers, data=st.data())
    def copy(self, src, dst, data):
        args = self._copy_args(data, src, dst)
        if args is None:
            return
        cmd = self.backend.command_list("copy")
        cmd.copy(src, dst, *args)
        self.backend.submit(cmd)
        self._apply_copy(src, dst, *args)

    @rule(a=buffers, b=buffers, c=buffers, data=st.data())
    def copy_chain(self, a, b, c, data):
        """Several copies in one list, each seeing the ones before it (a -> b, then b -> c)."""
        first = self._copy_args(data, a, b)
        if first is None:
            return
        cmd = self.backend.command_list("copy chain")
        cmd.copy(a, b, *first)
        self._apply_copy(a, b, *first)
        second = self._copy_args(data, b, c)
        if second is not None:
            cmd.copy(b, c, *second)
            self._apply_copy(b, c, *second)
        self.backend.submit(cmd)
        if data.draw(st.booleans(), label="submit again"):
            self.backend.submit(cmd)  # a replay copies the same bytes again
            self._apply_copy(a, b, *first)
            if second is not None:
                self._apply_copy(b, c, *second)

    @rule(buf=consumes(buffers))
    def free(self, buf):
        self.backend.free(buf)
        assert buf.freed
        del self.model[id(buf)]
        del self.live[id(buf)]
        self.freed.append(buf)

    @precondition(lambda self: self.freed)
    @rule(data=st.data())
    def use_after_free(self, data):
        buf = data.draw(st.sampled_from(self.freed), label="freed buffer")
        action = data.draw(st.sampled_from(["read", "write", "free", "view-read"]), label="action")
        with pytest.raises(ClosedError):
            if action == "read":
                self.backend.read(buf)
            elif action == "write":
                self.backend.write(buf, b"\0\0\0\0")
            elif action == "free":
                self.backend.free(buf)
            else:
                self.backend.read(buf.tensor("u8", 1))

    @invariant()
    def accounting(self):
        # the backend's allocation counter never goes below what is alive
        live = sum(b.size for b in self.live.values())
        assert self.backend.bytes_allocated >= live

    def teardown(self):
        for buf in self.live.values():
            if not buf.freed:
                self.backend.free(buf)


def test_buffer_state_machine(backend) -> None:
    """create / write at offset / copy via command lists / read / view / free against a bytearray model."""
    base = settings.default
    run_state_machine_as_test(
        lambda: BufferMachine(backend),
        settings=settings(base, max_examples=max(10, base.max_examples)),
    )


def test_large_buffer_roundtrip(backend) -> None:
    """A few MiB up and back, and through a copy, byte for byte."""
    size = min(8 << 20, backend.caps.max_buffer_size)
    size -= size % 4
    data = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8)
    a, b = backend.buffer(size), backend.buffer(size)
    try:
        backend.write(a, data)
        cmd = backend.command_list()
        cmd.copy(a, b, size)
        backend.run(cmd)
        np.testing.assert_array_equal(backend.read(a), data)
        np.testing.assert_array_equal(backend.read(b), data)
    finally:
        a.free()
        b.free()


def test_upload_and_typed_read(backend) -> None:
    """Backend.upload keeps dtype and shape; reads of tensors come back typed."""
    rng = np.random.default_rng(3)
    arrays = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "u32": rng.integers(0, 2**32, (2, 3), dtype=np.uint32),
        "i32": rng.integers(-(2**31), 2**31, (5,), dtype=np.int32),
    }
    for dtype, arr in arrays.items():
        t = backend.upload(arr)
        try:
            assert t.dtype == dtype and t.shape == arr.shape
            got = backend.read(t)
            assert got.shape == arr.shape
            np.testing.assert_array_equal(got.view(arr.dtype), arr)
        finally:
            t.buffer.free()
    bits = rng.integers(0, 2**16, 9, dtype=np.uint16)
    t = backend.upload(bits, dtype="bf16")
    try:
        np.testing.assert_array_equal(backend.read(t), bits)
    finally:
        t.buffer.free()
