"""Train Fast KVzip gates for the packaged Gemma 3 270M on the offline stdlib corpus (CPU, < 20 min)."""

from ml_collections import config_dict


def get_config():
    c = config_dict.ConfigDict()
    c.model = "gemma3-270m"
    c.dtype = "float32"
    c.workdir = "workdir/gemma3_270m"
    c.data = config_dict.ConfigDict(dict(source="stdlib", paths=[], heldout_fraction=0.1,
                                             max_document_tokens=1000))
    c.context_length = 2000
    c.teacher_chunk = 2000
    c.train_contexts = 32
    c.heldout_contexts = 4
    c.batch_size = 1
    c.tokens_per_context = config_dict.placeholder(int)  # None: every token
    c.mesh = config_dict.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.fit = config_dict.ConfigDict(dict(steps=1500, batch_tokens=1000, learning_rate=0.2, momentum=0.9,
                                        warmup_fraction=0.01, eval_every=100, eval_tokens=8000,
                                        checkpoint_every=100, seed=0))
    c.seed = 0
    return c
