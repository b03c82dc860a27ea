"""`python -m gatekv_jax.bench`: prefill and decode speed against transformers, and the long-cache scale case.

`--config=configs/bench.py:tiny` is the CI mode (tiny shapes, seconds). Lists are comma-separated
strings: --config.prefill_lengths=1024,2048.
"""

from ml_collections import config_dict


def get_config(mode: str = "full"):
    c = config_dict.ConfigDict()
    c.model = "gemma3-270m"  # a shape of gatekv_jax.evaluation.speed.BENCH_SHAPES (random weights) or a model source
    c.gates = "random"  # "random" (the gate's cost does not depend on its values), "packaged" or a gates file
    c.dtype = "float32"  # CPU: float32 (XLA's bfloat16 mat-vecs are ~10x slower there); TPU/GPU: bfloat16
    c.ratio = 0.3  # share of the context the gate policy keeps
    c.prefill_lengths = "1024,2048,4096,8192"
    c.decode_contexts = "2048,8192"
    c.decode_tokens = "16,48"  # two generation lengths: the rate is their difference over the time difference
    c.gate_cost_context = 2048  # cache size of the decoder steps timed with and without the gate's scores
    c.repeats = 2  # best of
    c.peer = "sdpa,eager"  # transformers attention implementations to time beside ours ("" = none; needs torch)
    # Long-context scale case: a shape whose KV cache dominates, caches filled directly (no prefill).
    c.scale_model = "qwen3-0.6b"
    c.scale_caches = "8192,32768"  # "" skips the scale case
    c.scale_decode_tokens = "8,24"
    c.output = "results/bench"
    if mode == "tiny":  # CI: the same code paths on tiny shapes
        c.model = "tiny-gemma3"
        c.prefill_lengths = "512"
        c.decode_contexts = "512"
        c.decode_tokens = "16,240"
        c.gate_cost_context = 512
        c.peer = "sdpa"
        c.scale_model = "tiny-qwen3"
        c.scale_caches = "2048"
        c.scale_decode_tokens = "16,240"
        c.output = "results/bench_tiny"
    elif mode != "full":
        raise ValueError(f"unknown bench mode {mode!r}; use 'full' or 'tiny'")
    return c
