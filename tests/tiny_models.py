"""Tiny random transformers models built from configs (no hub): the references for parity tests."""

import torch
import transformers

TINY_CONFIGS = {
    # Qwen2.5 layout: q/k/v biases, untied head.
    "qwen2": dict(model_type="qwen2", vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False),
    # Qwen3 layout: q/k norms, head_dim != hidden / heads, tied embeddings, YaRN RoPE.
    "qwen3": dict(model_type="qwen3", vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                  rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                   "rope_theta": 10000.0}, tie_word_embeddings=True),
    # Gemma3 layout: sliding (window 5) and global layers, (1+w) norms, sandwich norms, linear RoPE
    # scaling on global layers, query_pre_attn_scalar != head_dim, final logit soft-capping.
    "gemma3": dict(model_type="gemma3_text", vocab_size=97, hidden_size=64, intermediate_size=96,
                   num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                   max_position_embeddings=256, sliding_window=5, query_pre_attn_scalar=24,
                   layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                   rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                   final_logit_softcapping=30.0, tie_word_embeddings=True),
}


def tiny_hf_model(name: str, seed: int = 0):
    """A float32 eager-attention transformers model with every parameter randomised."""
    config_kwargs = dict(TINY_CONFIGS[name])
    model_type = config_kwargs.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **config_kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():  # biases and norms default to constants: randomise them too
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def save_tiny_model(name: str, folder, **save_kwargs):
    model = tiny_hf_model(name)
    model.save_pretrained(folder, **save_kwargs)
    return model
