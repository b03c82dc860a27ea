"""Feature collection for gate training: attention inputs of gated layers and KVzip teacher scores.

Contexts go through the teacher in batches (one SPMD program over every process's devices); each
context is one shard `<split>_<context index>`, written atomically by the one process holding
its row as two .npy files, `<name>.inputs.npy` (float16 [Lg, m, D]) and `<name>.targets.npy`
(float32 [Lg, K, m], the teacher's scores after the `targets` transform). After every batch,
process 0 records the batch's shards in `manifest.json` (atomically): the manifest is the single
truth. A rerun skips every batch the manifest lists whose shards are intact (both files load with
the expected shapes; others are collected again), so a killed collection resumes, with any batch
size or process count (shards are per context).
Multi-process runs need a features folder every process can read and write.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

import numpy as np

from gatekv_jax.engine.teacher import RepeatPrompts, teacher_features
from gatekv_jax.models.loading import Model
from gatekv_jax.utils.distributed import is_main_process, sync
from gatekv_jax.utils.files import read_json, write_atomically, write_json

FLOAT16_MAX = 65504.0
TARGETS = ("kvzip", "successor")


def training_targets(scores: np.ndarray, kind: str) -> np.ndarray:
    """Gate targets from teacher scores [..., n] (tokens on the last axis) by `kind`:
    "kvzip", the scores as they are; "successor", the max of each token's score and the next
    token's. The repeat pass reads a planted number through the token after it and credits that
    token, not the digits (docs/experiments/strong_baselines.md); successor credit hands it back."""
    if kind == "kvzip":
        return scores
    if kind == "successor":
        following = np.concatenate([scores[..., 1:], scores[..., -1:]], axis=-1)
        return np.maximum(scores, following)
    raise ValueError(f"targets must be one of {TARGETS}, got {kind!r}")


def _save_npy(path: str, array: np.ndarray) -> None:
    def write(temporary):
        with open(temporary, "wb") as f:
            np.save(f, array, allow_pickle=False)

    write_atomically(path, write)


def read_manifest(folder: str) -> dict:
    """The folder's manifest (empty when there is none); a file that is not valid JSON is named."""
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        return {"settings": None, "shards": {}}
    return read_json(path)


def shard_is_intact(folder: str, name: str, info: dict) -> bool:
    """Both files of a listed shard load (headers and sizes) with the shapes the manifest implies."""
    try:
        inputs = np.load(os.path.join(folder, f"{name}.inputs.npy"), mmap_mode="r")
        targets = np.load(os.path.join(folder, f"{name}.targets.npy"), mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return (inputs.ndim == 3 and targets.ndim == 3 and inputs.shape[0] == targets.shape[0]
            and inputs.shape[1] == targets.shape[2] == info["tokens"])


def _batches(contexts: Iterable[tuple[list[str], np.ndarray]], batch_size: int,
             max_contexts: int) -> Iterator[tuple[int, list[list[str]], np.ndarray]]:
    """`(index of the batch's first context, documents per context, tokens [b, n])` per batch."""
    first, batch_docs, batch_tokens = 0, [], []
    for count, (docs, tokens) in enumerate(contexts):
        if count >= max_contexts:
            break
        if not batch_tokens:
            first = count
        batch_docs.append(docs)
        batch_tokens.append(tokens)
        if len(batch_tokens) == batch_size:
            yield first, batch_docs, np.stack(batch_tokens)
            batch_docs, batch_tokens = [], []
    if batch_tokens:
        yield first, batch_docs, np.stack(batch_tokens)


def collect_features(model: Model, prompts: RepeatPrompts, contexts: Iterable[tuple[list[str], np.ndarray]],
                     folder: str, split: str, settings: dict, batch_size: int = 1, max_contexts: int = 1,
                     tokens_per_context: int | None = None, seed: int = 0, teacher_chunk: int = 2000,
                     targets: str = "kvzip", progress=None) -> dict:
    """Collect features of up to `max_contexts` contexts of one split into `folder`; returns the manifest.

    `settings` (model, lengths, sampling) must match an existing manifest, so a folder never mixes
    features of different runs. `tokens_per_context` keeps a random subset of each context's tokens
    (seeded by the context's index) after the `targets` transform (`training_targets`) of the
    whole context. Every process calls this with the same contexts.
    """
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    manifest = read_manifest(folder)
    if manifest["settings"] is not None and manifest["settings"] != settings:
        raise ValueError(f"{folder} holds features made with other settings: {manifest['settings']} "
                         f"(now {settings}); use another folder")
    manifest["settings"] = settings
    for first, docs, tokens in _batches(contexts, batch_size, max_contexts):
        names = [f"{split}_{first + row:05d}" for row in range(len(tokens))]
        if all(name in manifest["shards"] and shard_is_intact(folder, name, manifest["shards"][name])
               for name in names):  # a deleted or truncated shard is collected again
            if progress is not None:
                progress.update(len(tokens))
            continue
        for row, (scores, inputs) in teacher_features(model, tokens, prompts, chunk=teacher_chunk).items():
            # scores [Lg, K, n], inputs [Lg, n, D] of context first + row
            scores = training_targets(scores, targets)
            if tokens_per_context is not None and tokens_per_context < tokens.shape[1]:
                rng = np.random.default_rng([seed, first + row, len(split)])
                picks = np.sort(rng.choice(tokens.shape[1], tokens_per_context, replace=False))
                scores, inputs = scores[:, :, picks], inputs[:, picks]
            if np.abs(inputs).max() > FLOAT16_MAX:
                raise ValueError(f"attention inputs exceed the float16 range in shard {names[row]}")
            _save_npy(os.path.join(folder, f"{names[row]}.inputs.npy"), inputs.astype(np.float16))
            _save_npy(os.path.join(folder, f"{names[row]}.targets.npy"), scores.astype(np.float32))
        sync(f"features {split} {first}")  # every row of the batch is on disk
        tokens_kept = tokens.shape[1] if tokens_per_context is None else min(tokens_per_context, tokens.shape[1])
        for row, name in enumerate(names):
            manifest["shards"][name] = {"split": split, "tokens": tokens_kept, "documents": [docs[row]]}
        if is_main_process():
            write_json(os.path.join(folder, "manifest.json"), manifest)
        if progress is not None:
            progress.update(len(tokens))
    sync(f"features {split} recorded")  # the manifest on disk is complete before anyone reads it
    return manifest
