"""KVzip teacher scores against maxima of transformers' own softmax attention weights."""

import jax
import numpy as np
import pytest
import torch

import gatekv_jax as gk
from gatekv_jax.engine.teacher import RepeatPrompts, teacher_scores
from tests.tiny_models import tiny_hf_model

PROMPTS = RepeatPrompts(prefix=(5, 6, 7), first=(11, 12, 13, 14), next_head=(21, 22), assistant=(31, 32))
CHUNK = 12


def reference_scores(hf_model, config, context):
    """Run transformers over prefix ++ context ++ repeat_i with an explicit mask per chunk and take
    max attention weights: an independent implementation of the teacher."""
    batch, n = context.shape
    prefix = np.tile(np.array(PROMPTS.prefix), (batch, 1))
    P, total = prefix.shape[1], prefix.shape[1] + n
    result = np.zeros((batch, len(config.full_attention_layers), config.num_kv_heads, n), np.float32)
    for index in range(-(-n // CHUNK)):
        repeat = PROMPTS.repeat_input(context, index, CHUNK)
        R = repeat.shape[1]
        tokens = torch.tensor(np.concatenate([prefix, context, repeat], axis=1), dtype=torch.long)
        positions = torch.arange(total + R)[None].expand(batch, -1)
        low, high = P + index * CHUNK, P + min(n, (index + 1) * CHUNK)
        q = torch.arange(total + R)[:, None]
        k = torch.arange(total + R)[None, :]
        allowed = k <= q
        restricted_cols = (k < P) | ((k >= low) & (k < high)) | (k >= total)
        allowed = allowed & torch.where(q >= total, restricted_cols, torch.ones_like(restricted_cols))
        window = config.sliding_window or (total + R)
        masks = {"full_attention": allowed, "sliding_attention": allowed & ((q - k) < window)}
        additive = {name: torch.where(m, 0.0, torch.finfo(torch.float32).min)[None, None].expand(batch, 1, -1, -1)
                    for name, m in masks.items()}
        with torch.no_grad():
            out = hf_model(tokens, position_ids=positions, attention_mask=additive, output_attentions=True)
        for g, layer in enumerate(config.full_attention_layers):
            weights = out.attentions[layer][:, :, total:, low:high]  # [B, N, R, chunk]
            grouped = weights.reshape(batch, config.num_kv_heads, config.num_groups, R, high - low)
            result[:, g, :, low - P:high - P] = grouped.amax(dim=(2, 3)).numpy()
    return result


@pytest.mark.parametrize("name", ["qwen3", "gemma3"])
def test_teacher_matches_transformers_attention_maxima(tmp_path, name):
    hf_model = tiny_hf_model(name)
    hf_model.save_pretrained(tmp_path)
    model = gk.load_model(tmp_path)
    context = np.random.RandomState(0).randint(40, 97, (2, 30)).astype(np.int32)
    scores, inputs = teacher_scores(model, context, PROMPTS, chunk=CHUNK, prefill_chunk=16)
    expected = reference_scores(hf_model, model.config, context)
    assert scores.shape == expected.shape
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert (scores > 0).all() and (scores <= 1).all()
    # The attention inputs are the gated layers' input-normed hidden states of the context tokens.
    with torch.no_grad():
        tokens = torch.tensor(np.concatenate([np.tile(PROMPTS.prefix, (2, 1)), context], axis=1))
        hidden = hf_model(tokens, output_hidden_states=True).hidden_states
    for g, layer in enumerate(model.config.full_attention_layers):
        norm = hf_model.model.layers[layer].input_layernorm
        with torch.no_grad():
            expected_inputs = norm(hidden[layer])[:, len(PROMPTS.prefix):].numpy()
        np.testing.assert_allclose(inputs[:, g], expected_inputs, atol=1e-4)


@pytest.mark.parametrize("with_prefix", [False, True])
def test_kvzip_oracle_keeps_the_best_teacher_scores(tiny_gemma3_dir, with_prefix):
    """Without a prefix the teacher prepends its own; a protected prefix in the row is used as the
    teacher's prefix instead. Either way the same context tokens get the same scores."""
    model = gk.load_model(tiny_gemma3_dir)
    context = np.random.RandomState(1).randint(40, 97, (1, 30)).astype(np.int32)
    prefix = np.array([PROMPTS.prefix], np.int32) if with_prefix else np.zeros((1, 0), np.int32)
    row = np.concatenate([prefix, context], axis=1)
    P, n = prefix.shape[1], row.shape[1]
    policy = gk.EvictionPolicy(scorer="kvzip", ratio=0.4, sink=2, window=3, chunk_size=8, level="head")
    compressed = gk.prefill(model, row, policy, prefix_length=P, repeat_prompts=PROMPTS)
    scores, _ = teacher_scores(model, context, PROMPTS)
    keep = policy.keep_count(n)
    for g, layer in enumerate(model.config.full_attention_layers):
        cache = compressed.cache.layers[layer]
        for head in range(model.config.num_kv_heads):
            kept = set(np.asarray(cache.positions[0, head, :int(cache.lengths[0, head])]).tolist())
            protected = set(range(max(2, P))) | {n - 3, n - 2, n - 1}
            ranked = [P + int(p) for p in np.argsort(-scores[0, g, head])]
            free = [p for p in ranked if p not in protected][:keep - len(protected)]
            assert kept == protected | set(free)


def test_repeat_prompts_from_the_packaged_tokenizer():
    prompts = RepeatPrompts.from_tokenizer(gk.load_tokenizer("gemma3-270m"), "gemma3")
    assert prompts.prefix == (2, 105, 2364, 107)  # <bos><start_of_turn>user\n
    assert prompts.assistant == (106, 107, 105, 4368, 107)  # <end_of_turn>\n<start_of_turn>model\n
    with pytest.raises(ValueError, match="no KVzip chat template for model_type 'llama'"):
        RepeatPrompts.from_tokenizer(None, "llama")


def test_kvzip_oracle_memo_computes_the_teacher_once_per_context(tiny_gemma3_dir, monkeypatch):
    """With a teacher memo, several ratios on one context run the teacher once and evict exactly as
    without it, even after a continuation has consumed an earlier result's cache."""
    from gatekv_jax.engine import oracle

    model = gk.load_model(tiny_gemma3_dir)
    row = np.random.RandomState(2).randint(40, 97, (1, 30)).astype(np.int32)
    calls = []
    original = oracle.teacher_scores
    monkeypatch.setattr(oracle, "teacher_scores", lambda *a, **k: calls.append(1) or original(*a, **k))
    memo = gk.TeacherMemo()
    for ratio in (0.4, 0.7, 0.4):
        policy = gk.EvictionPolicy(scorer="kvzip", ratio=ratio, sink=2, window=3, chunk_size=8)
        memoised = gk.prefill(model, row, policy, repeat_prompts=PROMPTS, teacher_memo=memo)
        fresh = gk.prefill(model, row, policy, repeat_prompts=PROMPTS)
        for a, b in zip(jax.tree.leaves(memoised), jax.tree.leaves(fresh)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        gk.continuation_log_probs(model, None, [[50, 51, 52]], policy, context=memoised)
    assert len(calls) == 3 + 1  # every fresh prefill, and the memo's first
    assert len(memo.entries) == 1
    other = gk.load_model(tiny_gemma3_dir)  # an equal model that is another object: never shares entries
    with pytest.raises(ValueError, match="another model's teacher scores"):
        gk.prefill(other, row, policy, repeat_prompts=PROMPTS, teacher_memo=memo)
