"""Fast KVzip gates for Qwen2.5-7B-Instruct-1M (28 layers, 4 KV heads, G=7) on fineweb-edu (TPU/GPU, paper scale)."""

from gatekv_jax.training.configs import paper_scale


def get_config():
    return paper_scale("Qwen/Qwen2.5-7B-Instruct-1M", "workdir/qwen2_5_1m")
