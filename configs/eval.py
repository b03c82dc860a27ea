"""Evaluate every scorer on the packaged Gemma 3 270M with its packaged gates, offline."""

from ml_collections import config_dict


def get_config():
    c = config_dict.ConfigDict()
    c.model = "gemma3-270m"
    c.dtype = "float32"
    c.gates = "packaged"  # or a gates.safetensors path
    c.scorers = "full,gate,kvzip,snapkv,h2o,streaming,random,keydiff,knorm,expected_attention"
    c.ratios = "0.1,0.2,0.3,0.4,0.5,0.75,1.0"
    c.level = "token"  # same tokens in every gated layer; "global": the paper's one threshold; "head": per-head top-k
    c.token_rank = config_dict.placeholder(str)  # "score"/"quantile"/"either"; None: gate either, others quantile
    c.token_pool = 3  # level "token": a token also takes the best rank of its 2 neighbours (keeps "is 4821"'s space)
    c.tasks = "continuation,recall,needle,qa"  # and "decode": decode_length tokens per sample, slow on a CPU
    c.context_length = 2000
    c.continuation_length = 200
    c.decode_length = 1024  # task "decode": tokens decoded with eviction to ratio x (context + decode_length)
    c.recall_facts = 10
    c.needle_depths = "0.1,0.5,0.9"
    c.n_samples = 3
    c.chunk_size = 512
    c.window = config_dict.placeholder(int)  # None: sized by window_rule
    c.window_rule = config_dict.placeholder(str)  # "paper"/"scaled"; None: gate scaled, others paper
    c.sink = 4
    c.chat_prefix = True  # contexts follow the chat template's start (BOS, user turn), never evicted
    c.seed = 0
    c.output = "results/eval_gemma3_270m"
    # Must match the training config's split so evaluation documents are never training documents.
    c.data = config_dict.ConfigDict(dict(source="stdlib", paths=[], heldout_fraction=0.1, max_document_tokens=1000))
    return c
