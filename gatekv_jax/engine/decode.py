"""`generate`: the decode loop as one jitted loop, with eviction while decoding (and its teacher-forced twin).

The loop's output buffer has a bucketed length (a power of two >= `max_new_tokens`, at least
`MIN_DECODE_BUCKET`) and the number of steps is a traced value, so a new `max_new_tokens` within a
bucket reuses the compiled loop. Sampling settings are static.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.engine import plan
from gatekv_jax.engine.chunks import append
from gatekv_jax.engine.inputs import as_batch
from gatekv_jax.engine.prefill import gates_for, prefill
from gatekv_jax.engine.sampling import Sampling
from gatekv_jax.kv.cache import CompressedContext, KVCache
from gatekv_jax.kv.eviction import Allocation, evict
from gatekv_jax.kv.policy import MAX_SLOTS, EvictionPolicy
from gatekv_jax.kv.scorers import ScorerSpec
from gatekv_jax.models.config import ModelConfig
from gatekv_jax.models.decoder import Decoder
from gatekv_jax.models.loading import Model
from gatekv_jax.utils.sharding import replicated

MIN_DECODE_BUCKET = 16


def decode_bucket(max_new_tokens: int) -> int:
    """Length of the decode loop's output buffer for `max_new_tokens` (a compile key)."""
    return max(MIN_DECODE_BUCKET, 1 << (max_new_tokens - 1).bit_length())


def decode_room(policy: EvictionPolicy, max_new_tokens: int) -> int:
    """Slots gated layers get beyond the context (and prompt) to decode in: the bucket, or one
    `decode_block` when the policy evicts while decoding."""
    return decode_bucket(max_new_tokens) if policy.decode_budget is None else policy.decode_block


def _make_room(cache: KVCache, config: ModelConfig, keep: jax.Array, protect_before: jax.Array, recent: jax.Array,
               allocation: Allocation, evict_gated: bool) -> KVCache:
    """Before a decode step: when any layer is full, evict every layer (gated ones back to `keep` [B]
    by `allocation` when `evict_gated`; sliding ones to their window)."""
    full = jnp.stack([(layer.lengths >= layer.capacity).any() for layer in cache.layers]).any()
    return jax.lax.cond(full, lambda c: evict(c, config, keep, protect_before, recent, allocation,
                                              evict_gated=evict_gated), lambda c: c, cache)


@functools.partial(jax.jit, donate_argnames=("cache",),
                   static_argnames=("config", "dtype", "spec", "sampling", "allocation", "evict_gated", "bucket"))
def decode_loop(params: dict, gates: dict | None, cache: KVCache, logits: jax.Array, next_positions: jax.Array,
                key: jax.Array, max_new_tokens: jax.Array, stop_ids: jax.Array, keep: jax.Array,
                protect_before: jax.Array, recent: jax.Array, *, config: ModelConfig, dtype: Any, spec: ScorerSpec,
                sampling: Sampling, allocation: Allocation, evict_gated: bool, bucket: int
                ) -> tuple[jax.Array, KVCache]:
    """Up to `max_new_tokens` (traced, <= bucket) tokens per row from logits [B, V]:
    `(tokens [B, bucket] with -1 after a stop or the last step, cache)`. When a gated layer is
    full, it is evicted back to `keep` [B] by `allocation` (when `evict_gated`)."""
    module = Decoder(config, dtype=dtype, scorer=spec)
    batch = logits.shape[0]

    def body(state):
        step, cache, logits, positions, key, done, out = state
        key, sample_key = jax.random.split(key)
        token = sampling(logits, sample_key)  # [B]
        out = out.at[:, step].set(jnp.where(done, -1, token))
        done = done | jnp.isin(token, stop_ids)
        cache = _make_room(cache, config, keep, protect_before, recent, allocation, evict_gated)
        step_positions = jnp.where(done, -1, positions)[:, None]  # finished rows take no slot
        new_logits, cache = module.apply({"params": params}, token[:, None], step_positions, cache, gates)
        return step + 1, cache, new_logits[:, 0], positions + 1, key, done, out

    def cond(state):
        step, *_, done, _ = state
        return (step < max_new_tokens) & ~done.all()

    out = jnp.full((batch, bucket), -1, jnp.int32)
    done = jnp.zeros((batch,), bool)
    state = (jnp.int32(0), cache, logits, next_positions, key, done, out)
    _, cache, _, _, _, _, out = jax.lax.while_loop(cond, body, state)
    return replicated(out), cache  # every process reads the tokens


@functools.partial(jax.jit, donate_argnames=("cache",),
                   static_argnames=("config", "dtype", "spec", "allocation", "evict_gated"))
