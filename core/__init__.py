"""shaderbay: Llama-family language models on pluggable GPU compute backends."""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING, Any

from .backend import Backend, Caps
from .commands import CommandList
from .errors import ShaderbayError
from .kernels import CATALOGUE, KernelSpec
from .plugins import create_backend, discover
from .resources import Buffer, Pipeline, Tensor, Usage

if TYPE_CHECKING:
    from .models.model import Model

__version__ = importlib.metadata.version("shaderbay")  # pyproject.toml's, as installed

__all__ = [
    "CATALOGUE",
    "Backend",
    "Buffer",
    "Caps",
    "CommandList",
    "KernelSpec",
    "Pipeline",
    "ShaderbayError",
    "Tensor",
    "Usage",
    "create_backend",
    "discover",
    "load",
]


def load(model: str | None = None, backend: str | Backend | None = None, **options: Any) -> Model:
    """Load a checkpoint directory (or the default model when None) onto a backend."""
    from .models.model import load as load_model  # on use: the models pull in tokenizers, safetensors, gguf

    return load_model(model, backend=backend, **options)
