"""The reference meaning of the GGUF block formats equals `gguf.quants`, bit for bit; the
quantizer makes blocks that gguf reads back as the reference says; block tensors have the
right sizes on a backend."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import shaderbay
from gguf import quants
from shaderbay.backends.numpy import blockdot
from shaderbay.backends.numpy.kernels import REFERENCE
from shaderbay.backends.numpy.quants import GGML_TYPES, LAYOUTS, dequantize, quantize, values
from shaderbay.backends.numpy.widen import row_blocks, weights_f64
from shaderbay.dtypes import BLOCK_DTYPES, host_shape, nbytes, value_shape
from shaderbay.errors import BindingError
from shaderbay.kernels import kernel
from shaderbay.models.checkpoint import MemoryCheckpoint
from shaderbay.models.synthetic import FALLBACK_BLOCK_DTYPE, synthetic_checkpoint
from shaderbay.resources import Tensor

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


def _exact_by_brute_force(block: np.ndarray, dtype: str) -> bool:
    """Every value of one block is what blockdot's rearranged sum adds: d * q (+ m) in float64."""
    b = block.view(LAYOUTS[dtype])[0]
    d, m = np.float64(b["d"]), np.float64(b["m"]) if dtype == "q4_1" else 0.0
    if not (np.isfinite(d) and np.isfinite(m)):
        return False
    q = np.arange(16.0)
    return bool((np.float32(d) * q.astype(np.float32) + np.float32(m) == d * q + m).all())


def test_q4_1_exactness_check_is_sound_and_holds_for_quantized_weights() -> None:
    """blockdot.exact never passes a block whose values d * q + m round in float32 (the block products
    would then differ from the values'), and passes what the quantizer makes (the default model's
    matrices pass too: checked when loading it, benches/RESULTS.md 2026-12-05)."""
    raw = random_blocks("q4_1", 3000, seed=11)  # independent random d and m: many inexact
    verdicts = [
        (blockdot.scales(block[None], "q4_1") is not None, _exact_by_brute_force(block, "q4_1")) for block in raw
    ]
    assert all(brute for fast, brute in verdicts if fast)
    assert sum(fast for fast, _ in verdicts) > 100 and sum(not brute for _, brute in verdicts) > 100
    weights = np.random.default_rng(2).standard_normal((64, 256)).astype(np.float32)
    assert blockdot.scales(quantize(weights * 0.02, "q4_1"), "q4_1") is not None
    assert blockdot.scales(quantize(weights + 50.0, "q4_1"), "q4_1") is not None  # a large offset, a small spread
    assert blockdot.scales(raw, "q4_1") is None


def _exact_matrix(dtype: str, rows: int, k: int, seed: int) -> np.ndarray:
    """rows x k of blocks: quantized random weights, rows of random and extreme blocks (q4_1: the
    extremes that stay exact: a zero d or m beside the largest scale), a zero block."""
    rng = np.random.default_rng(seed)
    w = quantize(rng.standard_normal((rows, k)).astype(np.float32) * rng.uniform(0.01, 3.0, (rows, 1)), dtype)
    per_row = k // 32
    blocks = w.reshape(-1).view(LAYOUTS[dtype])
    extreme = random_blocks(dtype, 3 * per_row, seed).reshape(-1).view(LAYOUTS[dtype])
    if dtype == "q4_1":
        extreme["d"][::2], extreme["m"][1::2] = 0, 0
    blocks[: 3 * per_row] = extreme
    blocks[-1] = np.zeros((), LAYOUTS[dtype])
    assert blockdot.scales(w, dtype) is not None
    return w


def _exact_f32(terms: list[float]) -> np.float32:
    """The float32 nearest the exact sum of the terms, ties to even: obviously right, slowly (Fractions)."""
    total = sum((Fraction(t) for t in terms), Fraction(0))
    near = np.float32(float(total))
    candidates = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - total), int(c.view(np.uint32)) & 1))


