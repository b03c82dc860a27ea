"""Evaluation: held-out tasks, the resumable runner (`python -m gatekv_jax.evaluate`), markdown reports."""

from gatekv_jax.evaluation.report import add_gap_closed, markdown_tables
from gatekv_jax.evaluation.runner import evaluate, load_config, policy_for
from gatekv_jax.evaluation.tasks import (
                                         SAMPLE_BUILDERS,
                                         TASKS,
                                         Sample,
                                         continuation_samples,
                                         copied_share,
                                         needle_samples,
                                         qa_samples,
                                         recall_samples,
                                         token_f1,
)

__all__ = ["SAMPLE_BUILDERS", "TASKS", "Sample", "add_gap_closed", "continuation_samples", "copied_share", "evaluate",
           "load_config", "markdown_tables", "needle_samples", "policy_for", "qa_samples", "recall_samples",
           "token_f1"]
