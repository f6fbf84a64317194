"""Hostile GGUF files: every metadata value the reader uses, replaced by values of the wrong type,
zero, negative, huge or nested (a Hypothesis fuzz at the value level), and the header's counts,
lengths, dimensions and offsets made impossible. Each outcome is a shaderbay error or a correct
load, within a time and memory bound; a failed conversion leaves the output folder untouched."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
from fifo import outcome_without_blocking
from fixtures_model import write_tiny_gguf
from gguf import GGUFValueType as VT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shaderbay.errors import ShaderbayError
from shaderbay.models.checkpoint import SafetensorsCheckpoint
from shaderbay.models.gguf import GGUFFile, convert_gguf
from shaderbay.models.tokenizer import Tokenizer

# --- a small GGUF writer that can write anything ---------------------------------------------------

_FORMATS = {VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
            VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d"}  # fmt: skip


def payload(vtype: VT, value) -> bytes:
    """A value's bytes; an array is (item type, items), its items encoded the same way."""
    if vtype == VT.STRING:
        raw = value.encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(raw)) + raw
    if vtype == VT.ARRAY:
        item, items = value
        return struct.pack("<IQ", item, len(items)) + b"".join(payload(item, x) for x in items)
    return struct.pack(_FORMATS[vtype], value)


def typed(vtype: VT, value) -> bytes:
    return struct.pack("<I", vtype) + payload(vtype, value)


@dataclass
class Parts:
    """A GGUF taken apart: metadata as key -> (type + value bytes), tensor entries, and the data."""

    kv: dict[str, bytes]
    tensors: list[tuple[str, tuple[int, ...], int, int]]  # name, ne, ggml type, offset in the data
    data: bytes

    def write(self, path: Path, *, n_kv: int | None = None, n_tensors: int | None = None) -> Path:
        out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, n_tensors or len(self.tensors), n_kv or len(self.kv)))
        for key, value in self.kv.items():
            out += payload(VT.STRING, key) + value
        for name, ne, ggml_type, offset in self.tensors:
            out += payload(VT.STRING, name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, ggml_type, offset)
        out += b"\0" * (-len(out) % 32)
        path.write_bytes(bytes(out) + self.data)
        return path

    def replace(self, **changes) -> Parts:
        return Parts(**{"kv": dict(self.kv), "tensors": list(self.tensors), "data": self.data, **changes})


def take_apart(path: Path) -> Parts:
    """The parts of a GGUF, read with the gguf package's own reader (independent of ours)."""
    r = gguf.GGUFReader(path)
    kv = {
        name: b"".join(bytes(p) for p in field.parts[2:])
        for name, field in r.fields.items()
        if not name.startswith("GGUF.")
    }
    tensors = [(t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.data_offset - r.data_offset))
               for t in r.tensors]  # fmt: skip
    return Parts(kv, tensors, path.read_bytes()[r.data_offset :])


@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory) -> Parts:
    return take_apart(write_tiny_gguf(tmp_path_factory.mktemp("base") / "tiny.gguf"))


# --- outcomes ------------------------------------------------------------------------------------------

TIME_LIMIT_S = 5.0
MEMORY_LIMIT = 64 << 20  # Python-side peak; the tiny model's conversion needs about 2 MB


