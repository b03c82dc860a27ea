"""Pure building blocks for your own jitted loops: a decoder step that scores what it appends, and eviction.

Neither does host work, so both run inside a user-written `jax.jit` (config and policy are
hashable: close over them or pass them as static arguments). The cache is an argument and a
return value; its shapes never change, so a loop over them compiles once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gatekv_jax.engine import plan
from gatekv_jax.kv.cache import KVCache
from gatekv_jax.kv.eviction import Allocation, evict
from gatekv_jax.kv.policy import EvictionPolicy
from gatekv_jax.models.config import ModelConfig
from gatekv_jax.models.decoder import Decoder


def decoder_step(params: dict, gates: dict | None, cache: KVCache, tokens: jax.Array, positions: jax.Array, *,
                 config: ModelConfig, policy: EvictionPolicy, dtype: Any = jnp.float32) -> tuple[jax.Array, KVCache]:
    """Append tokens [B, T] at positions [B, T] (-1 = padding, which takes no slot) to `cache`, each
    new slot scored by `policy.scorer`: `(logits [B, T, V] float32, cache)`.

    `gates` are needed by the "gate" scorer only. Tokens past a layer's capacity are dropped (no
    check is possible inside jit): size the cache, or call `evict_cache` before it fills.
    """
    module = Decoder(config, dtype=dtype, scorer=plan.scorer_spec(policy))
    return module.apply({"params": params}, tokens, positions, cache, gates)


def evict_cache(cache: KVCache, config: ModelConfig, policy: EvictionPolicy, keep: int | jax.Array, *,
                protect_before: int | jax.Array | None = None, recent: int | jax.Array | None = None) -> KVCache:
    """Every gated layer cut back to `keep` slots per head (an int, or [B] per row), spread by
    `policy.level`; sliding layers cut to their window.

    Never evicted: positions below `protect_before` (default `policy.sink`) and each row's `recent`
    newest positions (default `policy.decode_recent`). At level "global" a head may keep up to its
    layer's capacity.
    """
    batch = cache.layers[0].lengths.shape[0]

    def per_row(value) -> jax.Array:
        return jnp.broadcast_to(jnp.asarray(value, jnp.int32), (batch,))

    gated = config.full_attention_layers
    head_cap = cache.layers[gated[0]].capacity if policy.level == "global" and gated else None
    allocation = Allocation(level=policy.level, head_cap=head_cap, token_pool=policy.token_pool,
                            token_rank=policy.token_ranking)
    return evict(cache, config, per_row(keep), per_row(policy.sink if protect_before is None else protect_before),
                 per_row(policy.decode_recent if recent is None else recent), allocation)
