"""The PyTorch peer of the benchmark: the same model and weights in transformers, timed like ours.

Needs torch (the `test` extra has it); nothing else in gatekv_jax imports this module. Prefill is
one forward over the prompt that keeps the last position's logits (as transformers' `generate`
does); decoding is transformers' greedy `generate` continuing from a prefilled cache, timed from
two lengths like ours (`speed.decode_rate`), so one-off costs cancel.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from typing import Any

import jax.numpy as jnp
import numpy as np

from gatekv_jax.evaluation.ceilings import matmul_operands
from gatekv_jax.evaluation.speed import BENCH_SHAPES, rate_from
from gatekv_jax.models.config import ModelConfig
from gatekv_jax.models.loading import Model, resolve_source
from gatekv_jax.models.params import params_from_tensors

ATTENTION = ("sdpa", "eager")


def peer_pair(name: str, dtype: str = "float32", seed: int = 0) -> tuple[Model, Any]:
    """`(our Model, the transformers model)` with the same weights in `dtype`: random for a
    `BENCH_SHAPES` name (drawn by transformers, then converted), else a HF folder or hub id."""
    import torch
    import transformers

    if name in BENCH_SHAPES:
        settings = dict(BENCH_SHAPES[name])
        hf_config = transformers.AutoConfig.for_model(settings.pop("model_type"), **settings)
        torch.manual_seed(seed)
        peer = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
        config = ModelConfig.from_hf(BENCH_SHAPES[name])
    else:
        kind, path = resolve_source(name)
        if kind != "hf":
            raise ValueError(f"the peer needs a transformers checkpoint (a HF folder or hub id), not {name!r}")
        peer = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        config = ModelConfig.from_hf(path)
    tensors = ((key, value.detach().numpy()) for key, value in peer.state_dict().items())
    model = Model(config=config, params=params_from_tensors(config, tensors, dtype=dtype), dtype=jnp.dtype(dtype),
                  source=name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model, peer.to(device=device, dtype=getattr(torch, jnp.dtype(dtype).name)).eval()


def _prefill(peer, ids):
    return peer(ids, use_cache=True, logits_to_keep=1)


def _ids(peer, tokens: np.ndarray):
    import torch

    return torch.from_numpy(np.asarray(tokens, np.int64)).to(peer.device)


def _now(peer) -> float:
    """The wall clock after the peer's queued device work is done."""
    import torch

    if peer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def prefill_seconds(peer, attention: str, tokens: np.ndarray, repeats: int) -> float:
    """Fastest of `repeats` prefills of `tokens` [1, T] (after a warm-up run)."""
    import torch

    peer.set_attn_implementation(attention)
    ids = _ids(peer, tokens)
    times = []
    with torch.inference_mode():
        _prefill(peer, ids)
        for _ in range(repeats):
            start = _now(peer)
            _prefill(peer, ids)
            times.append(_now(peer) - start)
    return min(times)


def matmul_rate(peer, shape: tuple[int, int, int], rounds: int = 5, calls: int = 10) -> float:
    """FLOP per second of one torch [M, K] x [K, N] matmul on the peer's device and dtype, timed like
    ours (`ceilings.matmul_rate`: the best of `rounds` rounds of `calls` calls, the same operands)."""
    import torch

    a, b = (torch.from_numpy(x).to(device=peer.device, dtype=peer.dtype) for x in matmul_operands(shape))
    times = []
    with torch.inference_mode():
        a @ b  # warm-up
        for _ in range(rounds):
            start = _now(peer)
            for _ in range(calls):
                a @ b
            times.append(_now(peer) - start)
    return 2 * math.prod(shape) * calls / min(times)


def _cache_name(peer) -> str:
    """What transformers calls the cache argument (`cache`; `past_key_values` before 5.2x)."""
    return "cache" if "cache" in inspect.signature(peer.forward).parameters else "past_key_values"


def decode_rate(peer, attention: str, tokens: np.ndarray, n_short: int, n_long: int, repeats: int) -> float:
    """Greedy tokens per second of `generate` continuing from a prefilled cache of `tokens` [1, T]
    (all but the last token; a fresh copy per run, copied before the clock starts), from two
    generation lengths. Timing whole `generate` calls with their prefill does not work: at 8K the
    prefill's run-to-run noise is larger than the decoding being measured."""
    import torch

    peer.set_attn_implementation(attention)
    ids = _ids(peer, tokens)
    name = _cache_name(peer)
    settings = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        prefilled = getattr(peer(ids[:, :-1], use_cache=True, logits_to_keep=1), name)

        def generate_seconds(n: int) -> float:
            cache = copy.deepcopy(prefilled)
            start = _now(peer)
            out = peer.generate(ids, max_new_tokens=n, min_new_tokens=n, **{name: cache}, **settings)
            seconds = _now(peer) - start
            if out.shape[1] != ids.shape[1] + n:
                raise RuntimeError(f"transformers generated {out.shape[1] - ids.shape[1]} tokens, not {n}")
            return seconds

        generate_seconds(n_short)  # warm-up
        t_short = min(generate_seconds(n_short) for _ in range(repeats))
        t_long = min(generate_seconds(n_long) for _ in range(repeats))
    return rate_from(n_short, t_short, n_long, t_long)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()
