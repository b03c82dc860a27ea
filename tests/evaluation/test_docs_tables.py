"""docs/results.md: every report command it shows is followed by that command's output, from committed files."""

import json
import os
import re

from gatekv_jax.evaluation.report import report_tables

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMAND = re.compile(r"^python -m gatekv_jax\.report (.+)$", re.MULTILINE)


def test_results_tables_are_the_report_of_committed_results():
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        document = f.read()
    commands = COMMAND.findall(document)
    assert len(commands) >= 5
    for command in commands:
        results = []
        for path in command.split():
            with open(os.path.join(ROOT, path)) as f:
                results.append(json.load(f))
        tables = report_tables(*results).strip()
        start = document.index(f"python -m gatekv_jax.report {command}")
        assert tables and tables in document[start:], f"docs/results.md lacks the output of report {command}"
