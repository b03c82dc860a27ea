"""The decoder for Qwen2, Qwen3 and Gemma3 as one pure Flax linen module.

    logits, cache = Decoder(config, scorer=scorer).apply({"params": params}, tokens, positions, cache, gates)

tokens [B, T] int32; positions [B, T] int32 with -1 for padding; cache a KV cache pytree (see
`gatekv_jax.kv.cache`) or None (then each call attends only within its own tokens). Masks come
from positions, so batches may mix lengths and padding may sit anywhere.

The decoder knows nothing of eviction: with a cache, each layer appends its new keys and values
and asks the injected `scorer` (any hashable object with the three `CacheScorer` methods, e.g.
`gatekv_jax.kv.scorers.ScorerSpec`) for the score of every slot. `gates` holds per-layer scorer
parameters (`{"layer_<i>": ...}`, the Fast KVzip gates) handed to the scorer unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.models import layers
from gatekv_jax.models.config import ModelConfig, RopeConfig
from gatekv_jax.models.layers import MLP, Einsum, RMSNorm, apply_rope
from gatekv_jax.utils.sharding import constrain

# Cache slots per block when a chunk of several tokens attends without forming its weights.
ATTENTION_BLOCK = 512


class AttentionStep(NamedTuple):
    """What one attention call over a cache saw, for scorers that rescore the cache after it."""

    weights: jax.Array | None  # [B, K, T, G, S] float32 softmax weights; None unless the scorer asked for them
    queries: jax.Array  # [B, T, N, H] before RoPE (after any query norm)
    positions: jax.Array  # [B, T] query positions, -1 = padding
    rope: RopeConfig  # the layer's rotary embedding
    scale: float  # the softmax scale of the query-key dot


class CacheScorer(Protocol):
    """What the decoder asks of a scorer when it writes to a cache (see `gatekv_jax.kv.scorers`)."""

    def new_token_scores(self, layer: int, sliding: bool, hidden: jax.Array, positions: jax.Array,
                         num_kv_heads: int, layer_params: Any) -> jax.Array:
        """Scores [B, T, K] of the tokens being appended (hidden [B, T, D] is the attention input)."""

    def updated_scores(self, sliding: bool, cache: Any, step: AttentionStep) -> jax.Array:
        """Slot scores [B, K, S] of the layer's cache (new tokens appended) after attention `step`."""

    def needs_attention_weights(self, sliding: bool) -> bool:
        """Whether `updated_scores` reads `step.weights` (else the layer may attend without forming them)."""


