"""The pure steps for user loops: a hand-written jitted prefill equals the engine's, and compiles once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gatekv_jax as gk
from gatekv_jax.engine import plan
from gatekv_jax.kv.gate import init_gates

CHUNK = 8


def user_prefill(model, policy, gates, tokens, lengths, traces):
    """A user's own loop: one jitted step (decoder_step + evict_cache) per chunk of every row."""
    config = model.config
    bucket = plan.context_bucket(policy, int(lengths.max()))
    cache = gk.init_cache(config, len(tokens), plan.prefill_capacities(config, policy, bucket))

    @jax.jit
    def step(params, gates, cache, chunk_tokens, chunk_positions, keep, recent):
        traces.append(1)  # runs once per trace
        logits, cache = gk.decoder_step(params, gates, cache, chunk_tokens, chunk_positions, config=config,
                                        policy=policy)
        return logits, gk.evict_cache(cache, config, policy, keep, recent=recent)

    window = np.array([policy.protected_window(int(n)) for n in lengths], np.int32)
    # the engine's rule: every eviction keeps the row's final budget (never fewer than its protected
    # tokens) and protects only the row's last `window` tokens, as they arrive
    final = np.array([plan.protected_keep(policy, int(n), policy.sink, int(w)) for n, w in zip(lengths, window)])
    for start in range(0, tokens.shape[1], CHUNK):
        positions = np.arange(start, start + CHUNK)[None, :].repeat(len(tokens), 0)
        positions = np.where(positions < lengths[:, None], positions, -1).astype(np.int32)
        seen = np.minimum(lengths, start + CHUNK)
        keep = np.minimum(final, seen).astype(np.int32)
        recent = np.maximum(window - (lengths - seen), 0).astype(np.int32)
        _, cache = step(model.params, gates, cache, jnp.asarray(tokens[:, start:start + CHUNK]), positions, keep,
                        recent)
    return cache


def kept_positions(layer, row, head):
    positions = np.asarray(layer.positions[row, head])
    return sorted(positions[positions >= 0].tolist())


@pytest.mark.parametrize("level", ["token", "head", "global"])
def test_user_loop_equals_engine_prefill(tiny_gemma3_dir, level):
    model = gk.load_model(tiny_gemma3_dir)
    gates = init_gates(model.config, seed=1)
    policy = gk.EvictionPolicy(scorer="gate", ratio=0.4, chunk_size=CHUNK, level=level, window=3)
    tokens = np.random.RandomState(0).randint(0, 97, (2, 40)).astype(np.int32)
    lengths = np.array([40, 29])
    engine = gk.prefill(model, [tokens[0].tolist(), tokens[1, :29].tolist()], policy, gates=gates)
    traces = []
    mine = user_prefill(model, policy, gates, tokens, lengths, traces)
    assert len(traces) == 1  # five chunks, different keep counts per chunk: one compilation
    for layer_engine, layer_mine in zip(engine.cache.layers, mine.layers):
        for row in range(2):
            for head in range(model.config.num_kv_heads):
                assert kept_positions(layer_engine, row, head) == kept_positions(layer_mine, row, head)
    gated = [np.asarray(mine.layers[i].lengths) for i in model.config.full_attention_layers]  # [B, K] each
    kept = np.stack(gated).sum(axis=(0, 2)) if level == "global" else gated[0][:, 0]
    scale = sum(g.shape[1] for g in gated) if level == "global" else 1  # global: one budget over all heads
    assert kept.tolist() == [16 * scale, 12 * scale]  # ceil(0.4 x 40), ceil(0.4 x 29)


def test_decoder_step_on_an_empty_cache_equals_forward(tiny_gemma3_dir):
    model = gk.load_model(tiny_gemma3_dir)
    tokens = np.random.RandomState(1).randint(0, 97, (1, 12)).astype(np.int32)
    cache = gk.init_cache(model.config, 1, 16)
    policy = gk.EvictionPolicy(scorer="full")
    logits, cache = jax.jit(lambda c: gk.decoder_step(model.params, None, c, tokens, np.arange(12)[None],
                                                      config=model.config, policy=policy))(cache)
    np.testing.assert_allclose(logits, gk.forward(model, tokens), atol=1e-5)
    assert np.asarray(cache.layers[0].lengths).tolist() == [[12] * model.config.num_kv_heads]


def test_a_cache_made_under_a_mesh_needs_no_second_compilation(tiny_gemma3_dir):
    model = gk.load_model(tiny_gemma3_dir, mesh=gk.make_mesh(data=2, fsdp=-1))
    policy = gk.EvictionPolicy(scorer="streaming", budget=8)
    traces = []

    @jax.jit
    def step(cache, tokens, positions):
        traces.append(1)
        _, cache = gk.decoder_step(model.params, None, cache, tokens, positions, config=model.config, policy=policy)
        return gk.evict_cache(cache, model.config, policy, 8, recent=2)

    tokens = np.zeros((2, 4), np.int32)
    with jax.set_mesh(model.mesh):
        cache = gk.init_cache(model.config, 2, 12)
        assert cache.layers[0].keys.sharding.spec[0] == "data"  # batch rows over the data axis
        for start in range(0, 12, 4):
            cache = step(cache, tokens, np.arange(start, start + 4)[None].repeat(2, 0))
    assert len(traces) == 1
