"""Checkpoint tensors -> the decoder's parameter dict, through one declarative name table.

`HF_TO_PARAMS`: a regex on the transformers name -> the parameter path and how to lay the tensor
out. Every tensor's shape is checked against the decoder's own parameter shapes; a tensor no rule
maps, or a parameter no tensor fills, is an error. Nothing here imports torch.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gatekv_jax.models.config import ModelConfig
from gatekv_jax.models.decoder import Decoder
from gatekv_jax.utils.sharding import LOGICAL_RULES, tree_shardings

# (regex on the HF name, parameter path template, layout). Layout "keep" copies the tensor;
# ("linear", n) takes a torch Linear weight [out, in], transposes it and splits it into the
# parameter's shape, whose first n dims are the input.
_LAYER = r"model\.layers\.(\d+)\."
HF_TO_PARAMS: tuple[tuple[str, tuple[str, ...], Any], ...] = (
    (r"model\.embed_tokens\.weight", ("embed_tokens",), "keep"),
    (r"lm_head\.weight", ("lm_head",), ("linear", 1)),
    (r"model\.norm\.weight", ("norm", "weight"), "keep"),
    (_LAYER + r"(input_layernorm|post_attention_layernorm|pre_feedforward_layernorm|post_feedforward_layernorm)"
     r"\.weight", ("layers_{0}", "{1}", "weight"), "keep"),
    (_LAYER + r"self_attn\.(q_proj|k_proj|v_proj)\.weight", ("layers_{0}", "self_attn", "{1}", "kernel"),
     ("linear", 1)),
    (_LAYER + r"self_attn\.o_proj\.weight", ("layers_{0}", "self_attn", "o_proj", "kernel"), ("linear", 2)),
    (_LAYER + r"self_attn\.(q_proj|k_proj|v_proj|o_proj)\.bias", ("layers_{0}", "self_attn", "{1}", "bias"),
     "flat"),
    (_LAYER + r"self_attn\.(q_norm|k_norm)\.weight", ("layers_{0}", "self_attn", "{1}", "weight"), "keep"),
    (_LAYER + r"mlp\.(gate_proj|up_proj)\.weight", ("layers_{0}", "mlp", "{1}", "kernel"), ("linear", 1)),
    (_LAYER + r"mlp\.down_proj\.weight", ("layers_{0}", "mlp", "down_proj", "kernel"), ("linear", 1)),
)
# Multimodal Gemma3 checkpoints nest the text model; these prefixes are renamed to the text names.
_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
             ("language_model.lm_head.", "lm_head."))
# Tensors that belong to other parts of a checkpoint and are deliberately not loaded.
_IGNORED = re.compile(r"^(model\.)?(vision_tower|multi_modal_projector)\.|rotary_emb\.inv_freq$")


def abstract_params(config: ModelConfig, dtype: Any = jnp.float32) -> tuple[dict, dict]:
    """`(shapes, logical axes)` of the decoder's parameters, without allocating them."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    boxed = jax.eval_shape(lambda: Decoder(config, dtype=dtype).init(jax.random.key(0), tokens, tokens))
    return nn.unbox(boxed)["params"], nn.get_partition_spec(boxed)["params"]


def init_params(config: ModelConfig, seed: int = 0, dtype: Any = jnp.float32) -> dict:
    """Random parameters (for tests and smoke runs)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    return nn.unbox(Decoder(config, dtype=dtype).init(jax.random.key(seed), tokens, tokens))["params"]


def _normalise_name(name: str) -> str:
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _convert(name: str, array: np.ndarray, shapes: dict) -> tuple[tuple[str, ...], np.ndarray] | None:
    """Map one checkpoint tensor to `(param path, array in param layout)`; None if deliberately skipped."""
    for pattern, template, layout in HF_TO_PARAMS:
        match = re.fullmatch(pattern, name)
        if not match:
            continue
        path = tuple(part.format(*match.groups()) for part in template)
        target = _get(shapes, path)
        if target is None:
            raise ValueError(f"checkpoint tensor {name!r} maps to {'/'.join(path)}, which this model has not")
        shape = tuple(target.shape)
        if layout == "keep":
            expected = shape
        elif layout == "flat":
            expected = (int(np.prod(shape)),)
        else:
            n_in = layout[1]
            expected = (int(np.prod(shape[n_in:])), int(np.prod(shape[:n_in])))
        if tuple(array.shape) != expected:
            raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(array.shape)}, expected {expected}")
        if layout == "flat":
            array = array.reshape(shape)
        elif layout != "keep":
            array = array.T.reshape(shape)
        return path, array
    raise ValueError(f"checkpoint tensor {name!r} is not mapped to any parameter")


def params_from_tensors(config: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]],
                        dtype: Any = jnp.float32, mesh: Mesh | None = None,
                        rules=LOGICAL_RULES) -> dict:
    """Build the parameter dict from `(HF name, array)` pairs, placing each on `mesh` if given."""
    shapes, axes = abstract_params(config, dtype)
    shardings = tree_shardings(axes, shapes, mesh, rules) if mesh is not None else None
    params: dict = {}
    for raw_name, array in tensors:
        name = _normalise_name(raw_name)
        if _IGNORED.search(name) or (config.tie_word_embeddings and name == "lm_head.weight"):
            continue
        path, array = _convert(name, np.asarray(array), shapes)
        if _get(params, path) is not None:
            raise ValueError(f"checkpoint tensor {raw_name!r} fills {'/'.join(path)} a second time")
        value = jnp.asarray(array, dtype) if shardings is None else jax.device_put(
            np.asarray(array).astype(jnp.dtype(dtype)), _get(shardings, path))
        _set(params, path, value)
    missing = ["/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]
               if _get(params, tuple(str(k.key) for k in path)) is None]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} parameters, e.g. {missing[:5]}")
    return params
