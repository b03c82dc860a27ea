"""Fast KVzip gates for Gemma 3 12B (8 global of 48 layers, 8 KV heads, G=2) on fineweb-edu (TPU/GPU, paper scale)."""

from gatekv_jax.training.configs import paper_scale


def get_config():
    return paper_scale("google/gemma-3-12b-it", "workdir/gemma3")
