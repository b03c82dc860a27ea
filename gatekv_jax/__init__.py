"""gatekv_jax: Fast KVzip KV-cache eviction for JAX/Flax decoders."""

from gatekv_jax.cache import KVCache, LayerCache, init_cache
from gatekv_jax.gate import gate_scores, init_gates, load_gates, pretrained_gates, save_gates
from gatekv_jax.inference import (CompressedContext, apply_model, continuation_log_probs, continuation_nll, forward,
                                  generate, prefill)
from gatekv_jax.models import Decoder, Model, ModelConfig, init_params, load_model, load_tokenizer
from gatekv_jax.policy import EvictionPolicy
from gatekv_jax.sharding import LOGICAL_RULES, make_mesh

__all__ = [
    "CompressedContext", "Decoder", "EvictionPolicy", "KVCache", "LOGICAL_RULES", "LayerCache", "Model",
    "ModelConfig", "apply_model", "continuation_log_probs", "continuation_nll", "forward", "gate_scores", "generate",
    "init_cache", "init_gates", "init_params", "load_gates", "load_model", "load_tokenizer", "make_mesh", "prefill",
    "pretrained_gates", "save_gates",
]
