"""Feature collection for gate training: attention inputs of gated layers and KVzip teacher scores.

Contexts are processed in batches (one batch = one shard); each shard is written atomically as
two .npy files, `<name>.inputs.npy` (float16 [Lg, m, D]) and `<name>.targets.npy` (float32
[Lg, K, m]), then recorded in `manifest.json` (also written atomically). A rerun skips every
shard the manifest lists, so a killed collection resumes; host memory holds one batch at a time.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Iterator

import numpy as np

from gatekv_jax.engine.teacher import RepeatPrompts, teacher_scores
from gatekv_jax.models.loading import Model
from gatekv_jax.utils.files import write_atomically, write_json

FLOAT16_MAX = 65504.0


def _save_npy(path: str, array: np.ndarray) -> None:
    def write(temporary):
        with open(temporary, "wb") as f:
            np.save(f, array, allow_pickle=False)

    write_atomically(path, write)


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        return {"settings": None, "shards": {}}
    with open(path) as f:
        return json.load(f)


def _batches(contexts: Iterable[tuple[list[str], np.ndarray]], batch_size: int,
             max_contexts: int) -> Iterator[tuple[list[list[str]], np.ndarray]]:
    batch_docs, batch_tokens = [], []
    for count, (docs, tokens) in enumerate(contexts):
        if count >= max_contexts:
            break
        batch_docs.append(docs)
        batch_tokens.append(tokens)
        if len(batch_tokens) == batch_size:
            yield batch_docs, np.stack(batch_tokens)
            batch_docs, batch_tokens = [], []
    if batch_tokens:
        yield batch_docs, np.stack(batch_tokens)


def collect_features(model: Model, prompts: RepeatPrompts, contexts: Iterable[tuple[list[str], np.ndarray]],
                     folder: str, split: str, settings: dict, batch_size: int = 1, max_contexts: int = 1,
                     tokens_per_context: int | None = None, seed: int = 0, teacher_chunk: int = 2000,
                     progress=None) -> dict:
    """Collect features of up to `max_contexts` contexts of one split into `folder`; returns the manifest.

    `settings` (model, lengths, sampling) must match an existing manifest, so a folder never mixes
    features of different runs. `tokens_per_context` keeps a random subset of each context's tokens.
    """
    manifest = read_manifest(folder)
    if manifest["settings"] is not None and manifest["settings"] != settings:
        raise ValueError(f"{folder} holds features made with other settings: {manifest['settings']} "
                         f"(now {settings}); use another folder")
    manifest["settings"] = settings
    for index, (docs, tokens) in enumerate(_batches(contexts, batch_size, max_contexts)):
        name = f"{split}_{index:05d}"
        if name in manifest["shards"]:
            if progress is not None:
                progress.update(len(tokens))
            continue
        scores, inputs = teacher_scores(model, tokens, prompts, chunk=teacher_chunk)  # [B,Lg,K,n], [B,Lg,n,D]
        if tokens_per_context is not None and tokens_per_context < tokens.shape[1]:
            rng = np.random.default_rng([seed, index, len(split)])
            picks = np.stack([np.sort(rng.choice(tokens.shape[1], tokens_per_context, replace=False))
                              for _ in range(len(tokens))])  # [B, m]
            scores = np.take_along_axis(scores, picks[:, None, None, :], axis=3)
            inputs = np.take_along_axis(inputs, picks[:, None, :, None], axis=2)
        lg, d = inputs.shape[1], inputs.shape[3]
        flat_inputs = inputs.transpose(1, 0, 2, 3).reshape(lg, -1, d)  # [Lg, m, D]
        if np.abs(flat_inputs).max() > FLOAT16_MAX:
            raise ValueError(f"attention inputs exceed the float16 range in shard {name}")
        flat_targets = scores.transpose(1, 2, 0, 3).reshape(lg, scores.shape[2], -1)  # [Lg, K, m]
        _save_npy(os.path.join(folder, f"{name}.inputs.npy"), flat_inputs.astype(np.float16))
        _save_npy(os.path.join(folder, f"{name}.targets.npy"), flat_targets.astype(np.float32))
        manifest["shards"][name] = {"split": split, "tokens": int(flat_inputs.shape[1]), "documents": docs}
        write_json(os.path.join(folder, "manifest.json"), manifest)
        if progress is not None:
            progress.update(len(tokens))
    return manifest
