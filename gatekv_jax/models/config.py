"""Model configuration: one frozen, hashable description of Qwen2, Qwen3 and Gemma3 decoders.

`ModelConfig.from_hf` reads transformers 5 configs (objects, dicts or a `config.json` path) and
rejects anything the Flax decoder does not implement with a ValueError naming the option.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from gatekv_jax.utils.files import read_json

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "gemma3_text", "gemma3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "yarn")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one layer type, as transformers' `rope_parameters` describe it."""

    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    @classmethod
    def from_hf(cls, params: dict[str, Any], max_position_embeddings: int) -> "RopeConfig":
        params = dict(params)
        rope_type = params.pop("rope_type", params.pop("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"unsupported rope_type {rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}")
        partial = params.pop("partial_rotary_factor", 1.0)
        if partial not in (None, 1.0):
            raise ValueError(f"unsupported partial_rotary_factor {partial!r} (only 1.0)")
        theta = params.pop("rope_theta", None)
        if theta is None:
            raise ValueError(f"rope parameters {params!r} have no rope_theta")
        factor = params.pop("factor", None)
        original = params.pop("original_max_position_embeddings", None)
        if rope_type == "yarn" and original is None:
            original = max_position_embeddings
        if factor is None:
            factor = max_position_embeddings / original if rope_type == "yarn" else 1.0
        known = {f.name for f in dataclasses.fields(cls)}
        extras = {k: v for k, v in params.items() if k in known and v is not None}
        return cls(theta=float(theta), rope_type=rope_type, factor=float(factor),
                   original_max_position_embeddings=original, **extras)

    def inverse_frequencies(self, head_dim: int) -> tuple[np.ndarray, float]:
        """`(inv_freq [H/2] float32, attention_scaling)` exactly as transformers computes them."""
        exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim
        base_freqs = np.float32(self.theta) ** exponents  # [H/2]
        inv_freq = (1.0 / base_freqs).astype(np.float32)
        if self.rope_type == "default":
            return inv_freq, 1.0
        if self.rope_type == "linear":
            return (inv_freq / np.float32(self.factor)).astype(np.float32), 1.0
        return self._yarn(base_freqs, head_dim)

    def _yarn(self, base_freqs: np.ndarray, head_dim: int) -> tuple[np.ndarray, float]:
        def mscale_of(scale: float, mscale: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

        attention_factor = self.attention_factor
        if attention_factor is None:
            if self.mscale and self.mscale_all_dim:
                attention_factor = mscale_of(self.factor, self.mscale) / mscale_of(self.factor, self.mscale_all_dim)
            else:
                attention_factor = mscale_of(self.factor)

        def correction_dim(rotations: float) -> float:
            return (head_dim * math.log(self.original_max_position_embeddings / (rotations * 2 * math.pi))) / (
                2 * math.log(self.theta))

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, head_dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
        extrapolation_weight = (1 - ramp).astype(np.float32)
        extrapolated = 1.0 / base_freqs
        interpolated = 1.0 / (np.float32(self.factor) * base_freqs)
        inv_freq = interpolated * (1 - extrapolation_weight) + extrapolated * extrapolation_weight
        return inv_freq.astype(np.float32), float(attention_factor)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs; every field is hashable so the config can be a module attribute."""

    model_type: str  # "qwen2" | "qwen3" | "gemma3"
    vocab_size: int
    hidden_size: int  # D
    intermediate_size: int  # F
    num_layers: int  # L
    num_heads: int  # N
    num_kv_heads: int  # K
    head_dim: int  # H
    layer_types: tuple[str, ...]
    rope_full: RopeConfig
    rope_sliding: RopeConfig | None = None
    sliding_window: int | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    output_bias: bool = False
    qk_norm: bool = False
    norm_weight_offset: float = 0.0  # Gemma RMSNorm scales by (1 + w)
    embed_scale: float | None = None  # Gemma multiplies embeddings by sqrt(D)
    sandwich_norms: bool = False  # Gemma post-attention / pre- and post-feed-forward norms
    query_scale: float = 1.0
    final_logit_softcap: float | None = None
    tie_word_embeddings: bool = False
    activation: str = "silu"  # "silu" | "gelu_tanh"
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def num_groups(self) -> int:
        """G: query heads per KV head."""
        return self.num_heads // self.num_kv_heads

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING_ATTENTION

    def window_of(self, layer: int) -> int | None:
        """The sliding window of `layer` (a key is seen while `q_pos - k_pos < window`), or None."""
        return self.sliding_window if self.is_sliding(layer) else None

    def rope_of(self, layer: int) -> RopeConfig:
        if self.is_sliding(layer) and self.rope_sliding is not None:
            return self.rope_sliding
        return self.rope_full

    @property
    def full_attention_layers(self) -> tuple[int, ...]:
        """Full-attention layers: the ones Fast KVzip gates."""
        return tuple(i for i in range(self.num_layers) if not self.is_sliding(i))

    @classmethod
    def from_hf(cls, config: Any) -> "ModelConfig":
        """Build from a transformers config object, a config dict, or a path to `config.json` / its folder."""
        hf = _as_transformers_config(config)
        model_type = hf.model_type
        if model_type == "gemma3":
            hf = hf.text_config
            model_type = hf.model_type
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported model_type {model_type!r}; supported: {SUPPORTED_MODEL_TYPES}")
        return _READERS[model_type](hf)


def _as_transformers_config(config: Any):
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"no config.json at {os.fspath(config)!r}")
        config = read_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"expected a transformers config, dict or path, got {type(config).__name__}")
    config = dict(config)
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise ValueError("config has no model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {SUPPORTED_MODEL_TYPES}")
    return AutoConfig.for_model(model_type, **config)


def _eos_ids(hf) -> tuple[int, ...]:
    eos = getattr(hf, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(int(e) for e in eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def _layer_types(hf) -> tuple[str, ...]:
    layer_types = tuple(getattr(hf, "layer_types", None) or [FULL_ATTENTION] * hf.num_hidden_layers)
    unknown = sorted(set(layer_types) - {FULL_ATTENTION, SLIDING_ATTENTION})
    if unknown:
        raise ValueError(f"unsupported layer_types {unknown}")
    if len(layer_types) != hf.num_hidden_layers:
        raise ValueError(f"layer_types has {len(layer_types)} entries for {hf.num_hidden_layers} layers")
    if SLIDING_ATTENTION in layer_types and not getattr(hf, "sliding_window", None):
        raise ValueError("sliding_attention layers without a sliding_window")
    return layer_types


def _rope_parameters(hf) -> dict[str, Any]:
    params = getattr(hf, "rope_parameters", None)
    if not params:
        raise ValueError("config has no rope_parameters")
    return params


def _common(hf, layer_types: tuple[str, ...]) -> dict[str, Any]:
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    if hf.num_attention_heads % hf.num_key_value_heads:
        raise ValueError(f"num_attention_heads {hf.num_attention_heads} is not a multiple of "
                         f"num_key_value_heads {hf.num_key_value_heads}")
    return dict(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
        num_kv_heads=hf.num_key_value_heads, head_dim=head_dim, layer_types=layer_types,
        sliding_window=hf.sliding_window if SLIDING_ATTENTION in layer_types else None,
        rms_norm_eps=float(hf.rms_norm_eps), tie_word_embeddings=bool(hf.tie_word_embeddings),
        max_position_embeddings=hf.max_position_embeddings, bos_token_id=hf.bos_token_id,
        eos_token_ids=_eos_ids(hf),
    )


def _check_activation(name: str, supported: dict[str, str]) -> str:
    if name not in supported:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(supported)}")
    return supported[name]


def _read_qwen(hf) -> ModelConfig:
    layer_types = _layer_types(hf)
    rope = RopeConfig.from_hf(_rope_parameters(hf), hf.max_position_embeddings)
    is_qwen3 = hf.model_type == "qwen3"
    attention_bias = bool(getattr(hf, "attention_bias", False))
    return ModelConfig(
        model_type=hf.model_type, rope_full=rope, **_common(hf, layer_types),
        qkv_bias=attention_bias if is_qwen3 else True,
        output_bias=attention_bias if is_qwen3 else False,
        qk_norm=is_qwen3, query_scale=_head_scale(hf),
        activation=_check_activation(hf.hidden_act, {"silu": "silu"}),
    )


def _head_scale(hf) -> float:
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    return head_dim ** -0.5


def _read_gemma3(hf) -> ModelConfig:
    if getattr(hf, "use_bidirectional_attention", False):
        raise ValueError("unsupported option use_bidirectional_attention=True")
    layer_types = _layer_types(hf)
    params = _rope_parameters(hf)
    rope_full = RopeConfig.from_hf(params[FULL_ATTENTION], hf.max_position_embeddings)
    rope_sliding = RopeConfig.from_hf(params[SLIDING_ATTENTION], hf.max_position_embeddings)
    attention_bias = bool(getattr(hf, "attention_bias", False))
    return ModelConfig(
        model_type="gemma3", rope_full=rope_full, rope_sliding=rope_sliding, **_common(hf, layer_types),
        qkv_bias=attention_bias, output_bias=attention_bias, qk_norm=True, norm_weight_offset=1.0,
        embed_scale=hf.hidden_size ** 0.5, sandwich_norms=True,
        query_scale=float(hf.query_pre_attn_scalar) ** -0.5,
        final_logit_softcap=hf.final_logit_softcapping,  # attn_logit_softcapping: unused by the reference
        activation=_check_activation(hf.hidden_activation, {"gelu_pytorch_tanh": "gelu_tanh"}),
    )


_READERS = {"qwen2": _read_qwen, "qwen3": _read_qwen, "gemma3_text": _read_gemma3}