class Attention(nn.Module):
    config: ModelConfig
    layer: int
    dtype: Any = jnp.float32
    scorer: CacheScorer | None = None

    def setup(self):
        c = self.config
        D, N, K, H = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        bias = c.qkv_bias
        self.q_proj = Einsum("BTD,DNH->BTNH", (D, N, H), ("embed", "q_heads", "head_dim"),
                             (N, H) if bias else None, ("q_heads", "head_dim"), dtype=self.dtype)
        self.k_proj = Einsum("BTD,DKH->BTKH", (D, K, H), ("embed", "kv_heads", "head_dim"),
                             (K, H) if bias else None, ("kv_heads", "head_dim"), dtype=self.dtype)
        self.v_proj = Einsum("BTD,DKH->BTKH", (D, K, H), ("embed", "kv_heads", "head_dim"),
                             (K, H) if bias else None, ("kv_heads", "head_dim"), dtype=self.dtype)
        self.o_proj = Einsum("BKTGH,KGHD->BTD", (N, H, D), ("q_heads", "head_dim", "embed"),
                             (D,) if c.output_bias else None, ("embed",), dtype=self.dtype,
                             kernel_view=(K, N // K, H, D))
        if c.qk_norm:
            norm = dict(eps=c.rms_norm_eps, axis_name="head_dim", weight_offset=c.norm_weight_offset,
                        dtype=self.dtype)
            self.q_norm = RMSNorm(**norm)
            self.k_norm = RMSNorm(**norm)

    def __call__(self, x: jax.Array, positions: jax.Array, cache: Any,
                 layer_params: Any = None) -> tuple[jax.Array, Any]:
        c = self.config
        sliding = c.is_sliding(self.layer)
        if not sliding:  # the Fast KVzip gate's input; collected with mutable=["intermediates"]
            self.sow("intermediates", "attention_input", x)
        rope = c.rope_of(self.layer)
        queries = self.q_proj(x)  # [B, T, N, H]
        keys = self.k_proj(x)  # [B, T, K, H]
        values = self.v_proj(x)  # [B, T, K, H]
        if c.qk_norm:
            queries, keys = self.q_norm(queries), self.k_norm(keys)
        unrotated_queries = queries
        queries = apply_rope(queries, positions, rope)
        keys = apply_rope(keys, positions, rope)
        if cache is None:
            all_keys = keys.transpose(0, 2, 1, 3)  # [B, K, S=T, H]
            all_values = values.transpose(0, 2, 1, 3)
            key_positions = jnp.broadcast_to(positions[:, None, :], all_keys.shape[:3])  # [B, K, S]
        else:
            if self.scorer is None:
                scores = jnp.zeros(positions.shape + (c.num_kv_heads,), jnp.float32)  # [B, T, K]
            else:
                scores = self.scorer.new_token_scores(self.layer, sliding, x, positions, c.num_kv_heads,
                                                      layer_params)  # [B, T, K]
            cache = cache.append(keys, values, positions, scores)
            all_keys, all_values, key_positions = cache.keys, cache.values, cache.positions
        window = c.window_of(self.layer)
        needs_weights = self.scorer is not None and self.scorer.needs_attention_weights(sliding)
        if cache is not None and positions.shape[1] > 1 and cache.capacity > ATTENTION_BLOCK and not needs_weights:
            weights = None  # a chunk over a long buffer: blocks of filled slots only (see blocked_attention)
            out = layers.blocked_attention(queries, all_keys, all_values, positions, key_positions, cache.lengths,
                                           window, scale=c.query_scale, block=ATTENTION_BLOCK)  # [B, K, T, G, H]
        else:
            mask = layers.attention_mask(positions, key_positions, window)  # [B, K, T, S]
            weights = layers.attention_weights(queries, all_keys, mask, scale=c.query_scale)  # [B, K, T, G, S]
            out = layers.attend(weights, all_values)  # [B, K, T, G, H]
        if cache is not None and self.scorer is not None:
            step = AttentionStep(weights, unrotated_queries, positions, rope, c.query_scale)
            cache = cache.replace(scores=self.scorer.updated_scores(sliding, cache, step))
        return self.o_proj(out), cache  # [B, T, D]


class DecoderLayer(nn.Module):
    config: ModelConfig
    layer: int
    dtype: Any = jnp.float32
    scorer: CacheScorer | None = None

    def setup(self):
        c = self.config
        norm = dict(eps=c.rms_norm_eps, axis_name="embed", weight_offset=c.norm_weight_offset, dtype=self.dtype)
        self.input_layernorm = RMSNorm(**norm)
        self.self_attn = Attention(c, self.layer, dtype=self.dtype, scorer=self.scorer)
        self.post_attention_layernorm = RMSNorm(**norm)
        if c.sandwich_norms:
            self.pre_feedforward_layernorm = RMSNorm(**norm)
            self.post_feedforward_layernorm = RMSNorm(**norm)
        self.mlp = MLP(c.hidden_size, c.intermediate_size, c.activation, dtype=self.dtype)

    def __call__(self, x: jax.Array, positions: jax.Array, cache: Any,
                 layer_params: Any = None) -> tuple[jax.Array, Any]:
        attn_out, cache = self.self_attn(self.input_layernorm(x), positions, cache, layer_params)  # [B, T, D]
        if self.config.sandwich_norms:  # Gemma: norm after attention, norms around the MLP
            x = x + self.post_attention_layernorm(attn_out)
            x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        else:  # Qwen: "post_attention_layernorm" is the pre-MLP norm
            x = x + attn_out
            x = x + self.mlp(self.post_attention_layernorm(x))
        return constrain(x, ("batch", "seq", "embed")), cache


class Decoder(nn.Module):
    """Token ids and positions in; float32 logits and the updated cache out."""

    config: ModelConfig
    dtype: Any = jnp.float32
    scorer: CacheScorer | None = None

    def setup(self):
        c = self.config
        embed_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed"))
        self.embed_tokens = self.param("embed_tokens", embed_init, (c.vocab_size, c.hidden_size), self.dtype)
        self.layers = [DecoderLayer(c, i, dtype=self.dtype, scorer=self.scorer) for i in range(c.num_layers)]
        self.norm = RMSNorm(c.rms_norm_eps, "embed", c.norm_weight_offset, dtype=self.dtype)
        if not c.tie_word_embeddings:
            head_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "vocab"))
            self.lm_head = self.param("lm_head", head_init, (c.hidden_size, c.vocab_size), self.dtype)

    def __call__(self, tokens: jax.Array, positions: jax.Array, cache: Any = None,
                 gates: dict | None = None) -> tuple[jax.Array, Any]:
        hidden, cache = self.hidden_states(tokens, positions, cache, gates)
        return self.logits(hidden), cache

    def hidden_states(self, tokens: jax.Array, positions: jax.Array, cache: Any = None,
                      gates: dict | None = None) -> tuple[jax.Array, Any]:
        """The final-norm hidden states [B, T, D] and the updated cache."""
        c = self.config
        if cache is not None and len(cache.layers) != c.num_layers:
            raise ValueError(f"cache has {len(cache.layers)} layers, the model {c.num_layers}")
        x = jnp.take(self.embed_tokens, tokens, axis=0)  # [B, T, D]
        if c.embed_scale is not None:
            x = x * jnp.asarray(np.float32(c.embed_scale), self.dtype)
        x = constrain(x, ("batch", "seq", "embed"))
        new_layers = []
        for i, layer in enumerate(self.layers):
            layer_params = None if gates is None else gates.get(f"layer_{i}")
            x, layer_cache = layer(x, positions, None if cache is None else cache.layers[i], layer_params)
            new_layers.append(layer_cache)
        cache = None if cache is None else cache.replace(layers=tuple(new_layers))
        return self.norm(x), cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [B, T, D] -> float32 logits [B, T, V] (tied or separate head, optional soft-capping)."""
        c = self.config
        if c.tie_word_embeddings:
            logits = jnp.einsum("BTD,VD->BTV", hidden, self.embed_tokens, preferred_element_type=jnp.float32)
        else:
            logits = jnp.einsum("BTD,DV->BTV", hidden, self.lm_head, preferred_element_type=jnp.float32)
        if c.final_logit_softcap is not None:
            logits = jnp.tanh(logits / c.final_logit_softcap) * c.final_logit_softcap
        return constrain(logits, ("batch", "seq", "vocab"))
