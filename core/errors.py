"""Typed errors. Each one says what went wrong and what to do next."""

from __future__ import annotations


class ShaderbayError(Exception):
    """Base of every error shaderbay raises on purpose."""


# --- backends -----------------------------------------------------------------


class BackendUnavailable(ShaderbayError):
    """The backend cannot run on this machine; the message says why and what to install."""

    def __init__(self, backend: str, reason: str):
        self.backend = backend
        self.reason = reason
        super().__init__(f"backend {backend!r} is unavailable: {reason}")


class UnknownBackend(ShaderbayError):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        super().__init__(
            f"no backend named {name!r}; discovered backends: {', '.join(known) or 'none'} "
            "(run `shaderbay backends` to see them and why any is unavailable)"
        )


class UnsupportedFeature(ShaderbayError):
    """The device lacks something a kernel or request needs (f16, subgroups, timestamps...)."""


class OutOfMemory(ShaderbayError):
    """The device could not allocate; free buffers, shorten the context or pick a smaller model."""


class LimitExceeded(ShaderbayError):
    """A request exceeds a device limit (buffer size, workgroup count, push-constant size...)."""


class KernelCompileError(ShaderbayError):
    """A kernel failed to compile or link into a pipeline on this device."""


class UnknownKernel(ShaderbayError):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        super().__init__(f"no kernel named {name!r} in the catalogue; known kernels: {', '.join(sorted(known))}")


class UnsupportedKernel(ShaderbayError):
    """The backend does not implement this catalogue kernel (listed as unsupported by `shaderbay check`)."""


class BindingError(ShaderbayError):
    """A dispatch was given a missing, extra, too small or wrongly typed buffer, or a bad parameter."""


class OutOfRange(ShaderbayError):
    """A read, write, copy or view reaches outside its buffer, or an offset is misaligned."""


class ClosedError(ShaderbayError):
    """The backend or buffer was already closed/freed; create a new one."""


# --- models -------------------------------------------------------------------


class ModelError(ShaderbayError):
    """Base of the errors about checkpoints, tokenizers and generation."""


class CheckpointError(ModelError):
    """A checkpoint file is missing, truncated, corrupt or inconsistent; the message names file and tensor."""


class MissingTensor(CheckpointError):
    pass


class ShapeMismatch(CheckpointError):
    pass


class UnsupportedArchitecture(ModelError):
    pass


class UnsupportedDtype(ModelError):
    pass


class ConversionError(ModelError):
    """A GGUF file could not be converted (unknown tensor type, unsupported architecture...)."""


class TokenizerError(ModelError):
    pass


class ModelBusy(ModelError):
    """Every sequence slot of a model is in use: a call that needs one of its own (logits) has to wait."""


class InvalidOption(ModelError, ValueError):
    """A generation option is unknown or out of range; the message names the allowed range."""


class ContextLengthExceeded(ModelError):
    def __init__(self, needed: int, limit: int):
        self.needed = needed
        self.limit = limit
        super().__init__(
            f"the prompt plus new tokens need {needed} positions but the context holds {limit}: "
            "shorten the prompt, lower max_tokens, or load the model with a larger max_context"
        )


class KVCacheFull(ModelError):
    """The paged KV cache has too few free blocks for a request (the engine waits instead, when it can)."""

    def __init__(self, wanted: int, free: int, n_blocks: int):
        self.wanted = wanted
        self.free = free
        self.n_blocks = n_blocks
        super().__init__(
            f"the KV cache needs {wanted} more blocks but only {free} of its {n_blocks} are free: "
            "send fewer or shorter requests (or lower max_tokens), or load the model with a larger KV pool "
            "or a larger max_context"
        )


class ConfigError(ShaderbayError):
    """A configuration file or environment variable has a bad value."""
