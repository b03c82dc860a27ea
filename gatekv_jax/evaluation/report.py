"""Markdown tables of evaluation results (what `python -m gatekv_jax.report` prints).

One table per (context length, level, task, metric): rows are scorers, columns retention ratios;
the records of several files with the same context length and level (token pooling included)
share tables, e.g. runs of different ratios. This is how the tables in docs/ are made.
"""

from __future__ import annotations

# (task, metric, title, format); titles may use {full}, the full cache's value
TABLES = (
    ("continuation", "delta_nll", "continuation: NLL increase over full (full NLL {full})", "{:+.3f}"),
    ("continuation", "top1_agreement", "continuation: top-1 agreement with full", "{:.3f}"),
    ("recall", "nll", "recall: NLL of the recalled facts (full {full})", "{:.3f}"),
    ("recall", "gap_closed", "recall: share of the streaming-to-full NLL gap closed", "{:.0%}"),
    ("needle", "accuracy", "needle: pass-key accuracy (full {full})", "{:.2f}"),
    ("qa", "f1", "qa: token F1 against full's answer", "{:.2f}"),
)
FULL_VALUE = {"delta_nll": "nll", "nll": "nll", "accuracy": "accuracy"}


def _level_name(level: str, config: dict) -> str:
    """The level as tables name it: "token" carries its pooling (runs before `token_pool` had none)."""
    return f"{level} (pool {config.get('token_pool', 1)})" if level == "token" else level


def markdown_tables(*results: dict) -> str:
    """The tables of one or more results dicts (as written to results.json)."""
    records = [{**r, "context_length": res["header"]["config"].get("context_length"),
                "level": _level_name(r["level"], res["header"]["config"])}
               for res in results for r in res["records"]]
    groups = dict.fromkeys((r["context_length"], r["level"]) for r in records)
    out = []
    for length, level in groups:
        group = [r for r in records if (r["context_length"], r["level"]) == (length, level)]
        for task, metric, title, fmt in TABLES:
            rows = [r for r in group if r["task"] == task and metric in r and r["scorer"] != "full"]
            if not rows:
                continue
            ratios = sorted({r["ratio"] for r in rows if r["ratio"] < 1.0})
            scorers = list(dict.fromkeys(r["scorer"] for r in rows))
            full = next((r for r in group if r["task"] == task and r["scorer"] == "full"), None)
            full_value = f"{full[FULL_VALUE[metric]]:.3f}" if full and metric in FULL_VALUE else "-"
            samples = sorted({r["n_samples"] for r in rows})
            out.append(f"**{title.format(full=full_value)}** ({length} tokens, {level} level, "
                       f"{'/'.join(map(str, samples))} samples)\n")
            out.append("| scorer | " + " | ".join(f"{q:g}" for q in ratios) + " |")
            out.append("| --- |" + " --- |" * len(ratios))
            for scorer in scorers:
                values = {r["ratio"]: r[metric] for r in rows if r["scorer"] == scorer}
                cells = [fmt.format(values[q]) if q in values else "-" for q in ratios]
                out.append(f"| {scorer} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)
