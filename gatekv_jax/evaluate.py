"""`python -m gatekv_jax.evaluate --config=configs/eval.py`: quality vs retention for every scorer.

Tasks, each on held-out documents (the training split's complement, split by document hash):
- continuation: prefill N context tokens under the policy, teacher-force the next M tokens: mean
  NLL, its increase over `full`, mean KL(full || compressed) of the next-token distributions and
  top-1 agreement with `full`;
- recall: random "code" facts spread through the context are listed again after it; NLL of the
  fact tokens of that recap;
- needle: a pass key hidden at several depths of filler text, asked for after the (query-agnostic)
  compression; greedy answer, exact match;
- qa: a question about a random line of the context, answered greedily after compression,
  scored against `full`'s answer (exact match, token F1).
Each context follows the model's chat-template start (BOS and user turn, as in gate training),
which is protected from eviction. Writes `results.json` (one record per task, scorer, ratio, level;
header with model, gates, versions, timings), one PNG per task, and prints a table. For `recall`,
`gap_closed` is the share of the streaming-to-full NLL gap a scorer closes. `results.json` is
rewritten (atomically) after every record; rerunning the same config into the same folder resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax import data
from gatekv_jax.files import save_figure, write_json
from gatekv_jax.gate import load_gates, pretrained_gates
from gatekv_jax.inference import CompressedContext, continuation_log_probs, generate, prefill
from gatekv_jax.kvzip import RepeatPrompts
from gatekv_jax.models.loading import Model, load_model, load_tokenizer
from gatekv_jax.policy import SCORERS, EvictionPolicy

TASKS = ("continuation", "recall", "needle", "qa")
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "eval.py")
TASK_METRIC = {"continuation": "delta_nll", "recall": "nll", "needle": "accuracy", "qa": "f1"}


@dataclasses.dataclass(frozen=True)
class Sample:
    """One evaluation item: context tokens, and per task the continuation / question / answer."""

    context: np.ndarray
    continuation: np.ndarray | None = None
    scored: np.ndarray | None = None  # bool mask over the continuation: which tokens count
    question: np.ndarray | None = None
    answer: str | None = None


def kept_fraction(context: CompressedContext, model: Model) -> float:
    """Filled slots of the gated layers over what a full cache would hold for the same tokens."""
    layers = model.config.global_layers
    kept = sum(int(context.cache.layers[i].lengths.sum()) for i in layers)
    full = int(np.asarray(context.seen).sum()) * model.config.num_kv_heads * len(layers)
    return kept / full


def load_config(path: str = DEFAULT_CONFIG, **overrides):
    """The evaluation config of the file `path` (an ml_collections `get_config()`; default
    configs/eval.py) with `overrides` applied, as `--config.<field>=...` would."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.update(overrides)
    return config


def _policy(config, scorer: str, ratio: float) -> EvictionPolicy:
    full = scorer == "full" or ratio >= 1.0
    return EvictionPolicy(scorer="full" if full else scorer, ratio=None if full else ratio, level=config.level,
                          token_pool=config.token_pool, chunk_size=config.chunk_size, window=config.window,
                          sink=config.sink, seed=config.seed)


def _heldout_contexts(config, tokenizer, length: int) -> Iterator[np.ndarray]:
    docs = data.documents(config.data.source, config.data.paths)
    for _, tokens in data.token_contexts(docs, tokenizer, length, config.data.heldout_fraction, "heldout",
                                         config.data.max_document_tokens):
        yield tokens


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def continuation_samples(config, tokenizer) -> list[Sample]:
    n, m = config.context_length, config.continuation_length
    out = []
    for tokens, _ in zip(_heldout_contexts(config, tokenizer, n + m), range(config.n_samples)):
        out.append(Sample(context=tokens[:n], continuation=tokens[n:], scored=np.ones(m, bool)))
    return out


