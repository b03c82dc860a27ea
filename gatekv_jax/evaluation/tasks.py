"""Evaluation tasks on held-out documents: sample builders (continuation, decode, recall, needle, qa) and metrics.

Held-out documents are the training split's complement (split by document hash), so evaluation
never sees a training document.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from gatekv_jax.training import data

TASKS = ("continuation", "decode", "recall", "needle", "qa")
TASK_METRIC = {"continuation": "delta_nll", "decode": "delta_nll", "recall": "nll", "needle": "accuracy", "qa": "f1"}
# What a task's records measure per sample (records lacking one come from older code and are scored again)
TASK_METRICS = {"continuation": ("nll", "kl", "top1_agreement", "copied_8grams"),
                "decode": ("nll", "top1_agreement", "copied_8grams"), "recall": ("nll",),
                "needle": ("accuracy", "key_nll"), "qa": ("exact_match", "f1")}


@dataclasses.dataclass(frozen=True)
class Sample:
    """One evaluation item: context tokens, and per task the continuation / question / answer."""

    context: np.ndarray
    continuation: np.ndarray | None = None
    scored: np.ndarray | None = None  # bool mask over the continuation: which tokens count
    question: np.ndarray | None = None
    answer: str | None = None


def _heldout_contexts(config, tokenizer, length: int) -> Iterator[np.ndarray]:
    for _, tokens in data.mixed_contexts(config.data.source, config.data.paths, tokenizer, length,
                                         config.data.heldout_fraction, "heldout", config.data.max_document_tokens):
        yield tokens


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def continuation_samples(config, tokenizer) -> list[Sample]:
    n, m = config.context_length, config.continuation_length
    out = []
    for tokens, _ in zip(_heldout_contexts(config, tokenizer, n + m), range(config.n_samples)):
        out.append(Sample(context=tokens[:n], continuation=tokens[n:], scored=np.ones(m, bool)))
    return out


def decode_samples(config, tokenizer) -> list[Sample]:
    """A context and the next `decode_length` tokens of the same stream, decoded with eviction."""
    n, m = config.context_length, config.decode_length
    return [Sample(context=tokens[:n], continuation=tokens[n:], scored=np.ones(m, bool))
            for tokens, _ in zip(_heldout_contexts(config, tokenizer, n + m), range(config.n_samples))]


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
    """A pass key at each configured depth of held-out filler text: asked for (`question`, greedy
    answer against `answer`) and teacher-forced after the question (`continuation`, the key's
    tokens `scored`)."""
    rng = np.random.default_rng([config.seed, 2])
    out = []
    for filler_tokens, _ in zip(_heldout_contexts(config, tokenizer, config.context_length), range(config.n_samples)):
        filler = list(filler_tokens)
        for depth in (float(d) for d in str(config.needle_depths).split(",")):
            key = str(rng.integers(10000, 99999))
            needle = _ids(tokenizer, f"\nThe pass key is {key}. Remember it. {key} is the pass key.\n")
            body = filler[:config.context_length - len(needle)]
            at = int(depth * len(body))
            context = body[:at] + needle + body[at:]
            question = _ids(tokenizer, "\n\nWhat is the pass key? The pass key is")
            key_ids = _ids(tokenizer, f" {key}")
            out.append(Sample(context=np.asarray(context, np.int32), question=np.asarray(question, np.int32),
                              answer=key, continuation=np.asarray(question + key_ids, np.int32),
                              scored=np.asarray([False] * len(question) + [True] * len(key_ids))))
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


SAMPLE_BUILDERS = {"continuation": continuation_samples, "decode": decode_samples, "recall": recall_samples,
                   "needle": needle_samples, "qa": qa_samples}


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
