"""Where the teacher puts a planted number's weight: its digits' rank against their neighbours'.

    python scripts/digit_neighbour_scores.py [prose|stdlib] [--samples 10]

For each recall sample, the KVzip teacher's scores (`teacher_scores`) are turned into rank
quantiles within the context (1 = the highest score), per gated layer and KV head, then the best
over them (as the `token` level ranks). Prints the mean quantile of the planted numbers' digit
tokens, of the token right after each number's last digit, of the token right before its first,
of the other tokens of the planted sentences and of the filler, and the share of each kept by a
top-30% cut of that quantile.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fact_keep_shares import fact_parts  # noqa: E402

from gatekv_jax.engine.teacher import RepeatPrompts, teacher_scores  # noqa: E402
from gatekv_jax.evaluation.runner import load_config  # noqa: E402
from gatekv_jax.evaluation.tasks import recall_samples  # noqa: E402
from gatekv_jax.models.loading import load_model, load_tokenizer  # noqa: E402


def best_quantile(scores: np.ndarray) -> np.ndarray:
    """Scores [Lg, K, n] -> [n]: each token's best rank quantile over layers and heads (1 = top)."""
    ranks = scores.argsort(axis=-1).argsort(axis=-1)  # 0 = lowest
    return ((ranks + 1) / scores.shape[-1]).max(axis=(0, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default="prose")
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    config = load_config(n_samples=args.samples)
    config.data.source = args.source
    model, tokenizer = load_model(config.model), load_tokenizer(config.model)
    prompts = RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type)
    prefix = len(prompts.prefix)
    parts_of = {"digits": [], "after_number": [], "before_number": [], "fact_sentences": [], "filler": []}
    kept_of = {name: [] for name in parts_of}
    for sample in recall_samples(config, tokenizer):
        context = sample.context
        pieces = [tokenizer.decode([t]) for t in list(prompts.prefix) + context.tolist()]
        digits, sentence = fact_parts(pieces)
        digits = {i - prefix for i in digits}
        sentence = {i - prefix for i in sentence}
        starts = {i for i in digits if i - 1 not in digits}
        ends = {i for i in digits if i + 1 not in digits}
        parts = {"digits": digits, "after_number": {i + 1 for i in ends}, "before_number": {i - 1 for i in starts},
                 "fact_sentences": sentence - {i + 1 for i in ends} - {i - 1 for i in starts},
                 "filler": set(range(len(context))) - digits - sentence}
        scores, _ = teacher_scores(model, context[None], prompts)
        quantile = best_quantile(scores[0])
        cut = np.sort(quantile)[-int(0.3 * len(context))]
        for name, part in parts.items():
            index = np.array(sorted(part))
            parts_of[name].append(float(quantile[index].mean()))
            kept_of[name].append(float((quantile[index] >= cut).mean()))
        print({name: round(values[-1], 3) for name, values in parts_of.items()}, flush=True)
    print(f"{args.source}, {args.samples} recall samples, the teacher's best rank quantile (1 = top) / share in "
          "the top 30%:")
    for name in parts_of:
        print(f"  {name:15s} {np.mean(parts_of[name]):.3f} / {np.mean(kept_of[name]):.2f}")


if __name__ == "__main__":
    main()
