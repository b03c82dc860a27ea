"""The sink-attention gate: the DESIGN.md formula, official .pt import/export, safetensors I/O."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import gatekv_jax as gk
from gatekv_jax.kv.gate import check_gates, gate_scores
from gatekv_jax.kv.gate_files import export_official_gates, import_official_gates
from tests.tiny_models import TINY_CONFIGS


def gemma_config():
    return gk.ModelConfig.from_hf(dict(TINY_CONFIGS["gemma3"]))


def random_gates(config, seed=0):
    rng = np.random.RandomState(seed)
    gates = gk.init_gates(config, seed=seed)
    return {layer: {name: jnp.asarray(rng.randn(*value.shape).astype(np.float32) * 0.5)
                    for name, value in params.items()} for layer, params in gates.items()}


def reference_scores(w, h):
    """The formula written out token by token with numpy, from official-layout weights."""
    K, _, Z, E = w["k_base"].shape
    G = w["b"].shape[2]
    out = np.zeros((h.shape[0], K))
    for t in range(h.shape[0]):
        q = (w["q_proj.weight"] @ h[t] + w["q_proj.bias"]).reshape(K, G, E)
        q = q / np.sqrt((q ** 2).mean(-1, keepdims=True) + 1e-6) * w["q_norm.weight"]
        k = (w["k_proj.weight"] @ h[t]).reshape(K, E)
        k = k / np.sqrt((k ** 2).mean(-1, keepdims=True) + 1e-6) * w["k_norm.weight"]
        for head in range(K):
            values = []
            for g in range(G):
                self_logit = k[head] @ q[head, g] / math.sqrt(E) + w["b"][head, 0, g]
                sinks = np.array([w["k_base"][head, 0, z] @ q[head, g] / math.sqrt(E) for z in range(Z)])
                values.append(1 / (1 + np.exp(sinks - self_logit).sum()))
            out[t, head] = np.mean(values)
    return out


def test_gate_formula_on_imported_official_weights(tmp_path):
    config = gemma_config()
    rng = np.random.RandomState(1)
    D, K, G, E, Z = config.hidden_size, config.num_kv_heads, config.num_groups, 16, 16
    official = []
    for _ in range(config.num_layers):
        official.append({
            "q_proj.weight": rng.randn(K * G * E, D) * 0.2, "q_proj.bias": rng.randn(K * G * E) * 0.2,
            "k_proj.weight": rng.randn(K * E, D) * 0.2, "q_norm.weight": 1 + 0.1 * rng.randn(E),
            "k_norm.weight": 1 + 0.1 * rng.randn(E), "k_base": rng.randn(K, 1, Z, E),
            "b": rng.randn(K, 1, G)})
    torch.save({"module": [{k: torch.tensor(v, dtype=torch.float32) for k, v in layer.items()}
                           for layer in official]}, tmp_path / "q2_dim16_sink16.pt")
    gates = import_official_gates(str(tmp_path / "q2_dim16_sink16.pt"), config)
    assert sorted(gates) == ["layer_1", "layer_3"]
    h = rng.randn(5, D).astype(np.float32)
    for layer in config.full_attention_layers:
        ours = np.asarray(gate_scores(gates[f"layer_{layer}"], jnp.asarray(h)[None]))[0]
        np.testing.assert_allclose(ours, reference_scores(official[layer], h), rtol=1e-4, atol=1e-6)


def test_official_export_import_round_trip(tmp_path):
    config = gemma_config()
    gates = random_gates(config)
    export_official_gates(gates, config, str(tmp_path / "gates.pt"))
    back = import_official_gates(str(tmp_path / "gates.pt"), config)
    for layer in gates:
        for name in gates[layer]:
            np.testing.assert_array_equal(np.asarray(back[layer][name]), np.asarray(gates[layer][name]))


def test_safetensors_round_trip_and_shape_errors(tmp_path):
    config = gemma_config()
    gates = random_gates(config)
    gk.save_gates(gates, str(tmp_path / "g.safetensors"))
    back = gk.load_gates(str(tmp_path / "g.safetensors"))
    for layer in gates:
        for name in gates[layer]:
            np.testing.assert_array_equal(np.asarray(back[layer][name]), np.asarray(gates[layer][name]))
    del back["layer_1"]
    with pytest.raises(ValueError, match="gates cover layers"):
        check_gates(back, config)
    bad = dict(gates, layer_1=dict(gates["layer_1"], bias=jnp.zeros((3, 3))))
    with pytest.raises(ValueError, match=r"gate layer_1/bias has shape \(3, 3\), expected \(2, 2\)"):
        check_gates(bad, config)
    with pytest.raises(ValueError, match="does not exist"):
        gk.load_gates(str(tmp_path / "missing.safetensors"))


def test_gates_with_a_missing_tensor_are_named():
    config = gk.ModelConfig.from_hf(dict(TINY_CONFIGS["qwen3"]))
    gates = gk.init_gates(config)
    del gates["layer_1"]["q_norm"]
    with pytest.raises(ValueError, match=r"gate layer_1 lacks tensors \['q_norm'\]"):
        check_gates(gates, config)


def test_download_official_gates_asks_the_authors_repo_for_the_model_file(tmp_path, monkeypatch):
    import huggingface_hub

    config = gk.ModelConfig.from_hf(TINY_CONFIGS["qwen3"])
    released = gk.init_gates(config, seed=5)
    export_official_gates(released, config, str(tmp_path / "released.pt"))
    asked = []

    def fake_download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        return str(tmp_path / "released.pt")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    gates = gk.download_official_gates("Qwen/Qwen3-4B-Instruct-2507", config)
    # the authors' name: lower-case model name, q<query heads per KV head>_dim16_sink16.pt
    assert asked == [("Jang-Hyun/Fast-KVzip", f"qwen3-4b-instruct-2507/q{config.num_groups}_dim16_sink16.pt")]
    for layer, params in released.items():
        for name, value in params.items():
            np.testing.assert_array_equal(gates[layer][name], value)
