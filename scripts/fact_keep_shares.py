"""Which parts of the recall samples each scorer keeps: fact digits, the rest of the fact sentences, the filler.

    python scripts/fact_keep_shares.py [--source prose] [--samples 10] [--ratio 0.3] [--scorers gate,keydiff]
           [--gates F]

The recall samples are the ones `python -m gatekv_jax.evaluate` builds (default config: packaged
gates, `token` level, pool 3; `--source` picks the held-out domain). Each context ("The code of
<name> is <number>." planted ten times in held-out text) is prefilled under each scorer; the kept
positions of the first gated layer (the `token` level keeps the same ones in every gated layer)
are split into the planted numbers' tokens, the other tokens of the planted sentences, and the
filler. Prints the share kept of each part per scorer (mean and per sample), and for every other
scorer the digits it keeps that the gate drops (what a combination of the two could add at
most), and writes the same as JSON (`--output`).
"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np

from gatekv_jax.engine.prefill import prefill
from gatekv_jax.engine.teacher import RepeatPrompts
from gatekv_jax.evaluation.runner import load_config, policy_for
from gatekv_jax.evaluation.tasks import recall_samples
from gatekv_jax.kv.gate_files import load_gates, pretrained_gates
from gatekv_jax.models.loading import load_model, load_tokenizer
from gatekv_jax.utils.files import write_json

FACT = re.compile(r"The code of (\w+) is (\d+)\.")  # groups: the name, the number


def fact_labels(pieces: list[str]) -> tuple[list[str], list[int]]:
    """Per token of a recall context: its part ("digits", "name" or "other") and the index of its
    planted fact (-1 outside)."""
    starts = np.cumsum([0] + [len(p) for p in pieces])
    text = "".join(pieces)
    part, fact = ["other"] * len(pieces), [-1] * len(pieces)
    for index, match in enumerate(FACT.finditer(text)):
        for i in range(len(pieces)):
            if starts[i] < match.end() and starts[i + 1] > match.start():
                fact[i] = index
                for group, name in ((2, "digits"), (1, "name")):
                    if starts[i] < match.end(group) and starts[i + 1] > match.start(group):
                        part[i] = name
                        break
    return part, fact


def fact_parts(pieces: list[str]) -> tuple[set[int], set[int]]:
    """Token indices of the planted numbers and of the rest of the planted sentences."""
    part, fact = fact_labels(pieces)
    digits = {i for i, p in enumerate(part) if p == "digits"}
    return digits, {i for i, f in enumerate(fact) if f >= 0} - digits


def recall_setup(description: str, default_scorers: str):
    """The command line shared by the recall analysis scripts, and what it loads: (args, eval config,
    model, tokenizer, gates, chat prefix)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--source", default="prose")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--scorers", default=default_scorers)
    parser.add_argument("--gates", default=None, help="a gates.safetensors file (default: the packaged gates)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    config = load_config(n_samples=args.samples)
    config.data.source = args.source
    model, tokenizer = load_model(config.model), load_tokenizer(config.model)
    gates = pretrained_gates(config.model) if args.gates is None else load_gates(args.gates)
    prefix = RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type).prefix
    return args, config, model, tokenizer, gates, prefix


def compress(model, config, tokens: list[int], scorer: str, ratio: float, gates, prefix_length: int):
    """`tokens` prefilled under `scorer` at `ratio`: the compressed context, and the positions its
    first gated layer keeps (the `token` level keeps the same ones in every gated layer)."""
    context = prefill(model, [tokens], policy_for(config, scorer, ratio), gates=gates if scorer == "gate" else None,
                      prefix_length=prefix_length)
    positions = np.asarray(context.cache.layers[model.config.full_attention_layers[0]].positions[0, 0])
    return context, set(positions[positions >= 0].tolist())


def main() -> None:
    args, config, model, tokenizer, gates, prefix = recall_setup(
        __doc__.splitlines()[0], "gate,keydiff,snapkv,knorm,expected_attention")
    shares: dict[str, dict[str, list[float]]] = {}
    beside_gate: dict[str, dict[str, list[float]]] = {}
    for sample in recall_samples(config, tokenizer):
        tokens = list(prefix) + sample.context.tolist()
        digits, sentence = fact_parts([tokenizer.decode([t]) for t in tokens])
        filler = set(range(len(prefix), len(tokens))) - digits - sentence
        if len(digits) == 0:
            raise ValueError("no planted facts found in a recall sample")
        kept_digits = {}
        for scorer in args.scorers.split(","):
            _, kept = compress(model, config, tokens, scorer, args.ratio, gates, len(prefix))
            row = shares.setdefault(scorer, {"digits": [], "fact_sentences": [], "filler": []})
            for name, part in (("digits", digits), ("fact_sentences", sentence), ("filler", filler)):
                row[name].append(len(kept & part) / len(part))
            kept_digits[scorer] = kept & digits
        for scorer, kept in kept_digits.items():
            if "gate" in kept_digits and scorer != "gate":
                row = beside_gate.setdefault(scorer, {"digits_only_this_keeps": [], "digits_either_keeps": []})
                row["digits_only_this_keeps"].append(len(kept - kept_digits["gate"]) / len(digits))
                row["digits_either_keeps"].append(len(kept | kept_digits["gate"]) / len(digits))
    print(f"{args.source}, ratio {args.ratio}, {args.samples} recall samples: share of each part kept")
    for scorer, row in shares.items():
        print(f"  {scorer:19s} " + "  ".join(f"{name} {np.mean(v):.2f}" for name, v in row.items()))
    for scorer, row in beside_gate.items():
        print(f"  gate with {scorer}: " + "  ".join(f"{name} {np.mean(v):.2f}" for name, v in row.items()))
    if args.output:
        write_json(args.output, {"source": args.source, "ratio": args.ratio, "samples": args.samples,
                                 "shares": shares, "beside_gate": beside_gate})
    print(json.dumps({s: {k: round(float(np.mean(v)), 3) for k, v in row.items()} for s, row in shares.items()}))


if __name__ == "__main__":
    main()
