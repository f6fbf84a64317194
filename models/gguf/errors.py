"""The GGUF errors. Each is also the generic typed error a caller may already catch
(CheckpointError, UnsupportedArchitecture, UnsupportedDtype, TokenizerError), and all are
ConversionErrors."""

from __future__ import annotations

from shaderbay.errors import CheckpointError, ConversionError, TokenizerError, UnsupportedArchitecture, UnsupportedDtype


class GGUFFileError(ConversionError, CheckpointError):
    """The file is missing, not a GGUF file, truncated or corrupt; the message names the key or tensor."""


class GGUFArchitectureError(ConversionError, UnsupportedArchitecture):
    """The GGUF holds a model architecture (or a variant of one) that is not handled."""


class GGUFTensorTypeError(ConversionError, UnsupportedDtype):
    """A tensor is stored in a ggml type that cannot be dequantized here."""


class GGUFTokenizerError(ConversionError, TokenizerError):
    """The tokenizer stored in the GGUF cannot be rebuilt faithfully."""
