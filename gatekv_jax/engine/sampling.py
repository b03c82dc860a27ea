"""Sampling settings: static (a jit compile key), so greedy decoding pays nothing for top-p."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is drawn: greedy when `temperature` is 0, else from the softmax at
    `temperature`, restricted to the nucleus of mass `top_p` when `top_p` < 1."""

    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) \
                or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

    def __call__(self, logits: jax.Array, key: jax.Array) -> jax.Array:
        """Next tokens [B] int32 from logits [B, V]."""
        if self.temperature == 0:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        scaled = logits / self.temperature
        if self.top_p < 1:
            sorted_logits = -jnp.sort(-scaled, axis=-1)  # [B, V] descending
            cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
            cutoff = jnp.sum(cumulative < self.top_p, axis=-1, keepdims=True)  # tokens needed to reach top_p
            threshold = jnp.take_along_axis(sorted_logits, jnp.minimum(cutoff, logits.shape[-1] - 1), axis=-1)
            scaled = jnp.where(scaled >= threshold, scaled, -jnp.inf)
        return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
