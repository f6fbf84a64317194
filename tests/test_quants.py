"""The reference meaning of the GGUF block formats equals `gguf.quants`, bit for bit; the
quantizer makes blocks that gguf reads back as the reference says; block tensors have the
right sizes on a backend."""

from __future__ import annotations

import numpy as np
import pytest
import shaderbay
from gguf import quants
from shaderbay.backends.numpy.quants import GGML_TYPES, LAYOUTS, dequantize, quantize, values
from shaderbay.backends.numpy.widen import row_blocks, weights_f64
from shaderbay.dtypes import BLOCK_DTYPES, host_shape, nbytes, value_shape
from shaderbay.errors import BindingError
from shaderbay.models.checkpoint import MemoryCheckpoint
from shaderbay.models.synthetic import FALLBACK_BLOCK_DTYPE, synthetic_checkpoint

FORMATS = sorted(BLOCK_DTYPES)
# f16 bit patterns of extreme, finite scales: the largest, the smallest normal and subnormal, zero
EXTREME_HALVES = np.array([0x7BFF, 0xFBFF, 0x0400, 0x0001, 0x8001, 0x0000, 0x8000, 0x3C00], np.uint16)


def random_blocks(dtype: str, n: int, seed: int) -> np.ndarray:
    """n random blocks: random bytes, every f16 field a finite value (some extreme), one zero block."""
    rng = np.random.default_rng(seed)
    layout = LAYOUTS[dtype]
    raw = rng.integers(0, 256, (n, layout.itemsize), dtype=np.uint8)
    blocks = raw.reshape(-1).view(layout)
    for name in layout.names:
        if layout[name] == np.dtype("<f2"):
            bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
            bits = np.where((bits & 0x7C00) == 0x7C00, bits & 0xBFFF, bits)  # no inf or NaN: exponent 31 -> 15
            bits[: len(EXTREME_HALVES)] = np.roll(EXTREME_HALVES, layout.names.index(name))[:n]
            blocks[name] = bits.view(np.float16)
    raw[-1] = 0  # the zero block
    return raw


@pytest.mark.parametrize("dtype", FORMATS)
def test_dequantize_equals_gguf_bit_for_bit(dtype: str) -> None:
    raw = random_blocks(dtype, 4000, seed=len(dtype))
    ours = dequantize(raw, dtype)
    theirs = quants.dequantize(raw, GGML_TYPES[dtype])
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (4000, BLOCK_DTYPES[dtype].block)
    assert np.isfinite(ours).all()
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    assert not ours[-1].any()  # the zero block


@pytest.mark.parametrize("dtype", FORMATS)
def test_dequantize_keeps_rows(dtype: str) -> None:
    raw = random_blocks(dtype, 12, seed=1).reshape(3, -1)  # 3 rows of 4 blocks
    values = dequantize(raw, dtype)
    assert values.shape == (3, 4 * BLOCK_DTYPES[dtype].block)
    np.testing.assert_array_equal(values.reshape(-1), dequantize(raw.reshape(-1), dtype))


@pytest.mark.parametrize("dtype", [*FORMATS, "f16", "bf16", "f32"])
def test_matmul_widening_is_the_reference_values_bit_for_bit(dtype: str) -> None:
    """The matrix products' float64 weights (widen.py's faster forms) are `values` widened, rows and
    all, fresh or in the reused scratch (a larger matrix first, so a smaller one reads a grown buffer)."""
    per_row = 1 if dtype in ("q4_k", "q6_k") else 8
    if dtype in BLOCK_DTYPES:
        raw = random_blocks(dtype, 40 * per_row, seed=3)
    else:
        raw = np.random.default_rng(3).integers(0, 1 << 16, (40 * per_row, 256), dtype=np.uint16)
        raw = np.where((raw & 0x7C00) == 0x7C00, raw & 0xBFFF, raw)  # finite f16 (and bf16) bit patterns
        raw = raw.view(np.float16) if dtype == "f16" else values(raw, "bf16") if dtype == "f32" else raw
    for rows in (40, 5):
        matrix = raw.reshape(40, -1)[:rows]
        expected = (matrix if dtype in ("f16", "f32") else values(matrix, dtype)).astype(np.float64)
        whole = weights_f64(matrix, dtype, 7)  # filled 7 rows at a time
        by_blocks = np.concatenate([block.copy() for _, block in row_blocks(matrix, dtype, 3)])  # one scratch
        for got in (whole, by_blocks):
            np.testing.assert_array_equal(got.view(np.uint64), expected.view(np.uint64))


