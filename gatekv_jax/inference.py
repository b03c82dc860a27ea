"""Running a loaded model: plain forward, compressed prefill, teacher-forced NLL and generation.

Every jitted function sees static shapes: prompts are cut into `policy.chunk_size` chunks (the last
one padded), caches have capacities fixed by the policy and the context-length bucket, and
decoding is one `lax.while_loop`. A new prompt length within a bucket or a new decode step never
recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.cache import EMPTY_POSITION, KVCache, LayerCache, init_cache
from gatekv_jax.eviction import Allocation, evict
from gatekv_jax.gate import check_gates
from gatekv_jax.kvzip import RepeatPrompts, teacher_scores
from gatekv_jax.models.config import ModelConfig
from gatekv_jax.models.loading import Model
from gatekv_jax.models.transformer import Decoder
from gatekv_jax.policy import EvictionPolicy
from gatekv_jax.scorers import ScorerSpec

SLOT_ALIGN = 128  # compressed caches are stored in multiples of this many slots


@functools.lru_cache(maxsize=32)
def _compiled_apply(config: ModelConfig, dtype: Any):
    module = Decoder(config, dtype=dtype)

    def apply(params, tokens, positions, cache):
        return module.apply({"params": params}, tokens, positions, cache)

    return jax.jit(apply, donate_argnums=(3,))


def check_tokens(tokens: Any, vocab_size: int) -> np.ndarray:
    """Validate token ids on the host: int32 [B, T] within the vocabulary."""
    array = np.asarray(tokens)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"tokens must have shape [batch, length] with both > 0, got {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {array.dtype}")
    bad = array[(array < 0) | (array >= vocab_size)]
    if bad.size:
        raise ValueError(f"token id {int(bad[0])} is outside the vocabulary [0, {vocab_size})")
    return array.astype(np.int32)


def padded_positions(batch: int, length: int, lengths: Any = None) -> np.ndarray:
    """Positions [B, T] = 0..T-1 per row, -1 past each row's length (right padding)."""
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy()
    if lengths is None:
        return positions
    lengths = np.asarray(lengths)
    if lengths.shape != (batch,) or (lengths < 1).any() or (lengths > length).any():
        raise ValueError(f"lengths must be {batch} values in [1, {length}], got {lengths.tolist()}")
    positions[positions >= lengths[:, None]] = -1
    return positions


def apply_model(model: Model, tokens: Any, positions: Any, cache: KVCache | None = None):
    """One jitted model call: `(logits [B, T, V] float32, cache)`; the cache argument is donated."""
    fn = _compiled_apply(model.config, jnp.dtype(model.dtype))
    return model.run(fn, model.params, tokens, positions, cache)


def forward(model: Model, tokens: Any, lengths: Any = None) -> jax.Array:
    """Plain causal forward: int tokens [B, T] -> float32 logits [B, T, V] (no cache to manage).

    `lengths` [B] marks right padding for rows shorter than T; logits at padded positions are undefined.
    """
    array = check_tokens(tokens, model.config.vocab_size)
    positions = padded_positions(*array.shape, lengths)
    logits, _ = apply_model(model, jnp.asarray(array), jnp.asarray(positions))
    return logits


# ---------------------------------------------------------------------------------------------
# Compressed prefill, appends without eviction, and the jitted decode loop.
# ---------------------------------------------------------------------------------------------

@flax.struct.dataclass
class CompressedContext:
    """What `prefill` returns: the compressed cache of a context, reusable for many queries.

    cache: the KVCache; seen: [B] context tokens per row; last_logits: [B, V] float32 logits after
    each row's last context token.
    """

    cache: KVCache
    seen: jax.Array
    last_logits: jax.Array

    def memory_report(self) -> dict[str, int]:
        """KV slots and bytes: kept (filled), allocated (capacity) and what a full cache would hold."""
        layers = self.cache.layers
        slot_bytes = 2 * layers[0].keys.shape[-1] * layers[0].keys.dtype.itemsize  # one key + one value
        kept = sum(int(layer.lengths.sum()) for layer in layers)
        allocated = sum(int(np.prod(layer.positions.shape)) for layer in layers)
        full = int(np.asarray(self.seen).sum()) * layers[0].keys.shape[1] * len(layers)
        return {"kept_slots": kept, "allocated_slots": allocated, "full_slots": full,
                "kept_bytes": kept * slot_bytes, "allocated_bytes": allocated * slot_bytes,
                "full_bytes": full * slot_bytes}


