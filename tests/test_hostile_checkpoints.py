"""Hostile checkpoint folders: every value read from config.json, generation_config.json and the
index is type- and range-checked before anything is sized from it, files are read only inside the
folder and only if regular, and NaN/Inf weights are refused. Every outcome is a typed error or a
correct load, within a time and memory bound."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import shaderbay
from fifo import outcome_without_blocking
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shaderbay.errors import CheckpointError, ShaderbayError, UnsupportedArchitecture
from shaderbay.models.checkpoint import INDEX_NAME
from shaderbay.models.synthetic import synthetic_arrays, synthetic_config, write_checkpoint

# every key the loader reads from config.json (and rope_scaling's), and from generation_config.json
CONFIG_KEYS = [
    "architectures", "model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
    "num_hidden_layers", "intermediate_size", "vocab_size", "hidden_act", "hidden_activation", "rope_scaling",
    "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window", "eos_token_id", "bos_token_id",
    "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings", "torch_dtype", "dtype",
]  # fmt: skip
ROPE_KEYS = ["rope_type", "type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]
GENERATION_KEYS = ["eos_token_id", "bos_token_id"]

SPECIAL_NUMBERS = [0, -1, 1, 2, 3, 7, 64, 10**9, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 + 1, 10**30, -(2**63)]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(SPECIAL_NUMBERS),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, -1e-5, 1e-300, 1e308, math.nan, math.inf, -math.inf]),
    st.text(max_size=6),
    st.sampled_from(["llama3", "default", "silu", "LlamaForCausalLM", "llama", "float16"]),
)
hostile = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
)
rope_scaling = st.dictionaries(st.sampled_from(ROPE_KEYS), hostile, max_size=4).map(
    lambda d: {"rope_type": "llama3", "factor": 8.0, **d}
)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """The tiny model's weights, copied into each case's folder."""
    return write_checkpoint("tiny", tmp_path_factory.mktemp("tiny"), "f32")


def _case(weights: Path, root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copy(weights / "model.safetensors", root / "model.safetensors")
    return root


def _load_bounded(path: Path, backend) -> None:
    """A typed error or a correct load, in under 10 s and 256 MB of Python allocations (a normal load of
    the tiny model peaks at 64 MB)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        model = shaderbay.load(path, backend=backend, max_context=16)
    except ShaderbayError:
        pass
    else:
        with model:
            assert len(list(model.tokens([1, 2], 2, ignore_eos=True))) == 2
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 10
    assert peak < 256 << 20, f"{peak >> 20} MB allocated"


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(
    config=st.dictionaries(st.sampled_from(CONFIG_KEYS), hostile | rope_scaling, min_size=1, max_size=3),
    generation=st.none() | st.dictionaries(st.sampled_from(GENERATION_KEYS), hostile, max_size=2) | hostile,
)
def test_config_values_fuzz(weights, tmp_path, numpy_backend, config, generation):
    root = _case(weights, tmp_path / "case")
    (root / "config.json").write_text(json.dumps({**synthetic_config("tiny", "f32"), **config}))
    if generation is not None:
        (root / "generation_config.json").write_text(json.dumps(generation))
    _load_bounded(root, numpy_backend)


@pytest.mark.parametrize(
    "change",
    [
        {"num_hidden_layers": 10**9},
        {"num_hidden_layers": 2**63},
        {"vocab_size": 10**12},
        {"hidden_size": 2**40},
        {"num_attention_heads": 0},
        {"num_key_value_heads": 0},
        {"num_key_value_heads": "2"},
        {"head_dim": 2.5},
        {"num_attention_heads": 1.0},
        {"rms_norm_eps": 0},
        {"rms_norm_eps": -1e-5},
        {"rms_norm_eps": "1e-5"},
        {"rms_norm_eps": math.nan},
        {"rope_theta": 0},
        {"rope_theta": -10000.0},
        {"rope_theta": math.inf},
        {"rope_theta": [10000]},
        {"max_position_embeddings": -1},
        {"max_position_embeddings": "2048"},
        {"sliding_window": "4096"},
        {"sliding_window": -5},
        {"eos_token_id": "2"},
        {"eos_token_id": [[2]]},
        {"eos_token_id": -1},
        {"bos_token_id": 1.5},
        {"attention_bias": "false"},
        {"tie_word_embeddings": "no"},
        {"architectures": [["LlamaForCausalLM"]]},
        {"architectures": 3},
        {"model_type": ["llama"], "architectures": None},
        {"hidden_act": ["silu"]},
        {"rope_scaling": "llama3"},
        {"rope_scaling": {"rope_type": "llama3"}},
        {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0}},
        {"rope_scaling": {"rope_type": "llama3", "factor": 0}},
        {"rope_scaling": {"rope_type": ["llama3"], "factor": 8.0}},
        {"torch_dtype": 16},
    ],
    ids=lambda c: json.dumps(c)[:60],
)
def test_hostile_config_values_are_refused(weights, tmp_path, numpy_backend, change):
    root = _case(weights, tmp_path / "case")
    (root / "config.json").write_text(json.dumps({**synthetic_config("tiny", "f32"), **change}))
    t0 = time.perf_counter()
    with pytest.raises((CheckpointError, UnsupportedArchitecture), match="config.json"):
        shaderbay.load(root, backend=numpy_backend)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("name", ["config.json", "generation_config.json", INDEX_NAME])
