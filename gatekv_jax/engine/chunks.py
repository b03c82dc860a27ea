"""Chunked writes into a cache: the jitted chunk step, compressed prefill, appends without eviction.

Tokens go through the model `policy.chunk_size` at a time (the last chunk padded). After each
chunk of a prefill, every gated head is evicted back to the context's final keep count; an append grows
the gated layers instead and never evicts them (sliding layers always keep their window).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.engine import plan
from gatekv_jax.engine.inputs import chunk_layout
from gatekv_jax.kv.cache import CompressedContext, KVCache, grow_cache, init_cache, shrink_cache
from gatekv_jax.kv.eviction import PER_HEAD, Allocation, evict
from gatekv_jax.kv.policy import EvictionPolicy
from gatekv_jax.kv.scorers import ScorerSpec
from gatekv_jax.models.config import ModelConfig
from gatekv_jax.models.decoder import Decoder
from gatekv_jax.models.loading import Model
from gatekv_jax.utils.sharding import replicated

MIN_APPEND_CHUNK = 16


@functools.partial(jax.jit, donate_argnames=("cache",),
                   static_argnames=("config", "dtype", "spec", "allocation", "evict_gated", "outputs"))
def chunk_step(params: dict, gates: dict | None, cache: KVCache, tokens: jax.Array, positions: jax.Array,
               targets: jax.Array, previous_hidden: jax.Array, keep: jax.Array, protect_before: jax.Array,
               recent: jax.Array, *, config: ModelConfig, dtype: Any, spec: ScorerSpec, allocation: Allocation,
               evict_gated: bool, outputs: str) -> tuple[KVCache, jax.Array, Any, jax.Array]:
    """One chunk appended, then eviction (sliding layers back to their window; gated layers to
    `keep` [B] when `evict_gated`): `(cache, last_hidden [B, D], extra, finite)`. `last_hidden` is the
    final hidden state of each row's newest token so far (`previous_hidden` for rows without a token
    in this chunk); `last_logits` turns it into logits once, after the last chunk. `outputs` picks
    extra: "none", "nll" (NLL of `targets` [B, C], -1 = none) or "log_probs" (next-token
    log-probabilities [B, C, V]). `finite` is False when a hidden state or the score of a filled gated
    slot is NaN or infinite (checked before eviction, which would silently drop NaN-scored slots)."""
    module = Decoder(config, dtype=dtype, scorer=spec)
    variables = {"params": params}
    hidden, cache = module.apply(variables, tokens, positions, cache, gates, method=Decoder.hidden_states)
    last = jnp.argmax(positions, axis=1)  # [B] index of the newest real token
    picked = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # [B, D]
    has_token = (positions >= 0).any(axis=1)
    last_hidden = jnp.where(has_token[:, None], picked, previous_hidden)
    extra = None
    if outputs != "none":
        log_probs = jax.nn.log_softmax(module.apply(variables, hidden, method=Decoder.logits), axis=-1)
        if outputs == "log_probs":
            extra = log_probs  # [B, C, V]
        else:
            picked_lp = jnp.take_along_axis(log_probs, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
            extra = jnp.where(targets >= 0, -picked_lp, jnp.nan)  # [B, C]
    finite = jnp.isfinite(last_hidden).all()
    for i in config.full_attention_layers:
        layer = cache.layers[i]
        finite &= (jnp.isfinite(layer.scores) | (layer.positions < 0)).all()
    cache = evict(cache, config, keep, protect_before, recent, allocation, evict_gated=evict_gated)
    return (cache, replicated(last_hidden), None if extra is None else replicated(extra),  # host-bound
            replicated(finite))


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def last_logits(params: dict, last_hidden: jax.Array, fallback: jax.Array, use_hidden: jax.Array, *,
                config: ModelConfig, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """Logits [B, V] of each row's newest token from its final hidden state [B, D] (`fallback` [B, V]
    where `use_hidden` [B] is False), once per prefill or append: the LM head is most of a decode step's
    bytes, and only the last chunk's logits are kept. Also whether they are all finite."""
    logits = Decoder(config, dtype=dtype).apply({"params": params}, last_hidden[:, None], method=Decoder.logits)
    logits = jnp.where(use_hidden[:, None], logits[:, 0], fallback)
    return replicated(logits), replicated(jnp.isfinite(logits).all())


def check_context(config: ModelConfig, context: CompressedContext) -> None:
    """Refuse a context that another model made (layers, KV heads, head size or vocabulary differ)."""
    layer = context.cache.layers[0]
    made = (len(context.cache.layers), layer.keys.shape[1], layer.keys.shape[3], context.last_logits.shape[-1])
    wanted = (config.num_layers, config.num_kv_heads, config.head_dim, config.vocab_size)
    if made != wanted:
        raise ValueError(f"the context was made by another model: (layers, KV heads, head size, vocabulary) "
                         f"{made}, this model {wanted}")


def check_finite(flags: list[jax.Array], what: str) -> None:
    """Raise when any step reported a non-finite hidden state, logit or score (one host sync, at the end)."""
    if not all(jax.device_get(flags)):  # no jnp op here: it would compile per number of chunks
        raise FloatingPointError(
            f"non-finite logits or KV scores during {what}: the model's activations overflow (float16? use "
            "bfloat16 or float32), or the gates or inputs hold NaN/inf")