def recall_samples(config, tokenizer) -> list[Sample]:
    """Facts "The code of <name> is <number>." spread through the context, listed again after it."""
    rng = np.random.default_rng([config.seed, 1])
    names = ["alder", "birch", "cedar", "daisy", "ember", "fjord", "grove", "heron", "iris", "jade", "kelp",
             "lotus", "maple", "nectar", "onyx", "pearl", "quartz", "raven", "sage", "tulip"]
    out = []
    for tokens, _ in zip(_heldout_contexts(config, tokenizer, config.context_length), range(config.n_samples)):
        chosen = rng.choice(len(names), config.recall_facts, replace=False)
        facts = [f"The code of {names[i]} is {rng.integers(10000, 99999)}." for i in chosen]
        fact_ids = [_ids(tokenizer, f"\n{fact}\n") for fact in facts]
        budget = config.context_length - sum(len(f) for f in fact_ids)
        base = list(tokens[:budget])
        cuts = np.linspace(0, budget, len(facts) + 1, dtype=int)[:-1] + budget // (2 * len(facts))
        context = []
        for start, stop, fact in zip(np.r_[0, cuts[:-1]], cuts, fact_ids):
            context += base[start:stop] + fact
        context += base[cuts[-1]:]
        header = _ids(tokenizer, "\n\nTo recap, the codes above are:\n")
        continuation, scored = list(header), [False] * len(header)
        for fact in facts:
            ids = _ids(tokenizer, fact + "\n")
            continuation += ids
            scored += [True] * len(ids)
        out.append(Sample(context=np.asarray(context, np.int32), continuation=np.asarray(continuation, np.int32),
                          scored=np.asarray(scored)))
    return out


def needle_samples(config, tokenizer) -> list[Sample]:
    """A pass key at each configured depth of held-out filler text."""
    rng = np.random.default_rng([config.seed, 2])
    out = []
    fillers = _heldout_contexts(config, tokenizer, config.context_length)
    for _ in range(config.n_samples):
        filler = list(next(fillers))
        for depth in (float(d) for d in str(config.needle_depths).split(",")):
            key = str(rng.integers(10000, 99999))
            needle = _ids(tokenizer, f"\nThe pass key is {key}. Remember it. {key} is the pass key.\n")
            body = filler[:config.context_length - len(needle)]
            at = int(depth * len(body))
            context = body[:at] + needle + body[at:]
            question = _ids(tokenizer, "\n\nWhat is the pass key? The pass key is")
            out.append(Sample(context=np.asarray(context, np.int32), question=np.asarray(question, np.int32),
                              answer=key))
    return out


def qa_samples(config, tokenizer) -> list[Sample]:
    """"Which line starts with ...?" about a random line of the context (any corpus works)."""
    rng = np.random.default_rng([config.seed, 3])
    out = []
    for tokens, _ in zip(_heldout_contexts(config, tokenizer, config.context_length), range(config.n_samples)):
        lines = [line.strip() for line in tokenizer.decode(tokens).split("\n")]
        candidates = [line for line in lines if len(line.split()) >= 6]
        if not candidates:
            continue
        line = candidates[int(rng.integers(len(candidates)))]
        start = " ".join(line.split()[:3])
        question = _ids(tokenizer, f"\n\nQuestion: which line of the text above starts with \"{start}\"? "
                                   f"Answer: the line is \"")
        out.append(Sample(context=tokens, question=np.asarray(question, np.int32), answer=line))
    return out


SAMPLE_BUILDERS = {"continuation": continuation_samples, "recall": recall_samples, "needle": needle_samples,
                   "qa": qa_samples}


def copied_share(context: np.ndarray, continuation: np.ndarray, n: int = 8) -> float:
    """Share of the continuation's n-grams that occur in the context (1 = it copies the context)."""
    context, continuation = np.asarray(context).tolist(), np.asarray(continuation).tolist()
    grams = {tuple(context[i:i + n]) for i in range(len(context) - n + 1)}
    ends = range(len(continuation) - n + 1)
    return float(np.mean([tuple(continuation[i:i + n]) in grams for i in ends])) if len(ends) else 0.0


