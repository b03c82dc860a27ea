"""The KVzip teacher: how much the model needs each context KV pair to repeat the context.

For a context c (after a protected prefix: system prompt / chat template start), forward only:
1. prefill `prefix ++ c` with the full cache, keeping the attention inputs of the gated layers;
2. for each `chunk`-token piece c_i, run a "repeat" input over the cached context:
     i = 0:  "\\n\\nRepeat the previous context exactly." ++ assistant prefix ++ c_0
     i > 0:  "\\n\\nRepeat the part of the previous context exactly, starting with " ++ last 8
             tokens of c_{i-1} ++ assistant prefix ++ c_i
   where the repeat queries see only [prefix keys; keys of c_i; repeat keys (causal)];
3. the score of a context token is the max, over repeat positions and the G query heads of its KV
   head, of its softmax attention weight. Nothing of the repeat pass is kept.
Result: scores [B, L_gated, K, n] in [0, 1] and attention inputs [B, L_gated, n, D]
(`teacher_features`: the same per row, for the rows this process writes in a multi-process run).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.engine.inputs import chunk_layout, round_up
from gatekv_jax.kv.cache import KVCache, init_cache
from gatekv_jax.kv.scorers import ScorerSpec
from gatekv_jax.models.config import ModelConfig
from gatekv_jax.models.decoder import Decoder
from gatekv_jax.models.loading import Model
from gatekv_jax.utils.distributed import global_array, owned_rows
from gatekv_jax.utils.sharding import constrain

FIRST_REPEAT = "\n\nRepeat the previous context exactly."
NEXT_REPEAT = "\n\nRepeat the part of the previous context exactly, starting with "
OVERLAP_TOKENS = 8
TEACHER_CHUNK = 2000
PREFILL_CHUNK = 512

# (protected prefix before the context, assistant prefix after the repeat instruction) per family.
CHAT_TEMPLATES = {
    "qwen2": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
              "<|im_end|>\n<|im_start|>assistant\n"),
    "qwen3": ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"),
    "gemma3": ("<bos><start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n"),
}


@dataclasses.dataclass(frozen=True)
class RepeatPrompts:
    """Token ids of the teacher's prompts (tuples, so the value is hashable)."""

    prefix: tuple[int, ...]
    first: tuple[int, ...]
    next_head: tuple[int, ...]
    assistant: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer, model_type: str) -> "RepeatPrompts":
        if model_type not in CHAT_TEMPLATES:
            raise ValueError(f"no KVzip chat template for model_type {model_type!r}")
        prefix, assistant = CHAT_TEMPLATES[model_type]

        def ids(text):
            return tuple(tokenizer(text, add_special_tokens=False).input_ids)

        return cls(prefix=ids(prefix), first=ids(FIRST_REPEAT), next_head=ids(NEXT_REPEAT), assistant=ids(assistant))

    def repeat_input(self, context: np.ndarray, index: int, chunk: int) -> np.ndarray:
        """Repeat tokens [B, R_i] for piece `index` of context [B, n]."""
        piece = context[:, index * chunk:(index + 1) * chunk]
        if index == 0:
            head = np.tile(np.array(self.first, np.int32), (len(context), 1))
        else:
            overlap = context[:, index * chunk - OVERLAP_TOKENS:index * chunk]
            head = np.concatenate([np.tile(np.array(self.next_head, np.int32), (len(context), 1)), overlap], axis=1)
        assistant = np.tile(np.array(self.assistant, np.int32), (len(context), 1))
        return np.concatenate([head, assistant, piece], axis=1).astype(np.int32)

    def max_repeat_length(self, chunk: int) -> int:
        return max(len(self.first), len(self.next_head) + OVERLAP_TOKENS) + len(self.assistant) + chunk


@functools.partial(jax.jit, static_argnames=("config", "dtype"), donate_argnames=("cache",))
def _prefill_step(params: dict, cache: KVCache, tokens: jax.Array, positions: jax.Array, *, config: ModelConfig,
                  dtype: Any) -> tuple[KVCache, jax.Array]:
    """Full-cache prefill of one chunk: `(cache, attention inputs of gated layers [Lg, B, T, D])`."""
    (_, cache), state = Decoder(config, dtype=dtype, scorer=ScorerSpec()).apply(
        {"params": params}, tokens, positions, cache, method=Decoder.hidden_states, mutable=["intermediates"])
    inputs = [state["intermediates"][f"layers_{i}"]["self_attn"]["attention_input"][0]
              for i in config.full_attention_layers]
    return cache, constrain(jnp.stack(inputs), (None, "batch", None, None))  # whole rows per device


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def _repeat_step(params: dict, cache: KVCache, tokens: jax.Array, positions: jax.Array, prefix_length: jax.Array,
                 low: jax.Array, high: jax.Array, *, config: ModelConfig, dtype: Any) -> jax.Array:
    """Scores [Lg, B, K, S]: max attention of the repeat queries on each slot, keys restricted to
    the prefix and [low, high)."""
    def view(layer):
        p = layer.positions
        visible = (p < prefix_length) | ((p >= low) & (p < high))
        return layer.replace(positions=jnp.where(visible, p, -1), scores=jnp.zeros_like(layer.scores))

    restricted = cache.replace(layers=tuple(view(layer) for layer in cache.layers))
    _, scored = Decoder(config, dtype=dtype, scorer=ScorerSpec("kvzip")).apply(
        {"params": params}, tokens, positions, restricted, method=Decoder.hidden_states)
    scores = jnp.stack([scored.layers[i].scores for i in config.full_attention_layers])
    return constrain(scores, (None, "batch", None, None))  # whole rows per device


