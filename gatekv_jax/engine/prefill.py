"""`prefill`: compress a context once under an eviction policy, for many later queries."""

from __future__ import annotations

from typing import Any

import numpy as np

from gatekv_jax.engine.chunks import prefill_chunks
from gatekv_jax.engine.inputs import as_batch
from gatekv_jax.engine.oracle import TeacherMemo, oracle_prefill
from gatekv_jax.engine.teacher import RepeatPrompts
from gatekv_jax.kv.cache import CompressedContext
from gatekv_jax.kv.gate import check_gates
from gatekv_jax.kv.policy import EvictionPolicy
from gatekv_jax.models.loading import Model


def gates_for(model: Model, policy: EvictionPolicy, gates: dict | None) -> dict | None:
    """The gates a policy needs (checked against the model), or None for scorers that need none."""
    if policy.scorer != "gate":
        return None
    if gates is None:
        raise ValueError("scorer 'gate' needs gates: pass gates=gatekv_jax.load_gates(...) or init_gates(...)")
    check_gates(gates, model.config)
    return gates


def check_prefix(lengths: np.ndarray, prefix_length: int) -> None:
    """Refuse a protected prefix that is not an int >= 0 or is longer than a context."""
    if not isinstance(prefix_length, int) or isinstance(prefix_length, bool) or prefix_length < 0:
        raise ValueError(f"prefix_length must be an int >= 0, got {prefix_length!r}")
    if prefix_length > int(lengths.min()):
        raise ValueError(f"prefix_length {prefix_length} is longer than the shortest context ({int(lengths.min())} "
                         "tokens)")


def prefill(model: Model, context_tokens: Any, policy: EvictionPolicy, *, gates: dict | None = None,
            prefix_length: int = 0, repeat_prompts: RepeatPrompts | None = None,
            teacher_memo: TeacherMemo | None = None) -> CompressedContext:
    """Chunked prefill of a context under `policy`; returns the compressed context.

    context_tokens: [B, T] ids or a list of rows of different lengths. After every chunk, each
    gated head keeps at most `policy.keep_count(row length)` slots, the final budget (so for fixed
    scores the result equals one eviction after the whole context); the first `max(sink, prefix_length)`
    tokens and the protected recent window are never evicted (a budget smaller than they are
    grows to hold them). The `kvzip` oracle needs the
    teacher's prompts: `repeat_prompts`, or the model's own tokenizer; `teacher_memo` (one per
    model) lets it compute each context's teacher once, however many ratios or budgets evict it.
    """
    gates = gates_for(model, policy, gates)
    tokens, lengths = as_batch(context_tokens, model.config.vocab_size)
    check_prefix(lengths, prefix_length)
    if policy.scorer == "kvzip":
        return oracle_prefill(model, tokens, lengths, policy, prefix_length, repeat_prompts, teacher_memo)
    return prefill_chunks(model, tokens, lengths, policy, gates, prefix_length)
