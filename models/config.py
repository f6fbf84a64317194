"""A model's hyper-parameters, read from a Hugging Face `config.json`.

Llama, Mistral and Qwen2 checkpoints share one forward pass; what differs is recorded here:
Qwen2 has q/k/v biases, Llama may declare `attention_bias` / `mlp_bias`, Mistral a sliding
window (honoured by capping the context at the window), and any of them may tie the
output projection to the embeddings or scale their rotary frequencies llama3-style.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shaderbay.errors import CheckpointError, UnsupportedArchitecture

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # q/k/v projections have biases (Qwen2; Llama with attention_bias)
    o_bias: bool = False  # the output projection has a bias (Llama with attention_bias)
    mlp_bias: bool = False  # gate/up/down have biases (Llama with mlp_bias)
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

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

    # --- reading -----------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        """The config of a checkpoint directory (config.json, plus generation_config.json's EOS ids)."""
        path = Path(path)
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(f"{cfg_path}: not found; a checkpoint directory needs a config.json")
        raw = _read_json(cfg_path)
        gen_path = path / "generation_config.json"
        generation = _read_json(gen_path) if gen_path.is_file() else {}
        return cls.from_dict(raw, source=str(cfg_path), generation=generation)

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], source: str = "config.json", generation: dict[str, Any] | None = None
    ) -> ModelConfig:
        if not isinstance(raw, dict):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        arch = _architecture(raw, source)

        def need(key: str, *alts: str) -> int:
            for k in (key, *alts):
                if raw.get(k) is not None:
                    value = raw[k]
                    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                        raise CheckpointError(f"{source}: {k} must be a positive integer, got {value!r}")
                    return value
            raise CheckpointError(f"{source}: {key} is missing")

        dim = need("hidden_size")
        n_heads = need("num_attention_heads")
        n_kv = raw.get("num_key_value_heads") or n_heads
        head_dim = raw.get("head_dim") or dim // n_heads
        if n_heads % n_kv:
            raise CheckpointError(
                f"{source}: num_attention_heads ({n_heads}) is not a multiple of num_key_value_heads ({n_kv})"
            )
        if not raw.get("head_dim") and dim % n_heads:
            raise CheckpointError(f"{source}: hidden_size {dim} is not divisible by num_attention_heads {n_heads}")
        if head_dim % 2 or head_dim > 256:
            raise UnsupportedArchitecture(f"{source}: head_dim {head_dim} is not supported (even, at most 256)")
        act = raw.get("hidden_act", raw.get("hidden_activation", "silu"))
        if act not in ("silu", "swish"):
            raise UnsupportedArchitecture(f"{source}: hidden_act {act!r} is not supported; only silu is")

        scaling = raw.get("rope_scaling")
        if scaling:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind not in (None, "default", "llama3"):
                raise UnsupportedArchitecture(
                    f"{source}: rope_scaling of type {kind!r} is not supported; supported: llama3"
                )
            if kind in (None, "default"):
                scaling = None

        if arch == "Qwen2ForCausalLM":
            qkv_bias, o_bias, mlp_bias = True, False, False
        else:
            qkv_bias = o_bias = bool(raw.get("attention_bias", False))
            mlp_bias = bool(raw.get("mlp_bias", False))

        window = raw.get("sliding_window")
        if arch == "Qwen2ForCausalLM" and not raw.get("use_sliding_window", False):
            window = None

        generation = generation or {}
        eos = generation.get("eos_token_id", raw.get("eos_token_id"))
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None)
        bos = generation.get("bos_token_id", raw.get("bos_token_id"))

        return cls(
            architecture=arch,
            dim=dim,
            n_layers=need("num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=int(n_kv),
            head_dim=int(head_dim),
            ffn_dim=need("intermediate_size"),
            vocab_size=need("vocab_size"),
            rms_eps=float(raw.get("rms_norm_eps", 1e-6 if arch == "Qwen2ForCausalLM" else 1e-5)),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            rope_scaling=dict(scaling) if scaling else None,
            max_position_embeddings=int(raw.get("max_position_embeddings") or 2048),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
            sliding_window=int(window) if window else None,
            bos_token_id=int(bos) if bos is not None else None,
            eos_token_ids=eos_ids,
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
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
    for arch in archs:
        if arch in SUPPORTED_ARCHITECTURES:
            return arch
    if not archs and raw.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[raw["model_type"]]
    named = ", ".join(map(str, archs)) or f"model_type {raw.get('model_type')!r}"
    raise UnsupportedArchitecture(
        f"{source}: architecture {named} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot be read as JSON ({exc})") from None
