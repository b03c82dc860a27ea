"""One static-shape eviction mechanism for every scorer.

Each (layer, row, KV head) keeps its `keep` best slots by priority: protected slots (sinks, the
protected prefix, the recent window) rank +inf, empty slots -inf, the rest by the scorer's score.
Kept slots are gathered to the front of the buffer in position order; shapes never change.
How the `keep` budget is spread (the policy's `level`):
- "head": every gated (layer, KV head) keeps its own top `keep`;
- "global": one threshold per row over all gated heads (per-head counts vary, capped);
- "token": every gated layer and head keeps the same `keep` tokens, ranked by each token's best
  rank over the gated (layer, head)s, so a token that matters anywhere is kept everywhere; the rank
  is the score itself (`token_rank="score"`, for scores on one scale in every layer: the gate's
  probabilities), its quantile within the head (`"quantile"`, for scores on per-layer scales) or
  the better of the two, each as a quantile over the row's tokens (`"either"`);
  with `token_pool` > 1 a token also takes the best rank of its neighbouring slots, so the glue of
  a kept phrase (the space before a number, the word before a name) stays with it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gatekv_jax.kv.cache import EMPTY_POSITION, KVCache, LayerCache
from gatekv_jax.models.config import ModelConfig

_NO_POSITION = jnp.iinfo(jnp.int32).max


class Allocation(NamedTuple):
    """How gated layers spread their budget (static under jit): the `level` ("head", "global" or
    "token"), the per-head cap of "global", and the neighbourhood (odd, in slots) and ranking
    ("score", "quantile" or "either") of "token". Built from an `EvictionPolicy` by the engine; `PER_HEAD` is
    decoding's allocation."""

    level: str
    head_cap: int | None
    token_pool: int
    token_rank: str = "quantile"


PER_HEAD = Allocation(level="head", head_cap=None, token_pool=1)


def priorities(layer: LayerCache, protect_before: jax.Array, recent: jax.Array) -> jax.Array:
    """Ranking keys [B, K, S]: +inf for positions < protect_before [B] or within the `recent` [B]
    newest positions of the row, -inf for empty slots, the stored score otherwise."""
    positions = layer.positions
    newest = positions.max(axis=(1, 2))[:, None, None]  # [B, 1, 1]
    protected = (positions < protect_before[:, None, None]) | (positions > newest - recent[:, None, None])
    ranked = jnp.where(protected, jnp.inf, layer.scores)
    return jnp.where(positions < 0, -jnp.inf, ranked)


def evict_layer(layer: LayerCache, priority: jax.Array, keep: jax.Array) -> LayerCache:
    """Keep the `keep` [B, K] highest-priority filled slots of each head, compacted in position order."""
    order = jnp.argsort(-priority, axis=-1, stable=True)  # [B, K, S] best first
    rank = jnp.argsort(order, axis=-1)  # [B, K, S] rank of each slot
    kept = (rank < keep[..., None]) & (layer.positions >= 0)
    compact = jnp.argsort(jnp.where(kept, layer.positions, _NO_POSITION), axis=-1, stable=True)  # [B, K, S]

    def gather(x):
        index = compact[..., None] if x.ndim == 4 else compact
        return jnp.take_along_axis(x, index, axis=2)

    kept_sorted = gather(kept)
    return LayerCache(
        keys=gather(layer.keys), values=gather(layer.values),
        positions=jnp.where(kept_sorted, gather(layer.positions), EMPTY_POSITION),
        scores=jnp.where(kept_sorted, gather(layer.scores), 0.0),
        lengths=kept.sum(axis=-1, dtype=jnp.int32),
    ).sharded()


def _global_keep(priority_by_layer: list[jax.Array], keep: jax.Array, head_cap: int) -> list[jax.Array]:
    """One threshold per row across all gated heads: per-head counts [B, K], each <= head_cap."""
    batch = keep.shape[0]
    pooled = jnp.concatenate([p.reshape(batch, -1) for p in priority_by_layer], axis=1)  # [B, L*K*S]
    num_heads = sum(p.shape[1] for p in priority_by_layer)
    total = jnp.clip(keep * num_heads, 1, pooled.shape[1])  # [B]
    ranked = -jnp.sort(-pooled, axis=1)
    threshold = jnp.take_along_axis(ranked, (total - 1)[:, None], axis=1)  # [B, 1]
    return [jnp.minimum((p >= threshold[:, :, None]).sum(axis=-1), head_cap).astype(jnp.int32)
            for p in priority_by_layer]


