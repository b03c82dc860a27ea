"""The eviction engine: literal masks and evictions, exactness, static shapes, every scorer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gatekv_jax as gk
from gatekv_jax import inference
from gatekv_jax.cache import LayerCache
from gatekv_jax.eviction import _global_keep, _token_priority, evict_layer, priorities
from gatekv_jax.gate import init_gates
from gatekv_jax.kvzip import RepeatPrompts
from gatekv_jax.models.layers import attend, attention_mask, attention_weights
from gatekv_jax.models.transformer import Attention
from gatekv_jax.policy import SCORERS, EvictionPolicy
from tests.tiny_models import TINY_CONFIGS

V = 97


def tokens_of(batch, length, seed=0):
    return np.random.RandomState(seed).randint(0, V, (batch, length)).astype(np.int32)


def forward_nll(model, tokens, start):
    """NLL of tokens[:, start:] under the plain forward."""
    log_probs = np.asarray(jax.nn.log_softmax(gk.forward(model, tokens), axis=-1))
    return -np.take_along_axis(log_probs[:, start - 1:-1], tokens[:, start:, None], axis=-1)[..., 0]


def test_attention_mask_literal():
    query_positions = jnp.array([[3, 4, -1]])  # the last query is padding
    key_positions = jnp.array([[[0, 1, 2, 3, 4, -1]]])  # the last slot is empty
    expected_causal = [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]]
    expected_window = [[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]]
    np.testing.assert_array_equal(attention_mask(query_positions, key_positions, None)[0, 0], expected_causal)
    np.testing.assert_array_equal(attention_mask(query_positions, key_positions, 3)[0, 0], expected_window)
    # Slot order is free: the same keys stored shuffled give the same mask, shuffled.
    shuffled = jnp.array([[[4, -1, 0, 3, 1, 2]]])
    np.testing.assert_array_equal(attention_mask(query_positions, shuffled, 3)[0, 0],
                                  np.array(expected_window)[:, [4, 5, 0, 3, 1, 2]])


def literal_layer():
    positions = jnp.array([[[0, 1, 2, 3, 4, 5, 6, 7, -1, -1]]])
    scores = jnp.array([[[0.1, 0.9, 0.2, 0.8, 0.05, 0.3, 0.7, 0.6, 0.0, 0.0]]])
    keys = jnp.broadcast_to(positions[..., None].astype(jnp.float32), (1, 1, 10, 2))
    return LayerCache(keys=keys, values=keys * 10, positions=positions, scores=scores,
                      lengths=jnp.array([[8]], jnp.int32))


def test_evict_layer_literal():
    layer = literal_layer()
    priority = priorities(layer, protect_before=jnp.array([1]), recent=jnp.array([2]))
    np.testing.assert_allclose(priority[0, 0], [np.inf, 0.9, 0.2, 0.8, 0.05, 0.3, np.inf, np.inf, -np.inf, -np.inf])
    kept = evict_layer(layer, priority, keep=jnp.array([[5]]))
    np.testing.assert_array_equal(kept.positions[0, 0], [0, 1, 3, 6, 7, -1, -1, -1, -1, -1])  # position order
    np.testing.assert_array_equal(kept.keys[0, 0, :5, 0], [0, 1, 3, 6, 7])
    np.testing.assert_array_equal(kept.values[0, 0, :5, 1], [0, 10, 30, 60, 70])
    np.testing.assert_allclose(kept.scores[0, 0, :5], [0.1, 0.9, 0.8, 0.7, 0.6])
    np.testing.assert_array_equal(kept.lengths, [[5]])


def test_global_threshold_literal():
    a = jnp.array([[[np.inf, 0.9, 0.8, 0.1]]])  # layer 1: one head
    b = jnp.array([[[0.7, 0.6, 0.2, -np.inf]]])  # layer 2: one head
    counts = _global_keep([a, b], keep=jnp.array([3]), head_cap=4)  # 6 slots over both heads
    assert [int(c[0, 0]) for c in counts] == [3, 3]
    capped = _global_keep([a, b], keep=jnp.array([3]), head_cap=2)
    assert [int(c[0, 0]) for c in capped] == [2, 2]


def test_token_level_priority_literal():
    a = jnp.array([[[np.inf, 0.9, 0.8, 0.1, 0.5, -np.inf]]])  # layer 1: ranks 3, 2, 0, 1 of 4 scored
    b = jnp.array([[[np.inf, 0.1, 0.2, 0.9, 0.3, -np.inf]]])  # layer 2: ranks 0, 1, 3, 2
    shared = _token_priority([a, b])
    np.testing.assert_allclose(shared[0, 0], [np.inf, 0.75, 0.5, 0.75, 0.5, -np.inf])
    layer = literal_layer()
    layer = layer.replace(positions=layer.positions[:, :, :6], scores=layer.scores[:, :, :6], keys=layer.keys[:, :, :6],
                          values=layer.values[:, :, :6], lengths=jnp.array([[5]], jnp.int32))
    kept = evict_layer(layer, shared, keep=jnp.array([[3]]))
    np.testing.assert_array_equal(kept.positions[0, 0], [0, 1, 3, -1, -1, -1])  # ties keep the older slot first


def test_token_pool_lends_neighbours_their_best_quantile_literal():
    a = jnp.array([[[np.inf, 0.1, 0.2, 0.9, 0.3, 0.4, 0.0, -np.inf]]])  # quantiles 1, 2, 5, 3, 4, 0 (/6)
    np.testing.assert_allclose(_token_priority([a])[0, 0], [np.inf, 1 / 6, 2 / 6, 5 / 6, 3 / 6, 4 / 6, 0, -np.inf])
    pooled = _token_priority([a], pool=3)[0, 0]  # the +inf sink lends nothing, the empty slot stays empty
    np.testing.assert_allclose(pooled, [np.inf, 2 / 6, 5 / 6, 5 / 6, 5 / 6, 4 / 6, 4 / 6, -np.inf])
    positions = jnp.array([[[0, 1, 2, 3, 4, 5, 6, -1]]], jnp.int32)
    layer = LayerCache(keys=jnp.zeros((1, 1, 8, 2)), values=jnp.zeros((1, 1, 8, 2)), positions=positions,
                       scores=a, lengths=jnp.array([[7]], jnp.int32))
    plain = evict_layer(layer, _token_priority([a]), keep=jnp.array([[4]]))
    np.testing.assert_array_equal(plain.positions[0, 0, :4], [0, 3, 4, 5])
    kept = evict_layer(layer, pooled[None, None], keep=jnp.array([[4]]))
    np.testing.assert_array_equal(kept.positions[0, 0, :4], [0, 2, 3, 4])  # the best token and both neighbours


def test_attention_over_evicted_cache_equals_reference_over_kept_set():
    config = gk.ModelConfig.from_hf({"model_type": "qwen3", "vocab_size": V, "hidden_size": 32,
                                     "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4,
                                     "num_key_value_heads": 2, "head_dim": 8})
    rng = np.random.RandomState(0)
    S, H = 12, 8
    positions = np.tile(np.arange(S, dtype=np.int32), (1, 2, 1))
    layer = LayerCache(keys=jnp.asarray(rng.randn(1, 2, S, H), jnp.float32),
                       values=jnp.asarray(rng.randn(1, 2, S, H), jnp.float32),
                       positions=jnp.asarray(positions), scores=jnp.asarray(rng.rand(1, 2, S), jnp.float32),
                       lengths=jnp.full((1, 2), S, jnp.int32))
    evicted = evict_layer(layer, priorities(layer, jnp.array([2]), jnp.array([3])), jnp.full((1, 2), 7, jnp.int32))
    grown = inference.grow_cache(gk.KVCache(layers=(evicted,)), [S + 1]).layers[0]
    module = Attention(config, 0)
    x = jnp.asarray(rng.randn(1, 1, 32), jnp.float32)
    query_position = jnp.array([[S]])
    params = module.init(jax.random.key(1), x, query_position, grown)
    out, after = module.apply(params, x, query_position, grown)
    # Reference: the new token's q/k/v, attention over exactly the kept (key, value) pairs + itself.
    new_k, new_v = after.keys[:, :, 7:8], after.values[:, :, 7:8]
    q = module.apply(params, x, method=lambda m, x: m.q_norm(m.q_proj(x)))
    q = gk.models.layers.apply_rope(q, query_position, config.rope_full)
    expected_outputs = []
    for head in range(2):
        kept_slots = [s for s in range(S) if s in set(np.asarray(evicted.positions[0, head, :7]).tolist())]
        keys = jnp.concatenate([layer.keys[:, head:head + 1, kept_slots], new_k[:, head:head + 1]], axis=2)
        values = jnp.concatenate([layer.values[:, head:head + 1, kept_slots], new_v[:, head:head + 1]], axis=2)
        mask = jnp.ones((1, 1, 1, len(kept_slots) + 1), bool)
        weights = attention_weights(q[:, :, 2 * head:2 * head + 2], keys, mask, scale=config.query_scale)
        expected_outputs.append(attend(weights, values))
    expected = module.apply(params, jnp.concatenate(expected_outputs, axis=2), method=lambda m, o: m.o_proj(o))
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5)
    assert int(after.lengths[0, 0]) == 8


def test_full_scorer_and_large_budget_equal_plain_forward(tiny_model_dir):
    _, folder = tiny_model_dir
    model = gk.load_model(folder)
    tokens = tokens_of(2, 40)
    expected = forward_nll(model, tokens, 24)
    full = EvictionPolicy(scorer="full", chunk_size=8)
    np.testing.assert_allclose(inference.continuation_nll(model, tokens[:, :24], tokens[:, 24:], full),
                               expected, atol=1e-4)
    gates = init_gates(model.config)
    for scorer in ("gate", "snapkv"):
        roomy = EvictionPolicy(scorer=scorer, budget=1000, chunk_size=8)
        np.testing.assert_allclose(inference.continuation_nll(model, tokens[:, :24], tokens[:, 24:], roomy, gates),
                                   expected, atol=1e-4)


def test_generate_full_equals_greedy_forward(tiny_model_dir):
    _, folder = tiny_model_dir
    model = gk.load_model(folder)
    prompt = tokens_of(1, 11)
    sequence = prompt.copy()
    for _ in range(12):
        next_id = int(np.asarray(gk.forward(model, sequence))[0, -1].argmax())
        sequence = np.concatenate([sequence, [[next_id]]], axis=1).astype(np.int32)
    generated = inference.generate(model, prompt, EvictionPolicy(scorer="full", chunk_size=8),
                                   max_new_tokens=12, stop_tokens=[])
    assert generated == [sequence[0, 11:].tolist()]
    budgeted = EvictionPolicy(scorer="h2o", budget=1000, chunk_size=8, decode_budget=500, decode_recent=8)
    assert inference.generate(model, prompt, budgeted, max_new_tokens=12, stop_tokens=[]) == generated


def test_multi_token_append_over_evicted_cache_equals_one_at_a_time(tiny_model_dir):
    _, folder = tiny_model_dir
    model = gk.load_model(folder)
    tokens = tokens_of(2, 48, seed=3)
    policy = EvictionPolicy(scorer="snapkv", ratio=0.3, chunk_size=8, window=4)
    context = inference.prefill(model, [tokens[0, :32].tolist(), tokens[1, :27].tolist()], policy)
    assert int(context.cache.layers[1].lengths.max()) < 27
    chunked = inference.continuation_nll(model, None, tokens[:, 32:], policy, cache=context)
    one_by_one = inference.continuation_nll(model, None, tokens[:, 32:], policy.__class__(
        **{**policy.__dict__, "chunk_size": 1}), cache=context)
    np.testing.assert_allclose(chunked, one_by_one, atol=1e-5)


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("level", ["head", "global", "token"])
def test_every_scorer_batches_of_one_and_three(tiny_gemma3_dir, scorer, level):
    model = gk.load_model(tiny_gemma3_dir)
    gates = init_gates(model.config, seed=1)
    policy = EvictionPolicy(scorer=scorer, ratio=None if scorer == "full" else 0.3, chunk_size=8, window=4,
                            level=level, decode_budget=24, decode_block=8, decode_recent=8)
    rows = [tokens_of(1, n, seed=n)[0].tolist() for n in (37, 20, 29)]
    prompts = RepeatPrompts(prefix=(5, 6), first=(11, 12, 13), next_head=(21, 22), assistant=(31,))
    for batch in (rows[:1], rows):
        context = inference.prefill(model, batch, policy, gates, repeat_prompts=prompts)
        seen = [len(r) for r in batch]
        for i in model.config.global_layers:
            lengths = np.asarray(context.cache.layers[i].lengths)
            if scorer == "full":
                np.testing.assert_array_equal(lengths, np.repeat(np.array(seen)[:, None], lengths.shape[1], 1))
            elif level in ("head", "token"):
                np.testing.assert_array_equal(lengths[:, 0], [policy.keep_count(n) for n in seen])
        if level == "token" and scorer != "full":  # every gated layer and head holds the same tokens
            first = np.asarray(context.cache.layers[model.config.global_layers[0]].positions)
            for i in model.config.global_layers:
                positions = np.asarray(context.cache.layers[i].positions)
                np.testing.assert_array_equal(positions, np.broadcast_to(first[:, :1], positions.shape))
        if level == "global" and scorer != "full":
            totals = sum(np.asarray(context.cache.layers[i].lengths).sum(axis=1) for i in model.config.global_layers)
            heads = len(model.config.global_layers) * model.config.num_kv_heads
            assert (totals >= np.array([policy.keep_count(n) for n in seen]) * heads).all()
        out = inference.generate(model, None, policy, gates, max_new_tokens=30, cache=context, stop_tokens=[])
        assert [len(o) for o in out] == [30] * len(batch)
        if scorer != "kvzip":  # prefill + decode in one call (kvzip needs its repeat prompts)
            assert inference.generate(model, batch, policy, gates, max_new_tokens=30, stop_tokens=[]) == out
        nll = inference.continuation_nll(model, None, [r[:5] for r in batch], policy, gates, cache=context)
        assert np.isfinite(nll).all()


class CompileCounter:
    """Counts XLA backend compilations while active (jax.monitoring events)."""

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1


def test_tight_budget_still_keeps_whole_sliding_windows():
    """A gated budget below the sliding window must not shrink (or overflow) the sliding layers."""
    config = gk.ModelConfig.from_hf(dict(TINY_CONFIGS["gemma3"]))
    model = gk.Model(config=config, params=gk.init_params(config))
    policy = EvictionPolicy(scorer="streaming", budget=2, chunk_size=8, window=1, sink=1)
    seen = [37, 20, 3]
    context = inference.prefill(model, [tokens_of(1, n, seed=n)[0].tolist() for n in seen], policy)
    for i, layer in enumerate(context.cache.layers):
        lengths = np.asarray(layer.lengths)[:, 0]
        if config.is_sliding(i):
            np.testing.assert_array_equal(lengths, [min(5, n) for n in seen])
            newest = np.asarray(layer.positions).max(axis=(1, 2))
            np.testing.assert_array_equal(newest, np.array(seen) - 1)
        else:
            np.testing.assert_array_equal(lengths, [2, 2, 2])
            assert sorted(np.asarray(layer.positions)[0, 0, :2].tolist()) == [0, 36]  # sink + newest


def test_no_recompilation_across_prompt_lengths_and_300_decode_steps(tiny_model_dir):
    _, folder = tiny_model_dir
    model = gk.load_model(folder)
    gates = init_gates(model.config)
    policy = EvictionPolicy(scorer="gate", ratio=0.4, chunk_size=8, window=4, max_context=64,
                            decode_budget=32, decode_block=8, decode_recent=8)
    counter = CompileCounter()
    inference.generate(model, tokens_of(1, 13), policy, gates, max_new_tokens=300, stop_tokens=[])
    assert counter.count > 0
    after_first_run = counter.count
    for length in (5, 22, 40, 64):
        out = inference.generate(model, tokens_of(1, length, seed=length), policy, gates, max_new_tokens=300,
                                 stop_tokens=[])
        assert len(out[0]) == 300
    assert counter.count == after_first_run


@pytest.mark.parametrize("kwargs, match", [
    (dict(scorer="magic", ratio=0.3), "unknown scorer 'magic'"),
    (dict(scorer="gate"), "exactly one of ratio and budget"),
    (dict(scorer="gate", ratio=1.5), r"ratio must be in \(0, 1\], got 1.5"),
    (dict(scorer="gate", ratio=0.3, level="layer"), "unknown level 'layer'"),
    (dict(scorer="gate", ratio=0.3, level="token", token_pool=2), "token_pool must be odd, got 2"),
    (dict(scorer="gate", ratio=0.3, level="token", token_pool=0), "token_pool must be a positive int, got 0"),
    (dict(scorer="gate", ratio=0.3, chunk_size=0), "chunk_size must be a positive int, got 0"),
    (dict(scorer="gate", ratio=0.3, decode_budget=100), "decode_budget 100 must exceed"),
])
def test_policy_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EvictionPolicy(**kwargs)


def test_gate_scorer_without_gates_is_an_error(tiny_model_dir):
    _, folder = tiny_model_dir
    model = gk.load_model(folder)
    with pytest.raises(ValueError, match="scorer 'gate' needs gates"):
        inference.prefill(model, tokens_of(1, 8), EvictionPolicy(scorer="gate", ratio=0.5))
