"""The machine's ceilings beside the engine's rates: memory bandwidth (decode) and matmul rate (prefill).

Decoding a token reads every weight and allocated KV slot once, so the bandwidth of a plain
reduction bounds it; a short prefill is mostly matmuls, so one prefill-chunk matmul's rate bounds
that. The PyTorch peer times the same matmul (`peer.matmul_rate`) on the same operands.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.evaluation.speed import best_time
from gatekv_jax.models.config import ModelConfig


def memory_bandwidth(megabytes: int = 512, repeats: int = 10) -> float:
    """Bytes per second a jitted float32 reduction reads on the default device (decode's ceiling)."""
    data = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    jax.block_until_ready(total(data))
    return data.nbytes / best_time(lambda: total(data), repeats)


def matmul_shape(config: ModelConfig, chunk: int) -> tuple[int, int, int]:
    """`(M, K, N)` of a prefill chunk's MLP up-projection: the most common matmul of a prefill."""
    return chunk, config.hidden_size, config.intermediate_size


def matmul_operands(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 [M, K] and [K, N] host arrays for a matmul rate."""
    m, k, n = shape
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)


def matmul_rate(shape: tuple[int, int, int], dtype: Any, rounds: int = 5, calls: int = 10) -> float:
    """FLOP per second of one jitted [M, K] x [K, N] matmul on the default device (prefill's ceiling):
    the best of `rounds` rounds, each the mean of `calls` calls (single calls of a few ms are noisy)."""
    a, b = (jnp.asarray(x, dtype) for x in matmul_operands(shape))
    product = jax.jit(jnp.matmul)
    jax.block_until_ready(product(a, b))

    def round_trip():
        for _ in range(calls):
            out = product(a, b)
        return out

    return 2 * math.prod(shape) * calls / best_time(round_trip, rounds)
