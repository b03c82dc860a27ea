"""EvictionPolicy: which scorer ranks KV pairs and how many of them each head keeps."""

from __future__ import annotations

import dataclasses
import math

SCORERS = ("full", "gate", "kvzip", "streaming", "snapkv", "h2o", "random", "keydiff", "knorm", "expected_attention")
LEVELS = ("head", "global", "token")
TOKEN_RANKS = ("score", "quantile", "either")
WINDOW_RULES = ("paper", "scaled")
PAPER_WINDOW = 4096  # the paper's recent window from 16K-token contexts on (and the most "scaled" protects)
PAPER_WINDOW_FROM = 16384
MAX_SLOTS = 2**31 - 1  # positions and slot counts are int32


def default_token_rank(scorer: str) -> str:
    """How level "token" ranks a scorer's tokens unless told: the gate by "either" (the better of its
    score rank and its quantile rank: the strong layers' probabilities and the weak layers' top picks
    both count), the others by quantile."""
    return "either" if scorer == "gate" else "quantile"


def default_window_rule(scorer: str) -> str:
    """How the recent window is sized unless told: "scaled" for the gate (it scores tokens by what
    the whole context needs, so only a window keeps the lines a continuation needs next), the
    paper's rule for the others."""
    return "scaled" if scorer == "gate" else "paper"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class EvictionPolicy:
    """How the cache of full-attention layers is compressed (sliding layers always keep their window).

    scorer: "full" (never evict), "gate" (Fast KVzip), "kvzip" (the teacher as an oracle: the
        whole context is prefilled, scored by the repeat pass, then evicted once), "streaming"
        (sinks + recency), "snapkv" (pooled attention of the last `observation_window` queries),
        "h2o" (accumulated attention), "random", "keydiff" (keys least like the head's mean key),
        "knorm" (low key norm), "expected_attention" (attention expected from future queries times
        the value norm); see `gatekv_jax.kv.scorers`.
    ratio / budget: after prefill each head keeps `ceil(ratio * context length)` or `budget` slots
        (protected window included), the same budget after every chunk; exactly one is set unless
        the scorer is "full".
    window: recent context tokens never evicted during prefill; None = sized by `window_rule`.
    window_rule: "paper" (4,096 tokens, or 2% of a context shorter than 16K) or "scaled" (a share
        of the kept slots that grows with the context: its share of 16K tokens, at most half the
        slots and 4,096 tokens; at 30% kept 74 of 602 slots at 2K, 1,174 of 2,402 at 8K); None =
        "scaled" for the gate and "paper" for every other scorer. The gate scores what the whole
        context needs, not what comes next: on Gemma 3 270M, packaged gates, 30% kept, 8K code
        (docs/results.md), "scaled" cuts plain continuation's NLL increase on library code the
        gates never saw from 5.8% to 1.8% (stdlib 2.2% to 2.1%) for a little recall (2K prose
        closes 89.99% of the streaming-to-full gap against 91.5%) and pass keys (still at least
        the full cache's everywhere).
    sink: first tokens never evicted (the attention sinks); `prefix` more leading tokens (a
        system prompt / template) may be protected per call.
    chunk_size: prefill chunk length; the cache is compressed after every chunk.
    level: "token" (default) keeps the same tokens in every gated layer and head, ranked by each
        token's best rank over them (`token_rank`); "head" keeps the same count in every head, each
        its own top-k; "global" (the paper's) ranks all gated heads of a row against one threshold
        (per-head counts vary, each capped by `global_head_cap` x budget). Decoding-time eviction
        is at level "token" when prefill's is, per head otherwise. "token" is the default because
        it is the best level we have measured: Gemma 3 270M, packaged gates, held-out code, 2K
        tokens, 30% kept: recall NLL 0.458 at "token", 1.328 at "global", 1.504 at "head" (full
        0.336; one eviction after the whole context, docs/results/recall_ablation); in the engine
        "token" closes 78% of the streaming-to-full recall gap and finds 6 of 6 needles, "global"
        0.5% and 2 of 6.
    token_pool: at level "token", each token also takes the best rank of the `token_pool` (odd)
        neighbouring slots around it, so a kept phrase keeps its glue tokens (the space before a
        number); 1 = no pooling.
    token_rank: how level "token" compares one token's scores across gated layers: "score" (the
        scores themselves, for scores on one scale in every layer), "quantile" (each score's rank
        quantile within its head) or "either" (the better of the two: what either ranking puts
        near the top is kept); None = "either" for the gate and "quantile" for every other scorer.
        Measured on Gemma 3 270M, packaged gates, 30% kept, the paper's window (docs/results.md):
        "either" finds as many pass keys as the full cache or more in every cell (8K: 23 of 54
        code keys, full 18, "score" 16; 16 of 36 prose keys, full 11, "score" 11) and ties
        "score" on 8K recall, continuation and decoding; it costs 2K prose a little (recall on
        every held-out context closes 91% of the streaming-to-full gap against 93%, on the first
        10 87% against 90%; pass keys 43 of 60 as "score", full 38, but with a higher key NLL).
    decode_budget: slots per head kept while decoding (None = no eviction while decoding); when a
        block of `decode_block` new slots is full, the cache is evicted back to the budget,
        keeping the last `decode_recent` tokens and the first `sink` tokens.
    max_context: the longest context this policy will see; sizes the cache (one compilation for
        every shorter prompt). None = the prompt length rounded up to a power-of-two of chunks.
    """

    scorer: str = "gate"
    ratio: float | None = None
    budget: int | None = None
    window: int | None = None
    window_rule: str | None = None
    sink: int = 4
    chunk_size: int = 512
    level: str = "token"
    token_pool: int = 3
    token_rank: str | None = None
    observation_window: int = 32
    pool_kernel: int = 7
    decode_budget: int | None = None
    decode_block: int = 128
    decode_recent: int = 128
    global_head_cap: float = 2.0
    max_context: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.scorer not in SCORERS:
            raise ValueError(f"unknown scorer {self.scorer!r}; choose from {SCORERS}")
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r}; choose from {LEVELS}")
        if self.scorer != "full" and (self.ratio is None) == (self.budget is None):
            raise ValueError(f"set exactly one of ratio and budget for scorer {self.scorer!r} "
                             f"(got ratio={self.ratio}, budget={self.budget})")
        if self.ratio is not None and (not _is_number(self.ratio) or not 0.0 < self.ratio <= 1.0):
            raise ValueError(f"ratio must be a number in (0, 1], got {self.ratio!r}")
        for name in ("budget", "window", "decode_budget", "max_context"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or not 0 < value <= MAX_SLOTS):
                raise ValueError(f"{name} must be a positive int or None, got {value!r} (at most {MAX_SLOTS})")
        for name in ("chunk_size", "observation_window", "pool_kernel", "token_pool", "decode_block"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 < value <= MAX_SLOTS:
                raise ValueError(f"{name} must be a positive int, got {value!r} (at most {MAX_SLOTS})")
        for name in ("sink", "decode_recent"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value <= MAX_SLOTS:
                raise ValueError(f"{name} must be a non-negative int, got {value!r} (at most {MAX_SLOTS})")
        if self.token_rank not in (None, *TOKEN_RANKS):
            raise ValueError(f"unknown token_rank {self.token_rank!r}; choose from {TOKEN_RANKS} or None")
        if self.window_rule not in (None, *WINDOW_RULES):
            raise ValueError(f"unknown window_rule {self.window_rule!r}; choose from {WINDOW_RULES} or None")
        for name in ("pool_kernel", "token_pool"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd, got {getattr(self, name)}")
        if not _is_number(self.global_head_cap) or not 1.0 <= self.global_head_cap < math.inf:
            raise ValueError(f"global_head_cap must be a finite number >= 1, got {self.global_head_cap!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.decode_budget is not None and self.decode_budget <= self.sink + self.decode_recent:
            raise ValueError(f"decode_budget {self.decode_budget} must exceed sink + decode_recent "
                             f"({self.sink + self.decode_recent})")

    @property
    def evicts(self) -> bool:
        return self.scorer != "full"

    @property
    def token_ranking(self) -> str:
        """The `token_rank` in force: the field, or the scorer's default when it is None."""
        return default_token_rank(self.scorer) if self.token_rank is None else self.token_rank

    @property
    def window_ruling(self) -> str:
        """The `window_rule` in force: the field, or the scorer's default when it is None."""
        return default_window_rule(self.scorer) if self.window_rule is None else self.window_rule

    def keep_count(self, seen: int) -> int:
        """Slots each head keeps after prefilling `seen` context tokens."""
        if not self.evicts:
            return seen
        if self.budget is not None:
            return min(self.budget, seen)
        return min(seen, max(1, math.ceil(self.ratio * seen)))

    def protected_window(self, context_length: int) -> int:
        """Recent tokens protected during prefill for a context of `context_length` tokens."""
        if self.window is not None:
            return self.window
        if self.window_ruling == "paper":
            return PAPER_WINDOW if context_length >= PAPER_WINDOW_FROM else math.ceil(0.02 * context_length)
        share = min(0.5, context_length / PAPER_WINDOW_FROM)
        return min(PAPER_WINDOW, math.ceil(share * self.keep_count(context_length)))
