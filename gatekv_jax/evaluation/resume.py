"""Resuming an evaluation: the records of an earlier run of the same config that still hold.

`results.json` is refused when its config differs (where it is written, `output`, aside: a results
folder can be moved and resumed); gate records of other gates (their `gates_sha256`) and records
evicted another way than the scorer's policy evicts now (their eviction tags: `token_rank` at level
"token", `window_rule`, `decode_level` in the decode task; records from before a tag existed are
read with its `LEGACY_TAGS` value) and records that lack a metric their task measures today
(`TASK_METRICS`) are dropped to be scored again; and a task's records are refused as stale when
the full cache's reference, recomputed, no longer matches the file's (other samples or
numerics)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np

from gatekv_jax.evaluation.tasks import TASK_METRICS
from gatekv_jax.utils.files import read_json

LOCATION_FIELDS = ("output",)  # config fields that say where results go, not what they are
# How records were made before each tag existed.
LEGACY_TAGS = {"token_rank": "quantile", "decode_level": "head", "window_rule": "paper"}


def record_key(record: dict) -> tuple:
    """A record's identity in a results file: (task, scorer, ratio)."""
    return record["task"], record["scorer"], record["ratio"]


def previous_records(config, path: str, digest: str | None, tags_of: Callable[[Any, str, str, float], dict[str, str]]
                     ) -> tuple[dict[tuple, dict], dict[str, float]]:
    """Records and timings already in `path` from a run of the same config (an interrupted or
    finished run resumes where it stopped); a file written by a different config is refused.
    Gate records of other gates (`gates_sha256` is not `digest`, e.g. after the packaged gates
    changed), records whose eviction tags are not `tags_of(config, task, scorer, ratio)` today and
    records missing one of their task's `TASK_METRICS` are left out, so they are scored again."""
    if not os.path.isfile(path):
        return {}, {}
    previous = read_json(path)
    old, new = previous["header"]["config"], json.loads(json.dumps(config.to_dict()))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in LOCATION_FIELDS)
    if changed:
        raise ValueError(f"{path} holds results of another config (fields {changed} differ); "
                         f"pass a new --config.output or remove the file")
    records, kept = previous["records"], []
    for record in records:
        tags = tags_of(config, record["task"], record["scorer"], record["ratio"])
        if record["scorer"] == "gate" and record.get("gates_sha256") != digest:
            continue
        if any(record.get(name, LEGACY_TAGS[name]) != value for name, value in tags.items()):
            continue
        if not set(TASK_METRICS[record["task"]]) <= set(record.get("per_sample", {})):
            continue
        kept.append({**record, **tags})  # records from before a tag existed say how they were made
    if len(kept) < len(records):
        print(f"{path}: {len(records) - len(kept)} record(s) of other gates, evicted another way or missing a "
              "metric are scored again", flush=True)
    return {record_key(r): r for r in kept}, dict(previous["header"]["timings"])


def check_reference(previous: dict[tuple, dict], task: str, full_metrics: dict, path: str) -> None:
    """Refuse to resume records whose full-cache reference this code no longer reproduces (other
    samples or other numerics), beyond float rounding."""
    for (old_task, scorer, _), record in previous.items():
        if old_task != task or scorer != "full":
            continue
        for metric, values in full_metrics["per_sample"].items():
            old = record["per_sample"].get(metric)
            if old is not None and not np.allclose(old, values, rtol=1e-4, atol=1e-4):
                raise ValueError(f"{path}: the full cache's {task} {metric} is now {np.round(values, 4).tolist()}, "
                                 f"the file has {np.round(old, 4).tolist()}; its records are stale: use a new "
                                 "--config.output")