@pytest.mark.parametrize("dtype", blockdot.FORMATS)
def test_block_products_are_the_values_products_within_their_bound(dtype: str) -> None:
    """blockdot.times' float64 sums over blocks lie within the error bound it reports of x @ values(w).T
    (exact here: every product of a float32 value and a float32 x is exact in float64, and fsum adds)."""
    rows, n, k = 3, 41, 96
    w = _exact_matrix(dtype, n, k, seed=4)
    x = np.random.default_rng(6).uniform(-2.0, 2.0, (rows, k)).astype(np.float32).astype(np.float64)
    x[-1] = 0.0
    got, bound = blockdot.times(x, w, dtype, *blockdot.scales(w, dtype))
    values64 = values(w, dtype).astype(np.float64)
    exact = np.array([[math.fsum(values64[i] * x[r]) for i in range(n)] for r in range(rows)])
    one, one_bound = blockdot.times(x[:1], w, dtype, *blockdot.scales(w, dtype, by_block=True))
    assert np.all(np.abs(one[0] - exact[0]) <= one_bound[0])
    assert np.all(np.abs(got - exact) <= bound) and np.all(bound <= 1e-12 * (np.abs(x) @ np.abs(values64).T) + 1e-300)


def _reference_product(x: np.ndarray, w: np.ndarray, dtype: str, **constants: Any) -> np.ndarray:
    """The reference matmul kernel's float32 x @ values(w).T (+ bias, accumulated onto `out`)."""
    rows, (n, k) = x.shape[0], value_shape(dtype, w.shape)
    out = constants.pop("out", np.zeros((rows, n), np.float32)).ravel().copy()
    bias = constants.pop("bias", None)
    c = {"wdtype": dtype, "prologue": "none", "epilogue": "none", "bias": bias is not None, "accumulate": False}
    c.update(constants)
    params = kernel("matmul").check_params({"rows": rows, "n": n, "k": k, "eps": 0.0}, c)  # out's default shape
    bindings = {"x": x.ravel(), "w": w.reshape(-1), "out": out}
    if bias is not None:
        bindings["bias"] = bias
    REFERENCE["matmul"](bindings, params, c)
    return out.reshape(rows, -1)


def _halfway_rows() -> tuple[np.ndarray, np.ndarray]:
    """One q8_0 block and x rows whose exact products lie a hair (2^-60) from a float32 halfway point
    that float64 cannot see, on the side ties-to-even would not pick: 1 + 2^-24 + 2^-60 (-> 1 + 2^-23)
    and 1 + 3 * 2^-24 - 2^-60 (-> 1 + 2^-23)."""
    block = np.zeros((), LAYOUTS["q8_0"])
    block["d"] = -(2.0**-7)
    block["qs"][:3] = (-128, -1, -1)  # values 1, 2^-7, 2^-7
    x = np.zeros((2, 32), np.float32)
    x[0, :3] = (1.0, 2.0**-17, 2.0**-53)
    x[1, :3] = (1.0 + 2.0**-23, 2.0**-17, -(2.0**-53))
    return np.frombuffer(block.tobytes(), np.uint8)[None].copy(), x


def test_decode_products_are_exactly_rounded_and_the_same_in_any_batch() -> None:
    """The reference's q8_0 / q4_0 / q4_1 products up to BATCH_ROWS are the float32 nearest the exact sum
    (with bias and the accumulated output), so a row's bits are the same alone and among others, even
    where float64's sum sits on a float32 halfway point."""
    w, x = _halfway_rows()
    want = np.float32(1.0 + 2.0**-23)
    assert (_reference_product(x, w, "q8_0")[:, 0] == want).all()
    for r in range(2):
        assert _reference_product(x[r : r + 1], w, "q8_0")[0, 0] == want
    rng = np.random.default_rng(8)
    for dtype in blockdot.FORMATS:
        w = _exact_matrix(dtype, 23, 64, seed=5)
        x = rng.uniform(-1.0, 1.0, (5, 64)).astype(np.float32)
        bias, prev = rng.uniform(-1.0, 1.0, 23).astype(np.float32), rng.uniform(-1.0, 1.0, (5, 23)).astype(np.float32)
        got = _reference_product(x, w, dtype, bias=bias, out=prev, accumulate=True)
        values64 = values(w, dtype).astype(np.float64)
        for r in range(5):
            alone = _reference_product(x[r : r + 1], w, dtype, bias=bias, out=prev[r : r + 1], accumulate=True)
            np.testing.assert_array_equal(alone[0].view(np.uint32), got[r].view(np.uint32))
            for i in range(23):
                terms = [*(values64[i] * x[r].astype(np.float64)), float(bias[i]), float(prev[r, i])]
                assert got[r, i] == _exact_f32(terms)


