"""The benchmark run: a bench config in; `bench.json`, a printed table and `bench.png` out.

It times, on one process and device: prefill and greedy decode of the main model (full cache, the
gate at the config's ratio, the gate at ratio 1.0 for its own cost) beside the transformers peer;
then the scale case, decode over directly filled long caches of a model whose KV cache dominates.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatekv_jax.evaluation import ceilings, speed

SCHEMA_VERSION = 1
ENGINE = "gatekv_jax"


def _ints(config, field: str, count: int | None = None, allow_empty: bool = False) -> list[int]:
    text = str(config[field])
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ValueError(f"{field} must be comma-separated ints, got {text!r}") from e
    if allow_empty and not values:
        return []
    if not values or any(v <= 0 for v in values) or (count is not None and len(values) != count):
        wanted = f"{count} positive ints" if count else "positive ints"
        raise ValueError(f"{field} must be {wanted}, got {text!r}")
    return values


def check_bench_config(config) -> dict[str, Any]:
    """The config's lists parsed and checked before any model is built (a ValueError names the field)."""
    from gatekv_jax.evaluation.peer import ATTENTION

    settings = dict(prefill_lengths=_ints(config, "prefill_lengths"), decode_contexts=_ints(config, "decode_contexts"),
                    decode_tokens=_ints(config, "decode_tokens", 2),
                    scale_caches=_ints(config, "scale_caches", allow_empty=True),
                    scale_decode_tokens=_ints(config, "scale_decode_tokens", 2))
    for field in ("decode_tokens", "scale_decode_tokens"):
        short, long = settings[field]
        if short >= long:
            raise ValueError(f"{field} must be two increasing lengths, got {config[field]!r}")
    if not isinstance(config.ratio, (int, float)) or not 0 < config.ratio < 1:
        raise ValueError(f"ratio must be in (0, 1), got {config.ratio!r}")
    if not isinstance(config.repeats, int) or config.repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {config.repeats!r}")
    if not isinstance(config.gate_cost_context, int) or config.gate_cost_context <= 0:
        raise ValueError(f"gate_cost_context must be a positive int, got {config.gate_cost_context!r}")
    peers = [p for p in str(config.peer).split(",") if p]
    if any(p not in ATTENTION for p in peers):
        raise ValueError(f"peer must be a comma-separated subset of {ATTENTION}, got {config.peer!r}")
    for field in ("model", "scale_model"):
        if config[field] not in speed.BENCH_SHAPES and not os.path.exists(str(config[field])) \
                and "/" not in str(config[field]):
            raise ValueError(f"{field} {config[field]!r} is neither a bench shape {sorted(speed.BENCH_SHAPES)} "
                             f"nor a model source")
    settings["peer"] = peers
    return settings


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


_VECTOR_UNITS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("asimd", "NEON"))  # widest first


