"""Resuming an evaluation: the records of an earlier run of the same config that still hold.

`results.json` is refused when its config differs (where it is written, `output`, aside: a results
folder can be moved and resumed); gate records of other gates (their `gates_sha256`) and records
ranked at level "token" another way than the scorer's policy ranks now (their `token_rank`;
records without one were ranked by quantiles) are dropped to be scored again; and a task's
records are refused as stale when the full cache's reference, recomputed, no longer matches the
file's (other samples or numerics).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np

from gatekv_jax.utils.files import read_json

LOCATION_FIELDS = ("output",)  # config fields that say where results go, not what they are


def record_key(record: dict) -> tuple:
    """A record's identity in a results file: (task, scorer, ratio)."""
    return record["task"], record["scorer"], record["ratio"]


def previous_records(config, path: str, digest: str | None, token_rank_of: Callable[[Any, str, float], str | None]
                     ) -> tuple[dict[tuple, dict], dict[str, float]]:
    """Records and timings already in `path` from a run of the same config (an interrupted or
    finished run resumes where it stopped); a file written by a different config is refused.
    Gate records of other gates (`gates_sha256` is not `digest`, e.g. after the packaged gates
    changed) and records whose token ranking is not `token_rank_of(config, scorer, ratio)` today
    are left out, so they are scored again."""
    if not os.path.isfile(path):
        return {}, {}
    previous = read_json(path)
    old, new = previous["header"]["config"], json.loads(json.dumps(config.to_dict()))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in LOCATION_FIELDS)
    if changed:
        raise ValueError(f"{path} holds results of another config (fields {changed} differ); "
                         f"pass a new --config.output or remove the file")
    records = previous["records"]
    kept = [r for r in records if (r["scorer"] != "gate" or r.get("gates_sha256") == digest)
            and _token_rank(r, config.level) == token_rank_of(config, r["scorer"], r["ratio"])]
    if len(kept) < len(records):
        print(f"{path}: {len(records) - len(kept)} record(s) of other gates or another token ranking are scored again",
              flush=True)
    for record in kept:  # records from before `token_rank` existed say how they were ranked
        if _token_rank(record, config.level) is not None:
            record["token_rank"] = _token_rank(record, config.level)
    return {record_key(r): r for r in kept}, dict(previous["header"]["timings"])


def _token_rank(record: dict, level: str) -> str | None:
    """How a record of a run at `level` was ranked at level "token" (records from before
    `token_rank` existed: by quantiles)."""
    if level != "token" or record["scorer"] == "full" or record["ratio"] >= 1.0:
        return None
    return record.get("token_rank", "quantile")


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
