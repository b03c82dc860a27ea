"""Fast KVzip gates for Qwen3-8B (36 layers, 8 KV heads, G=4) on fineweb-edu (TPU / GPU; the paper's scale)."""

from gatekv_jax.training.configs import paper_scale


def get_config():
    return paper_scale("Qwen/Qwen3-8B", "workdir/qwen3")