def token_f1(prediction: str, reference: str) -> float:
    got, want = prediction.split(), reference.split()
    common = sum(min(got.count(w), want.count(w)) for w in set(got))
    if not got or not want or common == 0:
        return float(got == want)
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def _score_task(task: str, model: Model, tokenizer, samples: list[Sample], policy: EvictionPolicy, gates,
                reference: dict, prefix: tuple[int, ...], teacher_memo: dict) -> dict:
    """Mean metrics of one (task, policy), and their values per sample under `per_sample`.
    `reference` holds full's outputs per sample (filled when full runs), `teacher_memo` the kvzip
    oracle's teacher per context (filled when kvzip first runs). Each context is preceded by
    `prefix` (the chat template's start), which is never evicted."""
    gates = gates if policy.scorer == "gate" else None
    metrics: dict[str, list[float]] = {}
    fractions = []
    for index, sample in enumerate(samples):
        context = prefill(model, [list(prefix) + sample.context.tolist()], policy, gates, prefix_length=len(prefix),
                          teacher_memo=teacher_memo)
        fractions.append(kept_fraction(context, model))
        if task in ("continuation", "recall"):
            log_probs = continuation_log_probs(model, [sample.continuation.tolist()], policy, context, gates)[0]
            targets = jnp.asarray(sample.continuation)
            nll = -jnp.take_along_axis(log_probs, targets[:, None], axis=1)[:, 0]
            scored = np.asarray(sample.scored)
            metrics.setdefault("nll", []).append(float(np.asarray(nll)[scored].mean()))
            if task == "continuation":
                metrics.setdefault("copied_8grams", []).append(copied_share(sample.context, sample.continuation))
                if policy.scorer == "full":
                    reference[index] = log_probs
                full = reference[index]
                kl = (jnp.exp(full) * (full - log_probs)).sum(axis=-1)
                metrics.setdefault("kl", []).append(float(kl.mean()))
                agree = jnp.argmax(full, axis=-1) == jnp.argmax(log_probs, axis=-1)
                metrics.setdefault("top1_agreement", []).append(float(agree.mean()))
        else:
            out = generate(model, [sample.question.tolist()], policy, gates, cache=context,
                           max_new_tokens=32 if task == "qa" else 8, stop_tokens=None)
            text = tokenizer.decode(out[0])
            if task == "needle":
                found = re.search(r"\d+", text)
                metrics.setdefault("accuracy", []).append(float(found is not None and found.group() == sample.answer))
            else:
                answer = text.split('"')[0].strip()
                if policy.scorer == "full":
                    reference[index] = answer
                metrics.setdefault("exact_match", []).append(float(answer == reference[index]))
                metrics.setdefault("f1", []).append(token_f1(answer, reference[index]))
    result: dict = {name: float(np.mean(values)) for name, values in metrics.items()}
    result["kv_fraction"] = float(np.mean(fractions))
    result["per_sample"] = metrics
    return result


