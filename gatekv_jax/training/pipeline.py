"""The gate-training pipeline: teacher features, fitting, and the outputs in the workdir.

Phases (each resumable): 1. KVzip teacher features for held-out and training contexts (forward
only; `features/` shards + manifest); 2. gate fitting (orbax checkpoints in `checkpoints/`);
3. outputs in the workdir: `gates.safetensors`, `history.json`, `training.png`, `summary.json`.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from gatekv_jax.engine.teacher import RepeatPrompts
from gatekv_jax.kv.gate import init_gates
from gatekv_jax.kv.gate_files import save_gates
from gatekv_jax.models.loading import load_model, load_tokenizer
from gatekv_jax.training import data
from gatekv_jax.training.configs import check_training_config
from gatekv_jax.training.features import collect_features
from gatekv_jax.training.fit import FitSettings, fit_gates
from gatekv_jax.utils.distributed import initialize, is_main_process
from gatekv_jax.utils.files import save_figure, write_json
from gatekv_jax.utils.sharding import make_mesh


def _progress(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="ctx" if "features" in description else "step",
                disable=jax.process_index() != 0)


def plot_history(history: list[dict], layers: tuple[int, ...], path: str) -> None:
    """Held-out loss and accuracy per gated layer against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for g, layer in enumerate(layers):
        loss_axis.plot(steps, [r["heldout_loss"][g] for r in history], label=f"layer {layer}")
        accuracy_axis.plot(steps, [r["heldout_accuracy"][g] for r in history], label=f"layer {layer}")
    loss_axis.set(xlabel="step", ylabel="held-out BCE (sum over heads)", title="gate loss")
    accuracy_axis.set(xlabel="step", ylabel="held-out accuracy (score >= 0.05)", title="gate accuracy")
    loss_axis.legend()
    figure.tight_layout()
    save_figure(figure, path)


def train_gates(config) -> dict:
    """Run every phase for an ml_collections training config (see `configs/`); returns the summary
    (also written to `<workdir>/summary.json`).

    Multi-process runs (`config.distributed`) start every process with the same config and a
    workdir they all share; process 0 writes the outputs."""
    fit_settings = FitSettings(**config.fit.to_dict())  # checked before any work
    check_training_config(config)
    initialize(**config.distributed.to_dict())
    workdir = config.workdir
    os.makedirs(workdir, exist_ok=True)
    times = {}
    start = time.time()
    mesh = make_mesh(**config.mesh.to_dict())
    model = load_model(config.model, dtype=config.dtype, mesh=mesh)
    tokenizer = load_tokenizer(config.model)
    prompts = RepeatPrompts.from_tokenizer(tokenizer, model.config.model_type)
    times["load_seconds"] = time.time() - start

    start = time.time()
    settings = {"model": config.model, "dtype": config.dtype, "context_length": config.context_length,
                "teacher_chunk": config.teacher_chunk, "tokens_per_context": config.tokens_per_context,
                "targets": config.targets, "data": config.data.to_dict(), "seed": config.seed}
    features = os.path.join(workdir, "features")
    for split, count in (("heldout", config.heldout_contexts), ("train", config.train_contexts)):
        contexts = data.mixed_contexts(config.data.source, config.data.paths, tokenizer, config.context_length,
                                       config.data.heldout_fraction, split, config.data.max_document_tokens)
        with _progress(count, f"features ({split})") as bar:
            manifest = collect_features(model, prompts, contexts, features, split, settings,
                                        batch_size=config.batch_size, max_contexts=count,
                                        tokens_per_context=config.tokens_per_context, seed=config.seed,
                                        teacher_chunk=config.teacher_chunk, targets=config.targets, progress=bar)
    times["features_seconds"] = time.time() - start
    tokens = {split: sum(s["tokens"] for s in manifest["shards"].values() if s["split"] == split)
              for split in ("train", "heldout")}
    documents = {split: sorted({d for s in manifest["shards"].values() if s["split"] == split
                                for context in s["documents"] for d in context}) for split in ("train", "heldout")}
    if set(documents["train"]) & set(documents["heldout"]):
        raise RuntimeError("a document is in both the train and held-out features")

    start = time.time()
    layers = model.config.full_attention_layers
    with _progress(fit_settings.steps, "fit") as bar:
        bar.update(0)
        gates, history = fit_gates(init_gates(model.config, seed=config.seed), layers, features, workdir,
                                   fit_settings, on_step=lambda step: bar.update(step - bar.n), mesh=mesh)
    times["fit_seconds"] = time.time() - start
    if not np.isfinite(history[-1]["heldout_loss"]).all() or not all(
            np.isfinite(value).all() for params in gates.values() for value in params.values()):
        raise FloatingPointError(f"the fit diverged (non-finite gates or held-out loss {history[-1]['heldout_loss']}); "
                                 f"lower fit.learning_rate ({fit_settings.learning_rate})")

    first, last = history[0], history[-1]
    summary = {
        "model": config.model, "gated_layers": list(layers), "tokens": tokens,
        "documents": {split: len(d) for split, d in documents.items()},
        "heldout_loss": {"untrained": first["heldout_loss"], "trained": last["heldout_loss"]},
        "heldout_accuracy": {"untrained": first["heldout_accuracy"], "trained": last["heldout_accuracy"]},
        "steps": last["step"], **{k: round(v, 1) for k, v in times.items()},
        "processes": jax.process_count(), "config": config.to_dict(),
    }
    if is_main_process():
        save_gates(gates, os.path.join(workdir, "gates.safetensors"))
        plot_history(history, layers, os.path.join(workdir, "training.png"))
        write_json(os.path.join(workdir, "summary.json"), summary)
    return summary
