"""Host-side input preparation: token checks, ragged batches, padded positions, chunk layouts."""

from __future__ import annotations

from typing import Any

import numpy as np


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `value`."""
    return -(-value // multiple) * multiple


def check_tokens(tokens: Any, vocab_size: int) -> np.ndarray:
    """Validate token ids on the host: int32 [B, T] within the vocabulary."""
    array = np.asarray(tokens)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"tokens must have shape [batch, length] with both > 0, got {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {array.dtype}")
    bad = array[(array < 0) | (array >= vocab_size)]
    if bad.size:
        raise ValueError(f"token id {int(bad[0])} is outside the vocabulary [0, {vocab_size})")
    return array.astype(np.int32)


def padded_positions(batch: int, length: int, lengths: Any = None) -> np.ndarray:
    """Positions [B, T] = 0..T-1 per row, -1 past each row's length (right padding)."""
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy()
    if lengths is None:
        return positions
    lengths = np.asarray(lengths)
    if lengths.shape != (batch,) or (lengths < 1).any() or (lengths > length).any():
        raise ValueError(f"lengths must be {batch} values in [1, {length}], got {lengths.tolist()}")
    positions[positions >= lengths[:, None]] = -1
    return positions


def as_batch(tokens: Any, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids as a right-padded int32 array [B, T] and lengths [B] (accepts ragged lists)."""
    if isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], (list, tuple, np.ndarray)):
        rows = [np.asarray(row) for row in tokens]
        if any(row.ndim != 1 or row.size == 0 for row in rows):
            raise ValueError("every row of tokens must be a non-empty 1-D sequence")
        padded = np.zeros((len(rows), max(row.size for row in rows)), np.int64)
        for i, row in enumerate(rows):
            padded[i, :row.size] = row
        lengths = np.array([row.size for row in rows], np.int32)
        check_tokens(np.concatenate(rows)[None], vocab_size)
        return padded.astype(np.int32), lengths
    array = check_tokens(tokens, vocab_size)
    return array, np.full(array.shape[0], array.shape[1], np.int32)


def chunk_layout(tokens: np.ndarray, lengths: np.ndarray, chunk: int,
                 start: Any = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tokens [B, T] cut for `chunk`-token steps: `(padded tokens [B, C*chunk], positions [B, C*chunk])`
    with C = ceil(T / chunk); row b's tokens sit at positions start[b] + 0..lengths[b]-1, -1 after."""
    batch, length = tokens.shape
    width = round_up(length, chunk)
    padded = np.zeros((batch, width), np.int32)
    padded[:, :length] = tokens
    offsets = np.arange(width, dtype=np.int32)[None]  # [1, C*chunk]
    starts = np.broadcast_to(np.asarray(start, np.int32), (batch,))[:, None]
    positions = np.where(offsets < np.asarray(lengths)[:, None], starts + offsets, -1).astype(np.int32)
    return padded, positions
