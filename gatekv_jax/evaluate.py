"""`python -m gatekv_jax.evaluate --config=configs/eval.py`: quality against retention for every scorer.

Runs `gatekv_jax.evaluation.runner.evaluate`: every (task, scorer, ratio) of the config on
held-out documents; writes `<output>/results.json` (resumable) and one plot per task.
Any field can be overridden: --config.scorers=full,gate,streaming --config.ratios=0.3.
"""

from __future__ import annotations

import sys

from gatekv_jax.evaluation.runner import DEFAULT_CONFIG, evaluate
from gatekv_jax.training.configs import parse_config_flags


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation CLI on `argv` (default: the command line); returns the exit code."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    evaluate(parse_config_flags(argv, DEFAULT_CONFIG, "python -m gatekv_jax.evaluate"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
