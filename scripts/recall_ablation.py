"""Where recall breaks under eviction: per-layer keep sets on the evaluation's recall samples.

    python scripts/recall_ablation.py [--samples 2] [--ratios 0.1,0.2,0.3,0.5,0.7] [--output DIR]

For each held-out recall sample (the same ones `python -m gatekv_jax.evaluate` builds) the context
is prefilled once with the full cache; a keep set is then imposed on chosen global layers by
masking the positions of the dropped slots (masks come from stored positions, so this equals
evicting them after a full prefill), and the recap's fact-token NLL is measured. Keep sets:
- per layer: streaming / kvzip teacher / gate top-k at `--probe_ratio` on ONE layer, others full;
- the fact lines alone (the "The code of X is N." lines plus the chat prefix) on every layer;
- per ratio: streaming, random, and kvzip / gate top-k per layer (`head`), under one threshold
  across layers (`global`), or the same tokens in every layer by their best rank quantile
  (`token`), every layer.
Every keep set protects the chat prefix and the 2% recent window, like the engine. Unlike the
engine's chunked prefill (which evicts after every chunk), nothing is evicted before the context
ends, so these numbers isolate the choice of slots. Writes `ablation.json` and prints a table.
"""

from __future__ import annotations

import argparse
import math
import os

import jax.numpy as jnp
import numpy as np

from gatekv_jax.engine import RepeatPrompts, continuation_log_probs, prefill, teacher_scores
from gatekv_jax.evaluation import load_config, recall_samples
from gatekv_jax.kv import EvictionPolicy, gate_scores, pretrained_gates
from gatekv_jax.models import load_model, load_tokenizer
from gatekv_jax.utils.files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fact_line_mask(tokens: list[int], tokenizer) -> np.ndarray:
    """True on the tokens of each "The code of <name> is <5 digits>." line (8 tokens before the
    digits, the digits, the period and newline)."""
    digit = np.array([tokenizer.decode([t]).strip().isdigit() for t in tokens])
    mask = np.zeros(len(tokens), bool)
    for i in np.nonzero(digit[1:] & ~digit[:-1])[0] + 1:
        j = i
        while j < len(tokens) and digit[j]:
            j += 1
        if j - i == 5:
            mask[max(0, i - 8):j + 2] = True
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--ratios", default="0.1,0.2,0.3,0.5,0.7")
    parser.add_argument("--probe_ratio", type=float, default=0.3)
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "results", "recall_ablation"))
    args = parser.parse_args()
    config = load_config(n_samples=args.samples)
    model, tokenizer = load_model(config.model), load_tokenizer(config.model)
    gates = pretrained_gates(config.model)
    prompts = RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type)
    layers, prefix_length = model.config.full_attention_layers, len(prompts.prefix)
    full = EvictionPolicy(scorer="full")
    nlls: dict[str, list[float]] = {}
    for sample in recall_samples(config, tokenizer):
        tokens = list(prompts.prefix) + sample.context.tolist()
        n, m = len(tokens), len(sample.context)
        base = prefill(model, [tokens], full)
        teacher, inputs = teacher_scores(model, sample.context[None], prompts)  # [1, Lg, K, m], [1, Lg, m, D]
        scores = {"kvzip": teacher[0, :, 0],
                  "gate": np.stack([np.asarray(gate_scores(gates[f"layer_{i}"], jnp.asarray(inputs[:, g])))[0, :, 0]
                                    for g, i in enumerate(layers)])}  # [Lg, m] (one KV head)
        recent = math.ceil(0.02 * n)

        def ranked(score: np.ndarray) -> np.ndarray:  # [..., m] -> [..., n] with the protected slots at +inf
            pad = np.full(score.shape[:-1] + (prefix_length,), np.inf)
            out = np.concatenate([pad, score.astype(np.float64)], axis=-1)
            out[..., -recent:] = np.inf
            return out

        def top(score: np.ndarray, keep: int) -> np.ndarray:
            return np.argsort(-ranked(score), kind="stable")[:keep]

        def global_top(score: np.ndarray, keep: int) -> dict[int, np.ndarray]:
            flat = np.argsort(-ranked(score).ravel(), kind="stable")[:len(layers) * keep]
            return {i: flat[flat // n == g] % n for g, i in enumerate(layers)}

        def recall_nll(keep_sets: dict[int, np.ndarray]) -> float:
            cache_layers = list(base.cache.layers)
            for i, kept in keep_sets.items():
                positions = cache_layers[i].positions
                cache_layers[i] = cache_layers[i].replace(
                    positions=jnp.where(jnp.isin(positions, jnp.asarray(kept)), positions, -1))
            context = base.replace(cache=base.cache.replace(layers=tuple(cache_layers)))
            log_probs = continuation_log_probs(model, None, [sample.continuation.tolist()], full, context=context)[0]
            nll = -jnp.take_along_axis(log_probs, jnp.asarray(sample.continuation)[:, None], axis=1)[:, 0]
            return float(np.asarray(nll)[sample.scored].mean())

        recency = np.arange(m, dtype=np.float64)
        rng = np.random.default_rng(len(nlls))
        probe = math.ceil(args.probe_ratio * n)
        fact_lines = np.nonzero(fact_line_mask(tokens, tokenizer) | (np.arange(n) < prefix_length))[0]
        runs = {"full": {}, "fact lines only, every layer": dict.fromkeys(layers, fact_lines)}
        for g, i in enumerate(layers):
            runs[f"streaming {args.probe_ratio:g} on layer {i} only"] = {i: top(recency, probe)}
            for name, score in scores.items():
                runs[f"{name} {args.probe_ratio:g} on layer {i} only"] = {i: top(score[g], probe)}
        for ratio in (float(r) for r in args.ratios.split(",")):
            keep = math.ceil(ratio * n)
            runs[f"{ratio:g} streaming"] = dict.fromkeys(layers, top(recency, keep))
            runs[f"{ratio:g} random"] = dict.fromkeys(layers, top(rng.random(m), keep))
            for name, score in scores.items():
                runs[f"{ratio:g} {name} head"] = {i: top(score[g], keep) for g, i in enumerate(layers)}
                runs[f"{ratio:g} {name} global"] = global_top(score, keep)
                quantiles = np.argsort(np.argsort(score, axis=-1), axis=-1) / m  # the engine's "token" level
                runs[f"{ratio:g} {name} token"] = dict.fromkeys(layers, top(quantiles.max(axis=0), keep))
        for name, keep_sets in runs.items():
            nlls.setdefault(name, []).append(recall_nll(keep_sets))
            print(f"{name:40s} {nlls[name][-1]:.3f}", flush=True)
    table = {name: float(np.mean(values)) for name, values in nlls.items()}
    os.makedirs(args.output, exist_ok=True)
    write_json(os.path.join(args.output, "ablation.json"), {"samples": args.samples, "recall_nll": table})
    print(f"\nrecall NLL, mean over {args.samples} samples:")
    for name, value in table.items():
        print(f"{name:40s} {value:.3f}")


if __name__ == "__main__":
    main()