def evaluate(config) -> dict:
    """Run every (task, scorer, ratio); returns the results dict (also written to results.json)."""
    started = time.time()
    scorers = [s.strip() for s in config.scorers.split(",")]
    unknown = [s for s in scorers if s not in SCORERS]
    if unknown:
        raise ValueError(f"unknown scorers {unknown}; choose from {SCORERS}")
    tasks = [t.strip() for t in config.tasks.split(",")]
    if [t for t in tasks if t not in TASKS]:
        raise ValueError(f"unknown tasks {[t for t in tasks if t not in TASKS]}; choose from {TASKS}")
    ratios = sorted(float(r) for r in str(config.ratios).split(","))
    model = load_model(config.model, dtype=config.dtype)
    tokenizer = load_tokenizer(config.model)
    gates = None
    if "gate" in scorers:
        gates = pretrained_gates(config.model) if config.gates == "packaged" else load_gates(config.gates)
    prefix = RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type).prefix if config.chat_prefix else ()
    path = os.path.join(config.output, "results.json")
    previous, timings = _previous_run(config, path)  # timings carry over: seconds spent in every run so far
    earlier_seconds = timings.pop("total_seconds", 0.0)
    records = []

    def save(complete: bool) -> dict:
        import flax
        import transformers

        header = {"model": config.model, "gates": config.gates if "gate" in scorers else None,
                  "versions": {"jax": jax.__version__, "flax": flax.__version__,
                               "transformers": transformers.__version__},
                  "timings": {**timings, "total_seconds": round(earlier_seconds + time.time() - started, 1)},
                  "resumed_records": sum(key in previous for key in map(_record_key, records)),
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
        teacher_memo: dict = {}
        full_metrics = _score_task(task, model, tokenizer, samples, _policy(config, "full", 1.0), gates, reference,
                                   prefix, teacher_memo)
        for scorer in scorers:
            for ratio in ratios:
                if (task, scorer, ratio) in previous:
                    records.append(previous[task, scorer, ratio])
                    continue
                policy = _policy(config, scorer, ratio)
                metrics = full_metrics if policy.scorer == "full" else \
                    _score_task(task, model, tokenizer, samples, policy, gates, reference, prefix, teacher_memo)
                record = {"task": task, "scorer": scorer, "ratio": ratio, "level": config.level,
                          "n_samples": len(samples), **metrics}
                if task in ("continuation", "recall"):
                    record["nll_full"] = full_metrics["nll"]
                    record["delta_nll"] = metrics["nll"] - full_metrics["nll"]
                    record["per_sample"] = {**metrics["per_sample"], "delta_nll": [
                        a - b for a, b in zip(metrics["per_sample"]["nll"], full_metrics["per_sample"]["nll"])]}
                records.append(record)
                print(_row(record), flush=True)
                timings[task_key] = round(task_earlier + time.time() - task_start, 1)
                save(complete=False)
    results = save(complete=True)
    for task in tasks:
        plot_task(records, task, os.path.join(config.output, f"{task}.png"))
    print("\n".join(["", f"results ({config.output}/results.json):"] + [_row(r) for r in records]), flush=True)
    return results


def _record_key(record: dict) -> tuple:
    return record["task"], record["scorer"], record["ratio"]


def _previous_run(config, path: str) -> tuple[dict[tuple, dict], dict[str, float]]:
    """Records and timings already in `path` from a run of the same config (an interrupted or
    finished run resumes where it stopped); a file written by a different config is refused."""
    if not os.path.isfile(path):
        return {}, {}
    with open(path) as f:
        previous = json.load(f)
    old, new = previous["header"]["config"], json.loads(json.dumps(config.to_dict()))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise ValueError(f"{path} holds results of another config (fields {changed} differ); "
                         f"pass a new --config.output or remove the file")
    return {_record_key(r): r for r in previous["records"]}, dict(previous["header"]["timings"])


def add_gap_closed(records: list[dict]) -> None:
    """For `recall` records: the share of the streaming-to-full NLL gap each scorer closes at the same
    ratio and level, `(nll_streaming - nll) / (nll_streaming - nll_full)` (1 = as good as full, 0 = as
    good as streaming, < 0 = worse); left out where streaming was not run or ties full."""
    streaming = {(r["ratio"], r["level"]): r["nll"] for r in records
                 if r["task"] == "recall" and r["scorer"] == "streaming"}
    for record in records:
        if record["task"] != "recall" or (record["ratio"], record["level"]) not in streaming:
            continue
        gap = streaming[record["ratio"], record["level"]] - record["nll_full"]
        if gap > 0:
            record["gap_closed"] = (streaming[record["ratio"], record["level"]] - record["nll"]) / gap


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


def main(argv) -> None:
    from absl import app, logging

    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    evaluate(_CONFIG.value)


if __name__ == "__main__":
    from absl import app
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "evaluation config (configs/eval.py)")
    app.run(main)
