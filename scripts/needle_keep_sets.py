"""Which tokens of a 2K pass-key needle each token ranking of the gate keeps (engine prefill, as evaluate runs it).

    python scripts/needle_keep_sets.py [--source prose] [--samples 4,5,9,18,20] [--ratio 0.3]

For each chosen needle sample (the ones `python -m gatekv_jax.evaluate --config.tasks=needle
--config.needle_depths=0.1,0.5,0.9` builds, 10 contexts x 3 depths), prints the needle sentence
and, per ranking ("score", "either", "quantile"), one mark per token from the token before the
needle: `#` kept, `.` evicted (every gated layer keeps the same tokens at level "token").
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from gatekv_jax.engine import RepeatPrompts, prefill
from gatekv_jax.evaluation import load_config, policy_for
from gatekv_jax.evaluation.tasks import needle_samples
from gatekv_jax.kv import pretrained_gates
from gatekv_jax.models import load_model, load_tokenizer

RANKS = ("score", "either", "quantile")
NEEDLE_TOKENS = 23  # the token before, "\\n", "The pass key is", 5 digits, ". Remember it. ", 5 digits, " is"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="prose")
    parser.add_argument("--samples", default="4,5,9,18,20")
    parser.add_argument("--ratio", type=float, default=0.3)
    args = parser.parse_args()
    config = load_config(n_samples=10, context_length=2000, needle_depths="0.1,0.5,0.9")
    config.data.source = args.source
    model, tokenizer = load_model(config.model), load_tokenizer(config.model)
    gates = pretrained_gates(config.model)
    prefix = list(RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type).prefix)
    layer_index = model.config.full_attention_layers[0]
    samples = needle_samples(config, tokenizer)
    for index in (int(i) for i in args.samples.split(",")):
        context = samples[index].context.tolist()
        start = next(i for i in range(len(context))
                     if tokenizer.decode(context[i:i + 4]).strip().startswith("The pass key"))
        span = range(start - 1, start - 1 + NEEDLE_TOKENS)
        print(f"sample {index}: {tokenizer.decode([context[p] for p in span])!r}")
        for rank in RANKS:
            policy = dataclasses.replace(policy_for(config, "gate", args.ratio), token_rank=rank)
            compressed = prefill(model, [prefix + context], policy, gates=gates, prefix_length=len(prefix))
            positions = np.asarray(compressed.cache.layers[layer_index].positions[0, 0])
            kept = set((positions[positions >= len(prefix)] - len(prefix)).tolist())
            print(f"  {rank:>8}: " + "".join("#" if p in kept else "." for p in span), flush=True)


if __name__ == "__main__":
    main()
