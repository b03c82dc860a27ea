"""Teacher-forced scoring of a continuation over a compressed context: per-token NLL or log-probs,
appended without eviction or decoded with decode-time eviction."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.engine import plan
from gatekv_jax.engine.chunks import append
from gatekv_jax.engine.decode import check_generation_room, decode_bucket, decode_room, forced_decode_loop
from gatekv_jax.engine.inputs import as_batch
from gatekv_jax.engine.prefill import gates_for, prefill
from gatekv_jax.kv.cache import CompressedContext
from gatekv_jax.kv.policy import EvictionPolicy
from gatekv_jax.models.loading import Model


def _context(model: Model, context_tokens: Any, policy: EvictionPolicy, gates: dict | None,
             context: CompressedContext | None) -> CompressedContext:
    if (context_tokens is None) == (context is None):
        raise ValueError("give exactly one of context_tokens (prefilled under the policy) and context= "
                         "(a CompressedContext from prefill)")
    return prefill(model, context_tokens, policy, gates=gates) if context is None else context


def continuation_nll(model: Model, context_tokens: Any, continuation_tokens: Any, policy: EvictionPolicy, *,
                     gates: dict | None = None, context: CompressedContext | None = None) -> np.ndarray:
    """Per-token NLL [B, M] of a continuation, teacher-forced over the context's compressed cache.

    The context is `context_tokens` prefilled under `policy`, or `context` (from `prefill`, then
    pass None as context_tokens); the continuation is appended without eviction. Rows shorter
    than M are padded with NaN.
    """
    gates = gates_for(model, policy, gates)
    context = _context(model, context_tokens, policy, gates, context)
    tokens, lengths = as_batch(continuation_tokens, model.config.vocab_size)
    first = jax.nn.log_softmax(context.last_logits, axis=-1)
    first_nll = -np.asarray(jnp.take_along_axis(first, jnp.asarray(tokens[:, :1]), axis=1))  # [B, 1]
    _, rest = append(model, context, tokens, lengths, policy, gates, outputs="nll")
    nll = np.concatenate([first_nll, rest], axis=1).astype(np.float32)
    nll[np.arange(tokens.shape[1])[None] >= lengths[:, None]] = np.nan
    return nll


def continuation_log_probs(model: Model, context_tokens: Any, continuation_tokens: Any, policy: EvictionPolicy, *,
                           gates: dict | None = None, context: CompressedContext | None = None) -> jax.Array:
    """Next-token log-probabilities [B, M, V] (device array) along a teacher-forced continuation
    appended without eviction: row t is the distribution of token t. The context is given as in
    `continuation_nll`."""
    gates = gates_for(model, policy, gates)
    context = _context(model, context_tokens, policy, gates, context)
    tokens, lengths = as_batch(continuation_tokens, model.config.vocab_size)
    first = jax.nn.log_softmax(context.last_logits, axis=-1)[:, None]  # [B, 1, V]
    if tokens.shape[1] == 1:
        return first
    _, rest = append(model, context, tokens[:, :-1], np.maximum(lengths - 1, 0), policy, gates,
                     outputs="log_probs")
    return jnp.concatenate([first, rest], axis=1)


def decode_continuation(model: Model, context_tokens: Any, continuation_tokens: Any, policy: EvictionPolicy, *,
                        gates: dict | None = None,
                        context: CompressedContext | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced continuation decoded one token at a time, as `generate` decodes: gated layers
    are evicted back to `policy.decode_budget` whenever a block is full (no eviction when it is
    None). The context is `context_tokens` prefilled under `policy`, or `context` (from `prefill`;
    pass None as context_tokens). Returns `(nll [B, M], predicted [B, M])`: each token's NLL given
    the ones before it and the argmax id at that step (NaN and -1 past a row's length)."""
    gates = gates_for(model, policy, gates)
    context = _context(model, context_tokens, policy, gates, context)
    tokens, lengths = as_batch(continuation_tokens, model.config.vocab_size)
    if tokens.shape[0] != context.seen.shape[0]:
        raise ValueError(f"{tokens.shape[0]} rows of continuation for a context of {context.seen.shape[0]} rows")
    batch, length = tokens.shape
    budget = policy.decode_budget
    bucket = decode_bucket(length)
    padded = np.zeros((batch, bucket), np.int32)
    padded[:, :length] = tokens
    room = decode_room(policy, bucket)
    check_generation_room(model, context, room, length)
    context, _ = append(model, context, np.zeros((batch, 0), np.int32), np.zeros(batch, np.int32), policy, gates,
                        room=room, min_filled=budget or 0)
    nll, predicted, _ = model.run(
        forced_decode_loop, model.params, gates, context.cache, context.last_logits, context.seen, padded, lengths,
        np.full(batch, budget or 0, np.int32), np.full(batch, policy.sink, np.int32),
        np.full(batch, policy.decode_recent, np.int32), config=model.config, dtype=jnp.dtype(model.dtype),
        spec=plan.scorer_spec(policy), allocation=plan.decode_allocation(policy), evict_gated=budget is not None)
    return np.asarray(nll)[:, :length], np.asarray(predicted)[:, :length]
