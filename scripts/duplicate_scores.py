"""How the KVzip teacher and the gates score a passage that occurs twice in a context.

    python scripts/duplicate_scores.py [--length 1800] [--passage 150] [--first 400] [--second 1400]

A held-out context of `length` tokens gets a `passage`-token piece of another held-out document
written over it at `first` ("once"); a copy of the context also gets the same piece at `second`
("twice"). For both, the teacher's scores and the packaged gates' scores of the tokens at `first`
and at `second` are reported as their mean and their mean rank quantile among the context's
tokens per gated layer (higher = kept first). The gate is causal (it sees a token's hidden state only), so
its score of the first copy cannot depend on a later copy; the teacher's can. Writes `scores.json`.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from gatekv_jax.engine import RepeatPrompts, teacher_scores
from gatekv_jax.evaluation import continuation_samples, load_config
from gatekv_jax.kv import gate_scores, pretrained_gates
from gatekv_jax.models import load_model, load_tokenizer
from gatekv_jax.utils.files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rank_quantiles(scores: np.ndarray) -> np.ndarray:
    """[Lg, K, n] -> each token's rank among the n tokens of its (layer, head), in [0, 1)."""
    return np.argsort(np.argsort(scores, axis=-1), axis=-1) / scores.shape[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=1800)
    parser.add_argument("--passage", type=int, default=150)
    parser.add_argument("--first", type=int, default=400)
    parser.add_argument("--second", type=int, default=1400)
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "results", "duplicate_scores"))
    args = parser.parse_args()
    if not args.first + args.passage <= args.second <= args.length - args.passage:
        raise ValueError(f"need first + passage <= second <= length - passage, got first={args.first}, "
                         f"second={args.second}, passage={args.passage}, length={args.length}")
    config = load_config(n_samples=3)
    model, tokenizer = load_model(config.model), load_tokenizer(config.model)
    gates = pretrained_gates(config.model)
    prompts = RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type)
    samples = continuation_samples(config, tokenizer)
    passage = samples[2].context[200:200 + args.passage]
    once = samples[1].context[:args.length].copy()
    once[args.first:args.first + args.passage] = passage
    twice = once.copy()
    twice[args.second:args.second + args.passage] = passage
    report = {"settings": vars(args), "layers": list(model.config.full_attention_layers), "contexts": {}}
    for name, context in (("once", once), ("twice", twice)):
        teacher, inputs = teacher_scores(model, context[None], prompts)  # [1, Lg, K, n], [1, Lg, n, D]
        gate = np.stack([np.asarray(gate_scores(gates[f"layer_{layer}"], inputs[:, g]))[0].T
                         for g, layer in enumerate(model.config.full_attention_layers)])  # [Lg, K, n]
        entry = {}
        for scorer, scores in (("teacher", teacher[0]), ("gate", gate)):
            quantiles = rank_quantiles(scores)
            for span, start in (("first", args.first), ("second", args.second)):
                piece = slice(start, start + args.passage)
                entry[f"{scorer} {span}"] = {"mean": float(scores[:, :, piece].mean()),
                                             "quantile_per_layer": quantiles[:, :, piece].mean(axis=(1, 2)).tolist()}
                print(f"{name:5s} {scorer:7s} tokens at {span:6s}: mean {scores[:, :, piece].mean():.3f}, rank "
                      f"quantile per layer {np.round(quantiles[:, :, piece].mean(axis=(1, 2)), 2).tolist()}",
                      flush=True)
        report["contexts"][name] = entry
    write_json(os.path.join(args.output, "scores.json"), report)


if __name__ == "__main__":
    main()
