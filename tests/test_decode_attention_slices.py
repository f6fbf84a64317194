"""decode_attention splits long contexts over workgroups that hand over through `scratch`.

One recorded dispatch of two rows (two slots whose blocks are scattered over the pool) is
replayed at positions on either side of the split (one chunk: slice 0 alone; more: several
slices merged by the last to arrive), as a decode step is replayed for every token: each
replay agrees with the NumPy reference, writes each row's cache row and no other, and leaves
scratch zeroed for the next. With 16 rows each row's output is the one it gets with 2 rows.
"""

from __future__ import annotations

import numpy as np
import pytest
from shaderbay.backends.numpy.kernels import REFERENCE, cache_rows
from shaderbay.backends.shaders import variants
from shaderbay.conformance.harness import relative_error
from shaderbay.conformance.plugin import session_backend
from shaderbay.conformance.tolerances import tolerance
from shaderbay.kernels import decode_scratch_row
from shaderbay.rope import inverse_frequencies

N_HEADS, N_KV, BLOCK, BLOCKS = 6, 2, 16, 128  # slots of 2048 positions
SLOTS = 16  # the pool's, and the most rows: the same data whatever the rows
POSITIONS = (5, 255, 256, 700, 1800, 2047)  # one chunk, then 2, 3, 8 slices of 256 keys (or 64)
CACHES = {"f16": np.float16, "f32": np.float32}


# head_dim 256 with an f32 cache: more slices than the merge holds at once (it takes them in batches);
# gpu_forms: the forms GPUs get (on vulkan over lavapipe, whose subgroups hold 8, the `_keys` one)
@pytest.mark.parametrize(
    ("cache_dtype", "HD", "gpu_forms"), [("f16", 64, False), ("f16", 64, True), ("f32", 256, False)]
)
@pytest.mark.parametrize("backend_name", ["vulkan", "wgpu"])
def test_replays_across_the_split_agree_with_numpy(backend_name, cache_dtype, HD, gpu_forms, pytestconfig, monkeypatch):
    first = {}  # position -> the first two rows' output at 2 rows
    for rows in (2, SLOTS):
        _replay(backend_name, cache_dtype, HD, gpu_forms, rows, first, pytestconfig, monkeypatch)


def _replay(backend_name, cache_dtype, HD, gpu_forms, ROWS, first, pytestconfig, monkeypatch):
    b = session_backend(pytestconfig, backend_name)
    CONSTANTS = {"cache_dtype": cache_dtype}
    if gpu_forms:
        monkeypatch.setenv(variants.ENV_GPU_FORMS, "1")
        form = variants.select("decode_attention", CONSTANTS, {"head_dim": HD}, b.caps).name
        keys = variants.by_name("decode_attention_f16_vec_keys_sg")
        assert form == keys.name or not variants.usable(keys, b.caps), form
    bits = np.uint16 if cache_dtype == "f16" else np.uint32
    tol = tolerance("decode_attention", CONSTANTS)
    rng = np.random.default_rng(3)
    stride, kv_dim = (N_HEADS + 2 * N_KV) * HD, N_KV * HD
    n_blocks = SLOTS * BLOCKS
    paged = {"block_size": BLOCK, "blocks_per_seq": BLOCKS, "n_blocks": n_blocks, "n_seqs": SLOTS}
    params = {"rows": ROWS, "n_heads": N_HEADS, "n_kv_heads": N_KV, "head_dim": HD, "stride": stride, **paged}
    params["scale"] = 1.0 / np.sqrt(HD)
    caches = rng.standard_normal((2, n_blocks * BLOCK * kv_dim)).astype(CACHES[cache_dtype])
    host = {
        "qkv": rng.standard_normal(SLOTS * stride).astype(np.float32)[: ROWS * stride],
        "seqs": np.roll(np.arange(SLOTS, dtype=np.uint32), 1)[:ROWS],  # row 0 slot 1, row 1 slot 0, ...
        "block_tables": rng.permutation(n_blocks).astype(np.uint32),  # each slot its own blocks, scattered
        "inv_freq": inverse_frequencies(HD, 10000.0).astype(np.float32),
        "k_cache": caches[0],
        "v_cache": caches[1],
        "scratch": np.zeros(ROWS * N_HEADS * decode_scratch_row(HD), np.uint32),
        "out": np.zeros(ROWS * N_HEADS * HD, np.float32),
    }
    dev = {name: b.upload(a) for name, a in host.items()}
    dev["positions"] = b.upload(np.zeros(ROWS, np.uint32))
    cmd = b.command_list("decode_attention replay")
    cmd.dispatch(b.pipeline("decode_attention", **CONSTANTS), dev, **params)
    try:
        for position, other in zip(POSITIONS, POSITIONS[::-1], strict=True):
            # rows 0 and 1 as at 2 rows, the others a spread of positions
            spread = [POSITIONS[r % len(POSITIONS)] for r in range(ROWS - 2)]
            host["positions"] = np.array([position, other, *spread], np.uint32)
            b.write(dev["positions"], host["positions"])
            b.run(cmd)
            want = {k: v.copy() for k, v in host.items()}
            REFERENCE["decode_attention"](want, dict(params), dict(CONSTANTS))
            out = b.read(dev["out"])
            error = relative_error(out, want["out"])
            assert error <= tol, f"position {position}: error {error:.2e}"
            pair = out[: 2 * N_HEADS * HD].copy()
            if first.setdefault(position, pair) is not pair:
                assert np.array_equal(pair.view(np.uint32), first[position].view(np.uint32)), (
                    f"position {position}: rows 0 and 1 at {ROWS} rows differ from the same rows at 2"
                )
            written = [
                int(cache_rows(host, paged, int(s), [int(q)])[0])
                for s, q in zip(host["seqs"], host["positions"], strict=True)
            ]
            for name in ("k_cache", "v_cache"):
                got = b.read(dev[name]).copy()
                others = np.ones(got.size, bool)
                for row in written:  # each row's own cache row
                    row = slice(row * kv_dim, (row + 1) * kv_dim)
                    assert relative_error(got[row], want[name][row]) <= tol, f"position {position}: {name} row"
                    others[row] = False
                assert np.array_equal(got[others].view(bits), host[name][others].view(bits)), f"{name}: other rows"
                host[name] = got  # what the device holds: the next replay's reference starts from it
            assert not b.read(dev["scratch"]).any(), f"position {position} left scratch non-zero"
    finally:
        for t in dev.values():
            b.free(t.buffer)
