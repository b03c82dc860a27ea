"""Bad inputs at the door: each is refused before any model loads, with the value or file named."""

import json

import numpy as np
import pytest
import torch

import gatekv_jax as gk
from gatekv_jax.kv.gate_files import export_official_gates, import_official_gates
from tests.tiny_models import TINY_CONFIGS


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any model load fails the test: the error must come first."""
    import importlib

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    for name in ("gatekv_jax.generate", "gatekv_jax.evaluation.runner", "gatekv_jax.training.pipeline"):
        monkeypatch.setattr(importlib.import_module(name), "load_model", forbidden)


@pytest.mark.parametrize("argv, message", [
    (["--prompt=hi", "--scorer=streaming", "--ratio=0"], "ratio must be a number in (0, 1], got 0.0"),
    (["--prompt=hi", "--context_file=/no/such/doc.txt"], "--context_file=/no/such/doc.txt is not a file"),
    (["--prompt_file=/no/such/prompt.txt"], "--prompt_file=/no/such/prompt.txt is not a file"),
    (["--prompt=hi", "--gates=/no/such/gates.safetensors"], "--gates=/no/such/gates.safetensors is not a file"),
    (["--prompt=hi", "--model=tiny-random-qwen3"], "--scorer=gate needs --gates"),
])
def test_generate_cli_refuses_before_loading(no_model_loading, argv, message):
    from gatekv_jax.generate import main

    with pytest.raises(SystemExit, match="error: " + message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        main(argv)


@pytest.mark.parametrize("overrides, message", [
    (dict(ratios="0.3,0"), r"ratios must be in \(0, 1\], got '0.3,0'"),
    (dict(ratios="0.3,x"), "comma-separated numbers"),
    (dict(n_samples=0), "n_samples must be a positive int, got 0"),
    (dict(needle_depths="1.5"), r"needle_depths must be in \[0, 1\]"),
    (dict(level="layer"), "unknown level 'layer'"),
    (dict(token_rank="best"), "unknown token_rank 'best'"),
    (dict(gates="/no/such/gates.safetensors"), "gates file '/no/such/gates.safetensors' does not exist"),
    (dict(model="tiny-random-qwen3"), "no packaged gates for 'tiny-random-qwen3'"),
])
def test_evaluate_validates_the_whole_config_first(no_model_loading, tmp_path, overrides, message):
    from gatekv_jax.evaluation import evaluate, load_config

    config = load_config("eval", output=str(tmp_path / "out"), **overrides)
    with pytest.raises(ValueError, match=message):
        evaluate(config)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value, message", [
    ("heldout_contexts", 0, "heldout_contexts must be a positive int, got 0"),
    ("context_length", -5, "context_length must be a positive int"),
    ("tokens_per_context", 1000, r"tokens_per_context must be None or an int in \[1, context_length\]"),
    ("dtype", "float8", "dtype must be float32, bfloat16 or float16"),
    ("targets", "succesor", r"targets must be one of \('kvzip', 'successor'\), got 'succesor'"),
])
def test_training_config_is_checked_before_any_work(no_model_loading, tmp_path, field, value, message):
    from gatekv_jax.training.configs import load_config

    config = load_config("tiny", workdir=str(tmp_path / "run"))
    config[field] = value
    with pytest.raises(ValueError, match=message):
        gk.train_gates(config)
    assert not (tmp_path / "run").exists()


def test_local_data_paths_must_exist_and_are_settable_from_the_command_line(no_model_loading, tmp_path):
    from gatekv_jax.training.configs import parse_config_flags

    config = parse_config_flags(["--config=tiny", "--config.data.source=local", f"--config.workdir={tmp_path}/run",
                                 "--config.data.paths=/no/a.txt,/no/b.md"], "tiny", "train")
    assert config.data.paths == ["/no/a.txt", "/no/b.md"]
    with pytest.raises(ValueError, match=r"data.source='local' needs existing data.paths; missing: \['/no/a.txt'"):
        gk.train_gates(config)


def official_layers(config, **changes):
    path_layers = []
    D, K, G, E = config.hidden_size, config.num_kv_heads, config.num_groups, 16
    for _ in range(config.num_layers):
        layer = {"q_proj.weight": torch.zeros(K * G * E, D), "q_proj.bias": torch.zeros(K * G * E),
                 "k_proj.weight": torch.zeros(K * E, D), "q_norm.weight": torch.ones(E),
                 "k_norm.weight": torch.ones(E), "k_base": torch.zeros(K, 1, 16, E), "b": torch.zeros(K, 1, G)}
        for name, value in changes.items():
            if value is None:
                del layer[name]
            else:
                layer[name] = value
        path_layers.append(layer)
    return path_layers


@pytest.mark.parametrize("changes, message", [
    (dict(k_norm_weight=None), r"lacks \['k_norm.weight'\]"),
    (dict(q_proj_weight=torch.zeros(64, 48)), r"q_proj.weight has shape \(64, 48\), this model needs .* another model"),
])
def test_official_gates_with_missing_or_misshapen_tensors_are_named(tmp_path, changes, message):
    config = gk.ModelConfig.from_hf(TINY_CONFIGS["qwen3"])
    layers = official_layers(config, **{k.replace("_weight", ".weight"): v for k, v in changes.items()})
    torch.save({"module": layers}, tmp_path / "gates.pt")
    with pytest.raises(ValueError, match=message):
        import_official_gates(str(tmp_path / "gates.pt"), config)


def test_official_gates_of_another_model_are_refused(tmp_path):
    qwen = gk.ModelConfig.from_hf(TINY_CONFIGS["qwen3"])
    export_official_gates(gk.init_gates(qwen), qwen, str(tmp_path / "qwen.pt"))
    wider = gk.ModelConfig.from_hf({**TINY_CONFIGS["qwen3"], "hidden_size": 2 * qwen.hidden_size})
    with pytest.raises(ValueError, match="gates for another model"):
        import_official_gates(str(tmp_path / "qwen.pt"), wider)
    with pytest.raises(ValueError, match="does not exist"):
        import_official_gates(str(tmp_path / "missing.pt"), qwen)


def test_unreadable_model_files_are_named(tmp_path, tiny_gemma3_dir):
    import shutil

    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.gguf is not a readable GGUF file"):
        gk.load_model(str(empty))
    folder = tmp_path / "model"
    shutil.copytree(tiny_gemma3_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        gk.load_model(str(folder))
    (folder / "config.json").write_text('{"model_type": "gem')
    with pytest.raises(ValueError, match=r"config.json is truncated or not JSON"):
        gk.load_model(str(folder))


def test_a_tokenizer_folder_without_tokenizer_files_is_named(tmp_path, tiny_gemma3_dir):
    import shutil

    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_gemma3_dir / name, folder / name)
    with pytest.raises(ValueError, match="holds no tokenizer files"):
        gk.load_tokenizer(str(folder))


def test_a_context_from_another_model_is_refused(tiny_gemma3_dir):
    gemma = gk.load_model(tiny_gemma3_dir)
    qwen = gk.load_model("tiny-random-qwen3")
    policy = gk.EvictionPolicy(scorer="streaming", ratio=0.5, chunk_size=8)
    context = gk.prefill(qwen, np.zeros((1, 16), np.int32), policy)
    with pytest.raises(ValueError, match="the context was made by another model"):
        gk.generate(gemma, [[1, 2]], policy, context=context, max_new_tokens=2)


def test_report_names_a_truncated_results_file(tmp_path, capsys):
    from gatekv_jax.report import main

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"records": [{"task": "recall"}]})[:20])
    assert main([str(results)]) == 2
    assert "results.json is truncated or not JSON" in capsys.readouterr().err