def _rank_quantiles(priority: jax.Array) -> jax.Array:
    """priority [B, K, S] -> each scored slot's rank among the scored slots of its head, in [0, 1)
    (protected slots stay +inf, empty slots -inf)."""
    finite = jnp.isfinite(priority)
    rank = jnp.argsort(jnp.argsort(jnp.where(finite, priority, -jnp.inf), axis=-1), axis=-1)  # [B, K, S]
    below = (~finite).sum(axis=-1, keepdims=True)  # protected and empty slots rank first here
    scored = jnp.maximum(finite.sum(axis=-1, keepdims=True), 1)
    return jnp.where(finite, (rank - below) / scored, priority)


def _token_priority(priority_by_layer: list[jax.Array], pool: int = 1, rank: str = "quantile") -> jax.Array:
    """One priority [B, 1, S] for every gated layer and head: each slot's best score (`rank`
    "score"), best rank quantile within its head ("quantile") or the larger of those two values'
    rank quantiles among the row's slots ("either"), max-pooled over `pool`
    neighbouring slots (scored slots only: protected slots stay +inf and lend nothing to their
    neighbours, empty slots stay -inf).

    Needs gated layers whose slots hold the same positions in the same order, which holds for
    caches that were only ever evicted at this level (each eviction leaves identical layouts)."""
    def best_over_heads(ranked):  # [B, 1, S] from L x [B, K, S]
        return jnp.concatenate(ranked, axis=1).max(axis=1, keepdims=True)

    if rank == "score":
        best = best_over_heads(priority_by_layer)
    else:
        best = best_over_heads([_rank_quantiles(p) for p in priority_by_layer])
        if rank == "either":
            best = jnp.maximum(_rank_quantiles(best_over_heads(priority_by_layer)), _rank_quantiles(best))
    if pool == 1:
        return best
    scored = jnp.isfinite(best)
    pooled = jax.lax.reduce_window(jnp.where(scored, best, -jnp.inf), -jnp.inf, jax.lax.max,
                                   (1, 1, pool), (1, 1, 1), "SAME")  # [B, 1, S]
    return jnp.where(scored, pooled, best)


def evict(cache: KVCache, config: ModelConfig, keep: jax.Array, protect_before: jax.Array,
          recent: jax.Array, allocation: Allocation, evict_gated: bool = True) -> KVCache:
    """Compress every layer: gated layers to `keep` [B] slots per head (level "head" or "token"), or
    to their share of one threshold (level "global"), or left as they are when `evict_gated` is
    False; sliding layers to their window (by recency)."""
    level = allocation.level
    batch = keep.shape[0]
    gated = [i for i in range(config.num_layers) if evict_gated and not config.is_sliding(i)]
    gated_priority = [priorities(cache.layers[i], protect_before, recent) for i in gated]
    if level == "token" and gated:
        shared = _token_priority(gated_priority, allocation.token_pool, allocation.token_rank)
        gated_priority = [jnp.broadcast_to(shared, p.shape) for p in gated_priority]
    if level == "global" and gated:
        gated_keep = _global_keep(gated_priority, keep, allocation.head_cap)
    else:
        gated_keep = [jnp.broadcast_to(keep[:, None], p.shape[:2]).astype(jnp.int32) for p in gated_priority]
    new_layers = list(cache.layers)
    for i, priority, head_keep in zip(gated, gated_priority, gated_keep):
        new_layers[i] = evict_layer(cache.layers[i], priority, head_keep)
    for i in range(config.num_layers):
        if config.is_sliding(i):
            layer = cache.layers[i]
            recency = jnp.where(layer.positions < 0, -jnp.inf, layer.positions.astype(jnp.float32))
            window = jnp.full((batch, config.num_kv_heads), config.sliding_window, jnp.int32)
            new_layers[i] = evict_layer(layer, recency, window)
    return KVCache(layers=tuple(new_layers))
