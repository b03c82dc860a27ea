"""Static sampling settings and the compiled steps' lifetime."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gatekv_jax.engine.decode import decode_bucket
from gatekv_jax.engine.sampling import Sampling


def sorts(sampling: Sampling) -> bool:
    """Whether the traced program of `sampling` sorts (nested jaxprs included)."""
    return " sort[" in str(jax.make_jaxpr(sampling)(jnp.zeros((2, 50)), jax.random.key(0)))


def test_greedy_pays_nothing_for_top_p():
    assert not sorts(Sampling()) and not sorts(Sampling(temperature=0.7))
    assert sorts(Sampling(temperature=0.7, top_p=0.9))


def test_greedy_and_nucleus_draws_literal():
    logits = jnp.log(jnp.array([[0.05, 0.6, 0.3, 0.05], [0.5, 0.1, 0.1, 0.3]]))
    np.testing.assert_array_equal(Sampling()(logits, jax.random.key(0)), [1, 0])
    nucleus = Sampling(temperature=1.0, top_p=0.8)  # row 0: {1, 2}; row 1: {0, 3}
    draws = np.stack([np.asarray(nucleus(logits, jax.random.key(seed))) for seed in range(200)])
    assert set(draws[:, 0]) == {1, 2} and set(draws[:, 1]) == {0, 3}


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
])
def test_bad_sampling_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sampling(**kwargs)


def test_decode_buckets():
    assert [decode_bucket(n) for n in (1, 16, 17, 64, 65, 300, 512)] == [16, 16, 32, 64, 128, 512, 512]


def test_clear_caches_drops_every_compiled_step(tiny_gemma3_dir):
    import gatekv_jax as gk
    from gatekv_jax.engine.chunks import chunk_step
    from gatekv_jax.engine.decode import decode_loop

    model = gk.load_model(tiny_gemma3_dir)
    gk.generate(model, [[1, 2, 3]], gk.EvictionPolicy(scorer="streaming", ratio=0.5, chunk_size=8),
                max_new_tokens=4)
    assert chunk_step._cache_size() > 0 and decode_loop._cache_size() > 0
    jax.clear_caches()
    assert chunk_step._cache_size() == 0 and decode_loop._cache_size() == 0


def test_generate_refuses_bad_sampling_and_stop_tokens_before_any_work():
    import gatekv_jax as gk

    model = gk.load_model("tiny-random-qwen3")
    policy = gk.EvictionPolicy(scorer="full")
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0, got nan"):
        gk.generate(model, [[1, 2]], policy, temperature=float("nan"))
    with pytest.raises(ValueError, match=r"stop tokens \[999\] must be ids in \[0, 261\)"):
        gk.generate(model, [[1, 2]], policy, stop_tokens=[999])
