"""The engine: exactness against the plain forward, static shapes, every scorer and level, batches."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gatekv_jax as gk
from gatekv_jax import engine as inference
from gatekv_jax.engine import plan
from gatekv_jax.engine.teacher import RepeatPrompts
from gatekv_jax.kv.gate import init_gates
from gatekv_jax.kv.policy import SCORERS, EvictionPolicy
from tests.tiny_models import TINY_CONFIGS

V = 97


def tokens_of(batch, length, seed=0):
    return np.random.RandomState(seed).randint(0, V, (batch, length)).astype(np.int32)


def forward_nll(model, tokens, start):
    """NLL of tokens[:, start:] under the plain forward."""
    log_probs = np.asarray(jax.nn.log_softmax(gk.forward(model, tokens), axis=-1))
    return -np.take_along_axis(log_probs[:, start - 1:-1], tokens[:, start:, None], axis=-1)[..., 0]


def test_full_scorer_and_large_budget_equal_plain_forward(tiny_model_dir, attention_blocks):
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
        nll = inference.continuation_nll(model, tokens[:, :24], tokens[:, 24:], roomy, gates=gates)
        np.testing.assert_allclose(nll, expected, atol=1e-4)


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
    chunked = inference.continuation_nll(model, None, tokens[:, 32:], policy, context=context)
    one_by_one = inference.continuation_nll(model, None, tokens[:, 32:], policy.__class__(
        **{**policy.__dict__, "chunk_size": 1}), context=context)
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
        context = inference.prefill(model, batch, policy, gates=gates, repeat_prompts=prompts)
        seen = [len(r) for r in batch]
        for i in model.config.full_attention_layers:
            lengths = np.asarray(context.cache.layers[i].lengths)
            if scorer == "full":
                np.testing.assert_array_equal(lengths, np.repeat(np.array(seen)[:, None], lengths.shape[1], 1))
            elif level in ("head", "token"):
                # the ratio's count, grown to the protected sinks + window where it is smaller (20 tokens)
                kept = [max(policy.keep_count(n), policy.sink + policy.window) for n in seen]
                np.testing.assert_array_equal(lengths[:, 0], kept)
        if level == "token" and scorer != "full":  # every gated layer and head holds the same tokens
            first = np.asarray(context.cache.layers[model.config.full_attention_layers[0]].positions)
            for i in model.config.full_attention_layers:
                positions = np.asarray(context.cache.layers[i].positions)
                np.testing.assert_array_equal(positions, np.broadcast_to(first[:, :1], positions.shape))
        if level == "global" and scorer != "full":
            totals = sum(np.asarray(context.cache.layers[i].lengths).sum(axis=1)
                         for i in model.config.full_attention_layers)
            heads = len(model.config.full_attention_layers) * model.config.num_kv_heads
            assert (totals >= np.array([policy.keep_count(n) for n in seen]) * heads).all()
        out = inference.generate(model, None, policy, gates=gates, max_new_tokens=30, context=context,
                                 stop_tokens=[])
        assert [len(o) for o in out] == [30] * len(batch)
        if scorer != "kvzip":  # prefill + decode in one call (kvzip needs its repeat prompts)
            assert inference.generate(model, batch, policy, gates=gates, max_new_tokens=30, stop_tokens=[]) == out
        nll = inference.continuation_nll(model, None, [r[:5] for r in batch], policy, gates=gates,
                                        context=context)
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


def test_chunked_prefill_keeps_what_one_eviction_at_the_end_keeps(tiny_gemma3_dir):
    """Fixed scores (`random` depends on position only), level "head": evicting after every 8-token
    chunk keeps exactly the slots one eviction after the whole context keeps, for every row of a
    batch, so no prefix is capped at `ratio` of itself and the final recent window survives."""
    model = gk.load_model(tiny_gemma3_dir)
    rows = [tokens_of(1, n, seed=n)[0].tolist() for n in (61, 40, 23)]
    kept = {}
    for chunk in (8, 64):
        policy = EvictionPolicy(scorer="random", ratio=0.3, chunk_size=chunk, window=3, sink=2, level="head")
        context = inference.prefill(model, rows, policy)
        kept[chunk] = [[[sorted(p for p in head if p >= 0) for head in row]
                        for row in np.asarray(context.cache.layers[i].positions).tolist()]
                       for i in model.config.full_attention_layers]
    assert kept[8] == kept[64]
    first_layer = kept[8][0]
    for row, n in zip(first_layer, (61, 40, 23)):
        assert all(len(head) == max(math.ceil(0.3 * n), 5) for head in row)
        assert all({0, 1, n - 3, n - 2, n - 1} <= set(head) for head in row)  # sinks and the recent window


def test_no_recompilation_across_prompt_lengths_decode_lengths_and_300_decode_steps(tiny_model_dir):
    _, folder = tiny_model_dir
    model = gk.load_model(folder)
    gates = init_gates(model.config)
    policy = EvictionPolicy(scorer="gate", ratio=0.4, chunk_size=8, window=4, max_context=64,
                            decode_budget=32, decode_block=8, decode_recent=8)
    counter = CompileCounter()
    inference.generate(model, tokens_of(1, 13), policy, gates=gates, max_new_tokens=300, stop_tokens=[])
    assert counter.count > 0
    after_first_run = counter.count
    for length in (5, 22, 40, 64):
        new_tokens = 300 - length // 2  # another max_new_tokens in the same output bucket (257..512)
        out = inference.generate(model, tokens_of(1, length, seed=length), policy, gates=gates,
                                 max_new_tokens=new_tokens, stop_tokens=[])
        assert len(out[0]) == new_tokens
    assert counter.count == after_first_run


def test_gate_scorer_without_gates_is_an_error(tiny_model_dir):
    _, folder = tiny_model_dir
    model = gk.load_model(folder)
    with pytest.raises(ValueError, match="scorer 'gate' needs gates"):
        inference.prefill(model, tokens_of(1, 8), EvictionPolicy(scorer="gate", ratio=0.5))


def test_decode_continuation_evicts_as_generate_does_on_the_same_tokens(tiny_gemma3_dir):
    """Teacher-forcing generate's own greedy tokens through decode_continuation: the same cache
    after every eviction (budget 24, blocks of 8, 40 steps: several evictions), each step's argmax
    is the token generate chose, and without a decode budget the NLL equals continuation_nll.
    Scores are `random` (by position): the tiny random model soon repeats one token, whose gate
    scores tie exactly, and exact ties may break either way on float noise between two programs."""
    from gatekv_jax.engine import decode as decoding

    model = gk.load_model(tiny_gemma3_dir)
    gates = None
    policy = EvictionPolicy(scorer="random", ratio=0.5, chunk_size=8, window=4, decode_budget=24, decode_block=8,
                            decode_recent=8)
    rows = [tokens_of(1, n, seed=n)[0].tolist() for n in (37, 29)]
    steps = 40
    generated = inference.generate(model, rows, policy, gates=gates, max_new_tokens=steps, stop_tokens=[])
    forced = np.array(generated, np.int32)

    def final_cache(run_forced: bool):
        context = inference.prefill(model, rows, policy, gates=gates)
        context, _ = inference_append(model, context, policy, gates, decoding.decode_room(policy, steps))
        args = (model.params, gates, context.cache, context.last_logits, context.seen)
        evicting = (np.full(2, 24, np.int32), np.full(2, policy.sink, np.int32), np.full(2, 8, np.int32))
        static = dict(config=model.config, dtype=jnp.float32, spec=plan.scorer_spec(policy),
                      allocation=plan.decode_allocation(policy), evict_gated=True)
        if run_forced:
            padded = np.zeros((2, decoding.decode_bucket(steps)), np.int32)
            padded[:, :steps] = forced
            nll, predicted, cache = model.run(decoding.forced_decode_loop, *args, padded, np.full(2, steps, np.int32),
                                              *evicting, **static)
            return cache, np.asarray(predicted)[:, :steps]
        out, cache = model.run(decoding.decode_loop, *args, jax.random.key(0), np.int32(steps),
                               jnp.asarray([-1], jnp.int32), *evicting, sampling=inference.Sampling(0.0, 1.0),
                               bucket=decoding.decode_bucket(steps), **static)
        np.testing.assert_array_equal(np.asarray(out)[:, :steps], forced)
        return cache, None

    sampled_cache, _ = final_cache(False)
    forced_cache, predicted = final_cache(True)
    np.testing.assert_array_equal(predicted, forced)
    for ours, theirs in zip(forced_cache.layers, sampled_cache.layers):
        np.testing.assert_array_equal(np.asarray(ours.positions), np.asarray(theirs.positions))
        np.testing.assert_allclose(np.asarray(ours.keys), np.asarray(theirs.keys), atol=1e-5)
    gated = forced_cache.layers[model.config.full_attention_layers[0]]
    assert int(np.asarray(gated.lengths).max()) <= 24 + 8  # evicted back to the budget while decoding
    nll, predicted = inference.decode_continuation(model, rows, forced, policy, gates=gates)
    assert nll.shape == (2, steps) and np.isfinite(nll).all()
    np.testing.assert_array_equal(predicted, forced)
    no_budget = dataclasses.replace(policy, decode_budget=None)
    nll, _ = inference.decode_continuation(model, rows, forced, no_budget, gates=gates)
    np.testing.assert_allclose(nll, inference.continuation_nll(model, rows, forced, no_budget, gates=gates),
                               atol=2e-4)


def inference_append(model, context, policy, gates, room):
    """The append `generate` makes before its decode loop (no prompt, `room` slots, at least the budget)."""
    from gatekv_jax.engine.chunks import append

    return append(model, context, np.zeros((context.seen.shape[0], 0), np.int32),
                  np.zeros(context.seen.shape[0], np.int32), policy, gates, room=room,
                  min_filled=policy.decode_budget or 0)


@pytest.mark.parametrize("level", ["token", "head"])
def test_decoding_evicts_at_the_policy_level(tiny_gemma3_dir, level):
    """Eviction while decoding spreads the budget as prefill did: at level "token" every gated layer
    and KV head keeps the same positions after each decode eviction (40 steps, budget 24, blocks of
    8); at level "head" the random scores of each head pick different ones."""
    from gatekv_jax.engine import decode as decoding

    model = gk.load_model(tiny_gemma3_dir)
    policy = EvictionPolicy(scorer="random", ratio=0.5, chunk_size=8, window=4, decode_budget=24, decode_block=8,
                            decode_recent=8, level=level)
    steps = 40
    context = inference.prefill(model, tokens_of(1, 37, seed=3), policy)
    context, _ = inference_append(model, context, policy, None, decoding.decode_room(policy, steps))
    padded = np.zeros((1, decoding.decode_bucket(steps)), np.int32)
    padded[:, :steps] = tokens_of(1, steps, seed=4)
    _, _, cache = model.run(decoding.forced_decode_loop, model.params, None, context.cache, context.last_logits,
                            context.seen, padded, np.full(1, steps, np.int32), np.full(1, 24, np.int32),
                            np.full(1, policy.sink, np.int32), np.full(1, 8, np.int32), config=model.config,
                            dtype=jnp.float32, spec=plan.scorer_spec(policy),
                            allocation=plan.decode_allocation(policy), evict_gated=True)
    kept = [np.sort(np.asarray(cache.layers[i].positions)[0], axis=-1) for i in model.config.full_attention_layers]
    layouts = {tuple(head) for layer in kept for head in layer}
    assert all(len(head[head >= 0]) <= 24 + 8 for head in np.concatenate(kept))
    assert max(int(head.max()) for head in np.concatenate(kept)) == 37 + steps - 1  # the newest token is kept
    assert (len(layouts) == 1) == (level == "token")
