"""A tiny random Qwen3 model built from a config (no download): the trainer's CI smoke run."""

from gatekv_jax.training.configs import training_config


def get_config():
    return training_config("tiny-random-qwen3", "workdir/tiny", heldout_fraction=0.2, max_document_tokens=100,
                           context_length=64, teacher_chunk=32, train_contexts=8, heldout_contexts=2, batch_size=2,
                           tokens_per_context=48, steps=200, batch_tokens=128, eval_every=50, eval_tokens=256,
                           checkpoint_every=20)