@pytest.mark.parametrize("dtype", FORMATS)
def test_quantize_round_trips_through_gguf(dtype: str) -> None:
    rng = np.random.default_rng(7)
    block = BLOCK_DTYPES[dtype].block
    x = rng.standard_normal((5, 2 * block), dtype=np.float32) * np.float32(0.05)
    x[1] *= 1000  # a large row
    x[2] = 0  # zero blocks
    x[3] = np.abs(x[3])  # no negatives (a Q4_K minimum of 0)
    q = quantize(x, dtype)
    assert q.dtype == np.uint8 and q.shape == host_shape(dtype, x.shape)
    back = dequantize(q, dtype)
    np.testing.assert_array_equal(back.view(np.uint32), quants.dequantize(q, GGML_TYPES[dtype]).view(np.uint32))
    assert not back[2].any()
    # a valid quantizer: every value within a quantization step of its block's range
    levels = {"q8_0": 254, "q4_0": 14, "q4_1": 15, "q4_k": 15, "q6_k": 62}[dtype]
    span = np.abs(x.reshape(5, -1, block)).max(axis=-1, keepdims=True) * 2
    err = np.abs(back - x).reshape(5, -1, block)
    assert (err <= 1.5 * span / levels + 1e-6).all()


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0", "q4_1"])
def test_quantize_is_gguf_where_gguf_has_one(dtype: str) -> None:
    x = np.random.default_rng(3).standard_normal((4, 64), dtype=np.float32)
    np.testing.assert_array_equal(quantize(x, dtype), quants.quantize(x, GGML_TYPES[dtype]))


def test_block_shapes_and_sizes() -> None:
    assert nbytes("q4_0", (3, 64)) == 3 * 2 * 18
    assert nbytes("q6_k", (5, 512)) == 5 * 2 * 210
    assert host_shape("q4_k", (7, 256)) == (7, 144)
    assert value_shape("q8_0", (2, 68)) == (2, 64)
    with pytest.raises(BindingError, match="whole blocks"):
        nbytes("q4_0", (2, 48))
    with pytest.raises(BindingError, match="whole blocks"):
        value_shape("q4_1", (2, 30))


@pytest.mark.parametrize("dtype", FORMATS)
def test_block_tensor_upload_and_read(numpy_backend, dtype: str) -> None:
    raw = random_blocks(dtype, 6, seed=2).reshape(3, -1)  # 3 rows, 2 blocks each
    t = numpy_backend.upload(raw, dtype)
    block = BLOCK_DTYPES[dtype].block
    assert t.shape == (3, 2 * block) and t.numel == 6 * block and t.nbytes == raw.nbytes
    np.testing.assert_array_equal(numpy_backend.read(t), raw)
    row = t.view(shape=(1, 2 * block), offset=raw.shape[1])
    np.testing.assert_array_equal(numpy_backend.read(row), raw[1:2])
    numpy_backend.free(t.buffer)