def test_an_inexact_q4_1_matrix_is_multiplied_through_its_values() -> None:
    """A q4_1 block whose d * q + m rounds in float32 (m far above d) sends the matrix down the values'
    path: the reference product is then the rounded values', which the block sums would miss."""
    w = _exact_matrix("q4_1", 8, 64, seed=9)
    blocks = w.reshape(-1).view(LAYOUTS["q4_1"])
    blocks["d"][5], blocks["m"][5] = np.float16(1.234e-4), np.float16(1000.0)
    blocks["qs"][5] = np.arange(16, dtype=np.uint8) * 29  # nibbles of every value
    assert blockdot.scales(w, "q4_1") is None and not _exact_by_brute_force(w.reshape(-1)[5 * 20 : 6 * 20], "q4_1")
    x = np.zeros((2, 64), np.float32)
    x[:, 32:] = np.tile([1.0, -1.0], 16)  # block 5 is row 2's second: its m cancels, its rounding shows
    x64 = x.astype(np.float64)
    want = (x64 @ values(w, "q4_1").astype(np.float64).T).astype(np.float32)
    np.testing.assert_array_equal(_reference_product(x, w, "q4_1"), want)
    d, m = (blocks[name].reshape(8, 2).astype(np.float64) for name in ("d", "m"))  # w's scales, unchecked
    assert not np.array_equal(blockdot.times(x64, w, "q4_1", d, m)[0].astype(np.float32), want)


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


@pytest.mark.parametrize("dtype", ["q4_1", "q8_0"])
def test_a_replayed_product_follows_every_write_to_its_weights(numpy_backend, dtype: str) -> None:
    """NumPy keeps a recorded product's block scales between replays: a host write, a copy and a kernel
    writing the weights' buffer must each be seen by the next replay."""
    be, n, k = numpy_backend, 4, 64
    rng = np.random.default_rng(5)
    blocks = [quantize(rng.standard_normal((n, k)).astype(np.float32) * s, dtype) for s in (1.0, 3.0, 0.5)]
    x = rng.standard_normal((1, k)).astype(np.float32)
    w, spare, out = be.upload(blocks[0], dtype), be.upload(blocks[2], dtype), be.empty((1, n))
    replay = be.command_list()
    replay.dispatch(be.pipeline("matmul", wdtype=dtype), {"x": be.upload(x), "w": w, "out": out}, rows=1, n=n, k=k,
                    eps=0.0)  # fmt: skip

    def product(raw: np.ndarray) -> np.ndarray:
        return (x.astype(np.float64) @ values(raw, dtype).astype(np.float64).T).astype(np.float32)

    be.run(replay)
    np.testing.assert_array_equal(be.read(out), product(blocks[0]))
    be.write(w, blocks[1])  # a host write
    be.run(replay)
    np.testing.assert_array_equal(be.read(out), product(blocks[1]))
    copy = be.command_list()
    copy.copy(spare.buffer, w.buffer, spare.nbytes, spare.offset, w.offset)
    be.run(copy)
    be.run(replay)
    np.testing.assert_array_equal(be.read(out), product(blocks[2]))
    # a kernel writing the weights' buffer: an f32 embedding lookup copying blocks[1]'s words over it
    table = be.upload(np.frombuffer(blocks[1].tobytes(), np.float32).reshape(n, -1))
    words = Tensor(w.buffer, w.offset, "f32", table.shape)
    ids = be.upload(np.arange(n, dtype=np.uint32))
    lookup = be.command_list()
    lookup.dispatch(be.pipeline("embed", wdtype="f32"), {"table": table, "ids": ids, "out": words}, rows=n,
                    dim=table.shape[1], vocab=n)  # fmt: skip
    be.run(lookup)
    be.run(replay)
    np.testing.assert_array_equal(be.read(out), product(blocks[1]))


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
        assert w.layers[0].qkv[0].w.dtype == w.layers[0].wgu.dtype == w.embed.dtype == dtype
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
