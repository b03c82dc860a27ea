"""Shared fixtures: 8 virtual CPU devices, exact matmuls, and tiny random HF models saved to disk."""

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402

from tests.tiny_models import TINY_CONFIGS, save_tiny_model  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """Drop compiled executables after each test module, so a long run's memory stays flat."""
    yield
    jax.clear_caches()  # every jitted step is a module-level jax.jit: this drops them all


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory):
    """The tiny Gemma3 (sliding + global layers): the richest family for engine tests."""
    folder = tmp_path_factory.mktemp("gemma3-only")
    save_tiny_model("gemma3", folder)
    return folder


@pytest.fixture(scope="session", params=sorted(TINY_CONFIGS))
def tiny_model_dir(request, tmp_path_factory):
    """`(name, folder)` of each tiny model family, saved once per session."""
    folder = tmp_path_factory.mktemp(request.param)
    save_tiny_model(request.param, folder)
    return request.param, folder


@pytest.fixture(params=["whole", "blocks"])
def attention_blocks(request, monkeypatch):
    """Run a test as is ("whole") and again with chunks attending in blocks of 4 slots ("blocks"), so
    the tiny models take the blocked path (`blocked_attention`) that long buffers take."""
    if request.param == "blocks":
        from gatekv_jax.models import decoder

        monkeypatch.setattr(decoder, "ATTENTION_BLOCK", 4)
        jax.clear_caches()  # the jitted steps were traced with the real block size
        yield request.param
        jax.clear_caches()
    else:
        yield request.param