def cpu_description(cpuinfo: str) -> tuple[str, str]:
    """`(model name, widest vector unit)` of a Linux /proc/cpuinfo text: ("AMD EPYC", "AVX-512");
    "unknown" where the text does not say. The host's matmul speed, and so every ratio against
    transformers, depends on the vector unit (docs/results.md#speed)."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    vector = next((name for flag, name in _VECTOR_UNITS if flag in flags), "unknown")
    return fields.get("model name") or platform.processor() or "unknown", vector


def environment() -> dict[str, Any]:
    device = jax.devices()[0]
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
    except OSError:  # not Linux
        cpuinfo = ""
    cpu_model, cpu_vector = cpu_description(cpuinfo)
    info = dict(platform=device.platform, device_kind=device.device_kind, devices=jax.device_count(),
                cpu_count=os.cpu_count(), cpu_model=cpu_model, cpu_vector=cpu_vector,
                python=platform.python_version(), jax=jax.__version__, machine=platform.machine())
    if _torch_available():
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__,
                    torch_threads=torch.get_num_threads())
    return info


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_bench(config) -> dict[str, Any]:
    """Run every measurement of `config` (see configs/bench.py); returns the results dict."""
    settings = check_bench_config(config)
    started = time.perf_counter()
    peers = settings["peer"]
    results: dict[str, Any] = dict(schema=SCHEMA_VERSION, config=config.to_dict(), environment=environment())
    if peers and not _torch_available():
        _log("torch is not installed: no transformers peer (pip install 'gatekv-jax[test]')")
        peers = []
    results["bandwidth_bytes_per_s"] = ceilings.memory_bandwidth()
    _log(f"memory bandwidth {results['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s")

    if peers:
        from gatekv_jax.evaluation import peer

        model, peer_model = peer.peer_pair(config.model, config.dtype)
    else:
        model, peer_model = speed.bench_model(config.model, config.dtype), None
    gates = speed.gates_for_bench(model, config.gates)
    results["model"] = dict(name=config.model, dtype=jnp.dtype(model.dtype).name,
                            params_bytes=speed.params_bytes(model), layers=model.config.num_layers,
                            gated_layers=len(model.config.full_attention_layers))
    n_short, n_long = settings["decode_tokens"]
    shape = ceilings.matmul_shape(model.config, speed.policies(config.ratio)["full"].chunk_size)
    results["matmul"] = dict(shape=list(shape), flops_per_s={ENGINE: ceilings.matmul_rate(shape, model.dtype)})
    if peer_model is not None:
        results["matmul"]["flops_per_s"]["transformers"] = peer.matmul_rate(peer_model, shape)
    _log("matmul " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in results["matmul"]["flops_per_s"].items()))

    _log("gate cost ...")
    results["gate_cost"] = speed.gate_cost(model, gates, config.gate_cost_context, speed.policies(config.ratio)[
        "gate"].chunk_size, config.repeats)
    _log("prefill ...")
    prefill_rows = speed.bench_prefill(model, gates, settings["prefill_lengths"], config.ratio, config.repeats)
    decode_rows = speed.bench_decode(model, gates, settings["decode_contexts"], config.ratio, n_short, n_long,
                                     config.repeats)
    for row in prefill_rows + decode_rows:
        row["engine"] = ENGINE
    for attention in peers:
        from gatekv_jax.evaluation import peer

        _log(f"transformers {attention} ...")
        for length in settings["prefill_lengths"]:
            seconds = peer.prefill_seconds(peer_model, attention, speed.random_tokens(model.config, length, length),
                                           config.repeats)
            prefill_rows.append(dict(engine=f"transformers-{attention}", policy="full", context=length,
                                     seconds=seconds, tokens_per_s=length / seconds))
        for length in settings["decode_contexts"]:
            rate = peer.decode_rate(peer_model, attention, speed.random_tokens(model.config, length, length),
                                    n_short, n_long, config.repeats)
            decode_rows.append(dict(engine=f"transformers-{attention}", policy="full", context=length,
                                    tokens_per_s=rate))
    del peer_model
    results["prefill"], results["decode"] = prefill_rows, decode_rows

    del model, gates
    results["scale"] = None
    if settings["scale_caches"]:
        _log(f"scale case ({config.scale_model}) ...")
        scale_model = speed.bench_model(config.scale_model, config.dtype)
        scale_short, scale_long = settings["scale_decode_tokens"]
        results["scale"] = dict(model=config.scale_model, params_bytes=speed.params_bytes(scale_model),
                                rows=speed.bench_scale(scale_model, speed.gates_for_bench(scale_model, "random"),
                                                       settings["scale_caches"], config.ratio, scale_short,
                                                       scale_long, config.repeats))
    # the limit is the best the machine showed: measured at the start and again at the end
    results["bandwidth_bytes_per_s"] = max(results["bandwidth_bytes_per_s"], ceilings.memory_bandwidth())
    results["peak_host_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    results["peak_device_bytes"] = speed.device_peak_bytes()
    results["seconds"] = time.perf_counter() - started
    return results


def plot_bench(results: dict[str, Any], path: str) -> None:
    """Prefill and decode rates per engine, and the scale case's decode rate against its bandwidth limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gatekv_jax.utils.files import save_figure

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for title, rows, ax in (("prefill", results["prefill"], axes[0]), ("decode", results["decode"], axes[1])):
        for engine, policy in sorted({(r["engine"], r["policy"]) for r in rows}):
            line = sorted((r["context"], r["tokens_per_s"]) for r in rows
                          if r["engine"] == engine and r["policy"] == policy)
            ax.plot(*zip(*line), marker="o", label=f"{engine} {policy}" if engine == ENGINE else engine)
        ax.set(xscale="log", xlabel="context tokens", ylabel="tokens / s",
               title=f"{title}, {results['model']['name']} ({results['environment']['device_kind']})")
        ax.legend(fontsize=8)
    scale = results["scale"]["rows"] if results["scale"] else []
    labels = [f"{r['policy']} {r['context'] // 1024}K" for r in scale]
    x = np.arange(len(scale))
    limit = [results["bandwidth_bytes_per_s"] / r["bytes_per_step"] for r in scale]
    axes[2].bar(x - 0.2, [r["tokens_per_s"] for r in scale], 0.4, label="measured")
    axes[2].bar(x + 0.2, limit, 0.4, label="bandwidth limit")
    scale_name = (results["scale"] or {}).get("model", "not run")
    axes[2].set(xticks=x, xticklabels=labels, ylabel="decode tokens / s", title=f"scale: {scale_name}")
    axes[2].legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
