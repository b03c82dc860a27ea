"""Reading GGUF files without torch: config, dequantised tensors under HF names, and the tokenizer.

Tensors are read and dequantised with the `gguf` package (numpy) and renamed to the transformers
checkpoint names, so the one HF converter in `loading.py` places them. llama.cpp stores Gemma's
RMSNorm weights as `w + 1`; they are shifted back here.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import numpy as np

SUPPORTED_ARCHITECTURES = ("gemma3",)

# llama.cpp tensor name (after "blk.N.") -> transformers name (after "model.layers.N.")
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAME = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_GLOBAL_NAME = re.compile(r"^(\w+)\.(weight|bias)$")


def _reader(path: str):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, struct errors, IndexError... on a bad file
        raise ValueError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from e


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _architecture(reader) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported GGUF architecture {arch!r}; supported: {SUPPORTED_ARCHITECTURES}")
    return arch


def gguf_config(path: str) -> dict[str, Any]:
    """A transformers config dict (model_type gemma3_text) from the GGUF metadata."""
    reader = _reader(path)
    arch = _architecture(reader)

    def meta(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", default)

    config = {
        "model_type": "gemma3_text",
        "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data),
        "hidden_size": meta("embedding_length"),
        "intermediate_size": meta("feed_forward_length"),
        "num_hidden_layers": meta("block_count"),
        "num_attention_heads": meta("attention.head_count"),
        "num_key_value_heads": meta("attention.head_count_kv"),
        "head_dim": meta("attention.key_length"),
        "rms_norm_eps": meta("attention.layer_norm_rms_epsilon"),
        "max_position_embeddings": meta("context_length"),
        "sliding_window": meta("attention.sliding_window"),
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": meta("rope.freq_base", 1_000_000.0)},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
    }
    scaling = meta("rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise ValueError(f"unsupported GGUF rope scaling type {scaling!r}")
        config["rope_parameters"]["full_attention"].update(rope_type="linear",
                                                           factor=meta("rope.scaling.factor"))
    return config


def _hf_name(name: str) -> str:
    match = _LAYER_NAME.match(name)
    if match and match.group(2) in _LAYER_TENSORS:
        layer, tensor, kind = match.groups()
        return f"model.layers.{layer}.{_LAYER_TENSORS[tensor]}.{kind}"
    match = _GLOBAL_NAME.match(name)
    if match and match.group(1) in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[match.group(1)]}.{match.group(2)}"
    raise ValueError(f"unknown GGUF tensor {name!r}")


def gguf_tensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yield `(transformers name, float32 array in transformers layout)` for every tensor."""
    from gguf.quants import dequantize

    reader = _reader(path)
    _architecture(reader)
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        array = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        array = array.reshape(tuple(int(d) for d in reversed(tensor.shape)))  # GGML lists dims fastest-first
        if name.endswith("norm.weight"):  # llama.cpp stores Gemma norms as w + 1
            array = array - np.float32(1.0)
        yield name, array


_TOKENIZER_KEYS = {
    "ggml.model": "tokenizer_type",
    "ggml.pre": "pre_tokenizer_type",
    "ggml.tokens": "tokens",
    "ggml.scores": "scores",
    "ggml.token_type": "token_type",
    "ggml.merges": "merges",
    "ggml.bos_token_id": "bos_token_id",
    "ggml.eos_token_id": "eos_token_id",
    "ggml.unknown_token_id": "unk_token_id",
    "ggml.padding_token_id": "pad_token_id",
    "ggml.add_space_prefix": "add_prefix_space",
}


def gguf_tokenizer(path: str):
    """A transformers fast tokenizer built from the GGUF vocabulary (no torch needed)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    reader = _reader(path)
    arch = _architecture(reader)
    spec = {name: _field(reader, f"tokenizer.{key}") for key, name in _TOKENIZER_KEYS.items()
            if f"tokenizer.{key}" in reader.fields}
    backend, _ = convert_gguf_tokenizer(arch, spec)
    tokens = spec["tokens"]

    def token(key: str) -> str | None:
        index = spec.get(key)
        return None if index is None else tokens[index]

    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=token("bos_token_id"), eos_token=token("eos_token_id"),
        unk_token=token("unk_token_id"), pad_token=token("pad_token_id"),
        add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", True)),
        add_eos_token=bool(_field(reader, "tokenizer.ggml.add_eos_token", False)),
    )
