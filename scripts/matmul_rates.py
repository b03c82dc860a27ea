"""Float32 matmul rates of XLA (this process's XLA_FLAGS) and torch on Gemma 3 270M's prefill shapes.

    python scripts/matmul_rates.py
    XLA_FLAGS=--xla_cpu_use_onednn=true python scripts/matmul_rates.py   # or any other XLA CPU flag

For each [M, K] x [K, N] shape of a 512- or 1,024-token prefill chunk (the MLP's projections, the
query projection), XLA (one jitted matmul) then torch (its default threads) in one process, each
timed as the bench times them (`ceilings.matmul_rate`, `peer.matmul_rate`: the best of 5 rounds of
10 calls on the same random operands). Needs torch (the `test` extra).
"""

from __future__ import annotations

import os
import types

import jax.numpy as jnp
import torch

from gatekv_jax.evaluation import ceilings, peer

SHAPES = [(512, 640, 2048), (1024, 640, 2048), (512, 2048, 640), (512, 640, 1024), (2048, 640, 2048)]


def main() -> None:
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, torch threads {torch.get_num_threads()}")
    torch_cpu = types.SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)  # what peer.matmul_rate reads
    for m, k, n in SHAPES:
        xla = ceilings.matmul_rate((m, k, n), jnp.float32)
        other = peer.matmul_rate(torch_cpu, (m, k, n))
        print(f"[{m}, {k}] x [{k}, {n}]: XLA {xla / 1e9:.0f} GFLOP/s, torch {other / 1e9:.0f} GFLOP/s "
              f"(XLA / torch {xla / other:.2f}x)")


if __name__ == "__main__":
    main()
