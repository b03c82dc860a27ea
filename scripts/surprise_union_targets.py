"""Gate-training features that take a second teacher's credit only on tokens the model did not predict.

    python -m gatekv_jax.train --config.workdir=A                            # teacher_chunk 2000
    python -m gatekv_jax.train --config.teacher_chunk=500 --config.workdir=B
    python scripts/surprise_union_targets.py A B C [--nats 2.0]
    python -m gatekv_jax.train --config.workdir=C                            # fits on C's features

A and B must hold features of the same contexts (the same config but `teacher_chunk`). Short
teacher chunks credit the new values of a repeated frame (a fact's name and first digits) that
2,000-token chunks discount, but they also credit the words of a repeated sentence, and gates
trained on them keep such a sentence without its number (docs/experiments/gate_screens.md). C's
target of a token is max(A, B) where the model could not predict the token or its successor (its
NLL, or the next token's, above `--nats`; successor credit hands a digit's score to the space
before it) and A's target elsewhere. The contexts are rebuilt from A's settings and checked
against the manifest's documents. C gets A's attention inputs and manifest, so the last command
only fits. Prints each shard's surprising share and mean targets.
"""

from __future__ import annotations

import argparse
import os
import shutil

import jax
import numpy as np

from gatekv_jax.engine.forward import forward
from gatekv_jax.engine.teacher import RepeatPrompts
from gatekv_jax.models.loading import load_model, load_tokenizer
from gatekv_jax.training import data
from gatekv_jax.training.features import read_manifest
from gatekv_jax.utils.files import write_json


def token_nll(model, prefix: tuple[int, ...], tokens: np.ndarray) -> np.ndarray:
    """NLL [n] of each context token given the prefix and the tokens before it."""
    ids = np.concatenate([np.asarray(prefix, np.int32), tokens.astype(np.int32)])[None]
    log_probs = jax.nn.log_softmax(forward(model, ids)[0, len(prefix) - 1:-1].astype(np.float32), axis=-1)
    return -np.asarray(np.take_along_axis(np.asarray(log_probs), tokens[:, None].astype(np.int64), axis=-1)[:, 0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="workdir of the long-chunk teacher run (its settings and inputs go to C)")
    parser.add_argument("second", help="workdir of the short-chunk teacher run, the same contexts")
    parser.add_argument("union", help="workdir to write the features into")
    parser.add_argument("--nats", type=float, default=2.0, help="NLL above which a token counts as not predicted")
    args = parser.parse_args()
    first, second, union = (os.path.join(w, "features") for w in (args.first, args.second, args.union))
    manifests = read_manifest(first), read_manifest(second)
    if manifests[0]["shards"].keys() != manifests[1]["shards"].keys() or not manifests[0]["shards"]:
        raise ValueError(f"{first} and {second} do not hold the same shards")
    settings = manifests[0]["settings"]
    others = {k: v for k, v in manifests[1]["settings"].items() if k != "teacher_chunk"}
    if others != {k: v for k, v in settings.items() if k != "teacher_chunk"} or settings["tokens_per_context"]:
        raise ValueError("the two runs differ in more than teacher_chunk, or keep a subset of each context's tokens")
    model, tokenizer = load_model(settings["model"], dtype=settings["dtype"]), load_tokenizer(settings["model"])
    prefix = RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type).prefix
    os.makedirs(union, exist_ok=True)
    for split in ("heldout", "train"):
        names = sorted(n for n, s in manifests[0]["shards"].items() if s["split"] == split)
        source = settings["data"]
        contexts = data.mixed_contexts(source["source"], source["paths"], tokenizer, settings["context_length"],
                                       source["heldout_fraction"], split, source["max_document_tokens"])
        for name, (docs, tokens) in zip(names, contexts):
            if [list(docs)] != manifests[0]["shards"][name]["documents"]:
                raise ValueError(f"shard {name}: the rebuilt context has other documents")
            nll = token_nll(model, prefix, np.asarray(tokens))
            surprising = np.maximum(nll, np.r_[nll[1:], nll[-1]]) > args.nats  # [n], successor credit
            targets = [np.load(os.path.join(folder, f"{name}.targets.npy")) for folder in (first, second)]
            merged = np.where(surprising, np.maximum(*targets), targets[0])  # [Lg, K, n]
            shutil.copyfile(os.path.join(first, f"{name}.inputs.npy"), os.path.join(union, f"{name}.inputs.npy"))
            np.save(os.path.join(union, f"{name}.targets.npy"), merged.astype(np.float32), allow_pickle=False)
            print(f"{name}: surprising {surprising.mean():.2f}, mean target {targets[0].mean():.4f} / "
                  f"{targets[1].mean():.4f} -> {merged.mean():.4f}", flush=True)
    write_json(os.path.join(union, "manifest.json"), manifests[0])  # last: the manifest is the truth


if __name__ == "__main__":
    main()