def convert_outcome(path: Path, out: Path) -> str:
    """'error' (a shaderbay error) or 'loaded' (the converted folder loads back), within the bounds."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        convert_gguf(path, out, dtype="float32")
        with SafetensorsCheckpoint(out) as ckpt:  # config, weights and tokenizer all read back
            for name in ckpt.infos():
                ckpt.expect(name, ckpt.infos()[name].shape)
        Tokenizer.from_dir(out).encode("hello world")
        outcome = "loaded"
    except ShaderbayError:
        outcome = "error"
    finally:
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.1f} s"
    assert peak < MEMORY_LIMIT, f"peak Python memory {peak >> 20} MiB"
    return outcome


def error_of(path: Path, out: Path) -> ShaderbayError:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ShaderbayError) as info:
            convert_gguf(path, out)
    finally:
        elapsed, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < TIME_LIMIT_S and peak < MEMORY_LIMIT, (elapsed, peak)
    assert not out.exists()
    return info.value


# --- the value-level fuzz ----------------------------------------------------------------------------

# every metadata key the reader, the config and the tokenizer read
FUZZED_KEYS = [
    "general.architecture",
    "general.alignment",
    "general.name",
    "general.file_type",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.key_length",
    "llama.attention.value_length",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.freq_base",
    "llama.rope.dimension_count",
    "llama.rope.scaling.type",
    "llama.rope.scaling.factor",
    "llama.rope.scaling.original_context_length",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.eom_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.chat_template",
    "tokenizer.chat_template.tool_use",
]


def _ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = [v for v in (0, 1, 2, 3, 4, 16, 64, hi, lo, -1, 2**31 - 1, 2**32 - 1) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


SCALARS: dict[VT, st.SearchStrategy] = {
    VT.UINT8: _ints(8, False),
    VT.INT8: _ints(8, True),
    VT.UINT16: _ints(16, False),
    VT.INT16: _ints(16, True),
    VT.UINT32: _ints(32, False),
    VT.INT32: _ints(32, True),
    VT.UINT64: _ints(64, False),
    VT.INT64: _ints(64, True),
    VT.FLOAT32: st.floats(width=32),
    VT.FLOAT64: st.floats(),
    VT.BOOL: st.booleans(),
    VT.STRING: st.one_of(
        st.sampled_from(["", "llama", "gpt2", "smollm", "linear", "<|im_end|>"]), st.text(max_size=12)
    ),
}


def _flat_arrays() -> st.SearchStrategy[tuple[VT, tuple]]:
    return st.sampled_from(list(SCALARS)).flatmap(
        lambda t: st.lists(SCALARS[t], max_size=5).map(lambda xs: (VT.ARRAY, (t, xs)))
    )


def _nest(children: st.SearchStrategy[tuple[VT, tuple]]) -> st.SearchStrategy[tuple[VT, tuple]]:
    return st.lists(children, max_size=3).map(lambda arrays: (VT.ARRAY, (VT.ARRAY, [a[1] for a in arrays])))


VALUES = st.one_of(
    st.sampled_from(list(SCALARS)).flatmap(lambda t: SCALARS[t].map(lambda v: (t, v))),
    st.recursive(_flat_arrays(), _nest, max_leaves=6),  # nested past the reader's depth limit at times
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(FUZZED_KEYS), value=st.one_of(st.none(), VALUES))
def test_hostile_metadata_values_give_typed_errors_or_correct_loads(tiny_parts, key, value):
    kv = dict(tiny_parts.kv)
    if value is None:
        kv.pop(key, None)  # absent
    else:
        kv[key] = typed(*value)
    with tempfile.TemporaryDirectory() as d:
        convert_outcome(tiny_parts.replace(kv=kv).write(Path(d) / "hostile.gguf"), Path(d) / "out")


def test_the_fuzz_base_loads(tiny_parts, tmp_path):
    assert convert_outcome(tiny_parts.write(tmp_path / "same.gguf"), tmp_path / "out") == "loaded"


# --- the cases the reliability issue lists, one by one -------------------------------------------------


def _with(parts: Parts, tmp_path: Path, **values: tuple[VT, object]) -> Path:
    kv = dict(parts.kv)
    kv.update({key.replace("__", "."): typed(*v) for key, v in values.items()})
    return parts.replace(kv=kv).write(tmp_path / "h.gguf")


def test_huge_block_count_is_refused_before_any_list_is_built(tiny_parts, tmp_path):
    e = error_of(_with(tiny_parts, tmp_path, llama__block_count=(VT.UINT32, 2**32 - 1)), tmp_path / "o")
    assert "'llama.block_count' must be an integer in [1, " in str(e) and "4294967295" in str(e)


@pytest.mark.parametrize(
    "key,value,says",
    [
        ("llama__attention__head_count", (VT.UINT32, 0), "'llama.attention.head_count' must be an integer in [1, 64]"),
        ("llama__attention__head_count_kv", (VT.UINT32, 3), "4 attention heads do not split into 3"),
        ("llama__embedding_length", (VT.INT32, -64), "'llama.embedding_length' must be an integer"),
        ("llama__embedding_length", (VT.UINT32, 32), "rows of 64 but the embedding length is 32"),
        ("llama__feed_forward_length", (VT.ARRAY, (VT.UINT32, [96, 96])), "per-layer feed-forward sizes"),
        ("llama__attention__layer_norm_rms_epsilon", (VT.FLOAT32, float("nan")), "must be a finite number in (0"),
        ("llama__rope__freq_base", (VT.FLOAT32, -1.0), "'llama.rope.freq_base' must be a finite number"),
        ("llama__context_length", (VT.STRING, "256"), "'llama.context_length' must be an integer"),
        ("tokenizer__ggml__tokens", (VT.ARRAY, (VT.ARRAY, [(VT.STRING, ["a"])])), "must be an array of str"),
        ("tokenizer__ggml__bos_token_id", (VT.FLOAT32, 1.0), "'tokenizer.ggml.bos_token_id' must be an integer"),
        ("tokenizer__ggml__add_bos_token", (VT.UINT8, 1), "'tokenizer.ggml.add_bos_token' must be true or false"),
        ("general__alignment", (VT.UINT32, 0), "'general.alignment' must be an integer"),
        ("general__alignment", (VT.UINT32, 48), "must be a power of two"),
        ("llama__feed_forward_length", (VT.UINT32, 95), "has shape [96, 64] but the metadata"),
    ],
)
def test_bad_values_name_the_file_and_key(tiny_parts, tmp_path, key, value, says):
    e = error_of(_with(tiny_parts, tmp_path, **{key: value}), tmp_path / "o")
    assert str(e).startswith("h.gguf: ") and says in str(e)


def test_deeply_nested_arrays_do_not_recurse(tiny_parts, tmp_path):
    deep = struct.pack("<I", VT.ARRAY) + struct.pack("<IQ", VT.ARRAY, 1) * 5000 + struct.pack("<IQB", VT.UINT8, 1, 1)
    e = error_of(_raw_kv(tiny_parts, tmp_path, "general.name", deep), tmp_path / "o")
    assert "metadata key 'general.name': arrays nest more than 3 deep" in str(e)


def _raw_kv(parts: Parts, tmp_path: Path, key: str, raw: bytes) -> Path:
    return parts.replace(kv={**parts.kv, key: raw}).write(tmp_path / "h.gguf")


@pytest.mark.parametrize(
    "raw,says",
    [
        (struct.pack("<IQ", VT.STRING, 2**63), "metadata key 'general.name' reaches past the end of the file"),
        (struct.pack("<IIQ", VT.ARRAY, VT.UINT64, 2**61), "reaches past the end of the file"),
        (struct.pack("<IIQ", VT.ARRAY, VT.STRING, 2**40), "reaches past the end of the file"),
        (struct.pack("<IIQ", VT.ARRAY, VT.ARRAY, 2**40), "reaches past the end of the file"),
        (struct.pack("<I", 13) + b"\0" * 8, "metadata key 'general.name': unknown value type 13"),
        (struct.pack("<IQ", VT.STRING, 2) + b"\xff\xfe", "a string is not valid UTF-8"),
    ],
)
def test_lengths_beyond_the_file_are_refused(tiny_parts, tmp_path, raw, says):
    assert says in str(error_of(_raw_kv(tiny_parts, tmp_path, "general.name", raw), tmp_path / "o"))


def test_impossible_counts_are_refused(tiny_parts, tmp_path):
    e = error_of(tiny_parts.write(tmp_path / "h.gguf", n_kv=2**62), tmp_path / "o")
    assert "more than the file can hold" in str(e)
    e = error_of(tiny_parts.write(tmp_path / "h.gguf", n_tensors=2**64 - 1), tmp_path / "o")
    assert "more than the file can hold" in str(e)


def _tensor(parts: Parts, tmp_path: Path, name: str, ne=None, offset=None, ggml_type=None) -> Path:
    tensors = [
        (n, ne if n == name and ne else d, ggml_type if n == name and ggml_type else t,
         offset if n == name and offset is not None else o)
        for n, d, t, o in parts.tensors
    ]  # fmt: skip
    return parts.replace(tensors=tensors).write(tmp_path / "h.gguf")


@pytest.mark.parametrize(
    "ne,says",
    [
        ((2**32, 2**32), "are impossible for a file of"),  # 2**64 elements: 0 in wrapped 64-bit arithmetic
        ((64, 2**64 - 1), "are impossible for a file of"),
        ((64, 0), "are impossible for a file of"),
        ((64, 2, 1, 1, 1), "it has 5 dimensions"),
        ((64, 5000), "reaches past the end of the file"),
        ((64, 258), "the tokenizer has 265 tokens but 'token_embd.weight' has only 258 rows"),
    ],
)
def test_impossible_dimensions_are_refused(tiny_parts, tmp_path, ne, says):
    e = error_of(_tensor(tiny_parts, tmp_path, "token_embd.weight", ne=ne), tmp_path / "o")
    assert "'token_embd.weight'" in str(e) and says in str(e)


@pytest.mark.parametrize("offset", [2**64 - 32, 2**40, 3])
def test_data_ranges_are_checked_against_the_file(tiny_parts, tmp_path, offset):
    e = error_of(_tensor(tiny_parts, tmp_path, "output_norm.weight", offset=offset), tmp_path / "o")
    assert "tensor 'output_norm.weight'" in str(e)
    assert ("reaches past the end of the file" if offset > 3 else "is not a multiple of the alignment") in str(e)


def test_unknown_tensor_type_is_named(tiny_parts, tmp_path):
    e = error_of(_tensor(tiny_parts, tmp_path, "output_norm.weight", ggml_type=250), tmp_path / "o")
    assert "tensor 'output_norm.weight' uses ggml type 250" in str(e)


@pytest.mark.parametrize("factors", [[float("nan")] * 8, [0.0] * 8, [1.0] * 3])
def test_garbage_rope_frequency_factors_are_refused(tmp_path, factors):
    rope = (np.array(factors, np.float32), None)
    src = write_tiny_gguf(tmp_path / "r.gguf", extra_tensors={"rope_freqs.weight": rope})
    assert "match no known Llama 3 rope scaling" in str(error_of(src, tmp_path / "o"))


def test_cli_reports_a_hostile_file_without_a_traceback(tiny_parts, tmp_path):
    src = _with(tiny_parts, tmp_path, llama__attention__head_count=(VT.UINT32, 0))
    shaderbay = Path(sys.executable).with_name("shaderbay")
    r = subprocess.run([str(shaderbay), "convert", str(src), str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "'llama.attention.head_count' must be an integer" in r.stderr
    assert not (tmp_path / "o").exists()


# --- a failed conversion leaves the output folder as it was ----------------------------------------------


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _leftovers(d: Path) -> list[str]:
    return [p.name for p in d.parent.iterdir() if p.name.startswith(f".{d.name}.")]


def test_a_failed_convert_leaves_an_existing_output_untouched(tmp_path):
    out = convert_gguf(write_tiny_gguf(tmp_path / "a.gguf"), tmp_path / "out")
    before = _snapshot(out)
    # a different model (another tokenizer) that fails once its weights are being written
    other = write_tiny_gguf(tmp_path / "b.gguf", tokenizer_pre="qwen2", add_bos=True)

    def interrupt(done, total, label):
        if label.startswith("model.layers.1"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_gguf(other, out, progress=interrupt)
    assert _snapshot(out) == before and not _leftovers(out)
    # and one refused while checking
    bad = _with(take_apart(other), tmp_path, llama__block_count=(VT.UINT32, 2**32 - 1))
    with pytest.raises(ShaderbayError):
        convert_gguf(bad, out)
    assert _snapshot(out) == before and not _leftovers(out)
    # a complete conversion replaces the whole folder, stale shards included
    (out / "model-00001-of-00002.safetensors").write_bytes(b"stale")
    convert_gguf(other, out)
    assert "model-00001-of-00002.safetensors" not in os.listdir(out)
    assert _snapshot(out)["tokenizer.json"] != before["tokenizer.json"] and not _leftovers(out)


def test_convert_refuses_a_folder_holding_other_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ShaderbayError, match="holds 'notes.txt', which is not part of a model checkpoint"):
        convert_gguf(write_tiny_gguf(tmp_path / "a.gguf"), out)
    assert os.listdir(out) == ["notes.txt"] and not _leftovers(out)
    shutil.rmtree(out)
    out.write_text("a file")
    with pytest.raises(ShaderbayError, match="is not a directory"):
        convert_gguf(tmp_path / "a.gguf", out)


def test_reader_refuses_a_fifo(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    error = outcome_without_blocking(lambda: GGUFFile(fifo), fifo)
    assert isinstance(error, ShaderbayError) and "is not a file" in str(error)
