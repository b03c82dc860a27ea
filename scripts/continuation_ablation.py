"""What 8K-token continuation needs: gate vs accumulated-attention (h2o) keep sets on the same cache.

    python scripts/continuation_ablation.py [--samples 3] [--context_length 8000] [--ratios 0.3,0.5,0.7]

For each held-out continuation sample (the ones `python -m gatekv_jax.evaluate` builds), the
context is prefilled once per scorer with nothing evicted (ratio 1.0, so the cache holds every
token with its gate / h2o score), then compressed by ONE engine eviction (`gatekv_jax.eviction.evict`,
chat prefix and 2% recent window protected) and the continuation's NLL is measured. Unlike the
engine's chunked prefill, nothing is evicted before the context ends. Keep sets: gate / h2o at
`head` and `token` level, streaming, and a split budget (the gate's top 75% / 50% of the budget,
the rest by h2o). Also prints the tokens that h2o keeps and the gate (token level) drops at the
first ratio. Writes `ablation.json`.
"""

from __future__ import annotations

import argparse
import collections
import math
import os

import jax.numpy as jnp
import numpy as np

from gatekv_jax.engine import RepeatPrompts, continuation_log_probs, prefill
from gatekv_jax.evaluation import continuation_samples, load_config
from gatekv_jax.kv import PER_HEAD as HEAD
from gatekv_jax.kv import Allocation, EvictionPolicy, evict, pretrained_gates
from gatekv_jax.models import load_model, load_tokenizer
from gatekv_jax.utils.files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT_SHARES = (0.25, 0.5)  # shares of the budget filled by h2o after the gate's top picks


def split_budget(gated, accumulated, config, keep, protect, recent, share: float, token: Allocation):
    """Keep the gate's top `1 - share` of the budget (at the `token` allocation), then fill the rest
    by h2o's accumulated attention; both contexts are full prefills of the same tokens (same slots)."""
    own = np.array([max(1, round((1 - share) * int(keep[0])))], np.int32)
    chosen = evict(gated.cache, config, own, protect, recent, token)
    kept = chosen.layers[config.full_attention_layers[0]].positions[0, 0]
    layers = list(accumulated.cache.layers)
    for i in config.full_attention_layers:
        first = jnp.isin(layers[i].positions, kept) & (layers[i].positions >= 0)
        layers[i] = layers[i].replace(scores=jnp.where(first, jnp.inf, layers[i].scores))
    cache = evict(accumulated.cache.replace(layers=tuple(layers)), config, keep, protect, recent, HEAD)
    return accumulated.replace(cache=cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--context_length", type=int, default=8000)
    parser.add_argument("--ratios", default="0.3,0.5,0.7")
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "results", "continuation_ablation"))
    args = parser.parse_args()
    config = load_config(n_samples=args.samples, context_length=args.context_length)
    model, tokenizer = load_model(config.model), load_tokenizer(config.model)
    gates = pretrained_gates(config.model)
    prefix = RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type).prefix
    ratios = [float(r) for r in args.ratios.split(",")]
    token = Allocation("token", None, config.token_pool)  # the eval config's pooling
    variants = {"gate token": ("gate", token), "gate head": ("gate", HEAD),
                "h2o head": ("h2o", HEAD), "h2o token": ("h2o", token),
                "streaming": ("streaming", HEAD)}
    nlls: dict[str, list[float]] = collections.defaultdict(list)
    dropped_by_gate: collections.Counter = collections.Counter()
    for sample in continuation_samples(config, tokenizer):
        tokens = list(prefix) + sample.context.tolist()
        n = len(tokens)
        full = {scorer: prefill(model, [tokens], EvictionPolicy(scorer=scorer, ratio=1.0),
                                gates=gates if scorer == "gate" else None, prefix_length=len(prefix))
                for scorer in ("gate", "h2o", "streaming")}

        def nll(context) -> float:
            log_probs = continuation_log_probs(model, None, [sample.continuation.tolist()],
                                               EvictionPolicy(scorer="full"), context=context)[0]
            return float(-jnp.take_along_axis(log_probs, jnp.asarray(sample.continuation)[:, None], axis=1).mean())

        nlls["full"].append(nll(full["gate"]))
        protect, recent = np.array([len(prefix)], np.int32), np.array([math.ceil(0.02 * n)], np.int32)
        for ratio in ratios:
            keep = np.array([math.ceil(ratio * n)], np.int32)
            kept = {}
            for name, (scorer, allocation) in variants.items():
                context = full[scorer]
                context = context.replace(cache=evict(context.cache, model.config, keep, protect, recent, allocation))
                nlls[f"{ratio:g} {name}"].append(nll(context))
                print(f"{ratio:g} {name:12s} {nlls[f'{ratio:g} {name}'][-1]:.3f}", flush=True)
                layer = model.config.full_attention_layers[0]
                kept[name] = set(np.asarray(context.cache.layers[layer].positions[0, 0]).tolist()) - {-1}
            for share in SPLIT_SHARES:
                name = f"gate + h2o {share:.0%}"
                context = split_budget(full["gate"], full["h2o"], model.config, keep, protect, recent, share, token)
                nlls[f"{ratio:g} {name}"].append(nll(context))
                print(f"{ratio:g} {name:12s} {nlls[f'{ratio:g} {name}'][-1]:.3f}", flush=True)
            if ratio == ratios[0]:
                dropped_by_gate.update(tokenizer.decode([tokens[p]]) for p in kept["h2o head"] - kept["gate token"])
    table = {name: float(np.mean(values)) for name, values in nlls.items()}
    common = [[text, count] for text, count in dropped_by_gate.most_common(15)]
    os.makedirs(args.output, exist_ok=True)
    write_json(os.path.join(args.output, "ablation.json"),
               {"samples": args.samples, "context_length": args.context_length, "continuation_nll": table,
                "per_sample": dict(nlls), f"kept_by_h2o_head_not_gate_token_at_{ratios[0]:g}": common})
    print(f"\ncontinuation NLL, mean over {args.samples} samples:")
    for name, value in table.items():
        print(f"{name:24s} {value:.3f}  {' '.join(f'{v:.3f}' for v in nlls[name])}")
    print("most common tokens kept by h2o (head) and dropped by the gate (token):", common)


if __name__ == "__main__":
    main()
