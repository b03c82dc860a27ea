"""The KV core: cache pytrees, the Fast KVzip gate, scorers, static-shape eviction and the policy."""

from gatekv_jax.kv.cache import CompressedContext, KVCache, LayerCache, init_cache
from gatekv_jax.kv.eviction import PER_HEAD, Allocation, evict
from gatekv_jax.kv.gate import check_gates, gate_scores, init_gates
from gatekv_jax.kv.gate_files import (
                                      download_official_gates,
                                      export_official_gates,
                                      import_official_gates,
                                      load_gates,
                                      pretrained_gates,
                                      save_gates,
)
from gatekv_jax.kv.policy import LEVELS, SCORERS, TOKEN_RANKS, WINDOW_RULES, EvictionPolicy
from gatekv_jax.kv.scorers import ScorerSpec

__all__ = ["LEVELS", "PER_HEAD", "SCORERS", "TOKEN_RANKS", "WINDOW_RULES", "Allocation", "CompressedContext",
           "EvictionPolicy", "KVCache", "LayerCache", "ScorerSpec", "check_gates", "download_official_gates", "evict",
           "export_official_gates", "gate_scores", "import_official_gates", "init_cache",
           "init_gates", "load_gates", "pretrained_gates", "save_gates"]
