"""Float32 matmul rates of XLA (this process's XLA_FLAGS) and torch on Gemma 3 270M's prefill shapes.

    python scripts/matmul_rates.py
    XLA_FLAGS=--xla_cpu_use_onednn=true python scripts/matmul_rates.py   # or any other XLA CPU flag

For each [M, K] x [K, N] shape of a 512- or 1,024-token prefill chunk (the MLP's projections, the
query projection), the best of 5 rounds of 10 calls, alternating XLA (one jitted matmul) and torch
(its default threads) in one process. Needs torch (the `test` extra).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

SHAPES = [(512, 640, 2048), (1024, 640, 2048), (512, 2048, 640), (512, 640, 1024), (2048, 640, 2048)]


def best_seconds(run, rounds: int = 5, calls: int = 10) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, torch threads {torch.get_num_threads()}")
    product = jax.jit(jnp.matmul)
    for m, k, n in SHAPES:
        a, b = np.random.randn(m, k).astype(np.float32), np.random.randn(k, n).astype(np.float32)
        xa, xb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
        product(xa, xb).block_until_ready()
        xla = best_seconds(lambda: product(xa, xb).block_until_ready())
        peer = best_seconds(lambda: ta @ tb)
        flops = 2 * m * k * n
        print(f"[{m}, {k}] x [{k}, {n}]: XLA {flops / xla / 1e9:.0f} GFLOP/s, torch {flops / peer / 1e9:.0f} GFLOP/s "
              f"(XLA / torch {peer / xla:.2f}x)")


if __name__ == "__main__":
    main()