def as_batch(tokens: Any, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids as a right-padded int32 array [B, T] and lengths [B] (accepts ragged lists)."""
    if isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], (list, tuple, np.ndarray)):
        rows = [np.asarray(row) for row in tokens]
        if any(row.ndim != 1 or row.size == 0 for row in rows):
            raise ValueError("every row of tokens must be a non-empty 1-D sequence")
        padded = np.zeros((len(rows), max(row.size for row in rows)), np.int64)
        for i, row in enumerate(rows):
            padded[i, :row.size] = row
        lengths = np.array([row.size for row in rows], np.int32)
        check_tokens(np.concatenate(rows)[None], vocab_size)
        return padded.astype(np.int32), lengths
    array = check_tokens(tokens, vocab_size)
    return array, np.full(array.shape[0], array.shape[1], np.int32)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _context_bucket(policy: EvictionPolicy, longest: int) -> int:
    if policy.max_context is not None:
        if longest > policy.max_context:
            raise ValueError(f"context of {longest} tokens exceeds the policy's max_context {policy.max_context}")
        return _round_up(policy.max_context, policy.chunk_size)
    chunks = -(-longest // policy.chunk_size)
    return policy.chunk_size * (1 << (chunks - 1).bit_length())


def _prefill_capacities(config: ModelConfig, policy: EvictionPolicy, bucket: int) -> list[int]:
    keep = policy.keep_count(bucket)
    if not policy.evicts:
        gated = bucket
    elif policy.level == "global":
        gated = min(bucket, math.ceil(policy.global_head_cap * keep)) + policy.chunk_size
    else:
        gated = keep + policy.chunk_size
    sliding = min((config.sliding_window or 0) + policy.chunk_size, bucket)
    return [sliding if config.is_sliding(i) else gated for i in range(config.num_layers)]


def _allocation(config: ModelConfig, policy: EvictionPolicy, bucket: int) -> Allocation:
    """The static allocation of the gated budget; "global" caps each head at its prefill buffer."""
    head_cap = None
    if policy.level == "global" and config.global_layers:
        head_cap = _prefill_capacities(config, policy, bucket)[config.global_layers[0]] - policy.chunk_size
    return Allocation(policy.level, head_cap, policy.token_pool)


def _final_capacities(config: ModelConfig, policy: EvictionPolicy, bucket: int) -> list[int]:
    """Capacities a compressed context is stored with: the gated budget rounded up to SLOT_ALIGN
    slots (the chunk room is dropped), sliding layers exactly their window."""
    prefill_capacities = _prefill_capacities(config, policy, bucket)
    if not policy.evicts:
        return prefill_capacities
    return [min(config.sliding_window, cap) if config.is_sliding(i)
            else min(cap, _round_up(cap - policy.chunk_size, SLOT_ALIGN))
            for i, cap in enumerate(prefill_capacities)]


def shrink_cache(cache: KVCache, capacities: list[int]) -> KVCache:
    """`cache` cut to `capacities` slots per layer; the filled slots (at the front) must fit."""
    layers = []
    for layer, capacity in zip(cache.layers, capacities):
        if capacity < layer.capacity:
            layer = LayerCache(keys=layer.keys[:, :, :capacity], values=layer.values[:, :, :capacity],
                               positions=layer.positions[:, :, :capacity], scores=layer.scores[:, :, :capacity],
                               lengths=layer.lengths)
        layers.append(layer)
    return KVCache(layers=tuple(layers))


def grow_cache(cache: KVCache, capacities: list[int]) -> KVCache:
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


def _scorer_spec(policy: EvictionPolicy) -> ScorerSpec:
    return ScorerSpec(policy.scorer, policy.observation_window, policy.pool_kernel, policy.seed)


@functools.lru_cache(maxsize=32)
def _chunk_step(config: ModelConfig, dtype: Any, spec: ScorerSpec, allocation: Allocation, evict_gated: bool,
                outputs: str):
    """jit(params, gates, cache, tokens, positions, targets, previous_logits, keep, protect_before, recent)
    -> (cache, last_logits [B, V], extra): one chunk appended, then eviction (sliding layers back to
    their window; gated layers to `keep` when `evict_gated`). `outputs` picks extra: "none",
    "nll" (NLL of `targets` [B, C]) or "log_probs" (next-token log-probabilities [B, C, V])."""
    module = Decoder(config, dtype=dtype, scorer=spec)

    def step(params, gates, cache, tokens, positions, targets, previous_logits, keep, protect_before, recent):
        variables = {"params": params}
        hidden, cache = module.apply(variables, tokens, positions, cache, gates, method=Decoder.hidden_states)
        last = jnp.argmax(positions, axis=1)  # [B] index of the newest real token
        picked = jnp.take_along_axis(hidden, last[:, None, None], axis=1)  # [B, 1, D]
        logits = module.apply(variables, picked, method=Decoder.logits)[:, 0]  # [B, V]
        has_token = (positions >= 0).any(axis=1)
        last_logits = jnp.where(has_token[:, None], logits, previous_logits)
        extra = None
        if outputs != "none":
            log_probs = jax.nn.log_softmax(module.apply(variables, hidden, method=Decoder.logits), axis=-1)
            if outputs == "log_probs":
                extra = log_probs  # [B, C, V]
            else:
                picked_lp = jnp.take_along_axis(log_probs, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
                extra = jnp.where(targets >= 0, -picked_lp, jnp.nan)  # [B, C]
        cache = evict(cache, config, keep, protect_before, recent, allocation, evict_gated=evict_gated)
        return cache, last_logits, extra

    return jax.jit(step, donate_argnums=(2,))


def _check_gates_for(model: Model, policy: EvictionPolicy, gates: dict | None) -> dict | None:
    if policy.scorer != "gate":
        return None
    if gates is None:
        raise ValueError("scorer 'gate' needs gates: pass gates=gatekv_jax.load_gates(...) or init_gates(...)")
    check_gates(gates, model.config)
    return gates


def prefill(model: Model, context_tokens: Any, policy: EvictionPolicy, gates: dict | None = None,
            prefix_length: int = 0, repeat_prompts: RepeatPrompts | None = None,
            teacher_memo: dict | None = None) -> CompressedContext:
    """Chunked prefill of a context under `policy`; returns the compressed cache.

    After every chunk, each gated head keeps `policy.keep_count(tokens seen)` slots; the first
    `max(sink, prefix_length)` tokens and the protected recent window are never evicted. The
    `kvzip` oracle needs the teacher's prompts: `repeat_prompts`, or the model's own tokenizer.
    `teacher_memo`: a dict the caller keeps (one per model) so the `kvzip` oracle computes its full
    prefill and teacher scores once per context, however many ratios or budgets evict them.
    """
    gates = _check_gates_for(model, policy, gates)
    tokens, lengths = as_batch(context_tokens, model.config.vocab_size)
    if prefix_length < 0:
        raise ValueError(f"prefix_length must be >= 0, got {prefix_length}")
    if policy.scorer == "kvzip":
        return _kvzip_prefill(model, tokens, lengths, policy, prefix_length, repeat_prompts, teacher_memo)
    config, chunk = model.config, policy.chunk_size
    bucket = _context_bucket(policy, int(lengths.max()))
    capacities = _prefill_capacities(config, policy, bucket)
    cache = init_cache(config, tokens.shape[0], capacities, model.dtype)
    step = _chunk_step(config, jnp.dtype(model.dtype), _scorer_spec(policy), _allocation(config, policy, bucket),
                       policy.evicts, "none")
    batch = tokens.shape[0]
    last_logits = jnp.zeros((batch, config.vocab_size), jnp.float32)
    protect_before = np.full(batch, max(policy.sink, prefix_length), np.int32)
    recent = np.array([policy.protected_window(int(n)) for n in lengths], np.int32)
    dummy_targets = np.full((batch, chunk), -1, np.int32)
    n_chunks = -(-int(lengths.max()) // chunk)
    padded = np.zeros((batch, n_chunks * chunk), np.int32)
    padded[:, :tokens.shape[1]] = tokens
    positions = padded_positions(batch, n_chunks * chunk, lengths)
    for c in range(n_chunks):
        piece = slice(c * chunk, (c + 1) * chunk)
        seen = np.minimum(lengths, (c + 1) * chunk)
        keep = np.array([policy.keep_count(int(s)) for s in seen], np.int32)
        cache, last_logits, _ = model.run(step, model.params, gates, cache, padded[:, piece], positions[:, piece],
                                     dummy_targets, last_logits, keep, protect_before, recent)
    cache = shrink_cache(cache, _final_capacities(config, policy, bucket))
    return CompressedContext(cache=cache, seen=jnp.asarray(lengths), last_logits=last_logits)


def _append(model: Model, context: CompressedContext, tokens: np.ndarray, lengths: np.ndarray,
            policy: EvictionPolicy, gates: dict | None, outputs: str = "none", room: int = 0,
            min_filled: int = 0) -> tuple[CompressedContext, Any]:
    """Append tokens after each row's context without evicting gated layers (sliding layers keep
    their window); returns the new context and, for `outputs="nll"`, the NLL of each next token
    [B, T-1] (numpy), for `outputs="log_probs"` next-token log-probabilities [B, T, V] (device).

    Gated layers are grown to hold the tokens, then `room` more slots beyond max(filled, min_filled).
    """
    config, chunk = model.config, policy.chunk_size
    batch, length = tokens.shape
    if batch != context.seen.shape[0]:
        raise ValueError(f"{batch} rows of tokens for a cache of {context.seen.shape[0]} rows")
    n_chunks = -(-length // chunk)
    filled = [int(layer.lengths.max()) for layer in context.cache.layers]
    capacities = [cap if config.is_sliding(i) else
                  _round_up(max(filled[i] + n_chunks * chunk, min_filled) + room, chunk)
                  for i, cap in enumerate(context.cache.capacities)]
    sliding_capacity = (config.sliding_window or 0) + max(chunk, policy.decode_block)
    capacities = [max(cap, sliding_capacity) if config.is_sliding(i) else cap for i, cap in enumerate(capacities)]
    cache = grow_cache(context.cache, capacities)
    seen = np.asarray(context.seen)
    padded = np.zeros((batch, n_chunks * chunk), np.int32)
    padded[:, :length] = tokens
    offsets = np.arange(n_chunks * chunk, dtype=np.int32)[None]
    positions = np.where(offsets < lengths[:, None], seen[:, None] + offsets, -1).astype(np.int32)
    targets = np.full_like(padded, -1)
    targets[:, :-1] = np.where(offsets[:, 1:] < lengths[:, None], padded[:, 1:], -1)
    step = _chunk_step(config, jnp.dtype(model.dtype), _scorer_spec(policy), Allocation(), False, outputs)
    zeros = np.zeros(batch, np.int32)
    last_logits, pieces = context.last_logits, []
    for c in range(n_chunks):
        piece = slice(c * chunk, (c + 1) * chunk)
        cache, last_logits, extra = model.run(step, model.params, gates, cache, padded[:, piece],
                                              positions[:, piece], targets[:, piece], last_logits, zeros, zeros,
                                              zeros)
        pieces.append(extra)
    new_context = CompressedContext(cache=cache, seen=jnp.asarray(seen + lengths), last_logits=last_logits)
    if outputs == "nll":
        return new_context, np.concatenate([np.asarray(p) for p in pieces], axis=1)[:, :length - 1]
    if outputs == "log_probs":
        return new_context, jnp.concatenate(pieces, axis=1)[:, :length]
    return new_context, None


def continuation_nll(model: Model, context_tokens: Any, continuation_tokens: Any, policy: EvictionPolicy,
                     gates: dict | None = None, cache: CompressedContext | None = None) -> np.ndarray:
    """Per-token NLL [B, M] of a continuation, teacher-forced over the context's compressed cache.

    The context is prefilled under `policy` (or `cache`, from `prefill`, is used as it is); the
    continuation is appended without eviction. Rows shorter than M are padded with NaN.
    """
    gates = _check_gates_for(model, policy, gates)
    if cache is None:
        cache = prefill(model, context_tokens, policy, gates)
    tokens, lengths = as_batch(continuation_tokens, model.config.vocab_size)
    first = jax.nn.log_softmax(cache.last_logits, axis=-1)
    first_nll = -np.asarray(jnp.take_along_axis(first, jnp.asarray(tokens[:, :1]), axis=1))  # [B, 1]
    _, rest = _append(model, cache, tokens, lengths, policy, gates, outputs="nll")
    nll = np.concatenate([first_nll, rest], axis=1).astype(np.float32)
    nll[np.arange(tokens.shape[1])[None] >= lengths[:, None]] = np.nan
    return nll


def continuation_log_probs(model: Model, continuation_tokens: Any, policy: EvictionPolicy,
                           cache: CompressedContext, gates: dict | None = None) -> jax.Array:
    """Next-token log-probabilities [B, M, V] (device array) along a teacher-forced continuation
    appended without eviction to a compressed context: row t is the distribution of token t."""
    gates = _check_gates_for(model, policy, gates)
    tokens, lengths = as_batch(continuation_tokens, model.config.vocab_size)
    first = jax.nn.log_softmax(cache.last_logits, axis=-1)[:, None]  # [B, 1, V]
    if tokens.shape[1] == 1:
        return first
    _, rest = _append(model, cache, tokens[:, :-1], np.maximum(lengths - 1, 0), policy, gates,
                      outputs="log_probs")
    return jnp.concatenate([first, rest], axis=1)


def sample_tokens(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """Next tokens [B] from logits [B, V]: greedy when temperature == 0, else nucleus sampling."""
    greedy = jnp.argmax(logits, axis=-1)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    sorted_logits = -jnp.sort(-scaled, axis=-1)  # [B, V] descending
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    cutoff = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)  # tokens needed to reach top_p
    threshold = jnp.take_along_axis(sorted_logits, jnp.minimum(cutoff, logits.shape[-1] - 1), axis=-1)
    sampled = jax.random.categorical(key, jnp.where(scaled >= threshold, scaled, -jnp.inf), axis=-1)
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


@functools.lru_cache(maxsize=32)
def _decode_loop(config: ModelConfig, dtype: Any, spec: ScorerSpec, max_new_tokens: int, evict_gated: bool):
    """jit(params, gates, cache, logits [B, V], next_positions [B], key, temperature, top_p,
    stop_ids [n], keep [B], protect_before [B], recent [B]) -> (tokens [B, max_new] (-1 after a
    stop), cache): the whole decode loop as one `lax.while_loop`."""
    module = Decoder(config, dtype=dtype, scorer=spec)

    def loop(params, gates, cache, logits, next_positions, key, temperature, top_p, stop_ids, keep,
             protect_before, recent):
        batch = logits.shape[0]

        def make_room(cache):
            full = jnp.stack([(layer.lengths >= layer.capacity).any() for layer in cache.layers]).any()
            return jax.lax.cond(full, lambda c: evict(c, config, keep, protect_before, recent,
                                                      evict_gated=evict_gated), lambda c: c, cache)

        def body(state):
            step, cache, logits, positions, key, done, out = state
            key, sample_key = jax.random.split(key)
            token = sample_tokens(logits, sample_key, temperature, top_p)  # [B]
            out = out.at[:, step].set(jnp.where(done, -1, token))
            done = done | jnp.isin(token, stop_ids)
            cache = make_room(cache)
            step_positions = jnp.where(done, -1, positions)[:, None]  # finished rows take no slot
            new_logits, cache = module.apply({"params": params}, token[:, None], step_positions, cache, gates)
            return step + 1, cache, new_logits[:, 0], positions + 1, key, done, out

        def cond(state):
            step, *_, done, _ = state
            return (step < max_new_tokens) & ~done.all()

        out = jnp.full((batch, max_new_tokens), -1, jnp.int32)
        done = jnp.zeros((batch,), bool)
        state = (jnp.int32(0), cache, logits, next_positions, key, done, out)
        _, cache, _, _, _, _, out = jax.lax.while_loop(cond, body, state)
        return out, cache

    return jax.jit(loop, donate_argnums=(2,))


def generate(model: Model, prompt_tokens: Any, policy: EvictionPolicy, gates: dict | None = None,
             max_new_tokens: int = 64, cache: CompressedContext | None = None, temperature: float = 0.0,
             top_p: float = 1.0, stop_tokens: Any = None, seed: int = 0) -> list[list[int]]:
    """Generate up to `max_new_tokens` per row; returns the new token ids (stop token excluded).

    Without `cache`, the prompt is prefilled under `policy` (compressed). With a `cache` from
    `prefill`, the prompt (e.g. a question; None for nothing) is appended to it without evicting
    the context. While
    decoding, gated layers are evicted back to `policy.decode_budget` whenever a block is full.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and top_p in (0, 1], got {temperature}, {top_p}")
    gates = _check_gates_for(model, policy, gates)
    config = model.config
    stop = config.eos_token_ids if stop_tokens is None else tuple(int(t) for t in stop_tokens)
    budget = policy.decode_budget
    if cache is None:
        context = prefill(model, prompt_tokens, policy, gates)
        batch = context.seen.shape[0]
        tokens, lengths = np.zeros((batch, 0), np.int32), np.zeros(batch, np.int32)
    else:
        context = cache
        batch = context.seen.shape[0]
        if prompt_tokens is None:  # decode straight after the cached context
            tokens, lengths = np.zeros((batch, 0), np.int32), np.zeros(batch, np.int32)
        else:
            tokens, lengths = as_batch(prompt_tokens, config.vocab_size)
    room = max_new_tokens if budget is None else policy.decode_block
    context, _ = _append(model, context, tokens, lengths, policy, gates, room=room,
                         min_filled=budget or 0)
    loop = _decode_loop(config, jnp.dtype(model.dtype), _scorer_spec(policy), max_new_tokens, budget is not None)
    keep = np.full(batch, budget or 0, np.int32)
    out, _ = model.run(loop, model.params, gates, context.cache, context.last_logits, context.seen,
                  jax.random.key(seed), jnp.float32(temperature), jnp.float32(top_p),
                  jnp.asarray(stop or (-1,), jnp.int32), keep, np.full(batch, policy.sink, np.int32),
                  np.full(batch, policy.decode_recent, np.int32))
    rows = []
    for row in np.asarray(out):
        row = row.tolist()
        stop_at = next((i for i, t in enumerate(row) if t in stop or t < 0), len(row))
        rows.append(row[:stop_at])
    return rows


