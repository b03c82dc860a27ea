"""The cache-rescoring scorers (keydiff, knorm, expected_attention) against literal arrays and numpy."""

import jax.numpy as jnp
import numpy as np

from gatekv_jax.kv.scorers import EXPECTED_ATTENTION_FUTURE, expected_attention_scores, keydiff_scores, knorm_scores
from gatekv_jax.models.config import RopeConfig
from gatekv_jax.models.decoder import AttentionStep


def test_keydiff_scores_the_key_least_like_the_mean_direction_highest():
    keys = np.array([[[[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [5.0, 5.0]]]], np.float32)  # [B=1, K=1, S=4, H=2]
    positions = np.array([[[0, 1, 2, -1]]], np.int32)  # the last slot is empty: not in the anchor
    # unit keys (1,0), (1,0), (0,1) -> anchor (2/3, 1/3); cosines 2/sqrt(5), 2/sqrt(5), 1/sqrt(5)
    expected = -np.array([2, 2, 1]) / np.sqrt(5)
    np.testing.assert_allclose(np.asarray(keydiff_scores(keys, positions))[0, 0, :3], expected, rtol=1e-6)


def test_keydiff_matches_numpy_per_head_and_row():
    rng = np.random.RandomState(0)
    keys = rng.randn(2, 3, 6, 4).astype(np.float32)
    positions = np.where(rng.rand(2, 3, 6) < 0.3, -1, 1).astype(np.int32)
    positions[..., 0] = 0
    got = np.asarray(keydiff_scores(keys, positions))
    for b in range(2):
        for k in range(3):
            filled = positions[b, k] >= 0
            units = keys[b, k] / np.linalg.norm(keys[b, k], axis=-1, keepdims=True)
            anchor = units[filled].mean(axis=0)
            cosine = units @ anchor / np.linalg.norm(anchor)
            np.testing.assert_allclose(got[b, k][filled], -cosine[filled], rtol=1e-5, atol=1e-6)


def test_knorm_is_minus_the_key_norm():
    keys = np.array([[[[3.0, 4.0], [0.0, 1.0], [-6.0, 8.0]]]], np.float32)
    np.testing.assert_allclose(np.asarray(knorm_scores(keys)), [[[-5.0, -1.0, -10.0]]])


def rotation(position, inv_freq):
    """The explicit RoPE matrix at one position (rotate-half convention)."""
    half = len(inv_freq)
    matrix = np.zeros((2 * half, 2 * half))
    for i, f in enumerate(inv_freq):
        c, s = np.cos(position * f), np.sin(position * f)
        matrix[i, i], matrix[i, i + half] = c, -s
        matrix[i + half, i], matrix[i + half, i + half] = s, c
    return matrix


def expected_attention_reference(keys, values, positions, queries, query_positions, rope, scale, sink):
    """The Expected Attention definition with explicit matrices: q ~ N(mu, Sigma) of the used
    queries, the mean RoPE matrix over the next positions, E[exp(s q R' k)], softmax, group mean, ||v||."""
    batch, num_kv_heads, slots, head_dim = keys.shape
    group = queries.shape[2] // num_kv_heads
    inv_freq, _ = rope.inverse_frequencies(head_dim)
    out = np.zeros((batch, num_kv_heads, slots))
    for b in range(batch):
        used = query_positions[b] >= sink
        start = query_positions[b].max() + 1
        mean_rotation = np.mean([rotation(p, inv_freq) for p in range(start, start + EXPECTED_ATTENTION_FUTURE)],
                                axis=0)
        for k in range(num_kv_heads):
            filled = positions[b, k] >= 0
            per_head = []
            for g in range(group):
                q = queries[b, used, k * group + g].astype(np.float64)  # [T used, H]
                mu = q.mean(axis=0)
                sigma = (q - mu).T @ (q - mu) / len(q)
                mu_future = mean_rotation @ mu
                sigma_future = mean_rotation @ sigma @ mean_rotation.T
                kk = keys[b, k].astype(np.float64)
                logits = scale * kk @ mu_future + 0.5 * scale ** 2 * np.einsum("sh,hi,si->s", kk, sigma_future, kk)
                weights = np.exp(logits[filled] - logits[filled].max())
                probs = np.zeros(slots)
                probs[filled] = weights / weights.sum()
                per_head.append(probs)
            out[b, k] = np.mean(per_head, axis=0) * np.linalg.norm(values[b, k], axis=-1) * filled
    return out


def test_expected_attention_matches_the_definition_with_explicit_rotations():
    rng = np.random.RandomState(1)
    batch, num_kv_heads, group, length, slots, head_dim = 2, 2, 2, 6, 7, 4
    keys = rng.randn(batch, num_kv_heads, slots, head_dim).astype(np.float32)
    values = rng.randn(batch, num_kv_heads, slots, head_dim).astype(np.float32)
    positions = np.tile(np.arange(slots, dtype=np.int32), (batch, num_kv_heads, 1))
    positions[1, 0, 5:] = -1  # empty slots take no share of the softmax and score 0
    queries = rng.randn(batch, length, num_kv_heads * group, head_dim).astype(np.float32)
    query_positions = np.array([[1, 2, 3, 4, 5, 6], [3, 4, 5, 6, -1, -1]], np.int32)  # sink 2 leaves 1 out; padding
    rope = RopeConfig(theta=100.0)
    scale, sink = 0.7, 2
    step = AttentionStep(weights=None, queries=jnp.asarray(queries), positions=jnp.asarray(query_positions),
                         rope=rope, scale=scale)
    previous = np.full((batch, num_kv_heads, slots), 9.0, np.float32)
    got = np.asarray(expected_attention_scores(keys, values, positions, previous, step, sink))
    expected = expected_attention_reference(keys, values, positions, queries, query_positions, rope, scale, sink)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-6)
    assert got[1, 0, 5:].tolist() == [0.0, 0.0]


def test_expected_attention_keeps_scores_of_rows_without_queries_past_the_sink():
    rng = np.random.RandomState(2)
    keys = rng.randn(2, 1, 3, 4).astype(np.float32)
    positions = np.tile(np.arange(3, dtype=np.int32), (2, 1, 1))
    step = AttentionStep(weights=None, queries=jnp.asarray(rng.randn(2, 1, 1, 4).astype(np.float32)),
                         positions=jnp.asarray(np.array([[1], [7]], np.int32)), rope=RopeConfig(theta=100.0),
                         scale=1.0)
    previous = np.full((2, 1, 3), 5.0, np.float32)
    got = np.asarray(expected_attention_scores(keys, keys, positions, previous, step, sink=4))
    assert got[0].tolist() == [[5.0, 5.0, 5.0]]  # only a sink query: nothing to estimate from
    assert got[1].sum() > 0 and (got[1] != 5.0).all()  # one query (decoding): its mean, no covariance
