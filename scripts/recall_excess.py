"""Where a scorer's recall NLL excess over the full cache lies: the planted numbers, the names, the rest.

    python scripts/recall_excess.py [--source prose] [--samples 10] [--ratio 0.3] [--scorers gate]
           [--gates F] [--output F]

The recall samples are the ones `python -m gatekv_jax.evaluate` builds (default config: packaged
gates, `token` level, pool 3; `--source` picks the held-out domain). Each context is prefilled
under `full` and under each scorer, and the recap list after it is teacher-forced. The excess of
the scored tokens' NLL over `full` (the task's metric is its mean) is split by the part of a fact
the token belongs to: the number's digits, the name, the other tokens. For every planted fact it
also records which of its tokens the context still holds (kept positions of the first gated
layer; the `token` level keeps the same ones in every gated layer) and the NLL the recap pays for
its name and digits. Prints the split, the excess per fact grouped by what was kept and the kept
share of each token of a fact sentence, and writes the same as JSON.
"""

from __future__ import annotations

import collections

import jax.numpy as jnp
import numpy as np
from fact_keep_shares import compress, fact_labels, recall_setup  # scripts/, beside this one

from gatekv_jax.engine.scoring import continuation_log_probs
from gatekv_jax.evaluation.runner import policy_for
from gatekv_jax.evaluation.tasks import recall_samples
from gatekv_jax.utils.files import write_json

PARTS = ("digits", "name", "other")


def token_role(pieces: list[str], part: list[str], digits: list[int], i: int) -> str:
    """A fact token's role in "The code of <name> is <number>.": its part, the digit's place, or its text."""
    if part[i] == "digits":
        return f"digit {digits.index(i) + 1}"
    return "name" if part[i] == "name" else repr(pieces[i])


def main() -> None:
    args, config, model, tokenizer, gates, prefix = recall_setup(__doc__.splitlines()[0], "gate")
    scorers = args.scorers.split(",")
    excess = {scorer: {part: [] for part in PARTS} for scorer in scorers}
    facts = []
    for index, sample in enumerate(recall_samples(config, tokenizer)):
        context = list(prefix) + sample.context.tolist()
        context_pieces = [tokenizer.decode([t]) for t in context]
        context_part, context_fact = fact_labels(context_pieces)
        recap_part, recap_fact = map(np.asarray, fact_labels([tokenizer.decode([t]) for t in sample.continuation]))
        scored = np.asarray(sample.scored)
        nll, kept = {}, {}
        for scorer in ["full"] + scorers:
            compressed, kept[scorer] = compress(model, config, context, scorer, args.ratio, gates, len(prefix))
            log_probs = continuation_log_probs(model, None, [sample.continuation.tolist()],
                                               policy_for(config, scorer, args.ratio),
                                               gates=gates if scorer == "gate" else None, context=compressed)[0]
            targets = jnp.asarray(sample.continuation)[:, None]
            nll[scorer] = -np.asarray(jnp.take_along_axis(log_probs, targets, axis=1)[:, 0])
        for scorer in scorers:
            more = nll[scorer] - nll["full"]
            for part in PARTS:
                excess[scorer][part].append(float(more[scored & (recap_part == part)].sum() / scored.sum()))
            for fact in range(config.recall_facts):
                held = {part: [i for i in range(len(context)) if context_fact[i] == fact and context_part[i] == part]
                        for part in ("digits", "name")}
                tokens = [i for i in range(len(context)) if context_fact[i] == fact]
                roles = [token_role(context_pieces, context_part, held["digits"], i) for i in tokens]
                facts.append({
                    "scorer": scorer, "sample": index, "fact": fact,
                    "kept_by_role": [[role, i in kept[scorer]] for role, i in zip(roles, tokens)],
                    "name_kept": all(i in kept[scorer] for i in held["name"]),
                    "digits_kept": sum(i in kept[scorer] for i in held["digits"]), "digits": len(held["digits"]),
                    "name_excess": float(more[(recap_fact == fact) & (recap_part == "name")].sum()),
                    "digits_excess": float(more[(recap_fact == fact) & (recap_part == "digits")].sum()),
                })
        print(index, {scorer: round(float(nll[scorer][scored].mean()), 4) for scorer in ["full"] + scorers}, flush=True)
    for scorer in scorers:
        means = {part: round(float(np.mean(values)), 4) for part, values in excess[scorer].items()}
        print(f"{scorer}: recall NLL excess over full by part {means} (total {sum(means.values()):.4f})")
        own = [f for f in facts if f["scorer"] == scorer]
        groups = collections.defaultdict(list)
        for f in own:
            groups[("name kept" if f["name_kept"] else "name evicted", f["digits_kept"])].append(f)
        for (name, digits), group in sorted(groups.items()):
            name_excess = np.mean([f["name_excess"] for f in group])
            digits_excess = np.mean([f["digits_excess"] for f in group])
            print(f"  {name}, {digits} digits kept: {len(group)} facts, "
                  f"excess per fact: name {name_excess:.2f}, digits {digits_excess:.2f}")
        role_kept = collections.defaultdict(list)
        for f in own:
            for role, was_kept in f["kept_by_role"]:
                role_kept[role].append(was_kept)
        print("  kept share by token of the fact sentence:",
              ", ".join(f"{role} {np.mean(flags):.2f}" for role, flags in role_kept.items()))
    if args.output:
        write_json(args.output, {"source": args.source, "ratio": args.ratio, "samples": args.samples,
                                 "excess_by_part": excess, "facts": facts})


if __name__ == "__main__":
    main()
