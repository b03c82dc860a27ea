"""A non-editable install: the wheel in a fresh venv finds its packaged configs and gates from any folder."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_trains_the_tiny_config_from_another_folder(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "docs",
                                                                "workdir*", "results*"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
                   check=True, timeout=300)
    (wheel,) = wheels.glob("gatekv_jax-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies come from this environment's site-packages (a plain path: its .pth files, and
    # with them the editable install of the checkout, are not read); gatekv_jax only from the wheel.
    with open(os.path.join(site, "dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", str(wheel)],
                   check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([python, "-c", "import gatekv_jax; print(gatekv_jax.__file__)"], cwd=elsewhere,
                           check=True, capture_output=True, text=True, env=environment).stdout.strip()
    assert where.startswith(site)
    workdir = elsewhere / "run"
    subprocess.run([python, "-m", "gatekv_jax.train", "--config=configs/tiny.py", f"--config.workdir={workdir}",
                    "--config.train_contexts=2", "--config.fit.steps=4", "--config.fit.eval_every=2",
                    "--config.fit.checkpoint_every=2"], cwd=elsewhere, check=True, timeout=600, env=environment)
    with open(workdir / "summary.json") as f:
        summary = json.load(f)
    assert summary["model"] == "tiny-random-qwen3" and summary["steps"] == 4
    assert (workdir / "gates.safetensors").is_file()
    gates = subprocess.run([python, "-c", "import gatekv_jax as gk; print(sorted(gk.pretrained_gates('gemma3-270m')))"],
                           cwd=elsewhere, check=True, capture_output=True, text=True, env=environment).stdout
    assert "layer_11" in gates
