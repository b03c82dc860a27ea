"""Gate files: safetensors (ours), the authors' released `.pt` layout, and the packaged gates."""

from __future__ import annotations

import importlib.resources
import os

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.kv.gate import check_gates
from gatekv_jax.models.config import ModelConfig
from gatekv_jax.utils.files import write_atomically


def save_gates(gates: dict, path: str) -> None:
    """Write gates to a safetensors file (keys "layer_<i>/<name>"), atomically."""
    from safetensors.numpy import save_file

    flat = {f"{layer}/{name}": np.asarray(value, np.float32) for layer, params in gates.items()
            for name, value in params.items()}
    write_atomically(path, lambda temporary: save_file(flat, temporary))


def load_gates(path: str) -> dict:
    """Read gates written by `save_gates`."""
    from safetensors.numpy import load_file

    if not os.path.isfile(path):
        raise ValueError(f"gates file {path!r} does not exist")
    gates: dict = {}
    for key, value in load_file(path).items():
        layer, _, name = key.partition("/")
        if not layer.startswith("layer_") or not name:
            raise ValueError(f"gates file {path!r} has an unexpected tensor {key!r}")
        gates.setdefault(layer, {})[name] = jnp.asarray(value)
    return gates


def gates_digest(gates: dict) -> str:
    """SHA-256 (hex) of the gates' names, shapes and float32 values: the same gates give the same
    digest whatever file they came from."""
    import hashlib

    digest = hashlib.sha256()
    for layer in sorted(gates):
        for name in sorted(gates[layer]):
            value = np.ascontiguousarray(np.asarray(gates[layer][name], np.float32))
            digest.update(f"{layer}/{name}{value.shape}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()


OFFICIAL_TENSORS = frozenset({"q_proj.weight", "q_proj.bias", "k_proj.weight", "q_norm.weight", "k_norm.weight",
                              "k_base", "b"})


def import_official_gates(path: str, config: ModelConfig) -> dict:
    """Gates from the authors' released `.pt` (`q{G}_dim16_sink16.pt`: {"module": [state_dict per
    layer]}), read with `torch.load(weights_only=True)`; needs torch. Lists covering every layer
    are indexed by layer; lists covering only the gated layers are taken in order."""
    import torch

    if not os.path.isfile(path):
        raise ValueError(f"gates file {path!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    layers = state["module"] if isinstance(state, dict) and "module" in state else state
    if not isinstance(layers, (list, tuple)):
        raise ValueError(f"{path!r} is not a list of per-layer gate state dicts")
    gated = config.full_attention_layers
    if len(layers) == config.num_layers:
        chosen = {i: layers[i] for i in gated}
    elif len(layers) == len(gated):
        chosen = dict(zip(gated, layers))
    else:
        raise ValueError(f"{path!r} has gates for {len(layers)} layers; the model has {config.num_layers} "
                         f"layers, {len(gated)} of them gated")
    D, K, G = config.hidden_size, config.num_kv_heads, config.num_groups
    gates = {}
    for layer, weights in chosen.items():
        if not isinstance(weights, dict):
            raise ValueError(f"{path!r}: layer {layer} is a {type(weights).__name__}, not a state dict")
        missing = sorted(OFFICIAL_TENSORS - set(weights))
        if missing:
            raise ValueError(f"{path!r}: the gate of layer {layer} lacks {missing}")
        w = {name: tensor.detach().float().numpy() for name, tensor in weights.items()}
        E = w["q_norm.weight"].shape[0]
        expected = {"q_proj.weight": (K * G * E, D), "q_proj.bias": (K * G * E,), "k_proj.weight": (K * E, D),
                    "k_norm.weight": (E,)}
        for name, shape in expected.items():
            if w[name].shape != shape:
                raise ValueError(f"{path!r}: layer {layer} {name} has shape {w[name].shape}, this model needs "
                                 f"{shape} (hidden {D}, {K} KV heads x {G} queries): gates for another model?")
        gates[f"layer_{layer}"] = {
            "q_kernel": jnp.asarray(w["q_proj.weight"].T.reshape(D, K, G, E)),
            "q_bias": jnp.asarray(w["q_proj.bias"].reshape(K, G, E)),
            "k_kernel": jnp.asarray(w["k_proj.weight"].T.reshape(D, K, E)),
            "q_norm": jnp.asarray(w["q_norm.weight"]),
            "k_norm": jnp.asarray(w["k_norm.weight"]),
            "sink_keys": jnp.asarray(w["k_base"][:, 0]),
            "bias": jnp.asarray(w["b"][:, 0]),
        }
    check_gates(gates, config)
    return gates


def export_official_gates(gates: dict, config: ModelConfig, path: str) -> None:
    """Write gates in the authors' `.pt` layout, one state dict per model layer (layers without a
    gate, e.g. Gemma3 sliding layers, get zeros: they are never used); needs torch."""
    import torch

    check_gates(gates, config)
    template = next(iter(gates.values()))
    layers = []
    for layer in range(config.num_layers):
        params = gates.get(f"layer_{layer}") or jax.tree.map(jnp.zeros_like, template)
        p = {name: np.asarray(value, np.float32) for name, value in params.items()}
        D, K, G, E = p["q_kernel"].shape
        layers.append({
            "q_proj.weight": torch.from_numpy(p["q_kernel"].reshape(D, K * G * E).T.copy()),
            "q_proj.bias": torch.from_numpy(p["q_bias"].reshape(-1).copy()),
            "k_proj.weight": torch.from_numpy(p["k_kernel"].reshape(D, K * E).T.copy()),
            "q_norm.weight": torch.from_numpy(p["q_norm"].copy()),
            "k_norm.weight": torch.from_numpy(p["k_norm"].copy()),
            "k_base": torch.from_numpy(p["sink_keys"][:, None].copy()),
            "b": torch.from_numpy(p["bias"][:, None].copy()),
        })
    torch.save({"module": layers}, path)


OFFICIAL_GATES_REPO = "Jang-Hyun/Fast-KVzip"  # the authors' hub repo of released gates


def official_gates_file(model_id: str, config: ModelConfig) -> str:
    """The file of the authors' released gates for a hub model id, as their code names it:
    `<model name, lower case>/q<query heads per KV head>_dim16_sink16.pt`."""
    name = model_id.rstrip("/").split("/")[-1].lower()
    if not name:
        raise ValueError(f"model id {model_id!r} has no model name")
    return f"{name}/q{config.num_groups}_dim16_sink16.pt"


def download_official_gates(model_id: str, config: ModelConfig) -> dict:
    """The authors' released gates for `model_id` (e.g. "Qwen/Qwen3-4B-Instruct-2507"), downloaded
    from the hub repo `OFFICIAL_GATES_REPO` and imported with `import_official_gates` (needs torch
    and network). They exist for Qwen2.5-{7,14}B-Instruct-1M, Qwen3-{8,14}B, Qwen3-4B-Instruct-2507
    and gemma-3-12b-it."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(repo_id=OFFICIAL_GATES_REPO, filename=official_gates_file(model_id, config))
    return import_official_gates(path, config)


PRETRAINED = {"gemma3-270m": "gemma3-270m.gates.safetensors"}


def pretrained_gates(name: str) -> dict:
    """Gates shipped with the package (trained by `python -m gatekv_jax.train`; the command, config
    and measured results sit beside the file in `assets/<name>.gates.json`)."""
    if name not in PRETRAINED:
        raise ValueError(f"no pretrained gates for {name!r}; available: {sorted(PRETRAINED)}")
    return load_gates(str(importlib.resources.files("gatekv_jax") / "assets" / PRETRAINED[name]))
