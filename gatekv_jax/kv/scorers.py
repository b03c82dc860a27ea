"""Scorers: they only fill the per-slot score array that eviction ranks (higher = keep).

Two kinds of signal:
- at append, each new token gets a score: `gate` (Fast KVzip), `streaming` (its position: recency),
  `random`; the attention-based scorers start at 0;
- after attention, `snapkv` and `h2o` update every slot's score from the attention weights, and
  `kvzip` (the teacher's repeat pass, see `engine/teacher.py`) keeps the maximum weight each slot
  received.
Sliding-window layers always score by position: they keep exactly their recent window.
A `ScorerSpec` is the `CacheScorer` the decoder is built with (`gatekv_jax.models.decoder`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gatekv_jax.kv.gate import gate_scores


@dataclasses.dataclass(frozen=True)
class ScorerSpec:
    """A scorer's static settings (a hashable module attribute) and its two scoring rules."""

    name: str = "full"
    observation_window: int = 32
    pool_kernel: int = 7
    seed: int = 0

    def new_token_scores(self, layer: int, sliding: bool, hidden: jax.Array, positions: jax.Array,
                         num_kv_heads: int, layer_params: dict | None) -> jax.Array:
        """Scores of the tokens being appended: hidden [B, T, D], positions [B, T] -> [B, T, K] float32."""
        batch, length = positions.shape
        shape = (batch, length, num_kv_heads)
        if sliding or self.name == "streaming":
            return jnp.broadcast_to(positions.astype(jnp.float32)[:, :, None], shape)
        if self.name == "gate":
            if layer_params is None:
                raise ValueError(f"scorer 'gate' needs gates for layer {layer}")
            return gate_scores(layer_params, hidden)
        if self.name == "random":
            key = jax.random.fold_in(jax.random.key(self.seed), layer)
            per_position = jax.vmap(lambda p: jax.random.uniform(jax.random.fold_in(key, p), (num_kv_heads,)))
            return per_position(positions.reshape(-1)).reshape(shape)
        return jnp.zeros(shape, jnp.float32)

    def updated_scores(self, sliding: bool, scores: jax.Array, weights: jax.Array,
                       query_positions: jax.Array) -> jax.Array:
        """Attention-based updates: scores [B, K, S], weights [B, K, T, G, S] -> new scores [B, K, S]."""
        if sliding or self.name not in ("snapkv", "h2o", "kvzip"):
            return scores
        if self.name == "kvzip":  # the teacher: max attention over queries and the query group
            return jnp.maximum(scores, weights.max(axis=(2, 3)))
        if self.name == "h2o":
            return scores + weights.sum(axis=(2, 3))
        length = query_positions.shape[1]
        if length > 1:  # prefill chunk: the observation window is the row's last queries
            last = query_positions.max(axis=1, keepdims=True)  # [B, 1]
            observed = (query_positions > last - self.observation_window) & (query_positions >= 0)  # [B, T]
            attention = (weights * observed[:, None, :, None, None]).sum(axis=(2, 3))  # [B, K, S]
        else:  # decoding: every new query adds its attention
            attention = weights.sum(axis=(2, 3))
        pooled = jax.lax.reduce_window(attention, -jnp.inf, jax.lax.max, (1, 1, self.pool_kernel), (1, 1, 1),
                                       "SAME")
        return pooled if length > 1 else scores + pooled
