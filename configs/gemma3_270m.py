"""Train Fast KVzip gates for the packaged Gemma 3 270M on the offline stdlib corpus (CPU, ~8 min)."""

from gatekv_jax.training.configs import training_config


def get_config():
    return training_config("gemma3-270m", "workdir/gemma3_270m", max_document_tokens=1000, context_length=2000,
                           train_contexts=32, heldout_contexts=4, steps=1500, eval_every=100, eval_tokens=8000,
                           checkpoint_every=100)
