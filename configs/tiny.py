"""A tiny random Qwen3 model built from a config (no download): the trainer's CI smoke run."""

from ml_collections import config_dict


def get_config():
    c = config_dict.ConfigDict()
    c.model = "tiny-random-qwen3"
    c.dtype = "float32"
    c.workdir = "workdir/tiny"
    c.data = config_dict.ConfigDict(dict(source="stdlib", paths=[], heldout_fraction=0.2,
                                             max_document_tokens=100))
    c.context_length = 64
    c.teacher_chunk = 32
    c.train_contexts = 8
    c.heldout_contexts = 2
    c.batch_size = 2
    c.tokens_per_context = 48
    c.mesh = config_dict.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.fit = config_dict.ConfigDict(dict(steps=200, batch_tokens=128, learning_rate=0.2, momentum=0.9,
                                        warmup_fraction=0.01, eval_every=50, eval_tokens=256,
                                        checkpoint_every=20, seed=0))
    c.seed = 0
    return c
