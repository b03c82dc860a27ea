"""Running a loaded model under an eviction policy: forward, prefill, append, decode, teacher, oracle,
and pure steps for user-written loops."""

from gatekv_jax.engine.decode import generate
from gatekv_jax.engine.forward import apply_model, forward
from gatekv_jax.engine.oracle import TeacherMemo
from gatekv_jax.engine.prefill import prefill
from gatekv_jax.engine.sampling import Sampling
from gatekv_jax.engine.scoring import continuation_log_probs, continuation_nll, decode_continuation
from gatekv_jax.engine.steps import decoder_step, evict_cache
from gatekv_jax.engine.teacher import RepeatPrompts, teacher_scores

__all__ = ["RepeatPrompts", "Sampling", "TeacherMemo", "apply_model", "continuation_log_probs", "continuation_nll",
           "decode_continuation", "decoder_step", "evict_cache", "forward", "generate", "prefill", "teacher_scores"]
