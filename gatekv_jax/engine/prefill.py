"""`prefill`: compress a context once under an eviction policy, for many later queries."""

from __future__ import annotations

from typing import Any

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


def prefill(model: Model, context_tokens: Any, policy: EvictionPolicy, *, gates: dict | None = None,
            prefix_length: int = 0, repeat_prompts: RepeatPrompts | None = None,
            teacher_memo: TeacherMemo | None = None) -> CompressedContext:
    """Chunked prefill of a context under `policy`; returns the compressed context.

    context_tokens: [B, T] ids or a list of rows of different lengths. After every chunk, each
    gated head keeps `policy.keep_count(tokens seen)` slots; the first `max(sink, prefix_length)`
    tokens and the protected recent window are never evicted. The `kvzip` oracle needs the
    teacher's prompts: `repeat_prompts`, or the model's own tokenizer; `teacher_memo` (one per
    model) lets it compute each context's teacher once, however many ratios or budgets evict it.
    """
    gates = gates_for(model, policy, gates)
    tokens, lengths = as_batch(context_tokens, model.config.vocab_size)
    if prefix_length < 0:
        raise ValueError(f"prefix_length must be >= 0, got {prefix_length}")
    if policy.scorer == "kvzip":
        return oracle_prefill(model, tokens, lengths, policy, prefix_length, repeat_prompts, teacher_memo)
    return prefill_chunks(model, tokens, lengths, policy, gates, prefix_length)