@pytest.mark.parametrize("dtype", FORMATS)
@pytest.mark.parametrize("rows", [1, 6])
def test_reference_kernels_read_blocks(numpy_backend, dtype: str, rows: int) -> None:
    be, block = numpy_backend, BLOCK_DTYPES[dtype].block
    n, k = 3, 2 * block
    raw = random_blocks(dtype, 2 * n, seed=rows).reshape(n, -1)
    values = dequantize(raw, dtype).astype(np.float64)
    x = np.random.default_rng(0).standard_normal((rows, k)).astype(np.float32)
    w, ids = be.upload(raw, dtype), be.upload(np.array([2, 0, 5], np.uint32))
    out, emb = be.empty((rows, n)), be.empty((3, k))
    cmd = be.command_list()
    cmd.dispatch(
        be.pipeline("matmul", wdtype=dtype), {"x": be.upload(x), "w": w, "out": out}, rows=rows, n=n, k=k, eps=0.0
    )
    cmd.dispatch(be.pipeline("embed", wdtype=dtype), {"table": w, "ids": ids, "out": emb}, rows=3, dim=k, vocab=n)
    be.run(cmd)
    np.testing.assert_array_equal(be.read(out), (x @ values.T).astype(np.float32))
    np.testing.assert_array_equal(be.read(emb), np.stack([values[2], values[0], np.zeros(k)]).astype(np.float32))
    with pytest.raises(BindingError, match="block"):
        be.command_list().dispatch(
            be.pipeline("matmul", wdtype=dtype),
            {"x": be.upload(x), "w": w, "out": out},
            rows=rows,
            n=n,
            k=k - 1,
            eps=0.0,
        )


# --- models with block weights ----------------------------------------------------------------

PROMPT = [3, 17, 42, 5, 99, 7, 1, 64, 200, 11]
# (dtype, overrides): k-quants need rows of whole 256-value blocks
MODELS = [("q4_0", {}), ("q4_1", {}), ("q8_0", {}), ("q4_k", {"hidden_size": 256, "intermediate_size": 256}),
          ("q6_k", {"hidden_size": 256, "intermediate_size": 512})]  # fmt: skip


def _dequantized(ckpt: MemoryCheckpoint) -> MemoryCheckpoint:
    dtypes = {n: i.dtype for n, i in ckpt.infos().items()}
    arrays = {n: values(a, dtypes[n]) for n, a in ckpt.arrays.items()}
    return MemoryCheckpoint(ckpt.config, arrays, dict.fromkeys(arrays, "f32"))


@pytest.mark.parametrize("dtype,overrides", MODELS, ids=[m[0] for m in MODELS])
def test_a_block_model_is_its_dequantized_float32_model(numpy_backend, dtype, overrides):
    ckpt = synthetic_checkpoint("tiny", dtype, seed=1, **overrides)
    assert {i.dtype for i in ckpt.infos().values()} == {dtype, "f32"}
    with shaderbay.load(ckpt, backend=numpy_backend, cache_dtype="f32") as q:
        w = q.llama.weights
        assert w.layers[0].wqkv.dtype == w.layers[0].wgu.dtype == w.embed.dtype == dtype
        assert w.layers[0].attn_norm.dtype == "f32"
        got = q.logits(PROMPT, all_positions=True)
        tokens = list(q.tokens(PROMPT, 8))
    with shaderbay.load(_dequantized(ckpt), backend=numpy_backend, cache_dtype="f32") as f:
        np.testing.assert_array_equal(got, f.logits(PROMPT, all_positions=True))
        assert list(f.tokens(PROMPT, 8)) == tokens


@pytest.mark.parametrize("dtype,overrides", MODELS, ids=[m[0] for m in MODELS])
def test_every_backend_generates_the_numpy_tokens_from_blocks(model_backend, numpy_backend, dtype, overrides):
    ckpt = synthetic_checkpoint("tiny-qwen2", dtype, seed=2, **overrides)
    with shaderbay.load(ckpt, backend=numpy_backend, cache_dtype="f32") as ref:
        want = list(ref.tokens(PROMPT, 12))
    with shaderbay.load(ckpt, backend=model_backend, cache_dtype="f32") as model:
        assert model.llama.weights.lm_head.dtype == dtype
        assert list(model.tokens(PROMPT, 12)) == want


def test_k_quant_rows_that_are_not_whole_superblocks_fall_back(numpy_backend):
    ckpt = synthetic_checkpoint("tiny", "q4_k")  # 64-wide rows
    assert {i.dtype for i in ckpt.infos().values()} == {FALLBACK_BLOCK_DTYPE, "f32"}
