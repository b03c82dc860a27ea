"""Which continuation tokens lose NLL when the gate ranks tokens by one `token_rank` (or window) instead of another.

    python scripts/rank_losses.py [--source stdlib] [--context_length 8000] [--sample 1] [--top 8]
    python scripts/rank_losses.py --sample 0 --windows 161,1174 --top 12    # the paper's window against scaled

On one held-out continuation sample (as `python -m gatekv_jax.evaluate --config.tasks=continuation`
builds them; sample 1 of 8K code is the one "either" loses to "score"), prefills the context with
the full cache and with the gate at 30% under each ranking, teacher-forces the continuation, and
prints the continuation tokens whose NLL increase over full grows most from the first ranking to
the second, with how many copies of each token the context has and how many each ranking keeps.
With `--windows A,B` it compares two recent windows (default ranking) instead, and also counts
the slots each keeps before the wider window.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from continuation_losses import token_nll_and_kept  # scripts/ is on the path when run as a script

from gatekv_jax.engine import RepeatPrompts
from gatekv_jax.evaluation import continuation_samples, load_config, policy_for
from gatekv_jax.kv import pretrained_gates
from gatekv_jax.models import load_model, load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="stdlib")
    parser.add_argument("--context_length", type=int, default=8000)
    parser.add_argument("--sample", type=int, default=1)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--ranks", default="score,either")
    parser.add_argument("--windows", help="compare these two recent windows (tokens) instead of --ranks")
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    field = "window" if args.windows else "token_rank"
    first, second = (args.windows or args.ranks).split(",")
    config = load_config(n_samples=args.sample + 1, context_length=args.context_length)
    config.data.source = args.source
    model, tokenizer = load_model(config.model), load_tokenizer(config.model)
    gates = pretrained_gates(config.model)
    prefix = list(RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type).prefix)
    layer_index = model.config.full_attention_layers[0]
    sample = continuation_samples(config, tokenizer)[args.sample]
    context, continuation = sample.context.tolist(), sample.continuation.tolist()
    nll, kept = {}, {}
    for name in ("full", first, second):
        scorer = "full" if name == "full" else "gate"
        policy = policy_for(config, scorer, 1.0 if scorer == "full" else args.ratio)
        if scorer == "gate":
            policy = dataclasses.replace(policy, **{field: int(name) if field == "window" else name})
        nll[name], kept[name] = token_nll_and_kept(model, policy, gates if scorer == "gate" else None, prefix,
                                                   context, continuation, layer_index)
    increase = {name: nll[name] - nll["full"] for name in (first, second)}
    change = increase[second] - increase[first]
    worst = np.argsort(-change)[:args.top]
    print(f"sample {args.sample}: NLL increase over full {first} {increase[first].mean():+.3f}, {second} "
          f"{increase[second].mean():+.3f}; the {args.top} tokens below carry {change[worst].sum():+.2f} of the "
          f"{change.sum():+.2f} summed change")
    if field == "window":
        edge = len(context) - max(int(first), int(second))
        print(f"  slots kept before the last {len(context) - edge} context tokens: {first} "
              f"{sum(p < edge for p in kept[first])}, {second} {sum(p < edge for p in kept[second])}")
    for i in worst:
        copies = [p for p, token in enumerate(context) if token == continuation[i]]
        print(f"  {tokenizer.decode(continuation[max(0, i - 8):i + 1])!r}: {first} {increase[first][i]:+.2f}, "
              f"{second} {increase[second][i]:+.2f}; copies in the context {len(copies)}, kept by {first} "
              f"{sum(p in kept[first] for p in copies)}, by {second} {sum(p in kept[second] for p in copies)}")


if __name__ == "__main__":
    main()
