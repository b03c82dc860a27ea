"""Plain model calls: one jitted decoder application, and a causal forward without a cache to manage."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from gatekv_jax.engine.inputs import check_tokens, padded_positions
from gatekv_jax.kv.cache import KVCache
from gatekv_jax.kv.scorers import ScorerSpec
from gatekv_jax.models.config import ModelConfig
from gatekv_jax.models.decoder import Decoder
from gatekv_jax.models.loading import Model


@functools.partial(jax.jit, static_argnames=("config", "dtype"), donate_argnames=("cache",))
def _apply(params: dict, tokens: jax.Array, positions: jax.Array, cache: KVCache | None, *, config: ModelConfig,
           dtype: Any):
    return Decoder(config, dtype=dtype, scorer=ScorerSpec()).apply({"params": params}, tokens, positions, cache)


def apply_model(model: Model, tokens: Any, positions: Any, cache: KVCache | None = None):
    """One jitted model call: `(logits [B, T, V] float32, cache)`; the `cache` argument is donated.

    tokens [B, T] int; positions [B, T] int (-1 = padding, which takes no slot). Tokens past the
    cache's capacity are dropped: size the cache for everything you append.
    """
    return model.run(_apply, model.params, tokens, positions, cache, config=model.config,
                     dtype=jnp.dtype(model.dtype))


def forward(model: Model, tokens: Any, lengths: Any = None) -> jax.Array:
    """Plain causal forward: int tokens [B, T] -> float32 logits [B, T, V] (no cache to manage).

    `lengths` [B] marks right padding for rows shorter than T; logits at padded positions are undefined.
    """
    array = check_tokens(tokens, model.config.vocab_size)
    positions = padded_positions(*array.shape, lengths)
    logits, _ = apply_model(model, jnp.asarray(array), jnp.asarray(positions))
    return logits
