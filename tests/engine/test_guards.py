"""Inputs that used to give silently wrong results are refused with an error that names them."""

import jax.numpy as jnp
import numpy as np
import pytest

import gatekv_jax as gk
from gatekv_jax.engine.chunks import prefill_chunks
from gatekv_jax.engine.teacher import RepeatPrompts

TOKENS = np.random.RandomState(0).randint(0, 97, (1, 40)).astype(np.int32)
PROMPTS = RepeatPrompts(prefix=(5, 6), first=(11, 12, 13), next_head=(21, 22), assistant=(31,))


@pytest.fixture(scope="module")
def model(tiny_gemma3_dir):
    return gk.load_model(tiny_gemma3_dir)


def with_nan(gates, layer, name):
    gates = {k: dict(v) for k, v in gates.items()}
    gates[layer][name] = gates[layer][name].at[0].set(jnp.nan)
    return gates


def test_nan_gates_are_named_before_any_work(model):
    gates = with_nan(gk.init_gates(model.config), f"layer_{model.config.full_attention_layers[-1]}", "bias")
    policy = gk.EvictionPolicy(scorer="gate", ratio=0.5, chunk_size=8)
    with pytest.raises(ValueError, match=r"NaN or infinite values in \['layer_\d+/bias'\]"):
        gk.prefill(model, TOKENS, policy, gates=gates)


def test_non_finite_scores_inside_the_step_are_an_error(model):
    """Past the host check (as a NaN from the model's own activations would be): the step's flag."""
    gates = with_nan(gk.init_gates(model.config), f"layer_{model.config.full_attention_layers[0]}", "sink_keys")
    policy = gk.EvictionPolicy(scorer="gate", ratio=0.5, chunk_size=8)
    with pytest.raises(FloatingPointError, match="non-finite logits or KV scores during prefill"):
        prefill_chunks(model, TOKENS, np.array([40]), policy, gates, 0)


def test_non_finite_activations_are_an_error_for_attention_scorers(model):
    params = dict(model.params)
    params["embed_tokens"] = params["embed_tokens"].at[TOKENS[0, 3]].set(jnp.inf)
    broken = gk.Model(config=model.config, params=params)
    with pytest.raises(FloatingPointError, match="prefill"):
        gk.prefill(broken, TOKENS, gk.EvictionPolicy(scorer="h2o", ratio=0.5, chunk_size=8))


def test_float16_gemma_is_refused_with_the_alternative_named(tiny_gemma3_dir):
    with pytest.raises(ValueError, match="float16 overflows gemma3.*bfloat16"):
        gk.load_model(tiny_gemma3_dir, dtype="float16")


def test_a_protected_prefix_longer_than_a_first_chunk_budget_survives(model):
    gates = gk.init_gates(model.config, seed=3)
    policy = gk.EvictionPolicy(scorer="gate", ratio=0.5, chunk_size=8, window=2)
    context = gk.prefill(model, TOKENS, policy, gates=gates, prefix_length=12)  # first chunk keeps 4 of 8
    for i in model.config.full_attention_layers:
        positions = np.asarray(context.cache.layers[i].positions[0])
        for head in positions:
            kept = set(head[head >= 0].tolist())
            assert set(range(12)) <= kept and {38, 39} <= kept  # the prefix and the window
            assert len(kept) == 20


@pytest.mark.parametrize("kwargs, prefix, kept", [
    (dict(ratio=0.2), 10, 11),  # 8 slots by the ratio; the prefix of 10 and a window of 1 need 11
    (dict(budget=4), 0, 5),  # 4 sinks and a window of 1
    (dict(ratio=0.5), 0, 20),  # the ratio's count holds them: unchanged
])
def test_a_budget_smaller_than_the_protected_tokens_grows_to_hold_them(model, kwargs, prefix, kept):
    for scorer in ("streaming", "kvzip"):
        policy = gk.EvictionPolicy(scorer=scorer, chunk_size=8, **kwargs)
        context = gk.prefill(model, TOKENS, policy, prefix_length=prefix, repeat_prompts=PROMPTS)
        for i in model.config.full_attention_layers:
            positions = np.asarray(context.cache.layers[i].positions[0, 0])
            held = set(positions[positions >= 0].tolist())
            assert len(held) == kept and set(range(max(4, prefix))) | {39} <= held


@pytest.mark.parametrize("prefix, match", [
    (41, "prefix_length 41 is longer than the shortest context"),
    (-1, "prefix_length must be an int >= 0"),
    (2.0, "prefix_length must be an int >= 0"),
])
def test_bad_prefixes_are_refused(model, prefix, match):
    with pytest.raises(ValueError, match=match):
        gk.prefill(model, TOKENS, gk.EvictionPolicy(scorer="streaming", ratio=0.5), prefix_length=prefix)


@pytest.mark.parametrize("tokens, positions, batch, capacity, match", [
    (np.zeros((1, 4), np.int32), np.arange(4)[None], 2, 8, "tokens have 1 rows, the cache 2"),
    (np.zeros((1, 9), np.int32), np.arange(9)[None], 1, 8, r"layer 0 holds 0 of 8 slots in row 0; 9 more tokens"),
    (np.full((1, 4), 97), np.arange(4)[None], 1, 8, r"token id 97 is outside the vocabulary \[0, 97\)"),
    (np.zeros((1, 4), np.int32), np.arange(3)[None], 1, 8, "positions must be integers >= -1 shaped like tokens"),
    (np.zeros((1, 4), np.int32), np.arange(4.0)[None], 1, 8, "positions must be integers"),
])
def test_apply_model_checks_what_the_host_can(model, tokens, positions, batch, capacity, match):
    cache = gk.init_cache(model.config, batch, capacity)
    with pytest.raises(ValueError, match=match):
        gk.apply_model(model, tokens, positions, cache)


def test_apply_model_padding_takes_no_room(model):
    cache = gk.init_cache(model.config, 1, 8)
    positions = np.array([[0, 1, 2, 3, 4, 5, -1, -1, -1, -1]])
    _, cache = gk.apply_model(model, np.zeros((1, 10), np.int32), positions, cache)  # 6 real tokens fit
    assert int(cache.layers[0].lengths.max()) == 6


def test_generate_names_a_max_new_tokens_past_the_largest_position(model):
    policy = gk.EvictionPolicy(scorer="streaming", ratio=0.5, chunk_size=8)
    with pytest.raises(ValueError, match="passes the largest position"):
        gk.generate(model, TOKENS, policy, max_new_tokens=2**31 - 8)


def test_forward_and_apply_model_refuse_non_finite_logits(model):
    params = dict(model.params)
    params["embed_tokens"] = params["embed_tokens"].at[TOKENS[0, 3]].set(jnp.inf)
    broken = gk.Model(config=model.config, params=params)
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        gk.forward(broken, TOKENS)
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        gk.apply_model(broken, TOKENS[:, :8], np.arange(8)[None], gk.init_cache(model.config, 1, 8))


def test_the_teacher_refuses_non_finite_scores(model):
    params = dict(model.params)
    params["embed_tokens"] = params["embed_tokens"].at[TOKENS[0, 3]].set(jnp.inf)
    broken = gk.Model(config=model.config, params=params)
    with pytest.raises(FloatingPointError, match="non-finite teacher scores"):
        gk.teacher_scores(broken, TOKENS, PROMPTS, chunk=16)
