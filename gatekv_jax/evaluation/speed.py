"""Speed of the engine: prefill and decode rates, the gate's own cost, compiles, KV bytes.

Every rate is the best of `repeats` runs after a warm-up run (which compiles). Decode rates come
from the difference of two generation lengths, `(n_long - n_short) / (t_long - t_short)`, so the
one-off costs of a call (growing the cache, dispatch, the host's work) cancel; the PyTorch peer
(`gatekv_jax.evaluation.peer`) is timed the same way. Models are named shapes with random weights
(speed does not depend on the values; stop tokens are off, so every run generates its full length)
or any source `load_model` reads.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.engine import plan
from gatekv_jax.engine.decode import decode_room, generate
from gatekv_jax.engine.prefill import prefill
from gatekv_jax.engine.steps import decoder_step
from gatekv_jax.kv.cache import EMPTY_POSITION, CompressedContext, KVCache, LayerCache, grow_cache, init_cache
from gatekv_jax.kv.gate import gate_scores, init_gates
from gatekv_jax.kv.policy import EvictionPolicy
from gatekv_jax.models.config import ModelConfig
from gatekv_jax.models.loading import Model, load_model
from gatekv_jax.models.params import init_params

# Transformers configs of the benchmark's model shapes (random weights).
BENCH_SHAPES: dict[str, dict[str, Any]] = {
    # Gemma 3 270M: 18 layers, every 6th global, sliding window 512, one KV head of 256.
    "gemma3-270m": dict(
        model_type="gemma3_text", vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, rms_norm_eps=1e-6, max_position_embeddings=32768,
        sliding_window=512, query_pre_attn_scalar=256,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0),
    # Qwen3-0.6B: 28 layers, all global, 8 KV heads of 128: the KV cache dominates long contexts.
    "qwen3-0.6b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
        max_position_embeddings=40960, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645),
    # Small stand-ins of the two, for the benchmark's CI mode.
    "tiny-gemma3": dict(
        model_type="gemma3_text", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, rms_norm_eps=1e-6, max_position_embeddings=4096,
        sliding_window=64, query_pre_attn_scalar=32,
        layer_types=["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(6)],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0),
    "tiny-qwen3": dict(
        model_type="qwen3", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=1),
}

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter(contextlib.AbstractContextManager):
    """Counts XLA compilations (of any function) while the block runs: `with CompileCounter() as c: ...; c.count`."""

    def __init__(self):
        self.count = 0

    def _listener(self, event: str, duration: float, **kwargs) -> None:
        if event == COMPILE_EVENT:
            self.count += 1

    def __enter__(self) -> "CompileCounter":
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)


def bench_model(name: str, dtype: str = "float32", seed: int = 0) -> Model:
    """A model of a `BENCH_SHAPES` shape with random weights, or any source `load_model` reads."""
    if name not in BENCH_SHAPES:
        return load_model(name, dtype=dtype)
    config = ModelConfig.from_hf(BENCH_SHAPES[name])
    return Model(config=config, params=init_params(config, seed=seed, dtype=jnp.dtype(dtype)), dtype=jnp.dtype(dtype),
                 source=name)


def random_tokens(config: ModelConfig, length: int, seed: int) -> np.ndarray:
    """A prompt [1, length] of random token ids (special tokens included: speed does not care)."""
    return np.random.default_rng(seed).integers(0, config.vocab_size, (1, length)).astype(np.int32)


def best_time(run: Callable[[], Any], repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls (each waits for its device work)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return min(times)


def decode_rate(run: Callable[[int], Any], n_short: int, n_long: int, repeats: int) -> float:
    """Tokens per second of `run(n)` (generates n tokens) from two lengths, so one-off costs cancel."""
    return rate_from(n_short, best_time(lambda: run(n_short), repeats), n_long, best_time(lambda: run(n_long), repeats))


def rate_from(n_short: int, t_short: float, n_long: int, t_long: float) -> float:
    """Tokens per second from the times of two generation lengths."""
    if t_long <= t_short:
        raise RuntimeError(f"generating {n_long} tokens took {t_long:.4f} s, no longer than {n_short} tokens "
                           f"({t_short:.4f} s): the timings are noise; use lengths further apart")
    return (n_long - n_short) / (t_long - t_short)


def kv_bytes(cache: KVCache) -> int:
    """Bytes of the keys and values a cache holds in its buffers (allocated slots, filled or not)."""
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def prefill_kv_bytes(config: ModelConfig, policy: EvictionPolicy, context_length: int, dtype: Any) -> int:
    """Key and value bytes a chunked prefill of one `context_length`-token row holds between chunks,
    from the shapes the engine allocates (its peak: the buffers never change size during a prefill)."""
    bucket = plan.context_bucket(policy, context_length)
    min_keep = plan.bucket_keep(policy, bucket, policy.sink)
    capacities = plan.prefill_capacities(config, policy, bucket, min_keep)
    cache = jax.eval_shape(lambda: init_cache(config, 1, capacities, dtype))
    return sum(math.prod(layer.keys.shape) * 2 * jnp.dtype(layer.keys.dtype).itemsize for layer in cache.layers)


def params_bytes(model: Model) -> int:
    return sum(leaf.nbytes for leaf in jax.tree.leaves(model.params))


def policies(ratio: float) -> dict[str, EvictionPolicy]:
    """The benchmark's policies: the full cache and the gate at `ratio` kept."""
    return {"full": EvictionPolicy(scorer="full"), "gate": EvictionPolicy(scorer="gate", ratio=ratio)}