def prefill_chunks(model: Model, tokens: np.ndarray, lengths: np.ndarray, policy: EvictionPolicy,
                   gates: dict | None, prefix_length: int) -> CompressedContext:
    """Chunked prefill of right-padded contexts [B, T] under `policy` (any scorer but the oracle)."""
    config, chunk = model.config, policy.chunk_size
    batch = tokens.shape[0]
    protect_before = np.full(batch, max(policy.sink, prefix_length), np.int32)
    recent = np.array([policy.protected_window(int(n)) for n in lengths], np.int32)
    bucket = plan.context_bucket(policy, int(lengths.max()))
    min_keep = plan.bucket_keep(policy, bucket, int(protect_before[0]))
    capacities = plan.prefill_capacities(config, policy, bucket, min_keep)
    cache = model.run(init_cache, config, batch, capacities, model.dtype)
    static = dict(config=config, dtype=jnp.dtype(model.dtype), spec=plan.scorer_spec(policy),
                  allocation=plan.allocation(config, policy, bucket, min_keep), evict_gated=policy.evicts,
                  outputs="none")
    last_hidden = jnp.zeros((batch, config.hidden_size), model.dtype)
    no_targets = np.full((batch, chunk), -1, np.int32)
    padded, positions = chunk_layout(tokens, lengths, chunk)
    # Every eviction keeps the row's final budget (a budget of ratio x tokens seen would cap every
    # prefix at `ratio` of itself and lose a rich start for good) and protects only the tokens of
    # the row's final recent window: for fixed scores at level "head" the kept set then equals one
    # eviction after the whole context.
    final_keep = np.array([plan.protected_keep(policy, int(n), int(p), int(r))
                           for n, p, r in zip(lengths, protect_before, recent)], np.int32)
    flags = []
    for c in range(padded.shape[1] // chunk):
        piece = slice(c * chunk, (c + 1) * chunk)
        seen = np.minimum(lengths, (c + 1) * chunk)
        keep = np.minimum(final_keep, seen).astype(np.int32)
        recent_now = np.maximum(recent - (lengths - seen), 0).astype(np.int32)
        cache, last_hidden, _, finite = model.run(chunk_step, model.params, gates, cache, padded[:, piece],
                                                  positions[:, piece], no_targets, last_hidden, keep,
                                                  protect_before, recent_now, **static)
        flags.append(finite)
    logits, finite = model.run(last_logits, model.params, last_hidden, jnp.zeros((batch, config.vocab_size)),
                               np.ones(batch, bool), config=config, dtype=static["dtype"])
    check_finite(flags + [finite], "prefill")
    cache = shrink_cache(cache, plan.final_capacities(config, policy, bucket, min_keep))
    return CompressedContext(cache=cache, seen=jnp.asarray(lengths), last_logits=logits)


def append(model: Model, context: CompressedContext, tokens: np.ndarray, lengths: np.ndarray,
           policy: EvictionPolicy, gates: dict | None, outputs: str = "none", room: int = 0,
           min_filled: int = 0) -> tuple[CompressedContext, Any]:
    """Append tokens after each row's context without evicting gated layers (sliding layers keep
    their window); returns the new context and, for `outputs="nll"`, the NLL of each next token
    [B, T-1] (numpy), for `outputs="log_probs"` next-token log-probabilities [B, T, V] (device).

    Gated layers are grown to hold the tokens, then `room` more slots beyond max(filled, min_filled).
    Appends shorter than a chunk (a question) run as one power-of-two chunk of at least
    `MIN_APPEND_CHUNK` tokens, not a padded full chunk.
    """
    config = model.config
    batch, length = tokens.shape
    chunk = min(policy.chunk_size, max(MIN_APPEND_CHUNK, 1 << max(length - 1, 0).bit_length()))
    if batch != context.seen.shape[0]:
        raise ValueError(f"{batch} rows of tokens for a context of {context.seen.shape[0]} rows")
    check_context(config, context)
    seen = np.asarray(context.seen)
    padded, positions = chunk_layout(tokens, lengths, chunk, start=seen)
    filled = [int(layer.lengths.max()) for layer in context.cache.layers]
    cache = grow_cache(context.cache, plan.append_capacities(config, policy, context.cache.capacities, filled,
                                                            padded.shape[1], room, min_filled))
    targets = np.full_like(padded, -1)
    targets[:, :-1] = np.where(positions[:, 1:] >= 0, padded[:, 1:], -1)
    static = dict(config=config, dtype=jnp.dtype(model.dtype), spec=plan.scorer_spec(policy), allocation=PER_HEAD,
                  evict_gated=False, outputs=outputs)
    zeros = np.zeros(batch, np.int32)
    last_hidden, pieces, flags = jnp.zeros((batch, config.hidden_size), model.dtype), [], []
    for c in range(padded.shape[1] // chunk):
        piece = slice(c * chunk, (c + 1) * chunk)
        cache, last_hidden, extra, finite = model.run(chunk_step, model.params, gates, cache, padded[:, piece],
                                                      positions[:, piece], targets[:, piece], last_hidden, zeros,
                                                      zeros, zeros, **static)
        pieces.append(extra)
        flags.append(finite)
    logits, finite = model.run(last_logits, model.params, last_hidden, context.last_logits, np.asarray(lengths) > 0,
                               config=config, dtype=static["dtype"])
    check_finite(flags + [finite], "append")
    new_context = CompressedContext(cache=cache, seen=jnp.asarray(seen + lengths), last_logits=logits)
    if outputs == "nll":
        return new_context, np.concatenate([np.asarray(p) for p in pieces], axis=1)[:, :length - 1]
    if outputs == "log_probs":
        return new_context, jnp.concatenate(pieces, axis=1)[:, :length]
    return new_context, None
