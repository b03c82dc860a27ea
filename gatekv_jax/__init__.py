"""gatekv_jax: Fast KVzip KV-cache eviction for JAX/Flax decoders."""

from gatekv_jax.cache import KVCache, LayerCache, init_cache
from gatekv_jax.inference import apply_model, forward
from gatekv_jax.models import Decoder, Model, ModelConfig, init_params, load_model, load_tokenizer
from gatekv_jax.sharding import LOGICAL_RULES, make_mesh

__all__ = [
    "Decoder", "KVCache", "LOGICAL_RULES", "LayerCache", "Model", "ModelConfig", "apply_model", "forward",
    "init_cache", "init_params", "load_model", "load_tokenizer", "make_mesh",
]
