"""A model's hyper-parameters, read from a Hugging Face `config.json`.

Llama, Mistral and Qwen2 checkpoints share one forward pass; what differs is recorded here:
Qwen2 has q/k/v biases, Llama may declare `attention_bias` / `mlp_bias`, Mistral a sliding
window (honoured by capping the context at the window), and any of them may tie the
output projection to the embeddings or scale their rotary frequencies llama3-style.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from shaderbay.errors import CheckpointError, UnsupportedArchitecture

from . import validate as V

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# Limits on the sizes a config may declare: far above any released Llama-family model, low enough
# that nothing sized from them (the tensor list, a layer's buffers) runs away before the checks
# against the weights' real shapes.
MAX_DIM = 1 << 17  # hidden_size (intermediate_size: 8 times this)
MAX_HEADS = 1 << 12
MAX_HEAD_DIM = 256  # what the attention kernels support
MAX_LAYERS = 1 << 12
MAX_VOCAB = 1 << 24
MAX_POSITIONS = (1 << 31) - 1  # positions and token ids are 32-bit on the device


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """The sizes that decide a model's tensors, and so its cost (what a bench records of a model)."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False

    # --- derived sizes ---------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def qkv_dim(self) -> int:
        return self.q_dim + 2 * self.kv_dim

    @property
    def n_params(self) -> int:
        per_layer = self.qkv_dim * self.dim + self.q_dim * self.dim + 3 * self.ffn_dim * self.dim + 2 * self.dim
        head = 0 if self.tie_word_embeddings else self.vocab_size * self.dim
        return self.vocab_size * self.dim + self.n_layers * per_layer + self.dim + head


@dataclass(frozen=True, kw_only=True)
class ModelConfig(ModelShape):
    architecture: str
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    qkv_bias: bool = False  # q/k/v projections have biases (Qwen2; Llama with attention_bias)
    o_bias: bool = False  # the output projection has a bias (Llama with attention_bias)
    mlp_bias: bool = False  # gate/up/down have biases (Llama with mlp_bias)
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def shape(self) -> ModelShape:
        return ModelShape(**{f.name: getattr(self, f.name) for f in fields(ModelShape)})

    # --- reading -----------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        """The config of a checkpoint directory (config.json, plus generation_config.json's EOS ids)."""
        path = Path(path)
        cfg_path = path / "config.json"
        if not cfg_path.exists():
            raise CheckpointError(f"{cfg_path}: not found; a checkpoint directory needs a config.json")
        raw = V.read_json(cfg_path)
        gen_path = path / "generation_config.json"
        generation = V.read_json(gen_path) if gen_path.exists() else {}
        return cls.from_dict(raw, str(cfg_path), generation, str(gen_path))

    @classmethod
    def from_dict(
        cls,
        raw: dict[str, Any],
        source: str = "config.json",
        generation: dict[str, Any] | None = None,
        generation_source: str = "generation_config.json",
    ) -> ModelConfig:
        """Every value is type- and range-checked (models/validate.py) before anything is sized from it."""
        raw = V.check_mapping(raw, source)
        generation = V.check_mapping({} if generation is None else generation, generation_source)
        arch = _architecture(raw, source)

        def get(key: str, check, default: Any = None, **limits: Any) -> Any:
            value = raw.get(key)
            return default if value is None else check(value, f"{source}: {key}", **limits)

        def need(key: str, high: int) -> int:
            if raw.get(key) is None:
                raise CheckpointError(f"{source}: {key} is missing")
            return get(key, V.check_int, hi=high)

        def token_ids(key: str) -> tuple[int, ...]:
            if generation.get(key) is not None:
                return V.check_ints(generation[key], f"{generation_source}: {key}", hi=MAX_POSITIONS)
            return V.check_ints(raw.get(key), f"{source}: {key}", hi=MAX_POSITIONS)

        dim = need("hidden_size", MAX_DIM)
        n_heads = need("num_attention_heads", MAX_HEADS)
        n_kv = get("num_key_value_heads", V.check_int, default=n_heads, hi=MAX_HEADS)
        if n_heads % n_kv:
            raise CheckpointError(
                f"{source}: num_attention_heads ({n_heads}) is not a multiple of num_key_value_heads ({n_kv})"
            )
        head_dim = get("head_dim", V.check_int, hi=MAX_DIM)
        if head_dim is None:
            if dim % n_heads:
                raise CheckpointError(f"{source}: hidden_size {dim} is not divisible by num_attention_heads {n_heads}")
            head_dim = dim // n_heads
        if head_dim % 2 or head_dim > MAX_HEAD_DIM:
            raise UnsupportedArchitecture(
                f"{source}: head_dim {head_dim} is not supported (even, at most {MAX_HEAD_DIM})"
            )
        act = get("hidden_act", V.check_str) or get("hidden_activation", V.check_str, default="silu")
        if act not in ("silu", "swish"):
            raise UnsupportedArchitecture(f"{source}: hidden_act {act!r} is not supported; only silu is")

        if arch == "Qwen2ForCausalLM":
            qkv_bias, o_bias, mlp_bias = True, False, False
        else:
            qkv_bias = o_bias = get("attention_bias", V.check_bool, default=False)
            mlp_bias = get("mlp_bias", V.check_bool, default=False)

        window = get("sliding_window", V.check_int, hi=MAX_POSITIONS)
        if arch == "Qwen2ForCausalLM" and not get("use_sliding_window", V.check_bool, default=False):
            window = None

        bos = token_ids("bos_token_id")
        if len(bos) > 1:
            where = generation_source if generation.get("bos_token_id") is not None else source
            raise CheckpointError(f"{where}: bos_token_id must be one token id, got {V.short_repr(list(bos))}")
        return cls(
            architecture=arch,
            dim=dim,
            n_layers=need("num_hidden_layers", MAX_LAYERS),
            n_heads=n_heads,
            n_kv_heads=n_kv,
            head_dim=head_dim,
            ffn_dim=need("intermediate_size", MAX_DIM * 8),
            vocab_size=need("vocab_size", MAX_VOCAB),
            rms_eps=get(
                "rms_norm_eps",
                V.check_float,
                1e-6 if arch == "Qwen2ForCausalLM" else 1e-5,
                lo=0.0,
                hi=1.0,
                lo_open=True,
            ),
            rope_theta=get("rope_theta", V.check_float, 10000.0, lo=0.0, hi=1e30, lo_open=True),
            rope_scaling=_rope_scaling(raw.get("rope_scaling"), f"{source}: rope_scaling"),
            max_position_embeddings=get("max_position_embeddings", V.check_int, 2048, hi=MAX_POSITIONS),
            tie_word_embeddings=get("tie_word_embeddings", V.check_bool, default=False),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
            sliding_window=window,
            bos_token_id=bos[0] if bos else None,
            eos_token_ids=token_ids("eos_token_id"),
            torch_dtype=get("torch_dtype", V.check_str) or get("dtype", V.check_str),
            raw=dict(raw),
        )

    def summary(self) -> str:
        return (
            f"{self.architecture}: {self.n_layers} layers, dim {self.dim}, {self.n_heads} heads "
            f"({self.n_kv_heads} kv) x {self.head_dim}, ffn {self.ffn_dim}, vocab {self.vocab_size}, "
            f"{self.n_params / 1e6:.0f}M parameters"
        )


