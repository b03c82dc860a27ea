"""Train Fast KVzip gates for the packaged Gemma 3 270M offline: Python's code and prose, half each (CPU, ~16 min)."""

from gatekv_jax.training.configs import training_config


def get_config():
    return training_config("gemma3-270m", "workdir/gemma3_270m", source="stdlib:0.5,prose:0.5",
                           max_document_tokens=1000, context_length=2000, train_contexts=64, heldout_contexts=8,
                           steps=3000, eval_every=200, eval_tokens=16000, checkpoint_every=200)
