"""Decoder building blocks: masks from stored positions."""

import jax.numpy as jnp
import numpy as np

from gatekv_jax.models.layers import attention_mask


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