def _architecture(raw: dict[str, Any], source: str) -> str:
    archs = raw.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise CheckpointError(f"{source}: architectures must be a list of names, got {V.short_repr(archs)}")
    for arch in archs:
        if arch in SUPPORTED_ARCHITECTURES:
            return arch
    model_type = raw.get("model_type")
    if not archs and isinstance(model_type, str) and model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    named = ", ".join(archs) or f"model_type {V.short_repr(model_type)}"
    raise UnsupportedArchitecture(
        f"{source}: architecture {named} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def _rope_scaling(value: Any, what: str) -> dict[str, Any] | None:
    """llama3 scaling with its numbers checked (None for none or the default)."""
    if value is None:
        return None
    value = V.check_mapping(value, what)
    kind = value.get("rope_type", value.get("type"))
    if kind is not None:
        V.check_str(kind, f"{what}.rope_type")
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise UnsupportedArchitecture(f"{what} of type {V.short_repr(kind)} is not supported; supported: llama3")
    if value.get("factor") is None:
        raise CheckpointError(f"{what}: factor is missing")

    def factor(key: str, default: float | None = None) -> float:
        return V.check_float(value.get(key, default), f"{what}.{key}", lo=0.0, hi=1e6, lo_open=True)

    checked = {
        "factor": factor("factor"),
        "low_freq_factor": factor("low_freq_factor", 1.0),
        "high_freq_factor": factor("high_freq_factor", 4.0),
        "original_max_position_embeddings": V.check_int(
            value.get("original_max_position_embeddings", 8192),
            f"{what}.original_max_position_embeddings",
            hi=MAX_POSITIONS,
        ),
    }
    if checked["high_freq_factor"] <= checked["low_freq_factor"]:
        raise CheckpointError(f"{what}: high_freq_factor must be above low_freq_factor")
    return {**value, "rope_type": "llama3", **checked}
