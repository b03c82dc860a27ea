"""Where a scorer's continuation NLL increase comes from, token by token (engine prefill, as evaluate runs it).

    python scripts/continuation_losses.py [--samples 6] [--context_length 8000] [--ratio 0.3] [--top 12]

For each held-out continuation sample (the ones `python -m gatekv_jax.evaluate` builds): the share
of the continuation's 8-grams that already occur in the context (1 = the continuation copies the
context), the NLL increase over `full` of `gate` and `h2o` per continuation token, the share of
the gate's increase carried by its `top` worst tokens, and for each of those tokens how many of
its copies in the context each scorer keeps (first gated layer, first KV head; at level "token"
every gated head keeps the same tokens); and of the continuation's distinct tokens that occur 1-10
times in the context, how many keep at least one copy under each scorer. Writes `losses.json`.
"""

from __future__ import annotations

import argparse
import os

import jax.numpy as jnp
import numpy as np

from gatekv_jax.engine import RepeatPrompts, continuation_log_probs, prefill
from gatekv_jax.evaluation import continuation_samples, copied_share, load_config, policy_for
from gatekv_jax.kv import pretrained_gates
from gatekv_jax.models import load_model, load_tokenizer
from gatekv_jax.utils.files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCORERS = ("full", "gate", "h2o")
RARE = 10  # "rare" continuation tokens occur at most this often in the context


def token_nll_and_kept(model, policy, gates, prefix: list[int], context: list[int], continuation: list[int],
                       layer_index: int) -> tuple[np.ndarray, set[int]]:
    """Per-token NLL of `continuation` after prefilling `prefix + context` under `policy` (engine
    prefill, prefix protected), and the context positions kept in layer `layer_index`'s first head."""
    compressed = prefill(model, [prefix + context], policy, gates=gates, prefix_length=len(prefix))
    log_probs = continuation_log_probs(model, None, [continuation], policy, gates=gates, context=compressed)[0]
    nll = -np.asarray(jnp.take_along_axis(log_probs, jnp.asarray(continuation)[:, None], axis=1)[:, 0])
    positions = np.asarray(compressed.cache.layers[layer_index].positions[0, 0])
    return nll, set((positions[positions >= len(prefix)] - len(prefix)).tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--context_length", type=int, default=8000)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "results", "continuation_losses"))
    args = parser.parse_args()
    config = load_config(n_samples=args.samples, context_length=args.context_length)
    model, tokenizer = load_model(config.model), load_tokenizer(config.model)
    gates = pretrained_gates(config.model)
    prefix = list(RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type).prefix)
    layer_index = model.config.full_attention_layers[0]
    report = {"context_length": args.context_length, "ratio": args.ratio, "level": config.level,
              "token_pool": config.token_pool, "samples": []}
    for sample in continuation_samples(config, tokenizer):
        context, continuation = sample.context.tolist(), sample.continuation.tolist()
        nll, kept = {}, {}
        for scorer in SCORERS:
            policy = policy_for(config, scorer, 1.0 if scorer == "full" else args.ratio)
            nll[scorer], kept[scorer] = token_nll_and_kept(model, policy, gates if scorer == "gate" else None, prefix,
                                                           context, continuation, layer_index)
        increase = {s: nll[s] - nll["full"] for s in ("gate", "h2o")}
        worst = np.argsort(-increase["gate"])[:args.top]
        tokens = []
        for i in worst:
            copies = [p for p, t in enumerate(context) if t == continuation[i]]
            tokens.append({"index": int(i), "text": tokenizer.decode(continuation[max(0, i - 6):i + 1]),
                           "token": tokenizer.decode([continuation[i]]), "nll_full": float(nll["full"][i]),
                           "increase_gate": float(increase["gate"][i]), "increase_h2o": float(increase["h2o"][i]),
                           "copies_in_context": len(copies),
                           "copies_kept_gate": sum(p in kept["gate"] for p in copies),
                           "copies_kept_h2o": sum(p in kept["h2o"] for p in copies)})
        rare = [t for t in set(continuation) if 1 <= context.count(t) <= RARE]
        with_copy = {s: sum(any(context[p] == t for p in kept[s]) for t in rare)
                     for s in ("gate", "h2o")}
        entry = {"copied_8grams": copied_share(context, continuation), "nll_full": float(nll["full"].mean()),
                 "increase_gate": float(increase["gate"].mean()), "increase_h2o": float(increase["h2o"].mean()),
                 "top_share_gate": float(increase["gate"][worst].sum() / increase["gate"].sum()),
                 "rare_tokens": len(rare), "rare_tokens_with_a_kept_copy": with_copy, "worst_tokens": tokens}
        report["samples"].append(entry)
        print(f"sample {len(report['samples']) - 1}: copied 8-grams {entry['copied_8grams']:.2f}, full "
              f"{entry['nll_full']:.3f}, gate {entry['increase_gate']:+.3f} (top {args.top} tokens "
              f"{entry['top_share_gate']:.0%}), h2o {entry['increase_h2o']:+.3f}; rare tokens with a kept copy: gate "
              f"{with_copy['gate']}, h2o {with_copy['h2o']} of {len(rare)}", flush=True)
        for t in tokens[:6]:
            print(f"  {t['text']!r}: gate {t['increase_gate']:+.2f}, h2o {t['increase_h2o']:+.2f}; copies "
                  f"{t['copies_in_context']}, kept by gate {t['copies_kept_gate']}, h2o {t['copies_kept_h2o']}")
    write_json(os.path.join(args.output, "losses.json"), report)


if __name__ == "__main__":
    main()
