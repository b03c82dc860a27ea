"""`python -m gatekv_jax.report results.json [...]`: markdown tables of evaluation or benchmark results.

Evaluation results (results.json): one table per (context length, level, task, metric), scorers in
rows and ratios in columns (`gatekv_jax.evaluation.report.markdown_tables`). Benchmark results
(bench.json from `python -m gatekv_jax.bench`): its speed tables (`bench_tables`).
"""

from __future__ import annotations

import sys

from gatekv_jax.evaluation.report import report_tables
from gatekv_jax.utils.files import read_json

USAGE = "usage: python -m gatekv_jax.report results.json|bench.json [more ...]"


def main(argv: list[str] | None = None) -> int:
    """Print the tables of the results files in `argv` (default: the command line); returns the exit code."""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths or any(p.startswith("-") for p in paths):
        print(USAGE, file=sys.stderr)
        return 0 if paths and paths[0] in ("-h", "--help") else 2
    results = []
    for path in paths:
        try:
            results.append(read_json(path))
        except ValueError as e:
            print(e, file=sys.stderr)
            return 2
        if not isinstance(results[-1], dict) or not (results[-1].get("records") or "prefill" in results[-1]):
            print(f"{path} holds no evaluation records or benchmark results", file=sys.stderr)
            return 2
    print(report_tables(*results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