def test_deeply_nested_json_is_refused(weights, tmp_path, numpy_backend, name):
    root = _case(weights, tmp_path / "case")
    (root / "config.json").write_text(json.dumps(synthetic_config("tiny", "f32")))
    (root / name).write_text(_deep(100_000))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        shaderbay.load(root, backend=numpy_backend)


@pytest.mark.parametrize(
    "generation", [[2], "2", {"eos_token_id": "2"}, {"eos_token_id": [2, None]}, {"bos_token_id": [1, 2]}, 3.5]
)
def test_hostile_generation_config_is_refused(weights, tmp_path, numpy_backend, generation):
    root = _case(weights, tmp_path / "case")
    (root / "config.json").write_text(json.dumps(synthetic_config("tiny", "f32")))
    (root / "generation_config.json").write_text(json.dumps(generation))
    with pytest.raises(CheckpointError, match="generation_config.json"):
        shaderbay.load(root, backend=numpy_backend)


def _sharded(tmp_path: Path) -> Path:
    return write_checkpoint("tiny", tmp_path / "ckpt", "f32", shards=2)


@pytest.mark.parametrize("where", ["absolute", "parent", "nested parent"])
def test_index_cannot_reach_outside_the_folder(tmp_path, numpy_backend, where):
    root = _sharded(tmp_path)
    outside = tmp_path / "outside.safetensors"
    index = json.loads((root / INDEX_NAME).read_text())
    first = next(iter(index["weight_map"].values()))
    shutil.copy(root / first, outside)
    name = {
        "absolute": str(outside),
        "parent": "../outside.safetensors",
        "nested parent": "a/../../outside.safetensors",
    }
    index["weight_map"] = {k: name[where] if v == first else v for k, v in index["weight_map"].items()}
    (root / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        shaderbay.load(root, backend=numpy_backend)


@pytest.mark.parametrize("weight_map", [[], {"model.norm.weight": 3}, {"model.norm.weight": ["a"]}, {"x": None}])
def test_hostile_index_values_are_refused(tmp_path, numpy_backend, weight_map):
    root = _sharded(tmp_path)
    (root / INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="index"):
        shaderbay.load(root, backend=numpy_backend)


def _fails_fast(path: Path, backend, fifo: Path) -> None:
    error = outcome_without_blocking(lambda: shaderbay.load(path, backend=backend), fifo)
    assert isinstance(error, CheckpointError) and "regular file" in str(error)


@pytest.mark.parametrize("name", ["model.safetensors", "model-00001-of-00001.safetensors", "config.json"])
def test_a_fifo_is_not_read(weights, tmp_path, numpy_backend, name):
    root = tmp_path / "case"
    root.mkdir()
    (root / "config.json").write_text(json.dumps(synthetic_config("tiny", "f32")))
    if name == "config.json":
        shutil.copy(weights / "model.safetensors", root / "model.safetensors")
        (root / "config.json").unlink()
    os.mkfifo(root / name)
    _fails_fast(root, numpy_backend, root / name)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_non_finite_weights_are_refused(tmp_path, numpy_backend, value, dtype):
    raw = synthetic_config("tiny", dtype)
    arrays = synthetic_arrays(raw, dtype)
    name = "model.layers.1.mlp.down_proj.weight"
    bad = np.array(value, np.float32)
    arrays[name] = arrays[name].copy()
    arrays[name].flat[77] = (bad.view(np.uint32) >> 16).astype(np.uint16) if dtype == "bf16" else bad
    root = write_checkpoint(raw, tmp_path / "ckpt", dtype, arrays=arrays)
    numpy_backend.wait()  # what earlier tests dropped is released first
    before = numpy_backend.bytes_allocated
    with pytest.raises(CheckpointError, match=f"{name}.*(NaN|infinite)"):
        shaderbay.load(root, backend=numpy_backend)
    numpy_backend.wait()
    assert numpy_backend.bytes_allocated == before
