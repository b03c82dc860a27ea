"""Eviction: literal priorities, per-head / global / token allocations, attention over evicted caches."""

import jax
import jax.numpy as jnp
import numpy as np

import gatekv_jax as gk
from gatekv_jax.kv.cache import LayerCache, grow_cache
from gatekv_jax.kv.eviction import _global_keep, _token_priority, evict_layer, priorities
from gatekv_jax.models.decoder import Attention
from gatekv_jax.models.layers import apply_rope, attend, attention_weights

V = 97


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


def test_token_level_score_ranking_compares_scores_across_layers_literal():
    """By score a token keeps its best raw score over layers, so a layer whose scores are all low
    (the quantiles would still give its best token 0.75) lends its tokens little."""
    a = jnp.array([[[np.inf, 0.9, 0.8, 0.1, 0.5, -np.inf]]])
    b = jnp.array([[[np.inf, 0.01, 0.02, 0.04, 0.03, -np.inf]]])
    np.testing.assert_allclose(_token_priority([a, b], rank="score")[0, 0], [np.inf, 0.9, 0.8, 0.1, 0.5, -np.inf])
    np.testing.assert_allclose(_token_priority([a, b])[0, 0], [np.inf, 0.75, 0.5, 0.75, 0.5, -np.inf])
    pooled = _token_priority([a, b], pool=3, rank="score")[0, 0]  # protected and empty slots lend nothing
    np.testing.assert_allclose(pooled, [np.inf, 0.9, 0.9, 0.8, 0.5, -np.inf])


def test_token_level_either_ranking_keeps_the_top_of_both_rankings_literal():
    """"either" ranks each token by the better of its best-score rank and its best-quantile rank
    (each a quantile over the row's 4 scored slots): the weak layer's best token (slot 3, low by
    score) and the strong layer's best (slot 1) both come first."""
    a = jnp.array([[[np.inf, 0.9, 0.8, 0.1, 0.5, -np.inf]]])  # by score: slot ranks 3, 2, 0, 1
    b = jnp.array([[[np.inf, 0.01, 0.02, 0.04, 0.03, -np.inf]]])  # best quantiles -> ranks 2, 0, 3, 1
    either = _token_priority([a, b], rank="either")[0, 0]
    np.testing.assert_allclose(either, [np.inf, 0.75, 0.5, 0.75, 0.25, -np.inf])
    assert set(np.argsort(-np.asarray(either[1:5]), stable=True)[:2] + 1) == {1, 3}
    assert set(np.argsort(-np.asarray(_token_priority([a, b], rank="score")[0, 0, 1:5]))[:2] + 1) == {1, 2}


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
    grown = grow_cache(gk.KVCache(layers=(evicted,)), [S + 1]).layers[0]
    module = Attention(config, 0)
    x = jnp.asarray(rng.randn(1, 1, 32), jnp.float32)
    query_position = jnp.array([[S]])
    params = module.init(jax.random.key(1), x, query_position, grown)
    out, after = module.apply(params, x, query_position, grown)
    # Reference: the new token's q/k/v, attention over exactly the kept (key, value) pairs + itself.
    new_k, new_v = after.keys[:, :, 7:8], after.values[:, :, 7:8]
    q = module.apply(params, x, method=lambda m, x: m.q_norm(m.q_proj(x)))
    q = apply_rope(q, query_position, config.rope_full)
    expected_outputs = []
    for head in range(2):
        kept_slots = [s for s in range(S) if s in set(np.asarray(evicted.positions[0, head, :7]).tolist())]
        keys = jnp.concatenate([layer.keys[:, head:head + 1, kept_slots], new_k[:, head:head + 1]], axis=2)
        values = jnp.concatenate([layer.values[:, head:head + 1, kept_slots], new_v[:, head:head + 1]], axis=2)
        mask = jnp.ones((1, 1, 1, len(kept_slots) + 1), bool)
        weights = attention_weights(q[:, :, 2 * head:2 * head + 2], keys, mask, scale=config.query_scale)
        expected_outputs.append(attend(weights, values))  # [1, 1, 1, G, H]
    expected = module.apply(params, jnp.concatenate(expected_outputs, axis=1), method=lambda m, o: m.o_proj(o))
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5)
    assert int(after.lengths[0, 0]) == 8
