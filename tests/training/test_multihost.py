"""The trainer as 2 processes x 4 CPU devices (launch/local.sh, gloo collectives) against 1 process."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gatekv_jax as gk
from gatekv_jax.training import pipeline
from gatekv_jax.training.configs import load_config
from gatekv_jax.training.features import read_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The tiny config, short: a mesh whose data axis spans the 2 processes (the batch of 2 contexts
# splits over them), fsdp over each process's 4 devices.
ARGS = ["--config=configs/tiny.py", "--config.mesh.data=2", "--config.fit.steps=40", "--config.fit.eval_every=20",
        "--config.fit.checkpoint_every=20"]
OUTPUTS = ("gates.safetensors", "summary.json", "history.json", "training.png")
# Gates of the three layouts agree to float rounding: fsdp-sharded contractions sum in another
# order than one device (1e-7 relative), which flips a few float16 feature roundings; the fit
# alone, on the same features, agrees to 2e-7 (test_data_parallel_fit_equals_one_device).
TOLERANCE = 1e-5


def launch(workdir, logs, wait=True):
    command = ["bash", os.path.join(ROOT, "launch", "local.sh"), "--processes", "2", "--devices", "4", "--logs",
               str(logs), "--", *ARGS, f"--config.workdir={workdir}"]
    environment = {**os.environ, "PYTHON": sys.executable}
    if wait:
        return subprocess.run(command, cwd=ROOT, env=environment, check=True, timeout=600)
    return subprocess.Popen(command, cwd=ROOT, env=environment, start_new_session=True)


def one_process(workdir, devices, *extra):
    subprocess.run([sys.executable, "-m", "gatekv_jax.train", *ARGS, f"--config.workdir={workdir}",
                    f"--config.distributed.cpu_devices={devices}", *extra], cwd=ROOT, check=True, timeout=600,
                   capture_output=True)


def trainer_pid(*fragments) -> int:
    """The pid of the trainer process whose command line holds every fragment."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = open(f"/proc/{pid}/cmdline").read().split("\0")
        except OSError:
            continue
        if "gatekv_jax.train" in command and all(f in command for f in fragments):
            return int(pid)
    raise AssertionError(f"no trainer process with {fragments}")


def gates_of(workdir):
    return {f"{layer}/{name}": np.asarray(value) for layer, params in
            gk.load_gates(str(workdir / "gates.safetensors")).items() for name, value in params.items()}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two") / "run"
    launch(workdir, workdir.parent / "logs")
    return workdir


@pytest.mark.slow
def test_two_processes_train_the_gates_of_one_process(two_process_run, tmp_path):
    for name in OUTPUTS:
        assert (two_process_run / name).is_file(), name
    summary = json.loads((two_process_run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["tokens"] == {"train": 8 * 48, "heldout": 2 * 48}
    manifest = read_manifest(str(two_process_run / "features"))
    assert sorted(manifest["shards"]) == [f"heldout_{i:05d}" for i in range(2)] + [f"train_{i:05d}" for i in range(8)]
    one_process(tmp_path / "eight", 8)
    one_process(tmp_path / "one", 1, "--config.mesh.data=1")
    two, eight, one = gates_of(two_process_run), gates_of(tmp_path / "eight"), gates_of(tmp_path / "one")
    for name in two:
        np.testing.assert_allclose(two[name], eight[name], rtol=0, atol=TOLERANCE, err_msg=name)
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=TOLERANCE, err_msg=name)


@pytest.mark.slow
def test_a_process_killed_during_features_resumes_to_the_same_gates(two_process_run, tmp_path):
    workdir = tmp_path / "run"
    run = launch(workdir, tmp_path / "logs", wait=False)
    manifest, deadline = workdir / "features" / "manifest.json", time.time() + 300
    while time.time() < deadline:
        shards = read_manifest(str(workdir / "features"))["shards"] if manifest.is_file() else {}
        if any(name.startswith("train") for name in shards):
            break
        time.sleep(0.05)
    os.kill(trainer_pid(f"--config.workdir={workdir}", "--config.distributed.process_id=1"), signal.SIGKILL)
    assert run.wait(timeout=120) != 0  # the launcher stops the other process and reports the failure
    done = read_manifest(str(workdir / "features"))["shards"]
    assert 2 <= len(done) < 10 and not (workdir / "gates.safetensors").exists()
    launch(workdir, tmp_path / "logs_again")
    resumed, reference = gates_of(workdir), gates_of(two_process_run)
    for name in reference:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)


def test_only_process_zero_writes_outputs(tmp_path, monkeypatch):
    """Run in one process, but as a process other than 0: features and checkpoints (written by
    every process that owns them) appear, the run's outputs do not."""
    from gatekv_jax.training import fit

    monkeypatch.setattr(pipeline, "is_main_process", lambda: False)
    monkeypatch.setattr(fit, "is_main_process", lambda: False)
    config = load_config("tiny", workdir=str(tmp_path / "run"))
    config.fit.update(steps=4, eval_every=2, checkpoint_every=2)
    summary = gk.train_gates(config)
    assert summary["steps"] == 4 and (tmp_path / "run" / "checkpoints").is_dir()
    assert (tmp_path / "run" / "features" / "train_00000.inputs.npy").is_file()
    for name in OUTPUTS:
        assert not (tmp_path / "run" / name).exists(), name


def test_data_parallel_fit_equals_one_device(tmp_path):
    from gatekv_jax.training.fit import FitSettings, fit_gates

    config = load_config("tiny", workdir=str(tmp_path / "features_run"))
    config.fit.update(steps=1, eval_every=1, checkpoint_every=1)
    gk.train_gates(config)  # features only matter here
    features = str(tmp_path / "features_run" / "features")
    model_config = gk.load_model("tiny-random-qwen3").config
    settings = FitSettings(steps=60, batch_tokens=128, eval_every=30, eval_tokens=256, checkpoint_every=30)
    fitted = [fit_gates(gk.init_gates(model_config), model_config.full_attention_layers, features,
                        str(tmp_path / name), settings, mesh=mesh)[0]
              for name, mesh in (("single", None), ("mesh", gk.make_mesh(data=2, fsdp=4)))]
    for layer in fitted[0]:
        for name in fitted[0][layer]:
            np.testing.assert_allclose(fitted[1][layer][name], fitted[0][layer][name], rtol=0, atol=1e-6)
