"""Chunked prefill against one eviction: where their keep sets differ, on the recall samples.

    python scripts/keep_sets.py [--samples 2] [--ratio 0.3]

For each held-out recall sample (the ones `python -m gatekv_jax.evaluate` builds, default config:
packaged gates, `token` level, pool 3) the context is prefilled twice with the gate policy: in
512-token chunks (evicting after each) and in one 2,048-token chunk (one eviction at the end).
Prints the kept positions of the first gated layer (the `token` level keeps the same ones in
every gated layer) per quarter of the context, their overlap, and how many fact digits each keeps.
"""

from __future__ import annotations

import argparse

import numpy as np

from gatekv_jax.engine.prefill import prefill
from gatekv_jax.engine.teacher import RepeatPrompts
from gatekv_jax.evaluation.runner import load_config, policy_for
from gatekv_jax.evaluation.tasks import recall_samples
from gatekv_jax.kv.gate_files import pretrained_gates
from gatekv_jax.models.loading import load_model, load_tokenizer


def kept_positions(model, gates, config, tokens, prefix_length, chunk, ratio) -> set[int]:
    config.chunk_size = chunk
    context = prefill(model, [tokens], policy_for(config, "gate", ratio), gates=gates, prefix_length=prefix_length)
    positions = np.asarray(context.cache.layers[model.config.full_attention_layers[0]].positions[0, 0])
    return set(positions[positions >= 0].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--ratio", type=float, default=0.3)
    args = parser.parse_args()
    config = load_config(n_samples=args.samples)
    model, tokenizer = load_model(config.model), load_tokenizer(config.model)
    gates = pretrained_gates(config.model)
    prefix = RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type).prefix
    for index, sample in enumerate(recall_samples(config, tokenizer)):
        tokens = list(prefix) + sample.context.tolist()
        pieces = [tokenizer.decode([t]) for t in tokens]
        fact_digits = [i for i, piece in enumerate(pieces)
                       if piece.strip().isdigit() and "code of" in "".join(pieces[max(0, i - 8):i])]
        chunked = kept_positions(model, gates, config, tokens, len(prefix), 512, args.ratio)
        once = kept_positions(model, gates, config, tokens, len(prefix), len(tokens), args.ratio)
        quarters = dict(bins=4, range=(0, len(tokens)))
        print(f"sample {index}: {len(tokens)} tokens, kept {len(chunked)} / {len(once)}, "
              f"overlap {len(chunked & once)}")
        for name, kept in (("chunked (512)", chunked), ("one eviction", once)):
            print(f"  {name:14s} kept per quarter {np.histogram(sorted(kept), **quarters)[0].tolist()}, "
                  f"fact digits {sum(i in kept for i in fact_digits)}/{len(fact_digits)}")
        print(f"  only chunked per quarter {np.histogram(sorted(chunked - once), **quarters)[0].tolist()}, "
              f"only one eviction {np.histogram(sorted(once - chunked), **quarters)[0].tolist()}")


if __name__ == "__main__":
    main()
