"""Plain model calls: one jitted decoder application, and a causal forward without a cache to manage."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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

    tokens [B, T] int; positions [B, T] int (-1 = padding, which takes no slot). Checked on the
    host first: ids within the vocabulary, matching shapes, the cache's batch and layer count, and
    room in every layer for the new tokens; after the call, that the real tokens' logits are
    finite. Not checked (it would read the whole cache back): that positions are new, i.e. past
    those already stored in each row.
    """
    array = check_tokens(tokens, model.config.vocab_size)
    where = np.asarray(positions)
    if where.shape != array.shape or not np.issubdtype(where.dtype, np.integer) or (where < -1).any():
        raise ValueError(f"positions must be integers >= -1 shaped like tokens {array.shape}, got "
                         f"{where.dtype} {where.shape}")
    if cache is not None:
        _check_room(cache, model.config.num_layers, (where >= 0).sum(axis=1))
    logits, cache = model.run(_apply, model.params, jnp.asarray(array), jnp.asarray(where, jnp.int32), cache,
                              config=model.config, dtype=jnp.dtype(model.dtype))
    if not bool(_finite_where(logits, jnp.asarray(where >= 0))):
        raise FloatingPointError("non-finite logits: the model's activations overflow (float16? use bfloat16 or "
                                 "float32), or its parameters hold NaN/inf")
    return logits, cache


@jax.jit
def _finite_where(logits: jax.Array, real: jax.Array) -> jax.Array:
    """Whether every logit [B, T, V] of a real token (real [B, T]) is finite; padding is not checked."""
    return (jnp.isfinite(logits).all(axis=-1) | ~real).all()


def _check_room(cache: KVCache, num_layers: int, new_tokens: np.ndarray) -> None:
    """Raise unless the cache has the tokens' batch and room for `new_tokens` [B] in every layer."""
    if len(cache.layers) != num_layers:
        raise ValueError(f"cache has {len(cache.layers)} layers, the model {num_layers}")
    batch = cache.layers[0].lengths.shape[0]
    if batch != new_tokens.shape[0]:
        raise ValueError(f"tokens have {new_tokens.shape[0]} rows, the cache {batch}")
    for i, layer in enumerate(cache.layers):
        filled = np.asarray(layer.lengths).max(axis=1)  # [B] a few ints per layer
        over = filled + new_tokens > layer.capacity
        if over.any():
            row = int(np.argmax(over))
            raise ValueError(f"layer {i} holds {int(filled[row])} of {layer.capacity} slots in row {row}; "
                             f"{int(new_tokens[row])} more tokens do not fit (make a larger cache, or evict first)")


def forward(model: Model, tokens: Any, lengths: Any = None) -> jax.Array:
    """Plain causal forward: int tokens [B, T] -> float32 logits [B, T, V] (no cache to manage).

    `lengths` [B] marks right padding for rows shorter than T; logits at padded positions are undefined.
    """
    array = check_tokens(tokens, model.config.vocab_size)
    logits, _ = apply_model(model, array, padded_positions(*array.shape, lengths))
    return logits
