"""How well the model copies each part of the recall samples in the teacher's repeat pass (top-1 accuracy).

    python scripts/repeat_copy_accuracy.py [prose|stdlib]

For each recall sample (10, as `python -m gatekv_jax.evaluate` builds them), one plain forward
over the chat prefix, the context and the teacher's first repeat input (instruction, assistant
turn, the context again); the top-1 prediction of every copied token is compared with the
context, split into the planted numbers' tokens, the rest of the planted sentences and the filler
(`fact_keep_shares.fact_parts`). About 35 s per sample on 2 cores.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fact_keep_shares import fact_parts  # noqa: E402

from gatekv_jax.engine.forward import forward  # noqa: E402
from gatekv_jax.engine.teacher import RepeatPrompts  # noqa: E402
from gatekv_jax.evaluation.runner import load_config  # noqa: E402
from gatekv_jax.evaluation.tasks import recall_samples  # noqa: E402
from gatekv_jax.models.loading import load_model, load_tokenizer  # noqa: E402


def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else "prose"
    config = load_config(n_samples=10)
    config.data.source = source
    model, tokenizer = load_model(config.model), load_tokenizer(config.model)
    prompts = RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type)
    P = len(prompts.prefix)
    accuracy = {"digits": [], "fact_sentences": [], "filler": []}
    for sample in recall_samples(config, tokenizer):
        context = sample.context
        n = len(context)
        tokens = list(prompts.prefix) + context.tolist()
        digits, sentence = fact_parts([tokenizer.decode([t]) for t in tokens])
        filler = set(range(P + 1, P + n)) - digits - sentence
        repeat = prompts.repeat_input(context[None], 0, n)[0]
        sequence = np.array(tokens + repeat.tolist(), np.int32)[None]
        start = P + n + len(repeat) - n  # position of the copy's first token
        logits = np.asarray(forward(model, sequence))[0]
        predicted = logits[start - 1:start - 1 + n].argmax(-1)  # predictions of the copy's tokens
        right = predicted == context
        for name, part in (("digits", digits), ("fact_sentences", sentence), ("filler", filler)):
            idx = np.array(sorted(i - P for i in part if i >= P + 1))
            accuracy[name].append(float(right[idx].mean()))
        print({k: round(v[-1], 3) for k, v in accuracy.items()}, flush=True)
    print(source, "repeat-pass top-1 accuracy:", {k: round(float(np.mean(v)), 3) for k, v in accuracy.items()})


if __name__ == "__main__":
    main()
