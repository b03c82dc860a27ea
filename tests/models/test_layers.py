"""Decoder building blocks: masks from stored positions, attention in blocks."""

import jax.numpy as jnp
import numpy as np

from gatekv_jax.models.layers import attend, attention_mask, attention_weights, blocked_attention


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


def test_blocked_attention_equals_the_softmax_over_the_whole_buffer():
    """Online softmax over blocks of filled slots == attend(attention_weights(...)): slots stored out of
    order, a last block that overlaps the one before it (13 slots, blocks of 4), rows filled to different
    lengths, a query that sees no key (zeros), a sliding window, several KV heads and query groups."""
    rng = np.random.default_rng(0)
    batch, length, kv_heads, group, head_dim, slots = 2, 5, 2, 3, 8, 13
    filled = np.array([[13, 9], [6, 2]])  # [B, K] filled slots at the front
    key_positions = np.full((batch, kv_heads, slots), -1, np.int32)
    for b in range(batch):
        for k in range(kv_heads):
            key_positions[b, k, :filled[b, k]] = rng.permutation(16)[:filled[b, k]]
    query_positions = np.array([[11, 12, 13, 14, 15], [-1, 0, 3, 7, 15]], np.int32)  # padding; position 0 sees few
    queries = jnp.asarray(rng.standard_normal((batch, length, kv_heads * group, head_dim)), jnp.float32)
    keys = jnp.asarray(rng.standard_normal((batch, kv_heads, slots, head_dim)), jnp.float32)
    values = jnp.asarray(rng.standard_normal((batch, kv_heads, slots, head_dim)), jnp.float32)
    for window in (None, 4):
        mask = attention_mask(jnp.asarray(query_positions), jnp.asarray(key_positions), window)
        expected = attend(attention_weights(queries, keys, mask, scale=0.3), values)
        got = blocked_attention(queries, keys, values, jnp.asarray(query_positions), jnp.asarray(key_positions),
                                jnp.asarray(filled), window, scale=0.3, block=4)
        assert not np.asarray(mask[1, 1, 0]).any() and not np.asarray(got[1, 1, 0]).any()  # padding: zeros
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
