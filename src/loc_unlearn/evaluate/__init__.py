"""Evaluation (docs/metrics.md): token metrics from shared teacher-forced passes, generation + ROUGE-L,
TOFU metrics (FQ, MU), trade-off summaries (AUES, MU95) and paired statistics."""
