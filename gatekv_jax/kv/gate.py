"""The Fast KVzip sink-attention gate: a tiny per-layer scorer of every KV pair.

For the attention input h of a token (after the layer's input norm, no position information):
  q = rmsnorm(W_q h + b_q) reshaped [K, G, E];  k = rmsnorm(W_k h) reshaped [K, E]
  score[k] = mean_g sigmoid(<k_k, q_kg>/sqrt(E) + b[k,g] - logsumexp_z <sink_kz, q_kg>/sqrt(E))
i.e. the softmax weight of the token's own key against Z learned sink keys, averaged over the G
query slots of each KV head. All gate math runs in float32.

Extra legend letters: E gate dim (16), Z sink keys (16). Gate parameters of one layer:
  q_kernel [D, K, G, E], q_bias [K, G, E], k_kernel [D, K, E], q_norm [E], k_norm [E],
  sink_keys [K, Z, E], bias [K, G].
Gates of a model: {"layer_<i>": params} for every gated (full-attention) layer i. Reading and
writing gate files lives in `gate_files.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.models.config import ModelConfig
from gatekv_jax.models.layers import rms_normalize

GATE_DIM = 16
NUM_SINKS = 16
GATE_NORM_EPS = 1e-6
GATE_TENSORS = frozenset({"q_kernel", "q_bias", "k_kernel", "q_norm", "k_norm", "sink_keys", "bias"})


def gate_scores(params: dict, hidden: jax.Array) -> jax.Array:
    """hidden [B, T, D] (the attention input) -> scores [B, T, K] in (0, 1), float32."""
    h = hidden.astype(jnp.float32)
    f32 = {name: value.astype(jnp.float32) for name, value in params.items()}
    dim = f32["q_norm"].shape[0]
    q = jnp.einsum("BTD,DKGE->BTKGE", h, f32["q_kernel"]) + f32["q_bias"]  # [B, T, K, G, E]
    q = rms_normalize(q, GATE_NORM_EPS) * f32["q_norm"]
    k = rms_normalize(jnp.einsum("BTD,DKE->BTKE", h, f32["k_kernel"]), GATE_NORM_EPS) * f32["k_norm"]  # [B, T, K, E]
    self_logit = jnp.einsum("BTKGE,BTKE->BTKG", q, k) / np.sqrt(dim) + f32["bias"]  # [B, T, K, G]
    sink_logits = jnp.einsum("BTKGE,KZE->BTKGZ", q, f32["sink_keys"]) / np.sqrt(dim)  # [B, T, K, G, Z]
    weight = jax.nn.sigmoid(self_logit - jax.nn.logsumexp(sink_logits, axis=-1))  # [B, T, K, G]
    return weight.mean(axis=-1)  # [B, T, K]


def init_gates(config: ModelConfig, seed: int = 0, gate_dim: int = GATE_DIM, num_sinks: int = NUM_SINKS) -> dict:
    """Freshly initialised gates for every gated layer (sink keys zero, norms one)."""
    D, K, G = config.hidden_size, config.num_kv_heads, config.num_groups
    gates = {}
    for layer in config.full_attention_layers:
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
    expected_layers = {f"layer_{i}" for i in config.full_attention_layers}
    if set(gates) != expected_layers:
        raise ValueError(f"gates cover layers {sorted(gates)}, the model gates {sorted(expected_layers)}")
    for name, params in gates.items():
        missing = sorted(GATE_TENSORS - set(params))
        if missing:
            raise ValueError(f"gate {name} lacks tensors {missing}")
        E = params["q_norm"].shape[0]
        Z = params["sink_keys"].shape[1]
        shapes = {"q_kernel": (D, K, G, E), "q_bias": (K, G, E), "k_kernel": (D, K, E), "q_norm": (E,),
                  "k_norm": (E,), "sink_keys": (K, Z, E), "bias": (K, G)}
        for key, shape in shapes.items():
            if key not in params or tuple(params[key].shape) != shape:
                got = None if key not in params else tuple(params[key].shape)
                raise ValueError(f"gate {name}/{key} has shape {got}, expected {shape}")
    finite = _all_finite({name: {key: params[key] for key in GATE_TENSORS} for name, params in gates.items()})
    if not bool(finite):  # one scalar to the host; name the culprit only on failure
        bad = [f"{name}/{key}" for name, params in gates.items() for key in sorted(GATE_TENSORS)
               if not np.isfinite(np.asarray(params[key])).all()]
        raise ValueError(f"gates hold NaN or infinite values in {bad}")


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)]).all()
