"""Fitting the gates to KVzip teacher scores: forward-only features in, tiny gates out.

All gated layers train at once (parameters stacked on a leading layer axis, the loss vmapped over
layers): binary cross-entropy with soft targets, mean over tokens, summed over heads and layers.
SGD with momentum 0.9, lr 0.2, 1% linear warm-up, then x1 / x0.5 (from 50%) / x0.25 (from 75%).
Batches depend only on the step number, and an orbax CheckpointManager saves parameters and
optimiser state, so a killed run resumes to exactly the gates of an uninterrupted one. On a mesh
the fit is data-parallel: each step's tokens are sharded over the batch axes (over processes too),
the gates are replicated, and the compiled step reduces the gradients; every process takes part
in the checkpoints, and process 0 alone writes the history.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from gatekv_jax.kv.gate import gate_scores
from gatekv_jax.training.features import read_manifest
from gatekv_jax.utils.distributed import global_array, is_main_process
from gatekv_jax.utils.files import read_json, write_json

ACCURACY_THRESHOLD = 0.05
EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """The fit's settings (the `fit` block of a training config), checked when made."""

    steps: int = 5000
    batch_tokens: int = 1000
    learning_rate: float = 0.2
    momentum: float = 0.9
    warmup_fraction: float = 0.01
    eval_every: int = 250
    eval_tokens: int = 20000
    checkpoint_every: int = 250
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_tokens", "eval_every", "eval_tokens", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"fit.{name} must be a positive int, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"fit.seed must be an int, got {self.seed!r}")
        if not isinstance(self.learning_rate, (int, float)) or not 0 < self.learning_rate < float("inf"):
            raise ValueError(f"fit.learning_rate must be a finite number > 0, got {self.learning_rate!r}")
        for name in ("momentum", "warmup_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"fit.{name} must be in [0, 1), got {value!r}")


class FeatureSplit:
    """The tokens of one split, read lazily (memory-mapped) from the shards in a features folder."""

    def __init__(self, folder: str, split: str):
        shards = sorted(name for name, info in read_manifest(folder)["shards"].items() if info["split"] == split)
        if not shards:
            raise ValueError(f"no {split} features in {folder}")
        self.paths = [os.path.join(folder, f"{s}.*.npy") for s in shards]
        self.inputs = [np.load(os.path.join(folder, f"{s}.inputs.npy"), mmap_mode="r") for s in shards]
        self.targets = [np.load(os.path.join(folder, f"{s}.targets.npy"), mmap_mode="r") for s in shards]
        self.offsets = np.cumsum([0] + [x.shape[1] for x in self.inputs])

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens by global index -> inputs [Lg, b, D] float32, targets [Lg, K, b] float32."""
        shard = np.searchsorted(self.offsets, indices, side="right") - 1
        inputs, targets = [], []
        for s in np.unique(shard):
            local = np.sort(indices[shard == s] - self.offsets[s])
            inputs.append(np.asarray(self.inputs[s][:, local], np.float32))
            targets.append(np.asarray(self.targets[s][:, :, local], np.float32))
            if not (np.isfinite(inputs[-1]).all() and np.isfinite(targets[-1]).all()):
                raise ValueError(f"features {self.paths[s]} hold NaN or infinite values: delete the shard's files "
                                 "and rerun to collect them again")
        return np.concatenate(inputs, axis=1), np.concatenate(targets, axis=2)


def stack_gates(gates: dict, layers: tuple[int, ...]) -> dict:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[gates[f"layer_{i}"] for i in layers])


def unstack_gates(stacked: dict, layers: tuple[int, ...]) -> dict:
    return {f"layer_{layer}": jax.tree.map(lambda x: x[g], stacked) for g, layer in enumerate(layers)}


def per_layer_metrics(stacked: dict, inputs: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """BCE (mean over tokens, summed over heads) and accuracy per layer: [Lg], [Lg]."""

    def layer(params, h, t):  # h [b, D], t [K, b]
        p = jnp.clip(gate_scores(params, h[None])[0].T, EPS, 1 - EPS)  # [K, b]
        bce = -(t * jnp.log(p) + (1 - t) * jnp.log1p(-p))
        accuracy = ((p >= ACCURACY_THRESHOLD) == (t >= ACCURACY_THRESHOLD)).mean()
        return bce.mean(axis=1).sum(), accuracy

    return jax.vmap(layer)(stacked, inputs, targets)


def learning_rate_schedule(settings: FitSettings) -> optax.Schedule:
    warmup = max(1, int(settings.warmup_fraction * settings.steps))
    decay = optax.piecewise_constant_schedule(settings.learning_rate, {
        int(0.5 * settings.steps) - warmup: 0.5, int(0.75 * settings.steps) - warmup: 0.5})
    return optax.join_schedules([optax.linear_schedule(0.0, settings.learning_rate, warmup), decay], [warmup])


def _batch_indices(settings: FitSettings, step: int, num_tokens: int) -> np.ndarray:
    rng = np.random.default_rng([settings.seed, step])
    return rng.choice(num_tokens, size=min(settings.batch_tokens, num_tokens), replace=False)


def _check_same_run(path: str, identity: dict) -> None:
    """Refuse to resume checkpoints whose recorded fit settings, layers or features differ."""
    recorded = read_json(path) if os.path.isfile(path) else None
    if recorded != identity:
        if recorded is None:
            differ = "no record of the settings they were made with"
        else:
            differ = "; ".join(f"{part}: {recorded.get(part)} then, {identity[part]} now" for part in identity
                               if recorded.get(part) != identity[part])
        raise ValueError(f"the checkpoints beside {path} come from another run ({differ}); use another workdir, "
                         "or delete its checkpoints folder to start the fit again")


def fit_gates(initial_gates: dict, layers: tuple[int, ...], features_folder: str, workdir: str,
              settings: FitSettings, on_step: Callable[[int], None] | None = None,
              mesh: Mesh | None = None) -> tuple[dict, list[dict]]:
    """Train the gates (data-parallel over `mesh` if given); resumes from `workdir/checkpoints`.
    Returns (gates, evaluation history)."""
    import orbax.checkpoint as ocp

    def tokens_on_mesh(inputs: np.ndarray, targets: np.ndarray) -> tuple[jax.Array, jax.Array]:
        if mesh is None:
            return jnp.asarray(inputs), jnp.asarray(targets)  # [Lg, b, D], [Lg, K, b]
        return global_array(inputs, mesh, (None, "batch", None)), global_array(targets, mesh, (None, None, "batch"))

    def replicated(tree):
        return tree if mesh is None else jax.tree.map(lambda x: global_array(x, mesh, (None,) * np.ndim(x)), tree)

    train, heldout = FeatureSplit(features_folder, "train"), FeatureSplit(features_folder, "heldout")
    eval_rng = np.random.default_rng([settings.seed, 2**31])  # apart from every step's stream
    eval_indices = np.sort(eval_rng.choice(heldout.num_tokens, min(settings.eval_tokens, heldout.num_tokens),
                                           replace=False))
    eval_inputs, eval_targets = tokens_on_mesh(*heldout.gather(eval_indices))
    optimizer = optax.sgd(learning_rate_schedule(settings), momentum=settings.momentum)

    @jax.jit
    def train_step(params, opt_state, inputs, targets):
        def loss_fn(p):
            return per_layer_metrics(p, inputs, targets)[0].sum()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    evaluate = jax.jit(per_layer_metrics)
    params = stack_gates(initial_gates, layers)
    state = replicated({"params": params, "opt_state": optimizer.init(params)})
    manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                    options=ocp.CheckpointManagerOptions(max_to_keep=2))
    history_path = os.path.join(workdir, "history.json")
    identity = json.loads(json.dumps({"fit": dataclasses.asdict(settings), "layers": list(layers),
                                      "features": read_manifest(features_folder)["settings"]}))
    identity_path = os.path.join(workdir, "fit_settings.json")
    start, history = 0, []
    if manager.latest_step() is not None:
        _check_same_run(identity_path, identity)
        start = manager.latest_step()
        state = manager.restore(start, args=ocp.args.StandardRestore(state))
        if os.path.isfile(history_path):
            history = [record for record in read_json(history_path) if record["step"] <= start]
    elif is_main_process():  # a new fit: its checkpoints carry what made them
        write_json(identity_path, identity)

    def record(step, params):
        loss, accuracy = evaluate(params, eval_inputs, eval_targets)
        history.append({"step": step, "heldout_loss": np.asarray(loss).tolist(),
                        "heldout_accuracy": np.asarray(accuracy).tolist()})
        if is_main_process():
            write_json(history_path, history)

    if start == 0 and not history:
        record(0, state["params"])
    for step in range(start, settings.steps):
        inputs, targets = tokens_on_mesh(*train.gather(_batch_indices(settings, step, train.num_tokens)))
        params, opt_state, _ = train_step(state["params"], state["opt_state"], inputs, targets)
        state = {"params": params, "opt_state": opt_state}
        done = step + 1
        if done % settings.eval_every == 0 or done == settings.steps:
            record(done, params)
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            manager.save(done, args=ocp.args.StandardSave(state))
            manager.wait_until_finished()
        if on_step is not None:
            on_step(done)
    manager.close()
    gates = jax.tree.map(np.asarray, unstack_gates(state["params"], layers))  # replicated: every process has them
    return gates, history
