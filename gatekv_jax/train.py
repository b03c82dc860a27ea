"""`python -m gatekv_jax.train --config=configs/<name>.py`: train Fast KVzip gates for a frozen model.

Without --config the packaged Gemma 3 270M is trained offline (configs/gemma3_270m.py). Any field
can be overridden: --config.fit.steps=500 --config.workdir=/tmp/run. The pipeline is
`gatekv_jax.training.pipeline.train_gates`; every phase resumes when rerun in the same workdir.
On a TPU pod every worker runs the same command with --config.distributed.auto=True (see launch/).
"""

from __future__ import annotations

import os
import sys

from gatekv_jax.training.configs import parse_config_flags
from gatekv_jax.training.pipeline import train_gates
from gatekv_jax.utils.distributed import is_main_process

DEFAULT_CONFIG = "gemma3_270m"


def main(argv: list[str] | None = None) -> int:
    """Run the training CLI on `argv` (default: the command line); returns the exit code."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO
    summary = train_gates(parse_config_flags(argv, DEFAULT_CONFIG, "python -m gatekv_jax.train"))
    if not is_main_process():
        return 0
    loss, accuracy = summary["heldout_loss"], summary["heldout_accuracy"]
    print(f"gates: {os.path.join(summary['config']['workdir'], 'gates.safetensors')}")
    for g, layer in enumerate(summary["gated_layers"]):
        print(f"layer {layer}: held-out loss {loss['untrained'][g]:.4f} -> {loss['trained'][g]:.4f}, "
              f"accuracy {accuracy['untrained'][g]:.3f} -> {accuracy['trained'][g]:.3f}")
    print({k: v for k, v in summary.items() if k.endswith("seconds")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
