"""Capacity planning: the static sizes a policy gives a cache (context buckets, per-layer slots).

Every jitted step sees fixed shapes. A context is rounded up to a bucket (`policy.max_context`, or
a power-of-two number of chunks), and every layer's capacity follows from the bucket and the
policy, so any prompt length within a bucket reuses one compiled step.
"""

from __future__ import annotations

import math
from typing import Sequence

from gatekv_jax.engine.inputs import round_up
from gatekv_jax.kv.eviction import PER_HEAD, Allocation
from gatekv_jax.kv.policy import EvictionPolicy
from gatekv_jax.kv.scorers import ScorerSpec
from gatekv_jax.models.config import ModelConfig

SLOT_ALIGN = 128  # compressed caches are stored in multiples of this many slots


def context_bucket(policy: EvictionPolicy, longest: int) -> int:
    """Tokens a prefill of contexts up to `longest` tokens is sized for."""
    if policy.max_context is not None:
        if longest > policy.max_context:
            raise ValueError(f"context of {longest} tokens exceeds the policy's max_context {policy.max_context}")
        return round_up(policy.max_context, policy.chunk_size)
    chunks = -(-longest // policy.chunk_size)
    return policy.chunk_size * (1 << (chunks - 1).bit_length())


def prefill_capacities(config: ModelConfig, policy: EvictionPolicy, bucket: int, min_keep: int = 0) -> list[int]:
    """Slots per layer while prefilling: the budget (at least `min_keep`, the protected tokens) plus
    one chunk (sliding layers: window + chunk)."""
    keep = max(policy.keep_count(bucket), min_keep)
    if not policy.evicts:
        gated = bucket
    elif policy.level == "global":
        gated = min(bucket, math.ceil(policy.global_head_cap * keep)) + policy.chunk_size
    else:
        gated = keep + policy.chunk_size
    sliding = min((config.sliding_window or 0) + policy.chunk_size, bucket)
    return [sliding if config.is_sliding(i) else gated for i in range(config.num_layers)]


def final_capacities(config: ModelConfig, policy: EvictionPolicy, bucket: int, min_keep: int = 0) -> list[int]:
    """Capacities a compressed context is stored with: the gated budget rounded up to SLOT_ALIGN
    slots (the chunk room is dropped), sliding layers exactly their window."""
    capacities = prefill_capacities(config, policy, bucket, min_keep)
    if not policy.evicts:
        return capacities
    return [min(config.sliding_window, cap) if config.is_sliding(i)
            else min(cap, round_up(cap - policy.chunk_size, SLOT_ALIGN))
            for i, cap in enumerate(capacities)]


def allocation(config: ModelConfig, policy: EvictionPolicy, bucket: int, min_keep: int = 0) -> Allocation:
    """The static allocation of the gated budget; "global" caps each head at its prefill buffer."""
    head_cap = None
    if policy.level == "global" and config.full_attention_layers:
        capacities = prefill_capacities(config, policy, bucket, min_keep)
        head_cap = capacities[config.full_attention_layers[0]] - policy.chunk_size
    return Allocation(level=policy.level, head_cap=head_cap, token_pool=policy.token_pool,
                      token_rank=policy.token_ranking)


def decode_allocation(policy: EvictionPolicy) -> Allocation:
    """How decoding evicts gated layers back to `decode_budget`: at level "token" as prefill does, so
    the layers keep one shared layout and keep the same tokens; per head at the other levels."""
    if policy.level == "token":
        return Allocation(level="token", head_cap=None, token_pool=policy.token_pool, token_rank=policy.token_ranking)
    return PER_HEAD


def append_capacities(config: ModelConfig, policy: EvictionPolicy, capacities: Sequence[int], filled: Sequence[int],
                      tokens: int, room: int = 0, min_filled: int = 0) -> list[int]:
    """Slots per layer of a context (`capacities`, `filled` slots) grown for an append of `tokens`
    (padded length) and `room` more slots after max(filled + tokens, min_filled): gated layers in
    whole chunks (fewer compile keys); sliding layers hold their window + a chunk or decode block."""
    sliding = (config.sliding_window or 0) + max(policy.chunk_size, policy.decode_block)
    return [max(capacity, sliding) if config.is_sliding(i)
            else round_up(max(filled[i] + tokens, min_filled) + room, policy.chunk_size)
            for i, capacity in enumerate(capacities)]


def protected_keep(policy: EvictionPolicy, seen: int, protect_before: int, recent: int) -> int:
    """Slots a head keeps after `seen` tokens: the policy's count, grown to hold the protected
    tokens (the first `protect_before` and the `recent` newest) when they are more."""
    return max(policy.keep_count(seen), min(seen, protect_before + recent))


def bucket_keep(policy: EvictionPolicy, bucket: int, protect_before: int) -> int:
    """The most slots any row of a bucket keeps (its capacity's budget): the windows grow with the
    context, so no row up to `bucket` tokens protects more than a row of `bucket` tokens."""
    return protected_keep(policy, bucket, protect_before, policy.protected_window(bucket))


def scorer_spec(policy: EvictionPolicy) -> ScorerSpec:
    """The static scorer settings the decoder is built with."""
    return ScorerSpec(policy.scorer, policy.observation_window, policy.pool_kernel, policy.seed, policy.sink)
