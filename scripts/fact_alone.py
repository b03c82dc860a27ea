"""How a planted fact's start is scored among ten facts of one template, and planted alone.

    python scripts/fact_alone.py [--source prose] [--samples 3] [--ratio 0.3] [--gates F] [--output F]

The recall samples are the ones `python -m gatekv_jax.evaluate` builds (default config: packaged
gates, `token` level, pool 3): ten facts "The code of <name> is <number>." in one held-out
context. For each fact the script also builds the same context with the other nine facts taken
out ("alone"). In both it records, for the fact's name and its number's first digit, the KVzip
teacher's rank quantile (the best of the gated layers; 1 = the token the teacher needs most),
the gate's rank quantile (the same, from the gates' scores; a name of several pieces takes its
best piece's) and whether the gate keeps the token at `--ratio` (prefill as the evaluation does;
a name counts as kept when all its pieces are). The gate is causal, so the first fact's gate
scores are the same in both contexts; the teacher's repeat pass reads the whole context.
Prints the means per part and context and writes every fact's values as JSON.
"""

from __future__ import annotations

import numpy as np
from fact_keep_shares import compress, fact_labels, recall_setup  # scripts/, beside this one

from gatekv_jax.engine.teacher import RepeatPrompts, teacher_features
from gatekv_jax.evaluation.tasks import recall_samples
from gatekv_jax.kv.gate import gate_scores
from gatekv_jax.utils.files import write_json

PARTS = ("name", "first digit")


def best_layer_quantile(scores: np.ndarray) -> np.ndarray:
    """Scores [layers, n] -> each token's best rank quantile over the layers, [n] in [0, 1]."""
    ranks = scores.argsort(-1).argsort(-1) / (scores.shape[-1] - 1)
    return ranks.max(0)


def fact_tokens(part: list[str], index: list[int], fact: int) -> dict[str, list[int]]:
    """Token indices of fact number `fact`'s name and of its number's first digit, from
    `fact_labels`' per-token parts and fact indices."""
    name = [i for i, (p, f) in enumerate(zip(part, index)) if f == fact and p == "name"]
    digits = [i for i, (p, f) in enumerate(zip(part, index)) if f == fact and p == "digits"]
    if not name or not digits:
        raise ValueError(f"fact {fact} not found in the recall context")
    return {"name": name, "first digit": digits[:1]}


def score_context(model, config, tokenizer, gates, prompts, context: list[int], ratio: float):
    """`fact -> {part: teacher quantile, gate quantile, gate keeps}` for the facts of `context`."""
    scores, inputs = teacher_features(model, np.asarray([context]), prompts)[0]  # [Lg, K, n], [Lg, n, D]
    teacher = best_layer_quantile(scores[:, 0])
    gate = best_layer_quantile(np.stack([
        np.asarray(gate_scores(gates[f"layer_{layer}"], inputs[g][None]))[0, :, 0]
        for g, layer in enumerate(model.config.full_attention_layers)]))
    prefix = len(prompts.prefix)
    _, kept = compress(model, config, list(prompts.prefix) + context, "gate", ratio, gates, prefix)
    labels = fact_labels([tokenizer.decode([t]) for t in context])

    def fact_values(fact: int) -> dict:
        return {part: {"teacher": float(max(teacher[i] for i in where)), "gate": float(max(gate[i] for i in where)),
                       "kept": all(i + prefix in kept for i in where)}
                for part, where in fact_tokens(*labels, fact).items()}

    return fact_values


def main() -> None:
    args, config, model, tokenizer, gates, _ = recall_setup(__doc__.splitlines()[0], "gate")
    prompts = RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type)
    rows = []
    for number, sample in enumerate(recall_samples(config, tokenizer)):
        context = sample.context.tolist()
        _, index = fact_labels([tokenizer.decode([t]) for t in context])
        ten = score_context(model, config, tokenizer, gates, prompts, context, args.ratio)
        for fact in range(max(index) + 1):
            alone = [t for t, f in zip(context, index) if f in (-1, fact)]
            rows.append({"sample": number, "fact": fact, "ten": ten(fact),
                         "alone": score_context(model, config, tokenizer, gates, prompts, alone, args.ratio)(0)})
            print(rows[-1], flush=True)
    summary = {part: {where: {what: float(np.mean([r[where][part][what] for r in rows]))
                              for what in ("teacher", "gate", "kept")} for where in ("ten", "alone")}
               for part in PARTS}
    print(f"{args.source}, ratio {args.ratio}, {len(rows)} facts: mean teacher quantile, gate quantile, gate keeps")
    for part, by_context in summary.items():
        for where, values in by_context.items():
            print(f"  {part:12s} {where:5s} " + "  ".join(f"{k} {v:.2f}" for k, v in values.items()))
    if args.output:
        write_json(args.output, {"source": args.source, "ratio": args.ratio, "samples": args.samples,
                                 "summary": summary, "facts": rows})


if __name__ == "__main__":
    main()
