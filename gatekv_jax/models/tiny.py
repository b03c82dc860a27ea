"""A tiny random Qwen3 and a byte-level tokenizer: a model any machine can build, for smoke runs."""

from __future__ import annotations

TINY_MODEL = "tiny-random-qwen3"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

TINY_QWEN3_CONFIG = dict(
    model_type="qwen3", vocab_size=256 + len(SPECIAL_TOKENS), hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    tie_word_embeddings=True, eos_token_id=256, bos_token_id=None,
)


def byte_tokenizer():
    """Byte-level tokenizer: one token per UTF-8 byte, plus Qwen's chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_order = sorted(alphabet)
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(byte_order)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    return tokenizer
