"""EvictionPolicy: validation and the defaults users get."""

import pytest

from gatekv_jax.kv.policy import EvictionPolicy


@pytest.mark.parametrize("kwargs, match", [
    (dict(scorer="magic", ratio=0.3), "unknown scorer 'magic'"),
    (dict(scorer="gate"), "exactly one of ratio and budget"),
    (dict(scorer="gate", ratio=1.5), r"ratio must be a number in \(0, 1\], got 1.5"),
    (dict(scorer="gate", ratio=0.3, level="layer"), "unknown level 'layer'"),
    (dict(scorer="gate", ratio=0.3, level="token", token_pool=2), "token_pool must be odd, got 2"),
    (dict(scorer="gate", ratio=0.3, level="token", token_pool=0), "token_pool must be a positive int, got 0"),
    (dict(scorer="gate", ratio=0.3, chunk_size=0), "chunk_size must be a positive int, got 0"),
    (dict(scorer="gate", ratio=0.3, decode_budget=100), "decode_budget 100 must exceed"),
    (dict(scorer="gate", ratio="0.3"), r"ratio must be a number in \(0, 1\], got '0.3'"),
    (dict(scorer="gate", budget=True), "budget must be a positive int or None, got True"),
    (dict(scorer="gate", ratio=0.3, level="global", global_head_cap=float("nan")),
     "global_head_cap must be a finite number >= 1, got nan"),
    (dict(scorer="gate", ratio=0.3, window=2**31), "window must be a positive int or None, got 2147483648"),
    (dict(scorer="gate", ratio=0.3, seed=1.5), "seed must be an int, got 1.5"),
    (dict(scorer="gate", ratio=0.3, token_rank="mean"), "unknown token_rank 'mean'"),
    (dict(scorer="gate", ratio=0.3, window_rule="recent"), "unknown window_rule 'recent'"),
])
def test_policy_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EvictionPolicy(**kwargs)


def test_the_default_level_is_the_best_measured_one_everywhere():
    """A user who sets only scorer and ratio gets level "token" (docs/results.md: the best level on
    recall and needles), in the library and in the generate CLI."""
    from gatekv_jax.generate import _parser

    policy = EvictionPolicy(scorer="gate", ratio=0.3)
    assert (policy.level, policy.token_pool) == ("token", 3)
    args = _parser().parse_args(["--prompt=x"])
    assert (args.level, args.token_pool, args.token_rank) == (policy.level, policy.token_pool, policy.token_rank)
    assert (args.window, args.window_rule) == (policy.window, policy.window_rule)


def test_the_gate_ranks_tokens_by_either_ranking_and_other_scorers_by_quantile():
    """The gate takes the better of its score and quantile ranks (the best measured,
    docs/results.md); other scorers' scales differ by layer (ranked by quantile)."""
    assert EvictionPolicy(scorer="gate", ratio=0.3).token_ranking == "either"
    assert EvictionPolicy(scorer="snapkv", ratio=0.3).token_ranking == "quantile"
    assert EvictionPolicy(scorer="gate", ratio=0.3, token_rank="quantile").token_ranking == "quantile"
    assert EvictionPolicy(scorer="keydiff", ratio=0.3, token_rank="score").token_ranking == "score"


def test_the_gate_protects_a_window_that_grows_with_the_context_and_other_scorers_the_papers():
    """The scaled window: the context's share of 16K tokens of the kept slots, at most half of them
    and 4,096 tokens (the evaluations' 2K and 8K contexts with their 4-token chat prefix: 74 and
    1,174); the paper's rule: 2% below 16K tokens, 4,096 from there on. An explicit window wins."""
    gate, snapkv = EvictionPolicy(scorer="gate", ratio=0.3), EvictionPolicy(scorer="snapkv", ratio=0.3)
    assert (gate.window_ruling, snapkv.window_ruling) == ("scaled", "paper")
    assert [gate.protected_window(n) for n in (2004, 8004, 16384, 100_000)] == [74, 1174, 2458, 4096]
    assert [snapkv.protected_window(n) for n in (2004, 8004, 16384, 100_000)] == [41, 161, 4096, 4096]
    assert EvictionPolicy(scorer="gate", ratio=0.3, window_rule="paper").protected_window(8004) == 161
    assert EvictionPolicy(scorer="h2o", budget=1000, window_rule="scaled").protected_window(20_000) == 500
    assert EvictionPolicy(scorer="gate", ratio=0.3, window=1024).protected_window(8004) == 1024
