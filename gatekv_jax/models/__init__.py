"""Decoders (Qwen2, Qwen3, Gemma3): configuration, layers, the Flax module, checkpoint loading."""

from gatekv_jax.models.config import ModelConfig, RopeConfig
from gatekv_jax.models.decoder import CacheScorer, Decoder
from gatekv_jax.models.loading import Model, load_model, load_tokenizer
from gatekv_jax.models.params import init_params

__all__ = ["CacheScorer", "Decoder", "Model", "ModelConfig", "RopeConfig", "init_params", "load_model",
           "load_tokenizer"]
