"""The KV cache: a pytree of fixed-capacity per-layer buffers, passed into the model and returned.

`KVCache` holds one `LayerCache` per layer; `CompressedContext` is a cache plus what a prefill
saw (tokens per row, the last logits), reusable for many queries. Each layer holds keys and
values per (batch row, KV head, slot) with the absolute position stored in every slot (-1 =
empty). Attention masks are computed from those positions, never from slot indices, so the order
of slots is free: new tokens are written after the filled prefix of each (row, head), and an
eviction may compact the buffer in any order. `grow_cache` / `shrink_cache` change capacities.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.models.config import ModelConfig
from gatekv_jax.utils.sharding import constrain

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

        if slots.size == 1:  # XLA makes a one-update scatter a dynamic-update-slice and copies the buffer for it
            slots = jnp.concatenate([slots, jnp.full_like(slots, self.capacity)], axis=2)  # + a dropped update

        def scatter(buffer, new):
            if new.shape[2] < slots.shape[2]:
                new = jnp.concatenate([new, new], axis=2)
            return buffer.at[rows, heads, slots].set(new.astype(buffer.dtype), mode="drop")

        return LayerCache(
            keys=scatter(self.keys, keys.transpose(0, 2, 1, 3)),  # [B, K, T, H] into [B, K, S, H]
            values=scatter(self.values, values.transpose(0, 2, 1, 3)),
            positions=scatter(self.positions, token_positions),
            scores=scatter(self.scores, scores.transpose(0, 2, 1)),
            lengths=jnp.minimum(self.lengths + is_token.sum(axis=1, dtype=jnp.int32)[:, None], self.capacity),
        ).sharded()

    def sharded(self) -> "LayerCache":
        """This layer laid out by the logical axis rules (batch over data, KV heads over tensor where
        they divide) when a mesh is set; unchanged otherwise."""
        slots = ("batch", "kv_heads", "cache_slots")
        return LayerCache(keys=constrain(self.keys, slots + ("head_dim",)),
                          values=constrain(self.values, slots + ("head_dim",)),
                          positions=constrain(self.positions, slots), scores=constrain(self.scores, slots),
                          lengths=constrain(self.lengths, slots[:2]))


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
    """An empty cache; `capacity` is one slot count for every layer or one per layer. Under a mesh
    (`jax.set_mesh`) it is laid out as the model's steps return it, so the first step does not
    compile for another input layout."""
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
        ).sharded()

    return KVCache(layers=tuple(empty(c) for c in capacities))


def shrink_cache(cache: KVCache, capacities: Sequence[int]) -> KVCache:
    """`cache` cut to `capacities` slots per layer; the filled slots (at the front) must fit."""
    layers = []
    for layer, capacity in zip(cache.layers, capacities):
        if capacity < layer.capacity:
            layer = jax.tree.map(lambda x: x[:, :, :capacity] if x.ndim > 2 else x, layer)
        layers.append(layer)
    return KVCache(layers=tuple(layers))


def grow_cache(cache: KVCache, capacities: Sequence[int]) -> KVCache:
    """A copy of `cache` (never sharing buffers, so the original survives donation) with each layer
    padded with empty slots to at least `capacities`."""
    layers = []
    for layer, capacity in zip(cache.layers, capacities):
        extra = max(0, capacity - layer.capacity)

        def pad(x, fill):
            return jnp.pad(x, [(0, 0), (0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 3),
                           constant_values=fill) if extra else jnp.copy(x)

        layers.append(LayerCache(keys=pad(layer.keys, 0), values=pad(layer.values, 0),
                                 positions=pad(layer.positions, EMPTY_POSITION), scores=pad(layer.scores, 0.0),
                                 lengths=jnp.copy(layer.lengths)))
    return KVCache(layers=tuple(layers))


@flax.struct.dataclass
class CompressedContext:
    """What `prefill` returns: the compressed cache of a context, reusable for many queries.

    cache: the KVCache; seen: [B] context tokens per row; last_logits: [B, V] float32 logits after
    each row's last context token.
    """

    cache: KVCache
    seen: jax.Array
    last_logits: jax.Array

    def kept_slots(self, layers: Sequence[int] | None = None) -> tuple[int, int]:
        """`(filled slots, slots a full cache would hold for the same tokens)` over `layers` (all by default)."""
        chosen = range(len(self.cache.layers)) if layers is None else layers
        kept = sum(int(self.cache.layers[i].lengths.sum()) for i in chosen)
        heads = self.cache.layers[0].keys.shape[1]
        return kept, int(np.asarray(self.seen).sum()) * heads * len(chosen)

    def memory_report(self) -> dict[str, int]:
        """KV slots and bytes: kept (filled), allocated (capacity) and what a full cache would hold."""
        layers = self.cache.layers
        slot_bytes = 2 * layers[0].keys.shape[-1] * layers[0].keys.dtype.itemsize  # one key + one value
        kept, full = self.kept_slots()
        allocated = sum(int(np.prod(layer.positions.shape)) for layer in layers)
        return {"kept_slots": kept, "allocated_slots": allocated, "full_slots": full,
                "kept_bytes": kept * slot_bytes, "allocated_bytes": allocated * slot_bytes,
                "full_bytes": full * slot_bytes}
