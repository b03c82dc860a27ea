"""The benchmark: its CI mode end to end (schema, zero compiles after warm-up), and the byte counts it reports."""

import json
import math

import jax
import numpy as np
import pytest

import gatekv_jax as gk
from gatekv_jax.engine import chunks, decode
from gatekv_jax.evaluation import speed
from gatekv_jax.evaluation.benchmark import check_bench_config
from gatekv_jax.training.configs import load_config

ROW_KEYS = {"engine", "policy", "context", "tokens_per_s"}


@pytest.mark.slow
def test_bench_tiny_mode_writes_results_with_zero_compiles_after_warmup(tmp_path, capsys):
    from gatekv_jax.bench import main
    from gatekv_jax.report import main as report_main

    assert main(["--config=configs/bench.py:tiny", f"--config.output={tmp_path}"]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert {"schema", "config", "environment", "bandwidth_bytes_per_s", "matmul", "model", "prefill", "decode",
            "gate_cost", "scale", "peak_host_bytes", "peak_device_bytes", "seconds"} <= set(results)
    assert results["bandwidth_bytes_per_s"] > 1e8
    config = gk.ModelConfig.from_hf(speed.BENCH_SHAPES["tiny-gemma3"])
    assert results["matmul"]["shape"] == [512, config.hidden_size, config.intermediate_size]
    assert set(results["matmul"]["flops_per_s"]) == {"gatekv_jax", "transformers"}
    assert all(1e8 < rate < 1e15 for rate in results["matmul"]["flops_per_s"].values())
    ours = [r for r in results["prefill"] + results["decode"] if r["engine"] == "gatekv_jax"]
    peers = [r for r in results["prefill"] + results["decode"] if r["engine"] != "gatekv_jax"]
    assert {(r["policy"], r["context"]) for r in results["prefill"] if r["engine"] == "gatekv_jax"} == \
        {("full", 512), ("gate", 512)}
    assert {r["engine"] for r in peers} == {"transformers-sdpa"}  # torch is in the test extra
    for row in ours + peers + results["scale"]["rows"]:
        assert ROW_KEYS - {"engine"} <= set(row) and math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0
    for row in ours + results["scale"]["rows"]:
        assert row["compiles_after_warmup"] == 0, row  # timed runs (another prompt length in the bucket) reuse
    gate = next(r for r in results["prefill"] if r["policy"] == "gate")
    full = next(r for r in results["prefill"] if r["policy"] == "full" and r["engine"] == "gatekv_jax")
    slot_bytes = 2 * config.head_dim * 4 * config.num_kv_heads
    sliding = (config.num_layers - len(config.full_attention_layers)) * config.sliding_window * slot_bytes
    gated = len(config.full_attention_layers) * slot_bytes
    assert full["kept_kv_bytes"] == sliding + gated * 512
    assert gate["kept_kv_bytes"] == sliding + gated * math.ceil(0.3 * 512)
    scale = {r["policy"]: r for r in results["scale"]["rows"]}
    assert scale["gate"]["kept_tokens"] == math.ceil(0.3 * 2048) and scale["full"]["kept_tokens"] == 2048
    assert scale["gate"]["bytes_per_step"] < scale["full"]["bytes_per_step"]
    assert set(results["gate_cost"]) == {"context", "chunk", "prefill_chunk", "decode_step"}
    assert all(math.isfinite(v) for v in results["gate_cost"].values())
    capsys.readouterr()
    assert report_main([str(tmp_path / "bench.json")]) == 0
    tables = capsys.readouterr().out
    assert "**prefill**" in tables and "ours full / sdpa" in tables and "Compiles after warm-up: 0." in tables
    assert "GFLOP/s (ours / torch" in tables
    env = results["environment"]
    assert f"({env['platform']}, {env['cpu_model']}, {env['cpu_vector']}, " in tables


def test_cpu_description_names_the_model_and_the_widest_vector_unit():
    from gatekv_jax.evaluation.benchmark import cpu_description

    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n\n" \
          "processor\t: 1\n"
    assert cpu_description(x86) == ("AMD EPYC", "AVX-512")
    assert cpu_description(x86.replace(" avx512f avx512bw", "")) == ("AMD EPYC", "AVX2")
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\n"
    assert cpu_description(arm)[1] == "NEON"
    assert cpu_description("")[1] == "unknown"


def test_prefill_kv_bytes_is_what_a_chunked_prefill_holds(monkeypatch):
    """The reported peak KV bytes of a chunked prefill equal the cache the chunk steps really carry."""
    model = speed.bench_model("tiny-qwen3")
    seen = []
    step = chunks.chunk_step

    def recording_step(params, gates, cache, *args, **kwargs):
        seen.append(speed.kv_bytes(cache))
        return step(params, gates, cache, *args, **kwargs)

    monkeypatch.setattr(chunks, "chunk_step", recording_step)
    tokens = speed.random_tokens(model.config, 1500, seed=0)
    for policy in speed.policies(0.3).values():
        seen.clear()
        gk.prefill(model, tokens, policy, gates=gk.init_gates(model.config))
        assert len(seen) == 3 and set(seen) == {speed.prefill_kv_bytes(model.config, policy, 1500, model.dtype)}


def test_chunked_prefill_peak_at_30_percent_is_within_a_chunk_of_30_percent_of_full():
    """Qwen3-0.6B shape (every layer global) at 8K and 32K: the gate's buffers never exceed 30% of the
    full cache plus one chunk (computed from the shapes the engine allocates; a test above ties them
    to a real prefill)."""
    config = gk.ModelConfig.from_hf(speed.BENCH_SHAPES["qwen3-0.6b"])
    for tokens in (8192, 32768):
        policies = speed.policies(0.3)
        full = speed.prefill_kv_bytes(config, policies["full"], tokens, np.float32)
        gate = speed.prefill_kv_bytes(config, policies["gate"], tokens, np.float32)
        slot_bytes = full // tokens
        chunk = policies["gate"].chunk_size
        assert gate <= math.ceil(0.3 * tokens) * slot_bytes + chunk * slot_bytes


def test_decode_kv_bytes_is_the_cache_generate_decodes_with(monkeypatch):
    model = speed.bench_model("tiny-gemma3")
    seen = []
    loop = decode.decode_loop

    def recording_loop(params, gates, cache, *args, **kwargs):
        seen.append(speed.kv_bytes(cache))
        return loop(params, gates, cache, *args, **kwargs)

    monkeypatch.setattr(decode, "decode_loop", recording_loop)
    gates = gk.init_gates(model.config)
    for policy in [*speed.policies(0.3).values(), gk.EvictionPolicy(scorer="gate", ratio=0.3, decode_budget=200)]:
        context = gk.prefill(model, speed.random_tokens(model.config, 700, seed=1), policy, gates=gates)
        seen.clear()
        gk.generate(model, None, policy, gates=gates, context=context, max_new_tokens=20, stop_tokens=[])
        assert seen == [speed.decode_kv_bytes(model.config, policy, context, 20)]


def test_filled_context_keeps_an_even_spread_ending_at_the_last_token():
    model = speed.bench_model("tiny-qwen3")
    context = speed.filled_context(model, 1000, 300)
    layer = context.cache.layers[0]
    positions = np.asarray(layer.positions[0, 0])
    assert layer.capacity == 384 and np.asarray(layer.lengths).tolist() == [[300, 300]]  # every layer is global
    kept = positions[:300]
    assert kept[0] == 0 and kept[-1] == 999 and (np.diff(kept) > 0).all() and (positions[300:] == -1).all()
    assert int(context.seen[0]) == 1000
    out = gk.generate(model, None, gk.EvictionPolicy(scorer="full"), context=context, max_new_tokens=4,
                      stop_tokens=[])
    assert len(out[0]) == 4


def test_decode_rate_refuses_noise():
    assert speed.rate_from(16, 1.0, 48, 2.0) == 32.0
    with pytest.raises(RuntimeError, match="noise"):
        speed.rate_from(16, 1.0, 48, 0.9)


def test_compile_counter_counts_compiles_only():
    double = jax.jit(lambda x: 2 * x)
    double(np.ones(3, np.float32))
    with speed.CompileCounter() as compiles:
        double(np.ones(3, np.float32))
    assert compiles.count == 0
    with speed.CompileCounter() as compiles:
        double(np.ones(5, np.float32))
    assert compiles.count == 1


@pytest.mark.parametrize("field,value,message", [
    ("prefill_lengths", "1024,x", "prefill_lengths must be comma-separated ints"),
    ("decode_tokens", "48,16", "decode_tokens must be two increasing lengths"),
    ("decode_tokens", "16", "decode_tokens must be 2 positive ints"),
    ("peer", "sdpa,flash", "peer must be a comma-separated subset"),
    ("gate_cost_context", 0, "gate_cost_context must be a positive int"),
    ("ratio", 1.5, "ratio must be in"),
    ("model", "nonsense", "model 'nonsense' is neither a bench shape"),
])
def test_bench_config_errors_name_the_field(field, value, message):
    config = load_config("bench")
    config[field] = value
    with pytest.raises(ValueError, match=message):
        check_bench_config(config)


def test_bench_cli_prints_an_error_line_for_a_bad_config(capsys):
    from gatekv_jax.bench import main

    assert main(["--config=configs/bench.py:tiny", "--config.decode_tokens=48,16"]) == 2
    assert "error: decode_tokens must be two increasing lengths" in capsys.readouterr().err
