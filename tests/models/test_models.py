"""Tiny random Qwen2 / Qwen3 / Gemma3 models: parity with transformers, padding, cached decoding, loading."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import gatekv_jax as gk
from gatekv_jax.engine.inputs import padded_positions
from tests.tiny_models import TINY_CONFIGS, save_tiny_model, tiny_hf_model

LENGTH = 16  # longer than the tiny Gemma3 sliding window (5)


def random_tokens(batch, length, seed=0):
    return np.random.RandomState(seed).randint(0, 97, (batch, length)).astype(np.int32)


def hf_logits(hf_model, tokens):
    with torch.no_grad():
        return hf_model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def test_logits_match_transformers(tiny_model_dir):
    name, folder = tiny_model_dir
    model = gk.load_model(folder)
    tokens = random_tokens(2, LENGTH)
    ours = np.asarray(gk.forward(model, tokens))
    assert ours.shape == (2, LENGTH, 97) and ours.dtype == np.float32
    assert np.abs(ours - hf_logits(tiny_hf_model(name), tokens)).max() <= 1e-4


def test_padded_batch_equals_single_rows(tiny_model_dir):
    _, folder = tiny_model_dir
    model = gk.load_model(folder)
    tokens = random_tokens(2, LENGTH, seed=1)
    batched = np.asarray(gk.forward(model, tokens, lengths=[LENGTH, 9]))
    np.testing.assert_allclose(batched[0], np.asarray(gk.forward(model, tokens[:1]))[0], atol=1e-5)
    np.testing.assert_allclose(batched[1, :9], np.asarray(gk.forward(model, tokens[1:, :9]))[0], atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3])
def test_cached_decoding_equals_full_forward(tiny_model_dir, chunk, attention_blocks):
    """Prefill 4 tokens, then append `chunk` tokens at a time through the cache, past the window."""
    _, folder = tiny_model_dir
    model = gk.load_model(folder)
    tokens = random_tokens(2, LENGTH, seed=2)
    lengths = np.array([LENGTH, 11])
    full = np.asarray(gk.forward(model, tokens, lengths=lengths))
    positions = padded_positions(2, LENGTH, lengths)
    cache = gk.init_cache(model.config, batch_size=2, capacity=LENGTH)
    pieces = []
    for start in [0] + list(range(4, LENGTH, chunk)):
        stop = 4 if start == 0 else min(start + chunk, LENGTH)
        logits, cache = gk.apply_model(model, jnp.asarray(tokens[:, start:stop]),
                                       jnp.asarray(positions[:, start:stop]), cache)
        pieces.append(np.asarray(logits))
    incremental = np.concatenate(pieces, axis=1)
    np.testing.assert_allclose(incremental[0], full[0], atol=1e-5)
    np.testing.assert_allclose(incremental[1, :11], full[1, :11], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(cache.layers[0].lengths), [[LENGTH] * 2, [11] * 2])


def test_cache_bytes_equal_capacity():
    config = gk.ModelConfig.from_hf(dict(TINY_CONFIGS["gemma3"]))
    cache = gk.init_cache(config, batch_size=3, capacity=[8, 20, 8, 20])
    per_slot = 3 * config.num_kv_heads * (2 * config.head_dim * 4 + 4 + 4)  # keys, values, position, score
    assert cache.capacities == (8, 20, 8, 20)
    assert cache.nbytes == per_slot * (8 + 20 + 8 + 20) + 4 * 3 * config.num_kv_heads * 4


def test_sharded_checkpoint_index(tmp_path):
    hf_model = save_tiny_model("qwen2", tmp_path, max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    tokens = random_tokens(1, 8)
    ours = np.asarray(gk.forward(gk.load_model(tmp_path), tokens))
    assert np.abs(ours - hf_logits(hf_model, tokens)).max() <= 1e-4


def test_bfloat16_params_and_close_logits(tiny_model_dir):
    name, folder = tiny_model_dir
    model = gk.load_model(folder, dtype="bfloat16")
    assert model.params["embed_tokens"].dtype == jnp.bfloat16
    tokens = random_tokens(1, LENGTH)
    ours = np.asarray(gk.forward(model, tokens))
    assert ours.dtype == np.float32
    assert np.abs(ours - hf_logits(tiny_hf_model(name), tokens)).max() < 0.1


def _rewrite(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_unmapped_missing_and_misshapen_tensors_are_errors(tmp_path):
    save_tiny_model("qwen3", tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")

    _rewrite(tmp_path, lambda t: t.update({"model.layers.0.self_attn.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match="model.layers.0.self_attn.extra.weight"):
        gk.load_model(tmp_path)

    save_file({k: v for k, v in tensors.items() if k != "model.norm.weight"}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="lacks 1 parameters.*norm/weight"):
        gk.load_model(tmp_path)

    bad = dict(tensors, **{"model.layers.1.mlp.up_proj.weight": np.zeros((5, 64), np.float32)})
    save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"up_proj.weight' has shape \(5, 64\), expected \(96, 64\)"):
        gk.load_model(tmp_path)


def test_multimodal_checkpoint_names_are_understood(tmp_path):
    """Gemma3 multimodal checkpoints nest the text model and carry vision tensors we skip."""
    hf_model = save_tiny_model("gemma3", tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    renamed = {k.replace("model.", "model.language_model.", 1): v for k, v in tensors.items()}
    renamed["model.vision_tower.encoder.weight"] = np.zeros(4, np.float32)
    save_file(renamed, tmp_path / "model.safetensors")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": config}))
    tokens = random_tokens(1, 8)
    ours = np.asarray(gk.forward(gk.load_model(tmp_path), tokens))
    assert np.abs(ours - hf_logits(hf_model, tokens)).max() <= 1e-4


@pytest.mark.parametrize("source, match", [
    ("/no/such/folder", "not a folder, .gguf file, hub id"),
    ("missing.gguf", "GGUF file 'missing.gguf' does not exist"),
])
def test_bad_sources_are_named(source, match):
    with pytest.raises(ValueError, match=match):
        gk.load_model(source)


def test_bad_inputs_are_named(tiny_model_dir):
    _, folder = tiny_model_dir
    model = gk.load_model(folder)
    with pytest.raises(ValueError, match="token id 97 is outside the vocabulary"):
        gk.forward(model, np.array([[1, 97]]))
    with pytest.raises(ValueError, match=r"shape \[batch, length\]"):
        gk.forward(model, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="lengths must be 1 values in"):
        gk.forward(model, np.array([[1, 2]]), lengths=[3])
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        gk.load_model(folder, dtype="float8")