def teacher_features(model: Model, context: Any, prompts: RepeatPrompts, chunk: int = TEACHER_CHUNK,
                     prefill_chunk: int = PREFILL_CHUNK) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """`{row: (KVzip scores [Lg, K, n], gated-layer attention inputs [Lg, n, D])}` for contexts
    [B, n] (every process passes the same batch), for the rows this process writes.

    All rows share one length n. The prefix (`prompts.prefix`) is prepended and never scored. On a
    model with a mesh the batch is sharded over the mesh's batch axes (over processes too), and
    each row comes back, as float32 host arrays, on exactly one process (`owned_rows`).
    """
    context = np.asarray(context, np.int32)
    if context.ndim != 2 or context.shape[1] == 0:
        raise ValueError(f"context must be [batch, length] token ids, got shape {context.shape}")
    config = model.config
    if not config.full_attention_layers:
        raise ValueError("the model has no full-attention layer to score")
    batch, n = context.shape
    prefix = np.tile(np.array(prompts.prefix, np.int32), (batch, 1))
    P = prefix.shape[1]
    tokens = np.concatenate([prefix, context], axis=1)
    total = P + n
    repeat_length = round_up(prompts.max_repeat_length(chunk), 128)
    capacity = round_up(total, prefill_chunk) + repeat_length
    cache = model.run(init_cache, config, batch, capacity, model.dtype)
    static = dict(config=config, dtype=jnp.dtype(model.dtype))

    def rows_of(x: np.ndarray) -> Any:  # [B, T] host tokens or positions -> the step's input
        return x if model.mesh is None else global_array(x, model.mesh, ("batch", None))

    padded, positions = chunk_layout(tokens, np.full(batch, total), prefill_chunk)
    inputs: dict[int, list[np.ndarray]] = {}
    for start in range(0, total, prefill_chunk):
        piece = slice(start, start + prefill_chunk)
        cache, layer_inputs = model.run(_prefill_step, model.params, cache, rows_of(padded[:, piece]),
                                        rows_of(positions[:, piece]), **static)  # [Lg, B, T, D]
        for row, value in owned_rows(layer_inputs, axis=1).items():
            inputs.setdefault(row, []).append(np.asarray(value[:, :min(prefill_chunk, total - start)], np.float32))
    scores: dict[int, list[np.ndarray]] = {row: [] for row in inputs}
    for index in range(-(-n // chunk)):
        repeat_tokens = prompts.repeat_input(context, index, chunk)
        padded, positions = chunk_layout(repeat_tokens, np.full(batch, repeat_tokens.shape[1]), repeat_length,
                                         start=total)
        low, high = P + index * chunk, P + min(n, (index + 1) * chunk)
        slot_scores = model.run(_repeat_step, model.params, cache, rows_of(padded), rows_of(positions), np.int32(P),
                                np.int32(low), np.int32(high), **static)  # [Lg, B, K, S]
        for row, value in owned_rows(slot_scores, axis=1).items():
            scores[row].append(np.asarray(value[:, :, low:high], np.float32))
    features = {row: (np.concatenate(scores[row], axis=2), np.concatenate(inputs[row], axis=1)[:, P:])
                for row in sorted(inputs)}
    for row, (row_scores, row_inputs) in features.items():
        if not (np.isfinite(row_scores).all() and np.isfinite(row_inputs).all()):
            raise FloatingPointError(f"non-finite teacher scores or attention inputs in row {row}: the model's "
                                     "activations overflow (float16? use bfloat16 or float32)")
    return features


def teacher_scores(model: Model, context: Any, prompts: RepeatPrompts, chunk: int = TEACHER_CHUNK,
                   prefill_chunk: int = PREFILL_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """KVzip scores [B, Lg, K, n] and gated-layer attention inputs [B, Lg, n, D] for contexts [B, n]
    (see `teacher_features`; needs every row on this process, as in a single-process run)."""
    rows = teacher_features(model, context, prompts, chunk, prefill_chunk)
    batch = np.asarray(context).shape[0]
    if sorted(rows) != list(range(batch)):
        raise ValueError("this process holds only some rows of the batch: use teacher_features")
    return np.stack([rows[r][0] for r in range(batch)]), np.stack([rows[r][1] for r in range(batch)])
