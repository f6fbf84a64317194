"""A GGUF file as a Checkpoint: the weights straight from the memory-mapped file, in their own
block format wherever the backend's matrix kernels take it; config, tokenizer and chat template
from the metadata. Nothing is written to disk.

A tensor whose ggml type the backend cannot run (Q5_K, the IQ types, or a block format the
backend has no kernel for) is converted once, at load, to the nearest type it can run, and a
line on stderr says so. llama.cpp's rotary permutation of the Q and K rows is undone row by row,
which moves whole rows of blocks and so works on the blocks as they are.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from shaderbay.backend import Backend
from shaderbay.dtypes import host_dtype, host_shape, nbytes

from ..checkpoint import Checkpoint, TensorInfo
from ..tokenizer import Tokenizer
from ..weights import GATE_UP
from .config import model_metadata
from .convert import OUTPUT_DTYPES, normalize_dtype
from .dequant import check_supported, dequantize
from .formats import STORED, common_dtype, from_float32, runnable_dtypes, upload_dtype
from .names import model_weights, rotary_heads, unpermute_rotary
from .reader import GGUFFile


@dataclass(frozen=True)
class GGUFTensorInfo(TensorInfo):
    """A tensor as it will be uploaded: ``tag`` is its ggml type, ``upload`` the dtype it goes to the device in."""

    upload: str = "f32"

    @property
    def dtype(self) -> str:
        return self.upload

    @property
    def nbytes(self) -> int:
        return nbytes(self.upload, self.shape)


class GGUFCheckpoint(Checkpoint):
    """A Llama-family GGUF file. ``dtype`` (float16, float32, bfloat16) converts every weight to it at
    load; None keeps each tensor's own type where the backend runs it."""

    def __init__(self, path: str | os.PathLike[str], dtype: str | None = None):
        self.path = Path(path)
        self.file = GGUFFile(self.path)
        self.config, self._tokenizer, _ = model_metadata(self.file)
        self.tensors, self.zeros = model_weights(self.file, self.config)
        for t in self.tensors.values():
            check_supported(t.ggml_type, f"{self.file.name}: tensor {t.name!r} is stored as ")
        self.forced = OUTPUT_DTYPES[normalize_dtype(dtype)] if dtype is not None else None
        self.permuted = self.config.architecture != "Qwen2ForCausalLM"  # llama.cpp permutes Q/K for llama only
        self._infos = self._plan(frozenset(STORED.values()))

    def describe(self) -> str:
        return str(self.path)

    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def prepare(self, backend: Backend) -> None:
        """Settle each tensor's upload dtype for ``backend``, saying on stderr which are converted and why."""
        runnable = runnable_dtypes(backend)
        self._infos = self._plan(runnable)
        if self.forced is not None:
            return  # converted as asked: nothing to say
        why: dict[tuple[str, str], list[str]] = {}  # (reason, target) -> GGUF names
        for hf, t in self.tensors.items():
            to = self._infos[hf].upload
            if to == STORED.get(t.ggml_type):
                continue
            alone = upload_dtype(t.ggml_type, runnable)
            if alone != to:
                reason = f"{t.type_name.lower()} shares a fused matrix with other formats"
            else:
                reason = f"{t.type_name.lower()} has no kernel on {backend.name}"
            why.setdefault((reason, to), []).append(t.name)
        for (reason, to), names in why.items():
            which = names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")
            print(f"shaderbay: {reason}: {which} converted to {to} at load", file=sys.stderr)

    def _plan(self, runnable: frozenset[str]) -> dict[str, GGUFTensorInfo]:
        upload = {hf: upload_dtype(t.ggml_type, runnable) for hf, t in self.tensors.items()}
        if self.forced is not None:  # norms and biases go up as float32 whatever is asked
            upload.update({hf: self.forced for hf, t in self.tensors.items() if len(t.shape) > 1})
        for i in range(self.config.n_layers):  # gate and up, interleaved in one matrix, share a dtype
            names = [f"model.layers.{i}.{n}" for n in GATE_UP]
            dtypes = {upload[n] for n in names}
            if len(dtypes) > 1:
                upload.update(dict.fromkeys(names, common_dtype(dtypes, runnable)))
        infos = {
            hf: GGUFTensorInfo(hf, t.type_name, t.shape, self.file.name, upload[hf]) for hf, t in self.tensors.items()
        }
        for hf, shape in self.zeros.items():
            infos[hf] = GGUFTensorInfo(hf, "F32", shape, self.file.name, "f32")
        return infos

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def array(self, name: str) -> np.ndarray:
        info = self._infos[name]
        t = self.tensors.get(name)
        if t is None:  # a bias the GGUF leaves out
            return np.zeros(info.shape, np.float32)
        heads = rotary_heads(name, self.config.n_heads, self.config.n_kv_heads) if self.permuted else None
        if info.upload == STORED.get(t.ggml_type):
            rows = t.rows().view(host_dtype(info.upload)).reshape(host_shape(info.upload, t.shape))
            return unpermute_rotary(rows, heads) if heads else rows
        values = dequantize(t.raw(), t.ggml_type, t.shape)
        return from_float32(unpermute_rotary(values, heads) if heads else values, info.upload)

    def close(self) -> None:
        """Let the file's mapping go (the uploaded tensors do not need it)."""
        self.file = None
        self.tensors = {}