@functools.lru_cache(maxsize=16)
def _evict_once(config: ModelConfig, allocation: Allocation):
    return jax.jit(lambda cache, keep, protect_before, recent: evict(cache, config, keep, protect_before, recent,
                                                                     allocation))


def _kvzip_prefill(model: Model, tokens: np.ndarray, lengths: np.ndarray, policy: EvictionPolicy,
                   prefix_length: int, prompts: RepeatPrompts | None, memo: dict | None) -> CompressedContext:
    """The KVzip oracle: full prefill, teacher scores on the gated slots, one eviction per row.
    `memo` (if given) keeps each row's full prefill and teacher scores for the next policy."""
    from gatekv_jax.models.loading import load_tokenizer

    config = model.config
    if prompts is None:
        if model.source is None:
            raise ValueError("the kvzip scorer needs repeat_prompts (the model has no tokenizer source)")
        prompts = RepeatPrompts.from_tokenizer(load_tokenizer(model.source), config.model_type)
    bucket = _context_bucket(policy, int(lengths.max()))
    full = dataclasses.replace(policy, scorer="full", ratio=None, budget=None, max_context=bucket)
    evict_once = _evict_once(config, _allocation(config, policy, bucket))
    rows = []
    p = prefix_length
    for row, n in zip(tokens, lengths):
        key = (id(model), full, p, prompts, row[:n].tobytes())
        if memo is not None and key in memo:
            context, scores = memo[key]
            context = jax.tree.map(jnp.copy, context)  # later steps may donate the cache's buffers
        else:
            context = prefill(model, row[None, :n], full)
            # A protected prefix in the row is the teacher's prefix; otherwise the chat prefix is prepended.
            row_prompts = dataclasses.replace(prompts, prefix=tuple(int(t) for t in row[:p])) if p else prompts
            scores, _ = teacher_scores(model, row[None, p:n], row_prompts)  # [1, Lg, K, n - p]
            if memo is not None:
                memo[key] = (jax.tree.map(jnp.copy, context), scores)
        layers = list(context.cache.layers)
        for g, i in enumerate(config.global_layers):
            slot_scores = layers[i].scores.at[:, :, p:n].set(jnp.asarray(scores[:, g]))
            layers[i] = layers[i].replace(scores=slot_scores)
        cache = evict_once(
            KVCache(layers=tuple(layers)), np.array([policy.keep_count(int(n))], np.int32),
            np.array([max(policy.sink, prefix_length)], np.int32),
            np.array([policy.protected_window(int(n))], np.int32))
        rows.append(CompressedContext(cache=shrink_cache(cache, _final_capacities(config, policy, bucket)),
                                      seen=context.seen, last_logits=context.last_logits))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *rows)
