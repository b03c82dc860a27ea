"""`python -m gatekv_jax.report results.json [...]`: markdown tables of evaluation results.

One table per (context length, level, task, metric), scorers in rows and ratios in columns;
`gatekv_jax.evaluation.report.markdown_tables` does the work.
"""

from __future__ import annotations

import json
import sys

from gatekv_jax.evaluation.report import markdown_tables

USAGE = "usage: python -m gatekv_jax.report results.json [more results.json ...]"


def main(argv: list[str] | None = None) -> int:
    """Print the tables of the results files in `argv` (default: the command line); returns the exit code."""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths or any(p.startswith("-") for p in paths):
        print(USAGE, file=sys.stderr)
        return 0 if paths and paths[0] in ("-h", "--help") else 2
    results = []
    for path in paths:
        with open(path) as file:
            results.append(json.load(file))
        if not results[-1].get("records"):
            print(f"{path} holds no evaluation records", file=sys.stderr)
            return 2
    print(markdown_tables(*results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
