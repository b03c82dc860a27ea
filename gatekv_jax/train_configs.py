"""Building blocks of the training configs in `configs/` (ml_collections)."""

from __future__ import annotations

from ml_collections import config_dict


def training_config(model: str, workdir: str, *, dtype: str = "float32", source: str = "stdlib",
                    heldout_fraction: float = 0.1, max_document_tokens: int | None = None,
                    context_length: int = 16000, teacher_chunk: int = 2000, train_contexts: int = 64,
                    heldout_contexts: int = 2, batch_size: int = 1, tokens_per_context: int | None = None,
                    steps: int = 5000, batch_tokens: int = 1000, eval_every: int = 250, eval_tokens: int = 20000,
                    checkpoint_every: int = 250) -> config_dict.ConfigDict:
    """A `python -m gatekv_jax.train` config; defaults are the paper's (lr 0.2, momentum 0.9)."""
    c = config_dict.ConfigDict()
    c.model = model
    c.dtype = dtype
    c.workdir = workdir
    c.data = config_dict.ConfigDict(dict(
        source=source, paths=[], heldout_fraction=heldout_fraction,
        max_document_tokens=config_dict.placeholder(int) if max_document_tokens is None else max_document_tokens))
    c.context_length = context_length
    c.teacher_chunk = teacher_chunk
    c.train_contexts = train_contexts
    c.heldout_contexts = heldout_contexts
    c.batch_size = batch_size
    c.tokens_per_context = config_dict.placeholder(int) if tokens_per_context is None else tokens_per_context
    c.mesh = config_dict.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.fit = config_dict.ConfigDict(dict(steps=steps, batch_tokens=batch_tokens, learning_rate=0.2, momentum=0.9,
                                        warmup_fraction=0.01, eval_every=eval_every, eval_tokens=eval_tokens,
                                        checkpoint_every=checkpoint_every, seed=0))
    c.seed = 0
    return c


def paper_scale(model: str, workdir: str) -> config_dict.ConfigDict:
    """The paper's recipe: fineweb-edu, 16K-token contexts, 64 contexts (~1M tokens), 5,000 steps, bf16."""
    return training_config(model, workdir, dtype="bfloat16", source="fineweb-edu", heldout_fraction=0.01)
