"""The KV cache: a pytree of fixed-capacity per-layer buffers, passed into the model and returned.

Each layer holds keys and values per (batch row, KV head, slot) with the absolute position stored
in every slot (-1 = empty). Attention masks are computed from those positions, never from slot
indices, so the order of slots is free: new tokens are written after the filled prefix of each
(row, head), and an eviction may compact the buffer in any order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from gatekv_jax.models.config import ModelConfig

EMPTY_POSITION = -1


@flax.struct.dataclass
class LayerCache:
    """One attention layer's buffer.

    keys, values: [B, K, S, H]; positions: [B, K, S] int32 (-1 = empty); scores: [B, K, S] float32,
    the eviction scorer's value of each slot; lengths: [B, K] int32, the number of filled slots,
    which always sit at the front of the buffer.
    """

    keys: jax.Array
    values: jax.Array
    positions: jax.Array
    scores: jax.Array
    lengths: jax.Array

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def append(self, keys: jax.Array, values: jax.Array, positions: jax.Array,
               scores: jax.Array) -> "LayerCache":
        """Write new tokens after the filled slots of each (row, head).

        keys, values: [B, T, K, H]; positions: [B, T] (-1 marks padding, which takes no slot);
        scores: [B, T, K]. Tokens past the capacity are dropped: callers size the cache on the host.
        """
        batch, length, num_kv_heads, _ = keys.shape
        is_token = positions >= 0  # [B, T]
        offsets = jnp.cumsum(is_token, axis=1, dtype=jnp.int32) - 1  # [B, T]
        slots = self.lengths[:, :, None] + offsets[:, None, :]  # [B, K, T]
        slots = jnp.where(is_token[:, None, :], slots, self.capacity)  # padding -> out of range
        rows = jnp.arange(batch)[:, None, None]  # [B, 1, 1]
        heads = jnp.arange(num_kv_heads)[None, :, None]  # [1, K, 1]
        token_positions = jnp.broadcast_to(positions[:, None, :], slots.shape).astype(jnp.int32)

        def scatter(buffer, new):
            return buffer.at[rows, heads, slots].set(new.astype(buffer.dtype), mode="drop")

        return LayerCache(
            keys=scatter(self.keys, keys.transpose(0, 2, 1, 3)),  # [B, K, T, H] into [B, K, S, H]
            values=scatter(self.values, values.transpose(0, 2, 1, 3)),
            positions=scatter(self.positions, token_positions),
            scores=scatter(self.scores, scores.transpose(0, 2, 1)),
            lengths=jnp.minimum(self.lengths + is_token.sum(axis=1, dtype=jnp.int32)[:, None], self.capacity),
        )


@flax.struct.dataclass
class KVCache:
    """The whole model's cache: one `LayerCache` per layer (capacities may differ per layer)."""

    layers: tuple[LayerCache, ...]

    @property
    def capacities(self) -> tuple[int, ...]:
        return tuple(layer.capacity for layer in self.layers)

    @property
    def nbytes(self) -> int:
        return sum(leaf.nbytes for leaf in jax.tree.leaves(self))


def init_cache(config: ModelConfig, batch_size: int, capacity: int | Sequence[int],
               dtype: Any = jnp.float32) -> KVCache:
    """An empty cache; `capacity` is one slot count for every layer or one per layer."""
    capacities = [capacity] * config.num_layers if isinstance(capacity, int) else list(capacity)
    if len(capacities) != config.num_layers:
        raise ValueError(f"got {len(capacities)} capacities for {config.num_layers} layers")
    for c in capacities:
        if not isinstance(c, int) or c <= 0:
            raise ValueError(f"cache capacity must be a positive int, got {c!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    K, H = config.num_kv_heads, config.head_dim

    def empty(slots: int) -> LayerCache:
        return LayerCache(
            keys=jnp.zeros((batch_size, K, slots, H), dtype),
            values=jnp.zeros((batch_size, K, slots, H), dtype),
            positions=jnp.full((batch_size, K, slots), EMPTY_POSITION, jnp.int32),
            scores=jnp.zeros((batch_size, K, slots), jnp.float32),
            lengths=jnp.zeros((batch_size, K), jnp.int32),
        )

    return KVCache(layers=tuple(empty(c) for c in capacities))
