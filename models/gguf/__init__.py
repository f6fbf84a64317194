"""Llama-family GGUF files (llama.cpp's format): reading them, and converting them into checkpoint
directories.

- ``reader``: the header, metadata (type- and range-checked getters) and tensor directory, each
  tensor's raw blocks a zero-copy view of the memory-mapped file;
- ``config``: the metadata as a Hugging Face config.json / ``ModelConfig``; ``model_metadata``
  gives (ModelConfig, Tokenizer, chat template) without converting anything;
- ``tokenizer``: the tokenizer rebuilt from the metadata;
- ``names``: GGUF tensor names against Hugging Face's (``weight_tensors``: the weights by Hugging Face
  name), and llama.cpp's Q/K row permutation, which moves whole rows of blocks;
- ``dequant``: tensors to float32 through ``gguf.quants``;
- ``convert``: ``convert_gguf(path, out_dir)``, written beside ``out_dir`` and moved into place.
"""

from .config import SUPPORTED_ARCHITECTURES, model_metadata
from .convert import OUTPUT_DTYPES, convert_gguf, convert_gguf_tokenizer, normalize_dtype
from .dequant import SUPPORTED_TENSOR_TYPES, dequantize
from .errors import GGUFArchitectureError, GGUFFileError, GGUFTensorTypeError, GGUFTokenizerError
from .names import permute_rotary, unpermute_rotary, weight_tensors
from .reader import GGUFFile, GGUFTensor, read_gguf_metadata
from .tokenizer import SUPPORTED_PRE_TOKENIZERS

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "SUPPORTED_TENSOR_TYPES",
    "SUPPORTED_PRE_TOKENIZERS",
    "OUTPUT_DTYPES",
    "GGUFFileError",
    "GGUFArchitectureError",
    "GGUFTensorTypeError",
    "GGUFTokenizerError",
    "GGUFFile",
    "GGUFTensor",
    "convert_gguf",
    "convert_gguf_tokenizer",
    "model_metadata",
    "weight_tensors",
    "read_gguf_metadata",
    "dequantize",
    "unpermute_rotary",
    "permute_rotary",
    "normalize_dtype",
]
