"""The gate trainer end to end on the tiny model: outputs, resumption after SIGKILL, sharded features."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gatekv_jax as gk
from gatekv_jax.engine.teacher import RepeatPrompts, teacher_scores
from gatekv_jax.models.tiny import TINY_MODEL
from gatekv_jax.training.features import collect_features, read_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_train(workdir, *overrides, wait=True):
    command = [sys.executable, "-m", "gatekv_jax.train", f"--config={ROOT}/configs/tiny.py",
               f"--config.workdir={workdir}", *overrides]
    if wait:
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_tiny_training_writes_every_output(tmp_path):
    result = run_train(tmp_path)
    for name in ("gates.safetensors", "history.json", "training.png", "summary.json", "features/manifest.json"):
        assert os.path.isfile(tmp_path / name), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 200 and summary["gated_layers"] == [0, 1]
    assert summary["tokens"] == {"train": 8 * 48, "heldout": 2 * 48}
    for untrained, trained in zip(summary["heldout_loss"]["untrained"], summary["heldout_loss"]["trained"]):
        assert trained < untrained
    gates = gk.load_gates(str(tmp_path / "gates.safetensors"))
    gk.kv.check_gates(gates, gk.load_model(TINY_MODEL).config)
    assert "held-out loss" in result.stdout


def test_killed_run_resumes_to_the_same_gates(tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_train(reference, "--config.fit.steps=300")
    process = run_train(resumed, "--config.fit.steps=300", wait=False)
    checkpoints = resumed / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline:
        steps = [int(d) for d in os.listdir(checkpoints) if d.isdigit()] if checkpoints.is_dir() else []
        if any(40 <= s < 300 for s in steps):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    assert 40 <= killed_at < 300, "the run was not killed in the fitting phase"
    run_train(resumed, "--config.fit.steps=300")
    expected = gk.load_gates(str(reference / "gates.safetensors"))
    got = gk.load_gates(str(resumed / "gates.safetensors"))
    for layer in expected:
        for name in expected[layer]:
            np.testing.assert_array_equal(np.asarray(got[layer][name]), np.asarray(expected[layer][name]))
    history = json.loads((resumed / "history.json").read_text())
    assert [r["step"] for r in history] == [0, 50, 100, 150, 200, 250, 300]


def test_features_on_eight_devices_equal_one(tmp_path):
    tokenizer = gk.load_tokenizer(TINY_MODEL)
    prompts = RepeatPrompts.from_tokenizer(tokenizer, "qwen3")
    contexts = np.random.RandomState(0).randint(0, 256, (4, 40)).astype(np.int32)
    single = teacher_scores(gk.load_model(TINY_MODEL), contexts, prompts, chunk=16, prefill_chunk=16)
    mesh = gk.make_mesh(data=2, fsdp=2, tensor=2)
    sharded = teacher_scores(gk.load_model(TINY_MODEL, mesh=mesh), contexts, prompts, chunk=16, prefill_chunk=16)
    for a, b in zip(single, sharded):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_feature_shards_are_skipped_on_rerun_and_settings_checked(tmp_path):
    model = gk.load_model(TINY_MODEL)
    prompts = RepeatPrompts.from_tokenizer(gk.load_tokenizer(TINY_MODEL), "qwen3")
    contexts = [([f"doc{i}"], np.full(20, i, np.int32)) for i in range(3)]
    settings = {"model": TINY_MODEL}
    collect_features(model, prompts, contexts, str(tmp_path), "train", settings, max_contexts=3, teacher_chunk=8)
    assert sorted(read_manifest(str(tmp_path))["shards"]) == ["train_00000", "train_00001", "train_00002"]
    stamp = os.path.getmtime(tmp_path / "train_00001.inputs.npy")
    collect_features(model, prompts, contexts, str(tmp_path), "train", settings, max_contexts=3, teacher_chunk=8)
    assert os.path.getmtime(tmp_path / "train_00001.inputs.npy") == stamp
    with pytest.raises(ValueError, match="other settings"):
        collect_features(model, prompts, contexts, str(tmp_path), "train", {"model": "other"}, max_contexts=3)


def test_successor_targets_credit_each_token_with_the_next_ones_score(tmp_path):
    model = gk.load_model(TINY_MODEL)
    prompts = RepeatPrompts.from_tokenizer(gk.load_tokenizer(TINY_MODEL), "qwen3")
    contexts = [(["doc"], np.random.RandomState(1).randint(0, 256, 20).astype(np.int32))]
    folders = {kind: str(tmp_path / kind) for kind in ("kvzip", "successor")}
    for kind, folder in folders.items():
        collect_features(model, prompts, contexts, folder, "train", {"targets": kind}, teacher_chunk=8, targets=kind)
    kvzip, successor = (np.load(os.path.join(folders[kind], "train_00000.targets.npy")) for kind in folders)
    np.testing.assert_allclose(kvzip, teacher_scores(model, contexts[0][1][None], prompts, chunk=8)[0][0])
    np.testing.assert_array_equal(successor[..., :-1], np.maximum(kvzip[..., :-1], kvzip[..., 1:]))
    np.testing.assert_array_equal(successor[..., -1], kvzip[..., -1])
    assert (successor > kvzip).any()


@pytest.mark.parametrize("field, value, match", [
    ("steps", -1, r"fit.steps must be a positive int, got -1"),
    ("eval_every", 0, r"fit.eval_every must be a positive int, got 0"),
    ("learning_rate", float("nan"), r"fit.learning_rate must be a finite number > 0, got nan"),
    ("momentum", 1.0, r"fit.momentum must be in \[0, 1\), got 1.0"),
])
def test_bad_fit_settings_are_refused_before_any_work(tmp_path, field, value, match):
    from gatekv_jax.training.configs import load_config

    config = load_config("tiny", workdir=str(tmp_path / "run"))
    config.fit[field] = value
    with pytest.raises(ValueError, match=match):
        gk.train_gates(config)
    assert not (tmp_path / "run").exists()