def gate_cost(model: Model, gates: dict, context: int, chunk: int, repeats: int) -> dict[str, float]:
    """The gate's own cost, isolated: the time of every gated layer's `gate_scores` for a prefill
    chunk of `chunk` tokens, and for one decode token, over the time of the decoder step (no gate)
    over a cache of `context` filled tokens that appends them (0.01 = 1%). A difference of two
    whole steps cannot resolve it: it is far below the steps' run-to-run drift."""
    config, dtype = model.config, model.dtype
    cost = dict(context=context, chunk=chunk)
    scores = jax.jit(lambda hidden: [gate_scores(gates[f"layer_{i}"], hidden) for i in config.full_attention_layers])
    step = jax.jit(functools.partial(decoder_step, config=config, policy=EvictionPolicy(scorer="full"), dtype=dtype),
                   donate_argnames=("cache",))
    for name, length in (("prefill_chunk", chunk), ("decode_step", 1)):
        tokens = jnp.asarray(random_tokens(config, length, seed=length))
        positions = jnp.arange(context, context + length, dtype=jnp.int32)[None]
        filled = filled_context(model, context, context).cache
        state = [grow_cache(filled, [layer.capacity + length for layer in filled.layers])]

        def run_step(tokens=tokens, positions=positions, state=state):
            logits, state[0] = step(model.params, None, state[0], tokens, positions)
            return logits

        hidden = jax.random.normal(jax.random.key(length), (1, length, config.hidden_size), jnp.float32).astype(dtype)
        jax.block_until_ready((run_step(), scores(hidden)))  # compiles
        cost[name] = best_time(lambda: scores(hidden), 10 * repeats) / best_time(run_step, 5 * repeats)
    return cost


def gates_for_bench(model: Model, gates: str) -> dict:
    """`"random"`: fresh gates (their cost is what the benchmark measures); otherwise a gates file or
    "packaged"."""
    if gates == "random":
        return init_gates(model.config)
    from gatekv_jax.engine.prefill import gates_for

    return gates_for(model, EvictionPolicy(scorer="gate", ratio=0.5), None if gates == "packaged" else gates)


