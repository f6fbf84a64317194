"""Lifetimes: freed buffers are never used again, and a backend or model nobody closed releases its
device when it is garbage-collected; on every backend."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from shaderbay.errors import ClosedError


def _copy_list(backend):
    src = backend.upload(np.arange(8, dtype=np.float32))
    dst = backend.empty(8)
    cmd = backend.command_list("copy")
    cmd.copy(src.buffer, dst.buffer, 32)
    return cmd, src, dst


@pytest.mark.parametrize("which", ["source", "destination"])
def test_replaying_a_list_whose_buffer_was_freed(model_backend, which):
    cmd, src, dst = _copy_list(model_backend)
    model_backend.run(cmd)
    assert (model_backend.read(dst) == np.arange(8)).all()
    (src if which == "source" else dst).buffer.free()
    with pytest.raises(ClosedError, match="was freed"):
        model_backend.run(cmd)
    (dst if which == "source" else src).buffer.free()


def test_freeing_a_bound_buffer_before_the_first_submit(model_backend):
    x = model_backend.upload(np.ones(4, np.float32))
    y = model_backend.upload(np.ones(4, np.float32))
    cmd = model_backend.command_list("add")
    cmd.dispatch(model_backend.pipeline("add"), {"x": x, "y": y}, n=4)
    y.buffer.free()
    for _ in range(2):  # and again: the list was not sealed by the failed submit
        with pytest.raises(ClosedError, match="was freed"):
            model_backend.submit(cmd)
    x.buffer.free()
    cmd, src, dst = _copy_list(model_backend)  # the backend still works
    model_backend.run(cmd)
    assert (model_backend.read(dst) == np.arange(8)).all()
    gc.collect()
