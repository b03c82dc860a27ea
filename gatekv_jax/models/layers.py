"""Building blocks of the decoders: projections, RMSNorm, RoPE, masked attention, MLP.

Axis legend (used in every einsum and shape comment):
  B batch, T query length, S cache slots, D width, N query heads, K KV heads, G group (N // K),
  H head dim, F MLP width, V vocab, L layers.

Numerics: RMSNorm, RoPE and softmax run in float32 whatever the parameter dtype.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gatekv_jax.models.config import RopeConfig

# Large negative logit for masked keys: finite so fully masked rows never produce NaN.
MASKED_LOGIT = -1e30


class Einsum(nn.Module):
    """A projection `einsum(equation, x, kernel)` with a logically named kernel (and optional bias)."""

    equation: str
    kernel_shape: Sequence[int]
    kernel_axes: Sequence[str]
    bias_shape: Sequence[int] | None = None
    bias_axes: Sequence[str] | None = None
    dtype: Any = jnp.float32
    kernel_view: Sequence[int] | None = None  # the kernel reshaped to this for the einsum (a free view)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.with_logical_partitioning(nn.initializers.normal(0.02), tuple(self.kernel_axes))
        kernel = self.param("kernel", init, tuple(self.kernel_shape), self.dtype)
        if self.kernel_view is not None:
            kernel = kernel.reshape(self.kernel_view)
        y = jnp.einsum(self.equation, x, kernel)
        if self.bias_shape is not None:
            bias_init = nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.bias_axes))
            y = y + self.param("bias", bias_init, tuple(self.bias_shape), self.dtype)
        return y


class RMSNorm(nn.Module):
    """RMSNorm over the last axis in float32; scales by `weight_offset + w` (Gemma uses offset 1)."""

    eps: float
    axis_name: str
    weight_offset: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init_value = 1.0 - self.weight_offset
        init = nn.with_logical_partitioning(nn.initializers.constant(init_value), (self.axis_name,))
        weight = self.param("weight", init, (x.shape[-1],), self.dtype)
        normed = rms_normalize(x.astype(jnp.float32), self.eps)
        return (normed * (self.weight_offset + weight.astype(jnp.float32))).astype(x.dtype)


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
    """`x / rms(x)` over the last axis (no scale); callers pass float32."""
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def apply_rope(x: jax.Array, positions: jax.Array, rope: RopeConfig) -> jax.Array:
    """Rotate `x` [B, T, heads, H] by `positions` [B, T] (rotate-half convention), in float32."""
    head_dim = x.shape[-1]
    inv_freq, attention_scaling = rope.inverse_frequencies(head_dim)  # [H/2]
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, H]
    cos = jnp.cos(angles) * attention_scaling
    sin = jnp.sin(angles) * attention_scaling
    x32 = x.astype(jnp.float32)
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    """[x1, x2] -> [-x2, x1] over the last axis: RoPE at position p is `x cos(p f) + rotate_half(x) sin(p f)`."""
    first, second = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-second, first], axis=-1)


def mean_rotation(rope: RopeConfig, head_dim: int, starts: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """The RoPE rotation averaged over positions `starts` [B] .. `starts + count - 1`, as the
    `(cos, sin)` [B, H] of `x cos + rotate_half(x) sin` (a mean of rotations is not a rotation)."""
    inv_freq, attention_scaling = rope.inverse_frequencies(head_dim)  # [H/2]
    offsets = starts.astype(jnp.float32)[:, None] + jnp.arange(count, dtype=jnp.float32)  # [B, count]
    angles = offsets[..., None] * jnp.asarray(inv_freq)  # [B, count, H/2]
    cos = jnp.cos(angles).mean(axis=1) * attention_scaling  # [B, H/2]
    sin = jnp.sin(angles).mean(axis=1) * attention_scaling
    return jnp.concatenate([cos, cos], axis=-1), jnp.concatenate([sin, sin], axis=-1)


def attention_mask(query_positions: jax.Array, key_positions: jax.Array, window: int | None) -> jax.Array:
    """Which keys each query sees, from stored positions only.

    query_positions [B, T], key_positions [B, K, S] (-1 = empty slot or padding) -> bool [B, K, T, S]:
    a key is visible when both positions are valid, it is not in the future, and (for a sliding
    window) `q_pos - k_pos < window`.
    """
    q = query_positions[:, None, :, None]  # [B, 1, T, 1]
    k = key_positions[:, :, None, :]  # [B, K, 1, S]
    visible = (q >= 0) & (k >= 0) & (k <= q)
    if window is not None:
        visible &= (q - k) < window
    return visible


def attention_weights(queries: jax.Array, keys: jax.Array, mask: jax.Array, *, scale: float) -> jax.Array:
    """Softmax attention weights in float32.

    queries [B, T, N, H], keys [B, K, S, H], mask [B, K, T, S] -> weights [B, K, T, G, S]; rows with
    no visible key are all zeros. Queries keep their (T, G) order: the QK dot then reads them as they
    come from the projection (a [G, T] order cost a strided transpose of q per layer in prefill).
    """
    batch, length, num_heads, head_dim = queries.shape
    num_kv_heads = keys.shape[1]
    grouped = queries.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)  # [B,T,K,G,H]
    logits = jnp.einsum("BTKGH,BKSH->BKTGS", grouped, keys, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask[:, :, :, None], logits, MASKED_LOGIT)  # [B, K, T, G, S]
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.where(mask.any(axis=-1)[:, :, :, None, None], weights, 0.0)


def attend(weights: jax.Array, values: jax.Array) -> jax.Array:
    """weights [B, K, T, G, S], values [B, K, S, H] -> outputs [B, K, T, G, H].

    The outputs stay in the dot's own axis order: the output projection contracts them as they are
    ("BKTGH,KGHD->BTD"); a [B, T, N, H] layout made XLA transpose the projection's kernel every call."""
    return jnp.einsum("BKTGS,BKSH->BKTGH", weights.astype(values.dtype), values)