def forced_decode_loop(params: dict, gates: dict | None, cache: KVCache, logits: jax.Array, next_positions: jax.Array,
                       tokens: jax.Array, lengths: jax.Array, keep: jax.Array, protect_before: jax.Array,
                       recent: jax.Array, *, config: ModelConfig, dtype: Any, spec: ScorerSpec,
                       allocation: Allocation, evict_gated: bool) -> tuple[jax.Array, jax.Array, KVCache]:
    """`decode_loop`'s steps fed the given tokens [B, M] (row b's first `lengths[b]`) instead of
    sampled ones, so the cache evolves, evictions included, as generating those tokens would
    make it: `(nll [B, M] of each token given the ones before, predicted [B, M] argmax ids, cache)`
    (NaN and -1 past a row's length)."""
    module = Decoder(config, dtype=dtype, scorer=spec)

    def body(carry, step):
        cache, logits, positions = carry
        token = tokens[:, step]  # [B]
        done = step >= lengths  # [B]
        log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, V]
        nll = -jnp.take_along_axis(log_probs, token[:, None], axis=1)[:, 0]
        predicted = jnp.argmax(logits, axis=-1).astype(jnp.int32)

        def advance(state):
            cache, logits = state
            cache = _make_room(cache, config, keep, protect_before, recent, allocation, evict_gated)
            step_positions = jnp.where(done, -1, positions)[:, None]  # rows past their length take no slot
            new_logits, cache = module.apply({"params": params}, token[:, None], step_positions, cache, gates)
            return cache, jnp.where(done[:, None], logits, new_logits[:, 0])

        # the bucket's padded steps after every row is done neither evict nor append, as generate stops
        cache, logits = jax.lax.cond(done.all(), lambda state: state, advance, (cache, logits))
        return (cache, logits, positions + 1), (jnp.where(done, jnp.nan, nll), jnp.where(done, -1, predicted))

    (cache, _, _), (nll, predicted) = jax.lax.scan(body, (cache, logits, next_positions),
                                                   jnp.arange(tokens.shape[1]))
    return replicated(nll.T), replicated(predicted.T), cache


def check_generation_room(model: Model, context: CompressedContext, new_slots: int, max_new_tokens: int) -> None:
    """Refuse, before allocating, a generation whose positions leave int32 or whose cache growth
    (`new_slots` per gated head) exceeds the device memory a backend reports (TPU, GPU)."""
    last = int(np.asarray(context.seen).max()) + new_slots
    if last > MAX_SLOTS:
        raise ValueError(f"max_new_tokens {max_new_tokens} after {int(np.asarray(context.seen).max())} context "
                         f"tokens passes the largest position {MAX_SLOTS}")
    config, layer = model.config, context.cache.layers[0]
    growth = (new_slots * len(config.full_attention_layers) * layer.keys.shape[0] * config.num_kv_heads
              * config.head_dim * 2 * layer.keys.dtype.itemsize)
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats and growth > stats["bytes_limit"] - stats.get("bytes_in_use", 0):
        raise ValueError(f"max_new_tokens {max_new_tokens} grows the KV cache by {growth / 2**30:.1f} GiB, more than "
                         f"the device has free; set policy.decode_budget to evict while decoding")


def generate(model: Model, prompt_tokens: Any, policy: EvictionPolicy, *, gates: dict | None = None,
             context: CompressedContext | None = None, max_new_tokens: int = 64, temperature: float = 0.0,
             top_p: float = 1.0, stop_tokens: Any = None, seed: int = 0) -> list[list[int]]:
    """Generate up to `max_new_tokens` per row; returns the new token ids (stop token excluded).

    Without `context`, the prompt is prefilled under `policy` (compressed). With a `context` from
    `prefill`, the prompt (e.g. a question; None for nothing) is appended to it without evicting
    the context. While decoding, gated layers are evicted back to `policy.decode_budget` whenever
    a block is full. `stop_tokens`: ids that end a row (default: the model's EOS ids).
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    sampling = Sampling(temperature, top_p)
    gates = gates_for(model, policy, gates)
    config = model.config
    stop = config.eos_token_ids if stop_tokens is None else tuple(int(t) for t in stop_tokens)
    if any(not 0 <= t < config.vocab_size for t in stop):
        raise ValueError(f"stop tokens {list(stop)} must be ids in [0, {config.vocab_size})")
    if context is None:
        context = prefill(model, prompt_tokens, policy, gates=gates)
        prompt_tokens = None
    batch = context.seen.shape[0]
    if prompt_tokens is None:  # decode straight after the context
        tokens, lengths = np.zeros((batch, 0), np.int32), np.zeros(batch, np.int32)
    else:
        tokens, lengths = as_batch(prompt_tokens, config.vocab_size)
    budget = policy.decode_budget
    bucket = decode_bucket(max_new_tokens)
    room = decode_room(policy, max_new_tokens)
    check_generation_room(model, context, tokens.shape[1] + room, max_new_tokens)
    context, _ = append(model, context, tokens, lengths, policy, gates, room=room, min_filled=budget or 0)
    out, _ = model.run(
        decode_loop, model.params, gates, context.cache, context.last_logits, context.seen, jax.random.key(seed),
        np.int32(max_new_tokens), jnp.asarray(stop or (-1,), jnp.int32), np.full(batch, budget or 0, np.int32),
        np.full(batch, policy.sink, np.int32), np.full(batch, policy.decode_recent, np.int32),
        config=config, dtype=jnp.dtype(model.dtype), spec=plan.scorer_spec(policy), sampling=sampling,
        allocation=plan.decode_allocation(policy), evict_gated=budget is not None, bucket=bucket)
    rows = []
    for row in np.asarray(out):
        row = row.tolist()
        stop_at = next((i for i, t in enumerate(row) if t in stop or t < 0), len(row))
        rows.append(row[:stop_at])
    return rows
