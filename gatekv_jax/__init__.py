"""gatekv_jax: Fast KVzip KV-cache eviction for JAX/Flax decoders.

The user-facing API, by layer; lower layers stay importable from their subpackages
(`gatekv_jax.models`, `.kv`, `.engine`, `.training`, `.evaluation`, `.utils`).
"""

import sys as _sys
import types as _types

# Engine: forward, compressed prefill, scoring and generation under a policy.
from gatekv_jax.engine import (
    RepeatPrompts,
    Sampling,
    TeacherMemo,
    apply_model,
    continuation_log_probs,
    continuation_nll,
    decode_continuation,
    decoder_step,
    evict_cache,
    forward,
    generate,
    prefill,
    teacher_scores,
)

# KV core: the cache, the eviction policy, the Fast KVzip gates and their files.
from gatekv_jax.kv import (
    LEVELS,
    SCORERS,
    CompressedContext,
    EvictionPolicy,
    KVCache,
    LayerCache,
    download_official_gates,
    gate_scores,
    import_official_gates,
    init_cache,
    init_gates,
    load_gates,
    pretrained_gates,
    save_gates,
)

# Models: configs, loading, the Flax decoder.
from gatekv_jax.models import Decoder, Model, ModelConfig, init_params, load_model, load_tokenizer

# Training: the gate-training pipeline (`python -m gatekv_jax.train`).
from gatekv_jax.training.pipeline import train_gates

# Sharding: device meshes and the logical axis rules.
from gatekv_jax.utils.sharding import LOGICAL_RULES, make_mesh

__all__ = [
    "Decoder", "Model", "ModelConfig", "init_params", "load_model", "load_tokenizer",
    "LEVELS", "SCORERS", "CompressedContext", "EvictionPolicy", "KVCache", "LayerCache",
    "download_official_gates", "gate_scores", "import_official_gates", "init_cache", "init_gates",
    "load_gates", "pretrained_gates", "save_gates",
    "RepeatPrompts", "Sampling", "TeacherMemo", "apply_model", "continuation_log_probs", "continuation_nll",
    "decode_continuation", "decoder_step", "evict_cache", "forward", "generate", "prefill", "teacher_scores",
    "train_gates",
    "LOGICAL_RULES", "make_mesh",
]


class _Package(_types.ModuleType):
    """The package module: importing a submodule never rebinds a public name (the `generate` CLI
    module must not replace the `generate` function; import CLIs as `from gatekv_jax.generate import main`)."""

    def __setattr__(self, name, value):
        if isinstance(value, _types.ModuleType) and name in __all__:
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
