"""Shared fixtures: 8 virtual CPU devices, exact matmuls, and tiny random HF models saved to disk."""

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402

from tests.tiny_models import TINY_CONFIGS, save_tiny_model  # noqa: E402


@pytest.fixture(scope="session", params=sorted(TINY_CONFIGS))
def tiny_model_dir(request, tmp_path_factory):
    """`(name, folder)` of each tiny model family, saved once per session."""
    folder = tmp_path_factory.mktemp(request.param)
    save_tiny_model(request.param, folder)
    return request.param, folder
