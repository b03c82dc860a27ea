"""Teacher-forced scoring of a continuation over a compressed context: per-token NLL or log-probs."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.engine.chunks import append
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
