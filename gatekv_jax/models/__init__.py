"""Decoders (Qwen2, Qwen3, Gemma3), their configuration and loading."""

from gatekv_jax.models.config import ModelConfig, RopeConfig
from gatekv_jax.models.loading import Model, init_params, load_model, load_tokenizer
from gatekv_jax.models.transformer import Decoder

__all__ = ["Decoder", "Model", "ModelConfig", "RopeConfig", "init_params", "load_model", "load_tokenizer"]
