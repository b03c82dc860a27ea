"""Running a loaded model: a plain forward pass, and one cached step that decoding builds on."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.cache import KVCache
from gatekv_jax.models.config import ModelConfig
from gatekv_jax.models.loading import Model
from gatekv_jax.models.transformer import Decoder


@functools.lru_cache(maxsize=32)
def _compiled_apply(config: ModelConfig, dtype: Any):
    module = Decoder(config, dtype=dtype)

    def apply(params, tokens, positions, cache):
        return module.apply({"params": params}, tokens, positions, cache)

    return jax.jit(apply, donate_argnums=(3,))


def check_tokens(tokens: Any, vocab_size: int) -> np.ndarray:
    """Validate token ids on the host: int32 [B, T] within the vocabulary."""
    array = np.asarray(tokens)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"tokens must have shape [batch, length] with both > 0, got {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {array.dtype}")
    bad = array[(array < 0) | (array >= vocab_size)]
    if bad.size:
        raise ValueError(f"token id {int(bad[0])} is outside the vocabulary [0, {vocab_size})")
    return array.astype(np.int32)


def padded_positions(batch: int, length: int, lengths: Any = None) -> np.ndarray:
    """Positions [B, T] = 0..T-1 per row, -1 past each row's length (right padding)."""
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy()
    if lengths is None:
        return positions
    lengths = np.asarray(lengths)
    if lengths.shape != (batch,) or (lengths < 1).any() or (lengths > length).any():
        raise ValueError(f"lengths must be {batch} values in [1, {length}], got {lengths.tolist()}")
    positions[positions >= lengths[:, None]] = -1
    return positions


def apply_model(model: Model, tokens: Any, positions: Any, cache: KVCache | None = None):
    """One jitted model call: `(logits [B, T, V] float32, cache)`; the cache argument is donated."""
    fn = _compiled_apply(model.config, jnp.dtype(model.dtype))
    if model.mesh is None:
        return fn(model.params, tokens, positions, cache)
    with jax.set_mesh(model.mesh):
        return fn(model.params, tokens, positions, cache)


def forward(model: Model, tokens: Any, lengths: Any = None) -> jax.Array:
    """Plain causal forward: int tokens [B, T] -> float32 logits [B, T, V] (no cache to manage).

    `lengths` [B] marks right padding for rows shorter than T; logits at padded positions are undefined.
    """
    array = check_tokens(tokens, model.config.vocab_size)
    positions = padded_positions(*array.shape, lengths)
    logits, _ = apply_model(model, jnp.asarray(array), jnp.asarray(positions))
    return logits
