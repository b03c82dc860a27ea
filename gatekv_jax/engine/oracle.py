"""The KVzip oracle: full prefill, the teacher's scores on the gated slots, one eviction per row.

A `TeacherMemo` keeps each context's full prefill and teacher scores, so further ratios or
budgets on the same context only evict (the teacher costs several prefills).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.engine import plan
from gatekv_jax.engine.chunks import prefill_chunks
from gatekv_jax.engine.teacher import RepeatPrompts, teacher_scores
from gatekv_jax.kv.cache import CompressedContext, KVCache, shrink_cache
from gatekv_jax.kv.eviction import Allocation, evict
from gatekv_jax.kv.policy import EvictionPolicy
from gatekv_jax.models.config import ModelConfig
from gatekv_jax.models.loading import Model, load_tokenizer


class TeacherMemo:
    """Full prefills and teacher scores of contexts, for the one model it is first used with.

    The memo holds that model, so its entries can never be mistaken for another model's; using it
    with a second model is an error.
    """

    def __init__(self):
        self.model: Model | None = None
        self.entries: dict = {}

    def bind(self, model: Model) -> None:
        if self.model is None:
            self.model = model
        elif self.model is not model:
            raise ValueError("this TeacherMemo holds another model's teacher scores; use one memo per model")


@functools.partial(jax.jit, static_argnames=("config", "allocation"))
def _evict_once(cache: KVCache, keep: jax.Array, protect_before: jax.Array, recent: jax.Array, *,
                config: ModelConfig, allocation: Allocation) -> KVCache:
    return evict(cache, config, keep, protect_before, recent, allocation)


def oracle_prefill(model: Model, tokens: np.ndarray, lengths: np.ndarray, policy: EvictionPolicy,
                   prefix_length: int, prompts: RepeatPrompts | None, memo: TeacherMemo | None) -> CompressedContext:
    """The `kvzip` scorer's prefill of right-padded contexts [B, T]: each row is prefilled whole,
    scored by the teacher (after its protected prefix) and evicted once to the policy's budget."""
    config = model.config
    if prompts is None:
        if model.source is None:
            raise ValueError("the kvzip scorer needs repeat_prompts (the model has no tokenizer source)")
        prompts = RepeatPrompts.from_tokenizer(load_tokenizer(model.source), config.model_type)
    if memo is not None:
        memo.bind(model)
    bucket = plan.context_bucket(policy, int(lengths.max()))
    full = dataclasses.replace(policy, scorer="full", ratio=None, budget=None, max_context=bucket)
    p = prefix_length
    protect_before = max(policy.sink, p)
    keeps = [plan.protected_keep(policy, int(n), protect_before, policy.protected_window(int(n))) for n in lengths]
    min_keep = plan.bucket_keep(policy, bucket, protect_before)
    allocation = plan.allocation(config, policy, bucket, min_keep)
    rows = []
    for row, n, keep in zip(tokens, lengths, keeps):
        key = (full, p, prompts, row[:n].tobytes())
        if memo is not None and key in memo.entries:
            context, scores = memo.entries[key]
            context = jax.tree.map(jnp.copy, context)  # later steps may donate the cache's buffers
        else:
            context = prefill_chunks(model, row[None, :n], np.array([n]), full, None, 0)
            # A protected prefix in the row is the teacher's prefix; otherwise the chat prefix is prepended.
            row_prompts = dataclasses.replace(prompts, prefix=tuple(int(t) for t in row[:p])) if p else prompts
            scores, _ = teacher_scores(model, row[None, p:n], row_prompts)  # [1, Lg, K, n - p]
            if memo is not None:
                memo.entries[key] = (jax.tree.map(jnp.copy, context), scores)
        layers = list(context.cache.layers)
        for g, i in enumerate(config.full_attention_layers):
            layers[i] = layers[i].replace(scores=layers[i].scores.at[:, :, p:n].set(jnp.asarray(scores[:, g])))
        cache = _evict_once(
            KVCache(layers=tuple(layers)), np.array([keep], np.int32), np.array([protect_before], np.int32),
            np.array([policy.protected_window(int(n))], np.int32), config=config, allocation=allocation)
        final = plan.final_capacities(config, policy, bucket, min_keep)
        rows.append(CompressedContext(cache=shrink_cache(cache, final), seen=context.seen,
                                      last_logits=context.last_logits))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *rows)
