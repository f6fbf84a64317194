"""Bad checkpoints give typed errors that name the file and the tensor, never a NumPy traceback."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import shaderbay
from shaderbay.errors import (
    CheckpointError,
    MissingTensor,
    ModelError,
    ShapeMismatch,
    UnsupportedArchitecture,
    UnsupportedDtype,
)
from shaderbay.models.synthetic import synthetic_arrays, synthetic_config, write_checkpoint

EMBED = "model.embed_tokens.weight"
Q = "model.layers.1.self_attn.q_proj.weight"


def _write(tmp_path: Path, name: str = "tiny", config: dict | None = None, drop=(), replace=None, shards=1) -> Path:
    raw = synthetic_config(name, "f32")
    arrays = synthetic_arrays(raw, "f32")
    for key in drop:
        del arrays[key]
    arrays.update(replace or {})
    raw.update(config or {})
    return write_checkpoint(raw, tmp_path / "ckpt", "f32", arrays=arrays, shards=shards)


def _raw_file(path: Path, entries: dict[str, tuple[str, list[int], bytes]]) -> None:
    """A safetensors file with arbitrary dtype tags."""
    header, blobs, offset = {}, [], 0
    for name, (tag, shape, data) in entries.items():
        header[name] = {"dtype": tag, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def _load(path, backend):
    return shaderbay.load(path, backend=backend)


def test_missing_config(tmp_path, numpy_backend):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"config\.json.*not found"):
        _load(tmp_path, numpy_backend)


def test_not_a_directory(tmp_path, numpy_backend):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        _load(tmp_path / "nowhere", numpy_backend)


def test_config_that_is_not_json(tmp_path, numpy_backend):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: cannot be read as JSON"):
        _load(tmp_path, numpy_backend)


def test_config_missing_a_size(tmp_path, numpy_backend):
    raw = synthetic_config("tiny")
    del raw["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="hidden_size is missing"):
        _load(tmp_path, numpy_backend)


def test_unsupported_architecture(tmp_path, numpy_backend):
    path = _write(tmp_path, config={"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    with pytest.raises(UnsupportedArchitecture) as err:
        _load(path, numpy_backend)
    message = str(err.value)
    assert "GPT2LMHeadModel" in message and "LlamaForCausalLM" in message and "config.json" in message


def test_unsupported_rope_scaling(tmp_path, numpy_backend):
    path = _write(tmp_path, config={"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(UnsupportedArchitecture, match="rope_scaling of type 'yarn'"):
        _load(path, numpy_backend)


def test_unsupported_activation(tmp_path, numpy_backend):
    path = _write(tmp_path, config={"hidden_act": "gelu"})
    with pytest.raises(UnsupportedArchitecture, match="hidden_act 'gelu'"):
        _load(path, numpy_backend)


def test_missing_tensor(tmp_path, numpy_backend):
    path = _write(tmp_path, drop=[Q])
    with pytest.raises(MissingTensor) as err:
        _load(path, numpy_backend)
    assert Q in str(err.value) and str(path / "model.safetensors") in str(err.value) and "[64, 64]" in str(err.value)


def test_missing_lm_head_of_an_untied_model(tmp_path, numpy_backend):
    path = _write(tmp_path, drop=["lm_head.weight"])
    with pytest.raises(MissingTensor, match=r"'lm_head\.weight' is missing"):
        _load(path, numpy_backend)


def test_missing_qwen2_bias(tmp_path, numpy_backend):
    path = _write(tmp_path, "tiny-qwen2", drop=["model.layers.0.self_attn.k_proj.bias"])
    with pytest.raises(MissingTensor, match=r"model\.layers\.0\.self_attn\.k_proj\.bias"):
        _load(path, numpy_backend)


def test_wrong_shape(tmp_path, numpy_backend):
    path = _write(tmp_path, replace={Q: np.zeros((64, 32), np.float32)})
    with pytest.raises(ShapeMismatch) as err:
        _load(path, numpy_backend)
    message = str(err.value)
    assert Q in message and "model.safetensors" in message and "[64, 32]" in message and "[64, 64]" in message


def test_nothing_is_uploaded_before_the_checks_pass(tmp_path, numpy_backend):
    path = _write(tmp_path, replace={"model.norm.weight": np.ones(65, np.float32)})
    before = numpy_backend.bytes_allocated
    with pytest.raises(ShapeMismatch, match=r"model\.norm\.weight"):
        _load(path, numpy_backend)
    assert numpy_backend.bytes_allocated == before


def test_truncated_file(tmp_path, numpy_backend):
    path = _write(tmp_path)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(CheckpointError) as err:
        _load(path, numpy_backend)
    message = str(err.value)
    assert "truncated" in message and "model.safetensors" in message and "tensor '" in message


def test_file_too_short_for_a_header(tmp_path, numpy_backend):
    path = _write(tmp_path)
    (path / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated or not a safetensors file"):
        _load(path, numpy_backend)


def test_header_longer_than_the_file(tmp_path, numpy_backend):
    path = _write(tmp_path)
    (path / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        _load(path, numpy_backend)


def test_corrupt_header(tmp_path, numpy_backend):
    path = _write(tmp_path)
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"#garbage####"
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt safetensors header"):
        _load(path, numpy_backend)


def test_header_entry_of_the_wrong_size(tmp_path, numpy_backend):
    path = _write(tmp_path)
    _raw_file(path / "model.safetensors", {EMBED: ("F32", [256, 64], b"\0" * 100)})
    with pytest.raises(CheckpointError, match=r"tensor 'model\.embed_tokens\.weight' .* do not match"):
        _load(path, numpy_backend)


def test_unsupported_dtype(tmp_path, numpy_backend):
    path = _write(tmp_path)
    entries = {EMBED: ("F64", [256, 64], np.zeros((256, 64)).tobytes())}
    _raw_file(path / "model.safetensors", entries)
    with pytest.raises(UnsupportedDtype) as err:
        _load(path, numpy_backend)
    message = str(err.value)
    assert EMBED in message and "F64" in message and "model.safetensors" in message


def test_integer_weights_are_refused(tmp_path, numpy_backend):
    path = _write(tmp_path)
    _raw_file(path / "model.safetensors", {EMBED: ("I8", [256, 64], b"\0" * (256 * 64))})
    with pytest.raises(UnsupportedDtype, match="stored as I8"):
        _load(path, numpy_backend)


def test_no_weight_files(tmp_path, numpy_backend):
    (tmp_path / "config.json").write_text(json.dumps(synthetic_config("tiny")))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        _load(tmp_path, numpy_backend)


def test_missing_shard(tmp_path, numpy_backend):
    path = _write(tmp_path, shards=3)
    (path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"shard 'model-00002-of-00003\.safetensors' .* is missing"):
        _load(path, numpy_backend)


def test_index_pointing_at_the_wrong_shard(tmp_path, numpy_backend):
    path = _write(tmp_path, shards=2)
    index_path = path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"][EMBED] = "model-00002-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(MissingTensor, match=r"model-00002-of-00002\.safetensors: tensor 'model\.embed_tokens"):
        _load(path, numpy_backend)


def test_corrupt_index(tmp_path, numpy_backend):
    path = _write(tmp_path, shards=2)
    (path / "model.safetensors.index.json").write_text('{"weight_map": 3}')
    with pytest.raises(CheckpointError, match=r"index\.json: corrupt index"):
        _load(path, numpy_backend)


def test_a_truncated_gguf_file_is_refused_with_its_name(tmp_path, numpy_backend):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")  # GGUF files load as they are; this one ends after its magic
    with pytest.raises(CheckpointError, match="model.gguf"):
        _load(f, numpy_backend)


def test_unknown_synthetic_model(numpy_backend):
    with pytest.raises(ModelError, match="no synthetic model named 'huge'"):
        shaderbay.load("synthetic:huge", backend=numpy_backend)
