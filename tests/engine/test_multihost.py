"""The engine on a 2 x 2 x 2 mesh spread over 2 processes gives the single-device tokens and caches."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import gatekv_jax as gk

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROWS = [np.random.RandomState(n).randint(0, 256, n).tolist() for n in (37, 26)]


def engine_run(model):
    """Prefill two rows of different lengths with the gate scorer (eviction on), then decode."""
    gates = gk.init_gates(model.config, seed=1)
    policy = gk.EvictionPolicy(scorer="gate", ratio=0.4, chunk_size=8, window=4, decode_budget=24, decode_block=8,
                               decode_recent=8)
    context = gk.prefill(model, ROWS, policy, gates=gates)
    tokens = gk.generate(model, [[5, 6, 7], [8, 9]], policy, gates=gates, context=context, max_new_tokens=20,
                         stop_tokens=[])
    return tokens, context


@pytest.mark.slow
def test_prefill_and_generate_over_two_processes_equal_one_device(tmp_path):
    out = tmp_path / "engine.npz"
    environment = {**os.environ, "PYTHON": sys.executable, "GATEKV_TRAIN_MODULE": "tests.engine.multihost_engine",
                   "PYTHONPATH": ROOT}
    subprocess.run(["bash", os.path.join(ROOT, "launch", "local.sh"), "--processes", "2", "--devices", "4",
                    "--logs", str(tmp_path / "logs"), "--", f"--out={out}"], cwd=ROOT, env=environment, check=True,
                   timeout=600)
    tokens, context = engine_run(gk.load_model("tiny-random-qwen3"))
    result = np.load(out)
    assert result["tokens"].tolist() == tokens
    for i, leaf in enumerate(jax.tree.leaves(context)):
        np.testing.assert_allclose(result[f"leaf_{i}"], np.asarray(leaf), rtol=0, atol=1e-5)
    assert result["shardings"].tolist() == ["P('data', 'tensor')"]  # rows over processes, KV heads over tensor
