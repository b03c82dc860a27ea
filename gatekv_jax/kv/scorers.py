"""Scorers: they only fill the per-slot score array that eviction ranks (higher = keep).

Three kinds of signal:
- at append, each new token gets a score: `gate` (Fast KVzip), `streaming` (its position: recency),
  `random`; the others start at 0;
- after attention, `snapkv` and `h2o` update every slot's score from the attention weights, and
  `kvzip` (the teacher's repeat pass, see `engine/teacher.py`) keeps the maximum weight each slot
  received;
- after attention, `keydiff`, `knorm` and `expected_attention` rescore the whole cache from what
  it holds (keys, values) and, for `expected_attention`, the call's queries, so the scores at an
  eviction describe the cache as it is then.
Sliding-window layers always score by position: they keep exactly their recent window.
A `ScorerSpec` is the `CacheScorer` the decoder is built with (`gatekv_jax.models.decoder`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gatekv_jax.kv.gate import gate_scores
from gatekv_jax.models.decoder import AttentionStep
from gatekv_jax.models.layers import MASKED_LOGIT, mean_rotation, rotate_half

# Future positions whose RoPE rotation `expected_attention` averages (the Expected Attention paper's 512).
EXPECTED_ATTENTION_FUTURE = 512
_EPS = 1e-8
# Scorers whose updated scores come from the attention weights of each call.
ATTENTION_SCORERS = ("kvzip", "h2o", "snapkv")


@dataclasses.dataclass(frozen=True)
class ScorerSpec:
    """A scorer's static settings (a hashable module attribute) and its two scoring rules."""

    name: str = "full"
    observation_window: int = 32
    pool_kernel: int = 7
    seed: int = 0
    sink: int = 4  # `expected_attention` leaves queries at positions < sink out of its statistics

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

    def needs_attention_weights(self, sliding: bool) -> bool:
        """Whether `updated_scores` reads the attention weights: the scorers that learn from attention."""
        return not sliding and self.name in ATTENTION_SCORERS

    def updated_scores(self, sliding: bool, cache, step: AttentionStep) -> jax.Array:
        """Slot scores [B, K, S] of a layer cache (the call's tokens appended) after attention `step`."""
        scores = cache.scores
        if sliding:
            return scores
        if self.name == "keydiff":
            return keydiff_scores(cache.keys, cache.positions)
        if self.name == "knorm":
            return knorm_scores(cache.keys)
        if self.name == "expected_attention":
            return expected_attention_scores(cache.keys, cache.values, cache.positions, scores, step, self.sink)
        weights, query_positions = step.weights, step.positions
        if self.name == "kvzip":  # the teacher: max attention over queries and the query group
            return jnp.maximum(scores, weights.max(axis=(2, 3)))
        if self.name == "h2o":
            return scores + weights.sum(axis=(2, 3))
        if self.name != "snapkv":  # scored once, at append (gate, streaming, random) or never (full)
            return scores
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


def keydiff_scores(keys: jax.Array, positions: jax.Array) -> jax.Array:
    """KeyDiff (arXiv 2504.15364): keys [B, K, S, H] as cached (after RoPE and any key norm),
    positions [B, K, S] -> [B, K, S], minus the cosine similarity of each key to its head's anchor,
    the mean of the L2-normalised keys of the head's filled slots. Keys unlike the rest score high.

    The anchor is taken over the keys the head holds when it is scored: in chunked prefill, the
    kept keys plus the new chunk, not the whole context (one eviction at the end sees them all).
    """
    keys = keys.astype(jnp.float32)
    norms = jnp.linalg.norm(keys, axis=-1)  # [B, K, S]
    units = keys / jnp.maximum(norms, _EPS)[..., None]
    filled = (positions >= 0).astype(jnp.float32)
    anchor = jnp.einsum("BKSH,BKS->BKH", units, filled) / jnp.maximum(filled.sum(-1), 1.0)[..., None]
    similarity = jnp.einsum("BKSH,BKH->BKS", units, anchor) / jnp.maximum(jnp.linalg.norm(anchor, axis=-1),
                                                                           _EPS)[..., None]
    return -similarity


def knorm_scores(keys: jax.Array) -> jax.Array:
    """Knorm: keys [B, K, S, H] -> [B, K, S], minus the L2 norm of each cached key (keys with a low
    norm, which draw much attention, are kept)."""
    return -jnp.linalg.norm(keys.astype(jnp.float32), axis=-1)


def expected_attention_scores(keys: jax.Array, values: jax.Array, positions: jax.Array, scores: jax.Array,
                              step: AttentionStep, sink: int) -> jax.Array:
    """Expected Attention (arXiv 2510.00636): the attention each slot should get from future queries,
    times its value norm. keys, values [B, K, S, H] as cached, positions / scores [B, K, S] -> [B, K, S].

    The future queries are modelled as a Gaussian: the mean and covariance of this call's queries
    before RoPE (positions >= `sink`; a prefill chunk, or one query while decoding: then no
    covariance), rotated by the RoPE rotation averaged over the next `EXPECTED_ATTENTION_FUTURE`
    positions. For q ~ N(mu, Sigma) and scale s, E[exp(s q.k)] = exp(s mu.k + s^2 k'Sigma k / 2);
    a softmax of that over the head's filled slots, averaged over the query group, times ||v||.
    Rows without such queries in this call keep their scores.
    """
    batch, num_kv_heads, _, head_dim = keys.shape
    length, num_heads = step.queries.shape[1], step.queries.shape[2]
    group = num_heads // num_kv_heads
    used = (step.positions >= sink).astype(jnp.float32)  # [B, T]
    count = used.sum(axis=1)  # [B]
    queries = step.queries.astype(jnp.float32).reshape(batch, length, num_kv_heads, group, head_dim)
    mean = jnp.einsum("BTKGH,BT->BKGH", queries, used) / jnp.maximum(count, 1.0)[:, None, None, None]
    centered = (queries - mean[:, None]) * used[:, :, None, None, None]  # [B, T, K, G, H]
    cos, sin = mean_rotation(step.rope, head_dim, step.positions.max(axis=1) + 1, EXPECTED_ATTENTION_FUTURE)
    keys = keys.astype(jnp.float32)
    # q R'k with R the mean rotation: R'k = k cos - rotate_half(k) sin (R = cos I + sin P, P' = -P)
    unrotated_keys = keys * cos[:, None, None, :] - rotate_half(keys) * sin[:, None, None, :]  # [B, K, S, H]
    mean_logits = jnp.einsum("BKGH,BKSH->BKGS", mean, unrotated_keys)
    spread = jnp.einsum("BTKGH,BKSH->BKGTS", centered, unrotated_keys)
    variance = (spread * spread).sum(axis=3) / jnp.maximum(count, 1.0)[:, None, None, None]  # [B, K, G, S]
    logits = step.scale * mean_logits + 0.5 * step.scale ** 2 * variance
    logits = jnp.where((positions >= 0)[:, :, None, :], logits, MASKED_LOGIT)
    expected = jax.nn.softmax(logits, axis=-1).mean(axis=2)  # [B, K, S]
    rescored = expected * jnp.linalg.norm(values.astype(jnp.float32), axis=-1)
    rescored = jnp.where(positions >= 0, rescored, 0.0)
    return jnp.where((count > 0)[:, None, None], rescored, scores)