def bench_prefill(model: Model, gates: dict, lengths: list[int], ratio: float, repeats: int) -> list[dict]:
    """Prefill rate, compiles after warm-up and KV bytes per (policy, context length).

    The warm-up prompt is 1/8 shorter than the timed one (the same bucket), so the compile count
    of the timed runs shows that another length in a bucket does not compile."""
    rows = []
    for length in lengths:
        for name, policy in policies(ratio).items():
            tokens = random_tokens(model.config, length, seed=length)
            jax.block_until_ready(prefill(model, tokens[:, :length - length // 8], policy, gates=gates).cache)
            last = []

            def run(tokens=tokens, policy=policy, last=last):
                last[:] = [prefill(model, tokens, policy, gates=gates)]
                return last[0].cache

            with CompileCounter() as compiles:
                seconds = best_time(run, repeats)
            report = last[0].memory_report()
            rows.append(dict(policy=name, context=length, seconds=seconds, tokens_per_s=length / seconds,
                             compiles_after_warmup=compiles.count, kept_kv_bytes=report["kept_bytes"],
                             allocated_kv_bytes=report["allocated_bytes"], full_kv_bytes=report["full_bytes"],
                             prefill_peak_kv_bytes=prefill_kv_bytes(model.config, policy, length, model.dtype)))
    return rows


def bench_decode(model: Model, gates: dict, contexts: list[int], ratio: float, n_short: int, n_long: int,
                 repeats: int) -> list[dict]:
    """Greedy decode rate after a prefilled context, per (policy, context length), with the bytes a
    step reads (weights + allocated KV) and the compiles after warm-up."""
    rows = []
    for length in contexts:
        for name, policy in policies(ratio).items():
            context = prefill(model, random_tokens(model.config, length, seed=length), policy, gates=gates)
            rows.append(dict(policy=name, context=length, **_decode(model, gates, policy, context, n_short, n_long,
                                                                     repeats),
                             kept_kv_bytes=context.memory_report()["kept_bytes"]))
    return rows


def _decode(model: Model, gates: dict, policy: EvictionPolicy, context: CompressedContext, n_short: int, n_long: int,
            repeats: int) -> dict:
    def run(n):
        return generate(model, None, policy, gates=gates, context=context, max_new_tokens=n, stop_tokens=[])

    for n in (n_short, n_long):  # warm-up: one compiled loop per length bucket
        run(n)
    with CompileCounter() as compiles:
        rate = decode_rate(run, n_short, n_long, repeats)
    return dict(tokens_per_s=rate, compiles_after_warmup=compiles.count,
                bytes_per_step=params_bytes(model) + decode_kv_bytes(model.config, policy, context, n_long))


def decode_kv_bytes(config: ModelConfig, policy: EvictionPolicy, context: CompressedContext, new_tokens: int) -> int:
    """Key and value bytes one step of `generate(..., context=context, max_new_tokens=new_tokens)`
    reads: every slot of the cache it decodes with (attention reads empty slots too)."""
    filled = [int(layer.lengths.max()) for layer in context.cache.layers]
    capacities = plan.append_capacities(config, policy, context.cache.capacities, filled, 0,
                                        decode_room(policy, new_tokens), policy.decode_budget or 0)
    layer = context.cache.layers[0]
    return sum(capacities) * 2 * layer.keys.shape[1] * layer.keys.shape[3] * layer.keys.dtype.itemsize


def filled_context(model: Model, tokens: int, kept: int, seed: int = 0) -> CompressedContext:
    """A context as if `tokens` tokens were prefilled and `kept` of them (spread evenly, the last
    always) survived in every gated layer (sliding layers: the last `window`): random keys and
    values, built on the device without a prefill."""
    config = model.config
    K, H = config.num_kv_heads, config.head_dim
    block = jax.random.normal(jax.random.key(seed), (1, K, plan.SLOT_ALIGN, H), jnp.float32).astype(model.dtype)

    def layer(sliding: bool) -> LayerCache:
        filled = min(kept, config.sliding_window) if sliding else kept
        capacity = -(-filled // plan.SLOT_ALIGN) * plan.SLOT_ALIGN
        positions = np.full(capacity, EMPTY_POSITION, np.int32)
        positions[:filled] = (np.arange(tokens - filled, tokens) if sliding else
                              np.unique(np.linspace(0, tokens - 1, filled).round().astype(np.int32)))
        slots = jnp.tile(block, (1, 1, capacity // plan.SLOT_ALIGN, 1))  # [1, K, S, H]
        return LayerCache(keys=slots, values=slots * 0.5, positions=jnp.broadcast_to(positions, (1, K, capacity)),
                          scores=jnp.ones((1, K, capacity), jnp.float32), lengths=jnp.full((1, K), filled, jnp.int32))

    cache = KVCache(layers=tuple(jax.jit(layer, static_argnums=0)(config.is_sliding(i))
                                 for i in range(config.num_layers)))
    logits = jax.random.normal(jax.random.key(seed + 1), (1, config.vocab_size), jnp.float32)
    return CompressedContext(cache=cache, seen=jnp.array([tokens], jnp.int32), last_logits=logits)


def bench_scale(model: Model, gates: dict, caches: list[int], ratio: float, n_short: int, n_long: int,
                repeats: int) -> list[dict]:
    """Decode rate with caches filled directly (decode speed depends on the cache's size, not its
    content), full against `ratio` kept, and the peak KV bytes a chunked prefill of that length holds."""
    rows = []
    for tokens in caches:
        for name, policy in policies(ratio).items():
            kept = policy.keep_count(tokens)
            context = filled_context(model, tokens, kept)
            rows.append(dict(policy=name, context=tokens, kept_tokens=kept,
                             **_decode(model, gates, policy, context, n_short, n_long, repeats),
                             context_kv_bytes=kv_bytes(context.cache),
                             prefill_peak_kv_bytes=prefill_kv_bytes(model.config, policy, tokens, model.dtype)))
            del context
    return rows


def device_peak_bytes() -> int | None:
    """Peak bytes in use on the default device so far, where the backend reports it (GPU, TPU; not the CPU)."""
    return (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
