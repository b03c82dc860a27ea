"""`python -m gatekv_jax.bench`: prefill and decode speed beside transformers, and the long-cache scale case.

Runs `gatekv_jax.evaluation.benchmark.run_bench` with configs/bench.py (`:tiny` for seconds);
writes `<output>/bench.json` and `<output>/bench.png` and prints the tables.
Any field can be overridden: --config.prefill_lengths=1024,2048 --config.peer=sdpa.
"""

from __future__ import annotations

import os
import sys

from gatekv_jax.evaluation.benchmark import check_bench_config, plot_bench, run_bench
from gatekv_jax.evaluation.report import bench_tables
from gatekv_jax.training.configs import parse_config_flags
from gatekv_jax.utils.files import write_json

DEFAULT_CONFIG = "bench"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark CLI on `argv` (default: the command line); returns the exit code."""
    config = parse_config_flags(argv, DEFAULT_CONFIG, "python -m gatekv_jax.bench")
    try:
        check_bench_config(config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = run_bench(config)
    write_json(os.path.join(config.output, "bench.json"), results)
    plot_bench(results, os.path.join(config.output, "bench.png"))
    print(bench_tables(results))
    print(f"\nwrote {config.output}/bench.json and bench.png ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