def blocked_attention(queries: jax.Array, keys: jax.Array, values: jax.Array, query_positions: jax.Array,
                      key_positions: jax.Array, filled: jax.Array, window: int | None, *, scale: float,
                      block: int) -> jax.Array:
    """The outputs of `attend(attention_weights(...), values)` without the weights: an online softmax over
    blocks of `block` slots, reading only the blocks that hold a filled slot.

    queries [B, T, N, H], keys / values [B, K, S, H], query_positions [B, T], key_positions [B, K, S],
    filled [B, K] (filled slots sit at the front of the buffer) -> outputs [B, K, T, G, H]. In a prefill
    chunk most of a long buffer is still empty, and the [T, G, block] pieces stay in cache where a
    [T, G, S] softmax does not. The last block may overlap the one before it (S not a multiple of
    `block`); slots counted already are masked there.
    """
    batch, length, num_heads, head_dim = queries.shape
    num_kv_heads, slots = keys.shape[1], keys.shape[2]
    group = num_heads // num_kv_heads
    block = min(block, slots)
    grouped = queries.reshape(batch, length, num_kv_heads, group, head_dim)  # [B, T, K, G, H]
    num_blocks = (jnp.max(filled) + block - 1) // block

    def one_block(index, carry):
        running_max, total, outputs = carry  # [B, K, T, G], [B, K, T, G], [B, K, T, G, H] float32
        start = jnp.minimum(index * block, slots - block)
        block_keys = jax.lax.dynamic_slice_in_dim(keys, start, block, axis=2)  # [B, K, block, H]
        block_values = jax.lax.dynamic_slice_in_dim(values, start, block, axis=2)
        block_positions = jax.lax.dynamic_slice_in_dim(key_positions, start, block, axis=2)  # [B, K, block]
        new_slots = start + jnp.arange(block) >= index * block  # [block] False where the blocks overlap
        mask = attention_mask(query_positions, block_positions, window) & new_slots  # [B, K, T, block]
        logits = jnp.einsum("BTKGH,BKSH->BKTGS", grouped, block_keys, preferred_element_type=jnp.float32) * scale
        logits = jnp.where(mask[:, :, :, None], logits, MASKED_LOGIT)  # [B, K, T, G, block]
        new_max = jnp.maximum(running_max, logits.max(axis=-1))
        weights = jnp.exp(logits - new_max[..., None])
        rescale = jnp.exp(running_max - new_max)
        total = total * rescale + weights.sum(axis=-1)
        block_outputs = jnp.einsum("BKTGS,BKSH->BKTGH", weights.astype(values.dtype), block_values,
                                   preferred_element_type=jnp.float32)
        return new_max, total, outputs * rescale[..., None] + block_outputs

    shape = (batch, num_kv_heads, length, group)
    init = (jnp.full(shape, MASKED_LOGIT, jnp.float32), jnp.zeros(shape, jnp.float32),
            jnp.zeros(shape + (head_dim,), jnp.float32))
    running_max, total, outputs = jax.lax.fori_loop(0, num_blocks, one_block, init)
    sees_a_key = running_max > MASKED_LOGIT / 2  # rows with no visible key get zeros, as in attention_weights
    outputs = jnp.where(sees_a_key[..., None], outputs / jnp.maximum(total, 1e-30)[..., None], 0.0)
    return outputs.astype(values.dtype)


class MLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x))."""

    hidden_size: int
    intermediate_size: int
    activation: str
    dtype: Any = jnp.float32

    def setup(self):
        D, F = self.hidden_size, self.intermediate_size
        self.gate_proj = Einsum("BTD,DF->BTF", (D, F), ("embed", "mlp"), dtype=self.dtype)
        self.up_proj = Einsum("BTD,DF->BTF", (D, F), ("embed", "mlp"), dtype=self.dtype)
        self.down_proj = Einsum("BTF,FD->BTD", (F, D), ("mlp", "embed"), dtype=self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = self.gate_proj(x)  # [B, T, F]
        if self.activation == "gelu_tanh":
            gate = jax.nn.gelu(gate, approximate=True)
        else:
            gate = jax.nn.silu(gate)
        return self.down_proj(gate * self.up_proj(x))  # [B, T, D]

