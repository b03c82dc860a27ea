"""Stale or lost work: a rerun never resumes another run's checkpoints, never trusts a broken shard."""

import glob
import os

import numpy as np
import pytest

import gatekv_jax as gk
from gatekv_jax.training.configs import load_config


def tiny_config(workdir, **fit):
    config = load_config("tiny", workdir=str(workdir))
    config.fit.update(dict(steps=20, eval_every=10, checkpoint_every=10, **fit))
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny run (features, checkpoints, gates) that each test copies."""
    workdir = tmp_path_factory.mktemp("run")
    gk.train_gates(tiny_config(workdir))
    return workdir


def copy_of(trained, tmp_path):
    import shutil

    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def test_other_fit_settings_never_resume_old_checkpoints(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    with pytest.raises(ValueError, match=r"come from another run \(fit: .*'learning_rate': 0.2.* then, "
                                         r".*'learning_rate': 0.1.* now\)"):
        gk.train_gates(tiny_config(workdir, learning_rate=0.1))
    before = gk.load_gates(str(workdir / "gates.safetensors"))
    gk.train_gates(tiny_config(workdir))  # the same settings resume (nothing left to do)
    after = gk.load_gates(str(workdir / "gates.safetensors"))
    for layer in before:
        for name in before[layer]:
            np.testing.assert_array_equal(after[layer][name], before[layer][name])


def test_a_truncated_or_deleted_shard_is_collected_again(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    features = workdir / "features"
    shards = sorted(glob.glob(str(features / "train_*.inputs.npy")))
    intact = open(shards[0], "rb").read()
    with open(shards[0], "r+b") as f:
        f.truncate(len(intact) // 2)
    os.remove(shards[1].replace(".inputs.", ".targets."))
    gk.train_gates(tiny_config(workdir))
    assert open(shards[0], "rb").read() == intact  # the teacher is deterministic: the same bytes again
    assert os.path.isfile(shards[1].replace(".inputs.", ".targets."))


def test_nan_features_are_named_not_fitted(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    import shutil

    shutil.rmtree(workdir / "checkpoints")
    target = sorted(glob.glob(str(workdir / "features" / "train_*.targets.npy")))[0]
    values = np.load(target)
    values[...] = np.nan
    np.save(target, values)
    with pytest.raises(ValueError, match=r"train_00000\.\*\.npy hold NaN or infinite values"):
        gk.train_gates(tiny_config(workdir))


def test_a_truncated_manifest_is_named(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    manifest = workdir / "features" / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    with pytest.raises(ValueError, match=r"manifest\.json is truncated or not JSON"):
        gk.train_gates(tiny_config(workdir))


def test_a_diverged_fit_is_an_error_not_gates(tmp_path):
    with pytest.raises(FloatingPointError, match="the fit diverged"):
        gk.train_gates(tiny_config(tmp_path / "run", learning_rate=1e38))
    assert not (tmp_path / "run" / "gates.safetensors").exists()
