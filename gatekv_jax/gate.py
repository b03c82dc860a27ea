"""The Fast KVzip sink-attention gate: a tiny per-layer scorer of every KV pair.

For the attention input h of a token (after the layer's input norm, no position information):
  q = rmsnorm(W_q h + b_q) reshaped [K, G, E];  k = rmsnorm(W_k h) reshaped [K, E]
  score[k] = mean_g sigmoid(<k_k, q_kg>/sqrt(E) + b[k,g] - logsumexp_z <sink_kz, q_kg>/sqrt(E))
i.e. the softmax weight of the token's own key against Z learned sink keys, averaged over the G
query slots of each KV head. All gate math runs in float32.

Extra legend letters: E gate dim (16), Z sink keys (16). Gate parameters of one layer:
  q_kernel [D, K, G, E], q_bias [K, G, E], k_kernel [D, K, E], q_norm [E], k_norm [E],
  sink_keys [K, Z, E], bias [K, G].
Gates of a model: {"layer_<i>": params} for every gated (full-attention) layer i.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from gatekv_jax.models.config import ModelConfig

GATE_DIM = 16
NUM_SINKS = 16
GATE_NORM_EPS = 1e-6


def _rms_norm(x: jax.Array, weight: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + GATE_NORM_EPS) * weight


def gate_scores(params: dict, hidden: jax.Array) -> jax.Array:
    """hidden [B, T, D] (the attention input) -> scores [B, T, K] in (0, 1), float32."""
    h = hidden.astype(jnp.float32)
    f32 = {name: value.astype(jnp.float32) for name, value in params.items()}
    dim = f32["q_norm"].shape[0]
    q = jnp.einsum("BTD,DKGE->BTKGE", h, f32["q_kernel"]) + f32["q_bias"]  # [B, T, K, G, E]
    q = _rms_norm(q, f32["q_norm"])
    k = _rms_norm(jnp.einsum("BTD,DKE->BTKE", h, f32["k_kernel"]), f32["k_norm"])  # [B, T, K, E]
    self_logit = jnp.einsum("BTKGE,BTKE->BTKG", q, k) / np.sqrt(dim) + f32["bias"]  # [B, T, K, G]
    sink_logits = jnp.einsum("BTKGE,KZE->BTKGZ", q, f32["sink_keys"]) / np.sqrt(dim)  # [B, T, K, G, Z]
    weight = jax.nn.sigmoid(self_logit - jax.nn.logsumexp(sink_logits, axis=-1))  # [B, T, K, G]
    return weight.mean(axis=-1)  # [B, T, K]


def init_gates(config: ModelConfig, seed: int = 0, gate_dim: int = GATE_DIM, num_sinks: int = NUM_SINKS) -> dict:
    """Freshly initialised gates for every gated layer (sink keys zero, norms one)."""
    D, K, G = config.hidden_size, config.num_kv_heads, config.num_groups
    gates = {}
    for layer in config.global_layers:
        q_key, k_key = jax.random.split(jax.random.fold_in(jax.random.key(seed), layer))
        gates[f"layer_{layer}"] = {
            "q_kernel": jax.random.normal(q_key, (D, K, G, gate_dim), jnp.float32) / np.sqrt(D),
            "q_bias": jnp.zeros((K, G, gate_dim), jnp.float32),
            "k_kernel": jax.random.normal(k_key, (D, K, gate_dim), jnp.float32) / np.sqrt(D),
            "q_norm": jnp.ones((gate_dim,), jnp.float32),
            "k_norm": jnp.ones((gate_dim,), jnp.float32),
            "sink_keys": jnp.zeros((K, num_sinks, gate_dim), jnp.float32),
            "bias": jnp.zeros((K, G), jnp.float32),
        }
    return gates


def check_gates(gates: dict, config: ModelConfig) -> None:
    """Raise a ValueError naming the first missing layer or misshapen gate tensor."""
    D, K, G = config.hidden_size, config.num_kv_heads, config.num_groups
    expected_layers = {f"layer_{i}" for i in config.global_layers}
    if set(gates) != expected_layers:
        raise ValueError(f"gates cover layers {sorted(gates)}, the model gates {sorted(expected_layers)}")
    for name, params in gates.items():
        E = params["q_norm"].shape[0]
        Z = params["sink_keys"].shape[1]
        shapes = {"q_kernel": (D, K, G, E), "q_bias": (K, G, E), "k_kernel": (D, K, E), "q_norm": (E,),
                  "k_norm": (E,), "sink_keys": (K, Z, E), "bias": (K, G)}
        for key, shape in shapes.items():
            if key not in params or tuple(params[key].shape) != shape:
                got = None if key not in params else tuple(params[key].shape)
                raise ValueError(f"gate {name}/{key} has shape {got}, expected {shape}")


def save_gates(gates: dict, path: str) -> None:
    """Write gates to a safetensors file (keys "layer_<i>/<name>"), atomically."""
    from safetensors.numpy import save_file

    from gatekv_jax.files import write_atomically

    flat = {f"{layer}/{name}": np.asarray(value, np.float32) for layer, params in gates.items()
            for name, value in params.items()}
    write_atomically(path, lambda temporary: save_file(flat, temporary))


def load_gates(path: str) -> dict:
    """Read gates written by `save_gates`."""
    import os

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


def import_official_gates(path: str, config: ModelConfig) -> dict:
    """Gates from the authors' released `.pt` (`q{G}_dim16_sink16.pt`: {"module": [state_dict per
    layer]}), read with `torch.load(weights_only=True)`; needs torch. Lists covering every layer
    are indexed by layer; lists covering only the gated layers are taken in order."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    layers = state["module"] if isinstance(state, dict) and "module" in state else state
    if not isinstance(layers, (list, tuple)):
        raise ValueError(f"{path!r} is not a list of per-layer gate state dicts")
    gated = config.global_layers
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
        w = {name: tensor.detach().float().numpy() for name, tensor in weights.items()}
        E = w["q_norm.weight"].shape[0]
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


PRETRAINED = {"gemma3-270m": "gemma3-270m.gates.safetensors"}


def pretrained_gates(name: str) -> dict:
    """Gates shipped with the package (trained by `python -m gatekv_jax.train`; the command, config
    and measured results sit beside the file in `assets/<name>.gates.json`)."""
    import os

    if name not in PRETRAINED:
        raise ValueError(f"no pretrained gates for {name!r}; available: {sorted(PRETRAINED)}")
    return load_gates(os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", PRETRAINED[name]))
