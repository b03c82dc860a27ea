"""ModelConfig.from_hf: the fields each family needs, RoPE tables, and clear errors."""

import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from gatekv_jax import ModelConfig
from tests.tiny_models import TINY_CONFIGS


def hf_config(name, **overrides):
    kwargs = {**TINY_CONFIGS[name], **overrides}
    return transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def test_qwen2_fields():
    c = ModelConfig.from_hf(hf_config("qwen2"))
    assert (c.model_type, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == ("qwen2", 2, 4, 2, 16)
    assert c.qkv_bias and not c.output_bias and not c.qk_norm and not c.tie_word_embeddings
    assert c.sliding_window is None and c.full_attention_layers == (0, 1)
    assert c.query_scale == pytest.approx(16 ** -0.5)


def test_qwen3_fields():
    c = ModelConfig.from_hf(hf_config("qwen3"))
    assert c.head_dim == 32 and c.qk_norm and not c.qkv_bias and c.tie_word_embeddings
    assert c.rope_full.rope_type == "yarn" and c.rope_full.factor == 4.0
    assert c.rope_full.original_max_position_embeddings == 64


def test_gemma3_fields_and_multimodal_text_part():
    text = hf_config("gemma3")
    c = ModelConfig.from_hf(text)
    assert c.model_type == "gemma3" and c.norm_weight_offset == 1.0 and c.sandwich_norms
    assert c.embed_scale == pytest.approx(8.0) and c.query_scale == pytest.approx(24 ** -0.5)
    assert c.full_attention_layers == (1, 3) and c.window_of(0) == 5 and c.window_of(1) is None
    assert c.rope_of(0).theta == 10000.0 and c.rope_of(1).rope_type == "linear"
    assert c.final_logit_softcap == 30.0 and c.activation == "gelu_tanh"
    multimodal = transformers.Gemma3Config(text_config=text.to_dict())
    assert ModelConfig.from_hf(multimodal) == c


def test_from_dict_and_path(tmp_path):
    config = hf_config("qwen3")
    config.save_pretrained(tmp_path)
    assert ModelConfig.from_hf(tmp_path) == ModelConfig.from_hf(config)
    assert ModelConfig.from_hf(config.to_dict()) == ModelConfig.from_hf(config)


@pytest.mark.parametrize("name, overrides, match", [
    ("qwen2", dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}), "rope_type 'dynamic'"),
    ("gemma3", dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    ("qwen3", dict(hidden_act="relu"), "activation 'relu'"),
])
def test_unsupported_options_are_named(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf(hf_config(name, **overrides))


def test_unknown_model_type_is_named():
    with pytest.raises(ValueError, match="model_type 'llama'"):
        ModelConfig.from_hf({"model_type": "llama", "hidden_size": 8})
    with pytest.raises(ValueError, match="model_type 'llama'"):
        ModelConfig.from_hf(transformers.LlamaConfig())


@pytest.mark.parametrize("rope_parameters", [
    {"rope_type": "default", "rope_theta": 1e6},
    {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "rope_theta": 1e6},
    {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096, "rope_theta": 5e5,
     "beta_fast": 16, "beta_slow": 2, "mscale": 1.0, "mscale_all_dim": 0.5},
])
def test_rope_tables_match_transformers(rope_parameters):
    config = transformers.Qwen3Config(head_dim=128, max_position_embeddings=131072,
                                      rope_parameters=dict(rope_parameters))
    inv_freq, scaling = ModelConfig.from_hf(config).rope_full.inverse_frequencies(128)
    rope_type = rope_parameters["rope_type"]
    if rope_type == "default":
        ref_freq, ref_scaling = transformers.models.qwen3.modeling_qwen3.Qwen3RotaryEmbedding \
            .compute_default_rope_parameters(config)
    else:
        ref_freq, ref_scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    np.testing.assert_allclose(inv_freq, ref_freq.numpy(), rtol=1e-6)
    assert scaling == pytest.approx(ref_scaling)
