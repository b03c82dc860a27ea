"""Fast KVzip gates for Gemma 3 12B (8 global of 48 layers, 8 KV heads, G=2) on fineweb-edu (TPU / GPU; the paper's scale)."""

from ml_collections import config_dict


def get_config():
    c = config_dict.ConfigDict()
    c.model = "google/gemma-3-12b-it"
    c.dtype = "bfloat16"
    c.workdir = "workdir/gemma3"
    c.data = config_dict.ConfigDict(dict(source="fineweb-edu", paths=[], heldout_fraction=0.01,
                                             max_document_tokens=config_dict.placeholder(int)))
    c.context_length = 16000
    c.teacher_chunk = 2000
    c.train_contexts = 64  # ~1M context tokens
    c.heldout_contexts = 2
    c.batch_size = 1
    c.tokens_per_context = config_dict.placeholder(int)  # None: every token
    c.mesh = config_dict.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.fit = config_dict.ConfigDict(dict(steps=5000, batch_tokens=1000, learning_rate=0.2, momentum=0.9,
                                        warmup_fraction=0.01, eval_every=250, eval_tokens=20000,
                                        checkpoint_every=250, seed=0))
    c.seed = 0
    return c
