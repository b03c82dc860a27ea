"""The evaluation runner: quality against retention for every (task, scorer, ratio), resumable.

Tasks, each on held-out documents (the training split's complement, split by document hash):
- continuation: prefill N context tokens under the policy, teacher-force the next M tokens: mean
  NLL, its increase over `full`, mean KL(full || compressed) of the next-token distributions and
  top-1 agreement with `full`;
- recall: random "code" facts spread through the context are listed again after it; NLL of the
  fact tokens of that recap;
- needle: a pass key hidden at several depths of filler text, asked for after the (query-agnostic)
  compression; greedy answer, exact match; and the key's NLL teacher-forced after the question
  (paired with full's as `delta_key_nll`);
- qa: a question about a random line of the context, answered greedily after compression,
  scored against `full`'s answer (exact match, token F1).
Each context follows the model's chat-template start (BOS and user turn, as in gate training),
which is protected from eviction. Writes `results.json` (one record per task, scorer, ratio, level;
header with model, gates, versions, timings; per record the per-sample values and the standard
error of each mean), one PNG per task, and prints a table. For `recall`,
`gap_closed` is the share of the streaming-to-full NLL gap a scorer closes. `results.json` is
rewritten (atomically) after every record; rerunning the same config into the same folder resumes
(gate records carry the gates' SHA-256, and those of other gates are scored again).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.engine import plan
from gatekv_jax.engine.decode import generate
from gatekv_jax.engine.oracle import TeacherMemo
from gatekv_jax.engine.prefill import prefill
from gatekv_jax.engine.scoring import continuation_log_probs, decode_continuation
from gatekv_jax.engine.teacher import RepeatPrompts
from gatekv_jax.evaluation.report import add_gap_closed
from gatekv_jax.evaluation.resume import check_reference, previous_records, record_key
from gatekv_jax.evaluation.tasks import SAMPLE_BUILDERS, TASK_METRIC, TASKS, Sample, copied_share, token_f1
from gatekv_jax.kv.gate_files import PRETRAINED, gates_digest, load_gates, pretrained_gates
from gatekv_jax.kv.policy import SCORERS, EvictionPolicy
from gatekv_jax.models.loading import Model, load_model, load_tokenizer
from gatekv_jax.training import configs
from gatekv_jax.training.data import source_shares
from gatekv_jax.utils.files import save_figure, write_json

DEFAULT_CONFIG = "eval"


def load_config(path: str = DEFAULT_CONFIG, **overrides):
    """The evaluation config of `path` (a file or packaged config name; default configs/eval.py)
    with `overrides` applied, as `--config.<field>=...` would."""
    return configs.load_config(path, **overrides)


def policy_for(config, scorer: str, ratio: float) -> EvictionPolicy:
    """The policy an evaluation config gives `scorer` at `ratio` (ratio 1 or scorer "full": no eviction)."""
    full = scorer == "full" or ratio >= 1.0
    return EvictionPolicy(scorer="full" if full else scorer, ratio=None if full else ratio, level=config.level,
                          token_pool=config.token_pool, chunk_size=config.chunk_size, window=config.window,
                          window_rule=config.get("window_rule"), sink=config.sink, seed=config.seed,
                          token_rank=config.get("token_rank"))


def decoding_policy(policy: EvictionPolicy, context_length: int, decode_length: int) -> EvictionPolicy:
    """The `decode` task's policy: the prefill policy, and while decoding a budget of `ratio` x the
    final length (context + decoded tokens), evicted back to every `decode_block` tokens."""
    if not policy.evicts:
        return policy
    budget = max(math.ceil(policy.ratio * (context_length + decode_length)), policy.sink + policy.decode_recent + 1)
    return dataclasses.replace(policy, decode_budget=budget)


def eviction_tags(config, task: str, scorer: str, ratio: float) -> dict[str, str]:
    """How a record's evictions are made beyond what its config says: `token_rank` (level "token"),
    `window_rule` (no `window` set) and `decode_level` (task "decode": the level of the evictions
    while decoding)."""
    policy = policy_for(config, scorer, ratio)
    tags = {}
    if policy.evicts and config.level == "token":
        tags["token_rank"] = policy.token_ranking
    if policy.evicts and policy.window is None:
        tags["window_rule"] = policy.window_ruling
    if policy.evicts and task == "decode":
        tags["decode_level"] = plan.decode_allocation(policy).level
    return tags


def check_config(config) -> tuple[list[str], list[str], list[float]]:
    """Validate a whole evaluation config before anything loads; returns (scorers, tasks, ratios)."""
    scorers = [s.strip() for s in str(config.scorers).split(",")]
    unknown = [s for s in scorers if s not in SCORERS]
    if unknown:
        raise ValueError(f"unknown scorers {unknown}; choose from {SCORERS}")
    tasks = [t.strip() for t in str(config.tasks).split(",")]
    if [t for t in tasks if t not in TASKS]:
        raise ValueError(f"unknown tasks {[t for t in tasks if t not in TASKS]}; choose from {TASKS}")
    try:
        ratios = sorted(float(r) for r in str(config.ratios).split(","))
        depths = [float(d) for d in str(config.needle_depths).split(",")]
    except ValueError as e:
        raise ValueError(f"ratios and needle_depths are comma-separated numbers ({e})") from None
    if not all(0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"ratios must be in (0, 1], got {config.ratios!r}")
    if not all(0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"needle_depths must be in [0, 1], got {config.needle_depths!r}")
    for name in ("context_length", "continuation_length", "decode_length", "recall_facts", "n_samples"):
        value = config[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    source_shares(config.data.source)
    for scorer in scorers:
        for ratio in ratios:
            policy_for(config, scorer, ratio)  # every policy field, checked
    if "gate" in scorers and config.gates == "packaged" and config.model not in PRETRAINED:
        raise ValueError(f"no packaged gates for {config.model!r} (packaged: {sorted(PRETRAINED)}); set gates")
    if "gate" in scorers and config.gates != "packaged" and not os.path.isfile(str(config.gates)):
        raise ValueError(f"gates file {config.gates!r} does not exist")
    return scorers, tasks, ratios


def _scored_nll(model: Model, sample: Sample, policy: EvictionPolicy, gates, context) -> tuple[jax.Array, float]:
    """The log-probabilities [M, V] along the sample's teacher-forced continuation after `context`,
    and the mean NLL of its `scored` tokens."""
    log_probs = continuation_log_probs(model, None, [sample.continuation.tolist()], policy, gates=gates,
                                       context=context)[0]
    nll = -jnp.take_along_axis(log_probs, jnp.asarray(sample.continuation)[:, None], axis=1)[:, 0]  # [M]
    return log_probs, float(np.asarray(nll)[np.asarray(sample.scored)].mean())


def _score_task(task: str, model: Model, tokenizer, samples: list[Sample], policy: EvictionPolicy, gates,
                reference: dict, prefix: tuple[int, ...], teacher_memo: TeacherMemo) -> dict:
    """Mean metrics of one (task, policy), and their values per sample under `per_sample`.
    `reference` holds full's outputs per sample (filled when full runs), `teacher_memo` the kvzip
    oracle's teacher per context (filled when kvzip first runs). Each context is preceded by
    `prefix` (the chat template's start), which is never evicted."""
    gates = gates if policy.scorer == "gate" else None
    metrics: dict[str, list[float]] = {}
    fractions = []
    for index, sample in enumerate(samples):
        context = prefill(model, [list(prefix) + sample.context.tolist()], policy, gates=gates,
                          prefix_length=len(prefix), teacher_memo=teacher_memo)
        kept, full = context.kept_slots(model.config.full_attention_layers)
        fractions.append(kept / full)
        if task == "decode":
            final_length = len(prefix) + len(sample.context) + len(sample.continuation)
            decoding = decoding_policy(policy, final_length - len(sample.continuation), len(sample.continuation))
            if decoding.decode_budget is not None:
                fractions[-1] = decoding.decode_budget / final_length  # what decoding keeps, not the prefill
            nll, predicted = decode_continuation(model, None, [sample.continuation.tolist()], decoding, gates=gates,
                                                 context=context)
            metrics.setdefault("nll", []).append(float(nll.mean()))
            if policy.scorer == "full":
                reference[index] = predicted
            metrics.setdefault("top1_agreement", []).append(float((predicted == reference[index]).mean()))
        elif task in ("continuation", "recall"):
            log_probs, nll = _scored_nll(model, sample, policy, gates, context)
            metrics.setdefault("nll", []).append(nll)
            if task == "continuation":
                if policy.scorer == "full":
                    reference[index] = log_probs
                full = reference[index]
                kl = (jnp.exp(full) * (full - log_probs)).sum(axis=-1)
                metrics.setdefault("kl", []).append(float(kl.mean()))
                agree = jnp.argmax(full, axis=-1) == jnp.argmax(log_probs, axis=-1)
                metrics.setdefault("top1_agreement", []).append(float(agree.mean()))
        else:
            out = generate(model, [sample.question.tolist()], policy, gates=gates, context=context,
                           max_new_tokens=32 if task == "qa" else 8)
            text = tokenizer.decode(out[0])
            if task == "needle":
                found = re.search(r"\d+", text)
                metrics.setdefault("accuracy", []).append(float(found is not None and found.group() == sample.answer))
                metrics.setdefault("key_nll", []).append(_scored_nll(model, sample, policy, gates, context)[1])
            else:
                answer = text.split('"')[0].strip()
                if policy.scorer == "full":
                    reference[index] = answer
                metrics.setdefault("exact_match", []).append(float(answer == reference[index]))
                metrics.setdefault("f1", []).append(token_f1(answer, reference[index]))
        if task in ("continuation", "decode"):  # how much of the continuation the context already holds
            metrics.setdefault("copied_8grams", []).append(copied_share(sample.context, sample.continuation))
    result: dict = {name: float(np.mean(values)) for name, values in metrics.items()}
    result["kv_fraction"] = float(np.mean(fractions))
    result["per_sample"] = metrics
    result["standard_error"] = standard_errors(metrics)
    return result


def standard_errors(per_sample: dict[str, list[float]]) -> dict[str, float]:
    """The standard error of each metric's mean over its samples (sample std / sqrt(n); n >= 2)."""
    return {name: float(np.std(values, ddof=1) / np.sqrt(len(values)))
            for name, values in per_sample.items() if len(values) >= 2}


def evaluate(config) -> dict:
    """Run every (task, scorer, ratio) of an evaluation config (`configs/eval.py`); returns the
    results dict (also written to `<output>/results.json`)."""
    started = time.time()
    scorers, tasks, ratios = check_config(config)
    model = load_model(config.model, dtype=config.dtype)
    tokenizer = load_tokenizer(config.model)
    gates, digest = None, None
    if "gate" in scorers:
        gates = pretrained_gates(config.model) if config.gates == "packaged" else load_gates(config.gates)
        digest = gates_digest(gates)
    prefix = RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type).prefix if config.chat_prefix else ()
    path = os.path.join(config.output, "results.json")
    # timings carry over: seconds spent in every run so far
    previous, timings = previous_records(config, path, digest, eviction_tags)
    earlier_seconds = timings.pop("total_seconds", 0.0)
    records = []

    def save(complete: bool) -> dict:
        import flax
        import transformers

        header = {"model": config.model, "gates": config.gates if "gate" in scorers else None, "gates_sha256": digest,
                  "versions": {"jax": jax.__version__, "flax": flax.__version__,
                               "transformers": transformers.__version__},
                  "timings": {**timings, "total_seconds": round(earlier_seconds + time.time() - started, 1)},
                  "resumed_records": sum(key in previous for key in map(record_key, records)),
                  "complete": complete, "config": config.to_dict()}
        add_gap_closed(records)
        results = {"header": header, "records": records}
        write_json(path, results)
        return results

    for task in tasks:
        task_start, task_key = time.time(), f"{task}_seconds"
        task_earlier = timings.get(task_key, 0.0)
        if all((task, scorer, ratio) in previous for scorer in scorers for ratio in ratios):
            records += [previous[task, scorer, ratio] for scorer in scorers for ratio in ratios]
            continue
        samples = SAMPLE_BUILDERS[task](config, tokenizer)
        if not samples:
            raise ValueError(f"no held-out samples for task {task!r}")
        reference: dict = {}
        teacher_memo = TeacherMemo()
        full_metrics = _score_task(task, model, tokenizer, samples, policy_for(config, "full", 1.0), gates, reference,
                                   prefix, teacher_memo)
        check_reference(previous, task, full_metrics, path)
        for scorer in scorers:
            for ratio in ratios:
                if (task, scorer, ratio) in previous:
                    records.append(previous[task, scorer, ratio])
                    continue
                policy = policy_for(config, scorer, ratio)
                metrics = full_metrics if policy.scorer == "full" else \
                    _score_task(task, model, tokenizer, samples, policy, gates, reference, prefix, teacher_memo)
                record = {"task": task, "scorer": scorer, "ratio": ratio, "level": config.level,
                          "n_samples": len(samples), **metrics}
                record.update(eviction_tags(config, task, scorer, ratio))
                if scorer == "gate":
                    record["gates_sha256"] = digest
                nll_name = "key_nll" if task == "needle" else "nll"
                if task in ("continuation", "decode", "recall", "needle"):  # paired with full, sample by sample
                    record[f"{nll_name}_full"] = full_metrics[nll_name]
                    record[f"delta_{nll_name}"] = metrics[nll_name] - full_metrics[nll_name]
                    record["per_sample"] = {**metrics["per_sample"], f"delta_{nll_name}": [
                        a - b for a, b in zip(metrics["per_sample"][nll_name], full_metrics["per_sample"][nll_name])]}
                    record["standard_error"] = standard_errors(record["per_sample"])
                records.append(record)
                print(_row(record), flush=True)
                timings[task_key] = round(task_earlier + time.time() - task_start, 1)
                save(complete=False)
    results = save(complete=True)
    for task in tasks:
        plot_task(records, task, os.path.join(config.output, f"{task}.png"))
    print("\n".join(["", f"results ({config.output}/results.json):"] + [_row(r) for r in records]), flush=True)
    return results


def _row(record: dict) -> str:
    keys = ("nll", "delta_nll", "gap_closed", "kl", "top1_agreement", "accuracy", "exact_match", "f1")
    values = " ".join(f"{k}={record[k]:.4f}" for k in keys if k in record)
    return (f"{record['task']:12s} {record['scorer']:9s} ratio={record['ratio']:.2f} "
            f"kv={record['kv_fraction']:.3f} {values}")


def plot_task(records: list[dict], task: str, path: str) -> None:
    """The task's main metric against the retention ratio, one line per scorer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = TASK_METRIC[task]
    figure, axis = plt.subplots(figsize=(6, 4))
    for scorer in sorted({r["scorer"] for r in records if r["task"] == task}):
        rows = sorted((r for r in records if r["task"] == task and r["scorer"] == scorer), key=lambda r: r["ratio"])
        axis.plot([r["ratio"] for r in rows], [r[metric] for r in rows], marker="o", label=scorer)
    axis.set(xlabel="retention ratio (global layers)", ylabel=metric, title=task)
    axis.legend()
    figure.tight_layout()
    save_figure(figure, path)
